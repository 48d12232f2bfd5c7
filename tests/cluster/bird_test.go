package cluster_test

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/bird"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// gatewayConf is BIRD on the segment at 198.18.0.1 peering over iBGP with every node. As a
// gateway it originates the outside network 198.18.1.0/24 with itself as next hop; as a route
// reflector it reflects the nodes' routes to each other, next hops untouched. sessionOpts go
// into every session (e.g. "graceful restart on;").
func gatewayConf(nodes []*cluster.Host, reflector bool, sessionOpts ...string) string {
	var b strings.Builder
	b.WriteString("router id 198.18.0.1;\nprotocol device {}\n")
	b.WriteString("protocol static { ipv4; route 198.18.1.0/24 blackhole; }\n")
	channel := "ipv4 { import all; export all; next hop self; };"
	if reflector {
		channel = "rr client; rr cluster id 198.18.0.1; ipv4 { import all; export all; };"
	}
	fmt.Fprintf(&b, "template bgp node { local 198.18.0.1 as 64512; direct; connect retry time 1; %s %s }\n", strings.Join(sessionOpts, " "), channel)
	for _, n := range nodes {
		fmt.Fprintf(&b, "protocol bgp %s from node { neighbor %s as 64512; }\n", n.Name, n.Addr.Addr())
	}
	return b.String()
}

// startGateway puts a namespace with BIRD on the segment.
func startGateway(t testing.TB, c *cluster.Cluster, conf string) *bird.Router {
	gw := netns.New(t, "mgygw-")
	c.Attach(gw, "ens32", "198.18.0.1/24")
	return bird.Start(t, gw, conf)
}

// bgpPeer is an explicit peer of every node, as a gateway is.
func bgpPeer(ip string) datastore.BGPPeer {
	return datastore.BGPPeer{Version: 1, Name: "gw", PeerIP: netip.MustParseAddr(ip), ASN: 64512}
}

func blockOf(t testing.TB, c *cluster.Cluster, node string) netip.Prefix {
	t.Helper()
	var p netip.Prefix
	poll.Until(t, node+" claimed a block", 20*time.Second, func() error {
		bs, _, err := c.DS.Blocks().List(t.Context())
		if err != nil {
			return err
		}
		for _, b := range bs {
			if b.Value.Node() == node {
				p = b.Value.CIDR
				return nil
			}
		}
		return fmt.Errorf("no block of %s", node)
	})
	return p
}

// BIRD as the gateway router every node peers with: it learns every block with the right next
// hop, and the nodes learn and program the network it originates.
func TestBIRDGateway(t *testing.T) {
	c := cluster.New(t)
	outside := netip.MustParsePrefix("198.18.1.0/24")
	if _, err := c.DS.BGPPeers().Create(t.Context(), "gateway", datastore.BGPPeer{Version: 1, Name: "gateway",
		PeerIP: netip.MustParseAddr("198.18.0.1"), ASN: 64512, Accept: []netip.Prefix{outside}}); err != nil {
		t.Fatal(err)
	}
	hosts := []*cluster.Host{
		c.AddHost("vm100", "198.18.0.100/24", "--bgp"),
		c.AddHost("vm101", "198.18.0.101/24", "--bgp"),
	}
	gw := startGateway(t, c, gatewayConf(hosts, false))

	for _, h := range hosts {
		block := blockOf(t, c, h.Name)
		poll.Until(t, "BIRD learned "+h.Name+"'s block", 60*time.Second, func() error {
			routes, err := gw.Routes()
			if err != nil {
				return err
			}
			if r := routes[block]; r.NextHop != h.Addr.Addr() || r.Proto != h.Name {
				return fmt.Errorf("BIRD's route to %v: %+v", block, r)
			}
			return nil
		})
		set := h.Maps(t)
		poll.Until(t, h.Name+" learned the outside network from BIRD", 60*time.Second, func() error {
			rt, err := set.Routes.Get(outside)
			if err != nil || rt.NextHop != netip.MustParseAddr("198.18.0.1") || rt.Kind() != maps.RemoteBlock {
				return fmt.Errorf("routes map: %+v, %v", rt, err)
			}
			out, err := h.NS.Run("ip", "-N", "-4", "route", "show", outside.String())
			if err != nil || !strings.Contains(out, "via 198.18.0.1 dev ens32 proto 77") {
				return fmt.Errorf("kernel route: %q, %v", out, err)
			}
			return nil
		})
	}
}

