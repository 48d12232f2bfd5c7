package cluster_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/tests/bird"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// grBGP are short BGP timers for the restart tests; the restart time is the agent's default, the
// hold time. It must cover a restart: a GoBGP peer whose session dropped waits 5 s in Idle before
// it takes a connection again, so a mesh session is back 6-9 s after the stop.
var grBGP = []string{"--bgp", "--bgp-hold-time", "15s", "--bgp-keepalive", "5s", "--bgp-connect-retry", "1s"}

const grHold = 15 * time.Second

// outsideGateway starts BIRD at 198.18.0.1 as the hosts' gateway, with graceful restart on and
// the routes it learns in its kernel, and an outside client at 198.18.1.2 behind it that reaches
// the workloads and the hosts (NodePorts) through it.
func outsideGateway(t *testing.T, c *cluster.Cluster, hosts []*cluster.Host) (*bird.Router, *netns.NS) {
	t.Helper()
	conf := gatewayConf(hosts, false, "graceful restart on;") +
		"protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }\n"
	gw := startGateway(t, c, conf)
	client := netns.New(t, "mgyout-")
	netns.Veth(t, gw.NS(), "out0", client, "eth0")
	gw.NS().AddAddr(t, "out0", "198.18.1.1/24")
	gw.NS().MustSysctl(t, "ipv4/ip_forward", "1")
	client.AddAddr(t, "eth0", "198.18.1.2/24")
	client.RouteVia(t, "0.0.0.0/0", "198.18.1.1", "eth0")
	return gw, client
}

// twoWorkloads adds a workload on a and one on b, both programmed.
func twoWorkloads(t *testing.T, c *cluster.Cluster, a, b *cluster.Host) (wa, wb *cluster.Workload) {
	t.Helper()
	wait := c.StartWorkload(a, "w"+strings.TrimPrefix(a.Name, "vm"))
	wb = c.AddWorkload(b, "w"+strings.TrimPrefix(b.Name, "vm"))
	wa = wait()
	wa.WaitProgrammed(t)
	wb.WaitProgrammed(t)
	return wa, wb
}

// reflectorOnly turns the node-to-node mesh off and registers node (at addr, before its agent
// starts) as a route reflector: every other node peers with it alone.
func reflectorOnly(t *testing.T, c *cluster.Cluster, node, addr string) {
	t.Helper()
	off := false
	if _, err := c.DS.BGPConfig().Create(t.Context(), datastore.BGPConfig{Version: 1, NodeToNodeMesh: &off}); err != nil {
		t.Fatal(err)
	}
	p := netip.MustParsePrefix(addr)
	if _, err := c.DS.Nodes().Create(t.Context(), node, datastore.Node{Version: 1, Name: node, AddressV4: p,
		RouteReflectorClusterID: p.Addr().String()}); err != nil {
		t.Fatal(err)
	}
}

// restartKind is one way an agent goes and comes back.
type restartKind struct {
	name    string
	restart func(h *cluster.Host)
}

func restartKinds(t *testing.T) []restartKind {
	upgraded := cluster.BuildAgent(t, "v9.9.9-upgrade")
	if out, err := exec.Command(upgraded, "--version").CombinedOutput(); err != nil || !strings.Contains(string(out), "v9.9.9-upgrade") {
		t.Fatalf("upgraded agent --version: %q, %v", out, err)
	}
	return []restartKind{
		{"SIGTERM", func(h *cluster.Host) { h.Stop(); h.Start() }},
		{"SIGKILL", func(h *cluster.Host) { h.Kill(); h.Start() }},
		{"upgrade", func(h *cluster.Host) { h.Stop(); h.StartBinary(upgraded) }},
	}
}

