package workload_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/tests/netns"
)

func (e *env) addHost(spec workload.HostSpec) (workload.Result, error) {
	var res workload.Result
	err := e.host.Do(func() error {
		var err error
		res, err = workload.AddHost(context.Background(), e.ds, spec)
		return err
	})
	return res, err
}

// AddHost makes the pair in the host namespace, reuses it on a repeat and after the runtime moved
// the peer away, replaces a stale one, and refuses invalid specs without changing anything.
func TestAddHost(t *testing.T) {
	e := newEnv(t, "198.19.0.0/16", 26)
	ctx := t.Context()
	ip := netip.MustParsePrefix("198.19.0.7/32")
	spec := workload.HostSpec{ID: "ep1", Node: node, Network: "docker:net1", PeerName: "tmpep1", IP: ip, MTU: 1400,
		Profiles: []string{"net1"}, Labels: map[string]string{"app": "web"}}
	res, err := e.addHost(spec)
	if err != nil {
		t.Fatal(err)
	}
	hostName := workload.HostVethName("ep1")
	h, peer := e.host.Link(t, hostName), e.host.Link(t, "tmpep1")
	if h.Attrs().HardwareAddr.String() != hostconv.VethMAC.String() || h.Attrs().MTU != 1400 || peer.Attrs().MTU != 1400 ||
		peer.Attrs().ParentIndex != h.Attrs().Index || h.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("pair: host %+v peer %+v", h.Attrs(), peer.Attrs())
	}
	if got := hostSysctl(t, e.host, "ipv4/conf/"+hostName+"/proxy_arp"); got != "1" {
		t.Errorf("proxy_arp %q", got)
	}
	routes, err := e.host.Netlink().RouteList(h, netlink.FAMILY_V4)
	if err != nil || len(routes) != 1 || routes[0].Dst.String() != ip.String() {
		t.Errorf("routes %v, %v", routes, err)
	}
	rec, err := e.ds.Workloads(node).Get(ctx, "ep1")
	if err != nil {
		t.Fatal(err)
	}
	if w := rec.Value; w.MAC != peer.Attrs().HardwareAddr.String() || !slices.Equal(w.Profiles, []string{"net1"}) || w.Netns != "" ||
		w.Network != "docker:net1" || w.Labels["app"] != "web" || res.HostVeth != hostName {
		t.Errorf("record %+v, result %+v", w, res)
	}
	// IPAM is the caller's: AddHost allocated nothing.
	if hs, _, err := e.ds.Handles().List(ctx); err != nil || len(hs) != 0 {
		t.Errorf("handles %v, %v", hs, err)
	}

	// A repeat reuses the pair and does not rewrite the record.
	if _, err := e.addHost(spec); err != nil {
		t.Fatal(err)
	}
	if again, _ := e.ds.Workloads(node).Get(ctx, "ep1"); again.ModRevision != rec.ModRevision {
		t.Errorf("record rewritten by a repeat")
	}
	if e.host.Link(t, hostName).Attrs().Index != h.Attrs().Index {
		t.Errorf("pair replaced by a repeat")
	}

	// The runtime moves the peer into the container: a repeat keeps the pair and the MAC.
	path, _ := netns.Detached(t, "wlc")
	c := netns.Open(t, filepath.Base(path))
	if err := e.host.Netlink().LinkSetNsFd(peer, int(c.Handle())); err != nil {
		t.Fatal(err)
	}
	if _, err := e.addHost(spec); err != nil {
		t.Fatal(err)
	}
	if e.host.Link(t, hostName).Attrs().Index != h.Attrs().Index {
		t.Errorf("pair replaced after the move")
	}
	if again, _ := e.ds.Workloads(node).Get(ctx, "ep1"); again.Value.MAC != rec.Value.MAC {
		t.Errorf("MAC changed after the move: %s", again.Value.MAC)
	}
	if err := e.host.Do(func() error { return workload.SetGatewayNeighbour(path, peer.Attrs().HardwareAddr) }); err != nil {
		t.Fatal(err)
	}
	neighs, err := c.Netlink().NeighList(peer.Attrs().Index, netlink.FAMILY_V4)
	if err != nil || len(neighs) != 1 || neighs[0].State != netlink.NUD_PERMANENT || neighs[0].IP.String() != "169.254.1.1" {
		t.Errorf("neighbours %+v, %v", neighs, err)
	}
	if err := e.host.Do(func() error { return workload.SetGatewayNeighbour(path, net.HardwareAddr{2, 0, 0, 0, 0, 9}) }); !errors.Is(err, workload.ErrNoInterface) {
		t.Errorf("unknown MAC: %v", err)
	}

	// Another address for the same ID: the moved pair is stale, a new one is made.
	spec2 := spec
	spec2.IP = netip.MustParsePrefix("198.19.0.8/32")
	if _, err := e.addHost(spec2); err != nil {
		t.Fatal(err)
	}
	if n := e.host.Link(t, hostName); n.Attrs().Index == h.Attrs().Index {
		t.Errorf("stale pair kept for a new address")
	}
	e.host.Link(t, "tmpep1")

	// Invalid specs change nothing.
	for _, bad := range []workload.HostSpec{
		{ID: "ep2", Node: node, PeerName: "tmpep2", IP: netip.MustParsePrefix("198.19.0.9/24")},
		{ID: "ep2", Node: node, PeerName: "", IP: ip},
		{ID: "ep2", Node: node, PeerName: "a-name-far-too-long", IP: ip},
		{ID: "ep2", Node: "", PeerName: "tmpep2", IP: ip},
		{ID: "ep2", Node: node, PeerName: "tmpep2", IP: ip, MTU: 20},
		{ID: "ep2", Node: node, PeerName: "tmpep2", IP: ip, Labels: map[string]string{"bad\x01key": "x"}},
		// Another network's workload of the same ID.
		{ID: "ep1", Node: node, Network: "docker:net2", PeerName: "tmpep1", IP: spec2.IP},
	} {
		if _, err := e.addHost(bad); !errors.Is(err, workload.ErrInvalidSpec) {
			t.Errorf("%+v: %v, want ErrInvalidSpec", bad, err)
		}
	}
	e.host.AssertLinkGone(t, workload.HostVethName("ep2"))
	if _, err := e.ds.Workloads(node).Get(ctx, "ep2"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("record of a refused spec: %v", err)
	}

	// Del removes it all, as for a CNI workload.
	if err := e.del(workload.Spec{ID: "ep1", Node: node}); err != nil {
		t.Fatal(err)
	}
	e.host.AssertLinkGone(t, hostName)
	e.host.AssertLinkGone(t, "tmpep1")
}