// BIRD as route reflector with the node-to-node mesh off: the nodes learn each other's blocks
// through it.
func TestBIRDRouteReflector(t *testing.T) {
	c := cluster.New(t)
	off := false
	if _, err := c.DS.BGPConfig().Create(t.Context(), datastore.BGPConfig{Version: 1, NodeToNodeMesh: &off}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DS.BGPPeers().Create(t.Context(), "reflector", datastore.BGPPeer{Version: 1, Name: "reflector",
		PeerIP: netip.MustParseAddr("198.18.0.1"), ASN: 64512}); err != nil {
		t.Fatal(err)
	}
	hosts := []*cluster.Host{
		c.AddHost("vm100", "198.18.0.100/24", "--bgp"),
		c.AddHost("vm101", "198.18.0.101/24", "--bgp"),
		c.AddHost("vm102", "198.18.0.102/24", "--bgp"),
	}
	startGateway(t, c, gatewayConf(hosts, true))
	for _, h := range hosts {
		set := h.Maps(t)
		for _, o := range hosts {
			if o == h {
				continue
			}
			block := blockOf(t, c, o.Name)
			poll.Until(t, h.Name+" learned "+o.Name+"'s block through the reflector", 60*time.Second, func() error {
				rt, err := set.Routes.Get(block)
				if err != nil || rt.NextHop != o.Addr.Addr() {
					return fmt.Errorf("routes map: %+v, %v", rt, err)
				}
				return nil
			})
		}
		// Only the reflector is a peer: the mesh is off.
		code, body, err := h.Get("/bgp/peers")
		if err != nil || code != 200 || strings.Count(body, `"address"`) != 1 || !strings.Contains(body, `"198.18.0.1"`) {
			t.Errorf("%s peers: %d %v %s", h.Name, code, err, body)
		}
	}
}

// A password-protected session (TCP MD5, RFC 2385) with BIRD: the matching secret brings it up, a
// wrong one keeps it down while both sides keep trying, and correcting the secret in
// bgp/peers/<name> brings it back, with the routes. margayctl never prints the secret, nor does
// the agent log it.
func TestBIRDPassword(t *testing.T) {
	c := cluster.New(t)
	const secret, wrong = "bird-md5-s3cret", "not-the-s3cret"
	peer := bgpPeer("198.18.0.1")
	peer.Password = secret
	if _, err := c.DS.BGPPeers().Create(t.Context(), peer.Name, peer); err != nil {
		t.Fatal(err)
	}
	// The agent logs at its most verbose level (DEBUG-4 takes GoBGP's own Debug messages), and
	// neither secret may ever show in its output.
	c.Secret(secret)
	c.Secret(wrong)
	h := c.AddHost("vm100", "198.18.0.100/24", "--bgp", "--bgp-connect-retry", "1s", "--log-level", "DEBUG-4")
	conf := strings.Replace(gatewayConf([]*cluster.Host{h}, false), "direct;", `direct; password "`+secret+`";`, 1)
	gw := startGateway(t, c, conf)
	block := blockOf(t, c, h.Name)

	learned := func(want bool) func() error {
		return func() error {
			up, err := gw.Established(h.Name)
			if err != nil {
				return err
			}
			routes, err := gw.Routes()
			if err != nil {
				return err
			}
			_, has := routes[block]
			if up != want || has != want {
				return fmt.Errorf("session up %v, BIRD has %v: %v; want %v", up, block, has, want)
			}
			return nil
		}
	}
	poll.Until(t, "session up with the matching secret, block learned", 60*time.Second, learned(true))
	// Either side may have dialled: the agent's listener must hold the key too, or BIRD's own
	// attempts would never be answered (as with Go's default Multipath TCP listener).
	if out, err := h.NS.Run("ss", "-tlnie", "sport", "= :179"); err != nil || !strings.Contains(out, "md5keys:198.18.0.1/32") {
		t.Errorf("the agent's BGP listener holds no key for BIRD: %v\n%s", err, out)
	}

	setPassword := func(pw string) {
		t.Helper()
		it, err := c.DS.BGPPeers().Get(t.Context(), peer.Name)
		if err != nil {
			t.Fatal(err)
		}
		it.Value.Password = pw
		if _, err := c.DS.BGPPeers().Update(t.Context(), peer.Name, it.Value, it.ModRevision); err != nil {
			t.Fatal(err)
		}
	}
	setPassword(wrong)
	poll.Until(t, "session down with a wrong secret", 30*time.Second, learned(false))
	// It stays down while the agent keeps dialling: BIRD's kernel drops each SYN for its key.
	failures := func() uint64 {
		n, err := gw.NS().NetStat("netstat", "TcpExt", "TCPMD5Failure")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := failures()
	poll.Until(t, "the agent's signed SYNs rejected", 30*time.Second, func() error {
		if n := failures(); n < before+2 {
			return fmt.Errorf("TCPMD5Failure %d, want ≥ %d", n, before+2)
		}
		return learned(false)()
	})

	setPassword(secret)
	poll.Until(t, "session back with the corrected secret", 60*time.Second, learned(true))

	// The operator's views never show the secret.
	ctl := filepath.Join(cluster.Binaries(t), "margayctl")
	for _, args := range [][]string{{"bgp", "peer", "list"}, {"bgp", "peer", "list", "-o", "json"}} {
		out, err := h.NS.Run(ctl, append([]string{"--etcd-endpoints", c.Endpoint(h)}, args...)...)
		if err != nil {
			t.Fatalf("margayctl %v: %v\n%s", args, err, out)
		}
		if strings.Contains(out, secret) || !strings.Contains(out, "198.18.0.1") {
			t.Errorf("margayctl %v shows the secret or not the peer:\n%s", args, out)
		}
	}
}
