package cluster_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/poll"
)

// Three agents in full BGP mesh learn each other's blocks over real sessions and program them;
// node status shows every peer Established.
func TestBGPMesh(t *testing.T) {
	c := cluster.New(t)
	hosts := []*cluster.Host{
		c.AddHost("vm100", "198.18.0.100/24", "--bgp"),
		c.AddHost("vm101", "198.18.0.101/24", "--bgp"),
		c.AddHost("vm102", "198.18.0.102/24", "--bgp"),
	}
	for _, h := range hosts {
		set := h.Maps(t)
		poll.Until(t, h.Name+" learned the other blocks", 60*time.Second, func() error {
			bs, _, err := c.DS.Blocks().List(t.Context())
			if err != nil {
				return err
			}
			if len(bs) != 3 {
				return fmt.Errorf("%d blocks claimed", len(bs))
			}
			for _, b := range bs {
				owner := b.Value.Node()
				if owner == h.Name {
					continue
				}
				var nh netip.Addr
				for _, o := range hosts {
					if o.Name == owner {
						nh = o.Addr.Addr()
					}
				}
				rt, err := set.Routes.Get(b.Value.CIDR)
				if err != nil || rt.Kind() != maps.RemoteBlock || rt.NextHop != nh {
					return fmt.Errorf("route to %s's %v: %+v, %v", owner, b.Value.CIDR, rt, err)
				}
				out, err := h.NS.Run("ip", "-N", "-4", "route", "show", b.Value.CIDR.String())
				if want := b.Value.CIDR.String() + " via " + nh.String() + " dev ens32 proto 77"; err != nil || !strings.Contains(out, want) {
					return fmt.Errorf("kernel route %q, want %q (%v)", out, want, err)
				}
			}
			return nil
		})
		poll.Until(t, h.Name+" node status", 30*time.Second, func() error {
			code, body, err := h.Get("/bgp/peers")
			if err != nil || code != 200 {
				return fmt.Errorf("%d %v %s", code, err, body)
			}
			var peers []hostconv.PeerStatus
			if err := json.Unmarshal([]byte(body), &peers); err != nil {
				return err
			}
			if len(peers) != 2 {
				return fmt.Errorf("peers %+v", peers)
			}
			for _, p := range peers {
				if p.State != "Established" || p.Type != "node-to-node mesh" {
					return fmt.Errorf("peer %+v", p)
				}
			}
			return nil
		})
		code, metrics, err := h.Get("/metrics")
		for _, want := range []string{`margay_bgp_peers{state="Established",type="node-to-node mesh"} 2`,
			"margay_bgp_routes_learned 2", "margay_bgp_routes_advertised 1", "margay_bgp_route_programming_seconds_count"} {
			if err != nil || code != 200 || !strings.Contains(metrics, want) {
				t.Errorf("%s metrics lack %q (%d %v)", h.Name, want, code, err)
			}
		}
		// What an operator types on the host.
		out, err := h.NS.Run(filepath.Join(cluster.Binaries(t), "margayctl"), "node", "status")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: margayctl node status\n%s", h.Name, out)
		for _, want := range []string{"Margay process is running.", "IPv4 BGP status", "| PEER ADDRESS ", "| node-to-node mesh | up    |",
			"| Established |", "No IPv6 peers found."} {
			if !strings.Contains(out, want) {
				t.Errorf("node status lacks %q", want)
			}
		}
		for _, o := range hosts {
			if o != h && !strings.Contains(out, "| "+o.Addr.Addr().String()+" ") {
				t.Errorf("node status lacks peer %s", o.Addr.Addr())
			}
		}
	}

	// A node that leaves (agent stopped, node deleted as calicoctl delete node does) is dropped
	// from the mesh, and its block from every routing table.
	gone := hosts[2]
	goneBlock := netip.Prefix{}
	bs, _, err := c.DS.Blocks().List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bs {
		if b.Value.Node() == gone.Name {
			goneBlock = b.Value.CIDR
		}
	}
	gone.Stop()
	if out, err := hosts[0].NS.Run(filepath.Join(cluster.Binaries(t), "margayctl"), "node", "delete", gone.Name,
		"--etcd-endpoints", c.Endpoint(hosts[0])); err != nil {
		t.Fatalf("node delete: %v\n%s", err, out)
	}
	for _, h := range hosts[:2] {
		set := h.Maps(t)
		poll.Until(t, h.Name+" dropped "+gone.Name+"'s block", 30*time.Second, func() error {
			if rt, err := set.Routes.Get(goneBlock); err == nil {
				return fmt.Errorf("still routed: %+v", rt)
			}
			out, err := h.NS.Run("ip", "-N", "-4", "route", "show", goneBlock.String())
			if err != nil || strings.TrimSpace(out) != "" {
				return fmt.Errorf("kernel route %q, %v", out, err)
			}
			return nil
		})
	}
}

// A Margay node with a cluster ID is a route reflector: with the mesh off, the other nodes peer
// with it alone and learn each other's blocks through it, next hops untouched.
func TestNodeRouteReflector(t *testing.T) {
	c := cluster.New(t)
	reflectorOnly(t, c, "vm100", "198.18.0.100/24")
	rr := c.AddHost("vm100", "198.18.0.100/24", "--bgp")
	a := c.AddHost("vm101", "198.18.0.101/24", "--bgp")
	b := c.AddHost("vm102", "198.18.0.102/24", "--bgp")
	for _, tc := range []struct{ from, to *cluster.Host }{{a, b}, {b, a}} {
		set := tc.from.Maps(t)
		block := blockOf(t, c, tc.to.Name)
		poll.Until(t, tc.from.Name+" learned "+tc.to.Name+"'s block via the reflector", 30*time.Second, func() error {
			rt, err := set.Routes.Get(block)
			if err != nil || rt.NextHop != tc.to.Addr.Addr() {
				return fmt.Errorf("%+v, %v", rt, err)
			}
			return nil
		})
		code, body, err := tc.from.Get("/bgp/peers")
		if err != nil || code != 200 || strings.Count(body, `"address"`) != 1 || !strings.Contains(body, rr.Addr.Addr().String()) {
			t.Errorf("%s peers: %d %v %s", tc.from.Name, code, err, body)
		}
	}
}