// peersEstablished checks that every BGP session of h is Established, n of them.
func peersEstablished(h *cluster.Host, n int) error {
	code, body, err := h.Get("/bgp/peers")
	if err != nil || code != 200 {
		return fmt.Errorf("%s /bgp/peers: %d %v %s", h.Name, code, err, body)
	}
	var peers []hostconv.PeerStatus
	if err := json.Unmarshal([]byte(body), &peers); err != nil {
		return err
	}
	up := 0
	for _, p := range peers {
		if p.State == "Established" {
			up++
		}
	}
	if up != n || len(peers) != n {
		return fmt.Errorf("%s peers: %s", h.Name, body)
	}
	return nil
}

// pingsFlow starts a ping every 10 ms from each source to dst and returns once each got replies.
func pingsFlow(t *testing.T, dst netip.Addr, from map[string]*netns.NS) map[string]*netns.Ping {
	t.Helper()
	pings := map[string]*netns.Ping{}
	for name, ns := range from {
		p := netns.StartPing(t, ns, dst, 10*time.Millisecond)
		poll.Until(t, name+" pings answered", 20*time.Second, func() error {
			if n := p.Received(); n < 10 {
				return fmt.Errorf("%d replies", n)
			}
			return nil
		})
		pings[name] = p
	}
	return pings
}

// stopPings waits for a further 50 replies on each (traffic after the restart), stops them and
// fails on any lost request.
func stopPings(t *testing.T, what string, pings map[string]*netns.Ping) {
	t.Helper()
	for name, p := range pings {
		n := p.Received()
		poll.Until(t, name+" pings after "+what, 10*time.Second, func() error {
			if got := p.Received(); got < n+50 {
				return fmt.Errorf("%d replies, want %d", got, n+50)
			}
			return nil
		})
		r := p.Stop()
		t.Logf("%s: %s → %s", what, name, r)
		if len(r.Lost) != 0 {
			t.Errorf("%s: %s lost %d pings (sequence numbers %v)", what, name, len(r.Lost), r.Lost)
		}
	}
}

// restartNoLoss restarts h's agent the way k says while every source pings dst every 10 ms,
// waits until back() holds, and fails on any lost ping.
func restartNoLoss(t *testing.T, h *cluster.Host, k restartKind, dst netip.Addr, from map[string]*netns.NS, back func() error) {
	t.Helper()
	pings := pingsFlow(t, dst, from)
	start := time.Now()
	k.restart(h)
	poll.Until(t, k.name+": sessions back", 30*time.Second, back)
	t.Logf("%s of %s: sessions Established again %s after the stop", k.name, h.Name, time.Since(start).Round(10*time.Millisecond))
	stopPings(t, k.name, pings)
}

// birdNeighborGR returns what BIRD says of the graceful restart capability the node sent.
func birdNeighborGR(gw *bird.Router, proto string) (string, error) {
	out, err := gw.Birdc("show", "protocols", "all", proto)
	if err != nil {
		return "", err
	}
	_, after, ok := strings.Cut(out, "Neighbor capabilities")
	if !ok {
		return "", fmt.Errorf("no neighbor capabilities in:\n%s", out)
	}
	before, _, _ := strings.Cut(after, "Session:")
	return before, nil
}

// A planned restart (SIGTERM), a crash (SIGKILL) and an upgrade to a new binary of a host's agent
// lose no packet: neither from an outside client behind a real BIRD gateway nor from a workload on
// a mesh peer, both pinging a workload on the restarting host every 10 ms. The gateway and the
// peer keep the host's block as stale while the agent is away (no Cease on the stop), the agent
// comes back with the restart and forwarding-state bits (BIRD shows them) and sends its block and
// End-of-RIB again. Then the host is shut down for good and deleted (margayctl node delete): its
// block leaves the peer's map and kernel, and BIRD, within the hold time.
func TestGracefulRestartNoLoss(t *testing.T) {
	c := cluster.New(t)
	outside := netip.MustParsePrefix("198.18.1.0/24")
	if _, err := c.DS.BGPPeers().Create(t.Context(), "gw", datastore.BGPPeer{Version: 1, Name: "gw",
		PeerIP: netip.MustParseAddr("198.18.0.1"), ASN: 64512, Accept: []netip.Prefix{outside}}); err != nil {
		t.Fatal(err)
	}
	h := c.AddHost("vm100", "198.18.0.100/24", grBGP...)
	peer := c.AddHost("vm101", "198.18.0.101/24", grBGP...)
	gw, client := outsideGateway(t, c, []*cluster.Host{h, peer})
	kinds := restartKinds(t)
	w1, w2 := twoWorkloads(t, c, h, peer)
	block := blockOf(t, c, h.Name)
	peerSet := peer.Maps(t)
	poll.Until(t, "BIRD and vm101 learned vm100's block", 60*time.Second, func() error {
		routes, err := gw.Routes()
		if err != nil {
			return err
		}
		if r := routes[block]; r.NextHop != h.Addr.Addr() {
			return fmt.Errorf("BIRD's route to %v: %+v", block, r)
		}
		return routed(peerSet, block, h.Addr.Addr())
	})
	gr, err := birdNeighborGR(gw, h.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("BIRD's view of vm100's first start:%s", gr)
	if strings.Contains(gr, "Restart recovery") || strings.Contains(gr, "AF preserved: ipv4") {
		t.Errorf("first start: BIRD sees restart or forwarding-state bits, want neither")
	}

	for _, k := range kinds {
		restartNoLoss(t, h, k, w1.IP, map[string]*netns.NS{"outside client": client, "vm101's workload": w2.NS}, func() error {
			if ok, err := gw.Established(h.Name); err != nil || !ok {
				return fmt.Errorf("BIRD's session with vm100: %v %v", ok, err)
			}
			if err := peersEstablished(h, 2); err != nil {
				return err
			}
			return peersEstablished(peer, 2)
		})
		gr, err := birdNeighborGR(gw, h.Name)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: BIRD's view of vm100:%s", k.name, gr)
		for _, want := range []string{"Restart recovery", "AF preserved: ipv4"} {
			if !strings.Contains(gr, want) {
				t.Errorf("%s: BIRD's view of vm100's graceful restart capability lacks %q", k.name, want)
			}
		}
	}

	// Shut down for good: stopped, then deleted.
	h.Stop()
	stopped := time.Now()
	if out, err := peer.NS.Run(filepath.Join(cluster.Binaries(t), "margayctl"), "node", "delete", h.Name,
		"--etcd-endpoints", c.Endpoint(peer)); err != nil {
		t.Fatalf("node delete: %v\n%s", err, out)
	}
	deleted := time.Now()
	poll.Until(t, "vm100's block withdrawn at vm101", grHold+2*time.Second, func() error {
		if _, err := peerSet.Routes.Get(block); err == nil {
			return fmt.Errorf("%v still in vm101's routes map", block)
		}
		if out, err := peer.NS.Run("ip", "-4", "route", "show", block.String()); err != nil || out != "" {
			return fmt.Errorf("vm101's kernel route %q, %v", out, err)
		}
		return nil
	})
	atPeer := time.Since(deleted)
	poll.Until(t, "vm100's block withdrawn at BIRD", grHold+2*time.Second-atPeer, func() error {
		routes, err := gw.Routes()
		if err != nil {
			return err
		}
		if r, ok := routes[block]; ok {
			return fmt.Errorf("BIRD still routes %v: %+v", block, r)
		}
		return nil
	})
	t.Logf("node delete: vm100's block withdrawn at vm101 (map and kernel) %s and at BIRD %s after the delete "+
		"(%s after the stop; hold time %s)", atPeer.Round(10*time.Millisecond), time.Since(deleted).Round(10*time.Millisecond),
		time.Since(stopped).Round(10*time.Millisecond), grHold)
}

// The same restarts of a route reflector's client lose no packet between two clients: the
// reflector (an agent with a cluster ID, the mesh off) keeps the restarting client's block as
// stale and goes on reflecting it to the other client. Nor do restarts of the reflector itself:
// its clients come back to it 1-2 s apart, and the first must not lose the other's block when it
// gets the reflector's End-of-RIB.
func TestGracefulRestartReflector(t *testing.T) {
	c := cluster.New(t)
	reflectorOnly(t, c, "vm100", "198.18.0.100/24")
	rr := c.AddHost("vm100", "198.18.0.100/24", grBGP...)
	h := c.AddHost("vm101", "198.18.0.101/24", grBGP...)
	other := c.AddHost("vm102", "198.18.0.102/24", grBGP...)
	kinds := restartKinds(t)
	w1, w2 := twoWorkloads(t, c, h, other)
	block := blockOf(t, c, h.Name)
	otherSet := other.Maps(t)
	poll.Until(t, "vm102 learned vm101's block through the reflector", 60*time.Second, func() error {
		return routed(otherSet, block, h.Addr.Addr())
	})
	for _, k := range kinds {
		restartNoLoss(t, h, k, w1.IP, map[string]*netns.NS{"vm102's workload": w2.NS}, func() error {
			if err := peersEstablished(h, 1); err != nil {
				return err
			}
			return peersEstablished(rr, 2)
		})
		if err := routed(otherSet, block, h.Addr.Addr()); err != nil {
			t.Errorf("%s: vm102 after the restart: %v", k.name, err)
		}
	}
	for _, k := range kinds {
		restartNoLoss(t, rr, k, w1.IP, map[string]*netns.NS{"vm102's workload": w2.NS}, func() error {
			if err := peersEstablished(rr, 2); err != nil {
				return err
			}
			if err := peersEstablished(h, 1); err != nil {
				return err
			}
			return peersEstablished(other, 1)
		})
		if err := routed(otherSet, block, h.Addr.Addr()); err != nil {
			t.Errorf("%s of the reflector: vm102 after the restart: %v", k.name, err)
		}
	}
}

// The same restarts of a client of BIRD as route reflector (graceful restart on, the mesh off)
// lose no packet from the other client: BIRD keeps the restarting client's block as stale and
// goes on reflecting it, and sees the restart and forwarding bits when the client is back.
func TestGracefulRestartBIRDReflector(t *testing.T) {
	c := cluster.New(t)
	off := false
	if _, err := c.DS.BGPConfig().Create(t.Context(), datastore.BGPConfig{Version: 1, NodeToNodeMesh: &off}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DS.BGPPeers().Create(t.Context(), "gw", bgpPeer("198.18.0.1")); err != nil {
		t.Fatal(err)
	}
	h := c.AddHost("vm101", "198.18.0.101/24", grBGP...)
	other := c.AddHost("vm102", "198.18.0.102/24", grBGP...)
	gw := startGateway(t, c, gatewayConf([]*cluster.Host{h, other}, true, "graceful restart on;"))
	kinds := restartKinds(t)
	w1, w2 := twoWorkloads(t, c, h, other)
	block := blockOf(t, c, h.Name)
	otherSet := other.Maps(t)
	poll.Until(t, "vm102 learned vm101's block through BIRD", 60*time.Second, func() error {
		return routed(otherSet, block, h.Addr.Addr())
	})
	for _, k := range kinds {
		restartNoLoss(t, h, k, w1.IP, map[string]*netns.NS{"vm102's workload": w2.NS}, func() error {
			if err := peersEstablished(h, 1); err != nil {
				return err
			}
			if ok, err := gw.Established(h.Name); err != nil || !ok {
				return fmt.Errorf("BIRD's session with vm101: %v %v", ok, err)
			}
			return nil
		})
		gr, err := birdNeighborGR(gw, h.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"Restart recovery", "AF preserved: ipv4"} {
			if !strings.Contains(gr, want) {
				t.Errorf("%s: BIRD's view of vm101's graceful restart capability lacks %q:%s", k.name, want, gr)
			}
		}
	}
}
