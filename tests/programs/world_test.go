package programs_test

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

// The host under test, one node of a Calico-style cluster. Hosts live in 198.18.0.0/24,
// workloads in /26 blocks of 198.19.0.0/16.
const (
	hostVethMAC = "ee:ee:ee:ee:ee:ee" // every host-side cali* veth, as in Calico
	wepAMAC     = "0a:58:c6:13:00:01"
	wepBMAC     = "0a:58:c6:13:00:02"
	wepCMAC     = "0a:58:c6:13:00:03"
	uplinkMAC   = "02:00:c6:12:00:01"
	peerMAC     = "02:00:c6:12:00:fe" // the router in front of the uplink
	strangerMAC = "02:00:c6:12:00:99" // another station on the uplink's segment
	uplinkMTU   = 1500

	// Interfaces of the test namespace: the host sides of three workload veths and the uplink.
	caliA  = "cali0a" // workload A, 198.19.0.1
	caliB  = "cali0b" // workload B, 198.19.0.2
	caliC  = "cali0c" // a workload veth whose endpoint entry is missing
	uplink = "uplink"
)

var (
	thisHost  = netip.MustParseAddr("198.18.0.1")
	otherHost = netip.MustParseAddr("198.18.0.2") // owns remoteBlock
	thirdHost = netip.MustParseAddr("198.18.0.3") // holds the borrowed /32s

	localBlock   = netip.MustParsePrefix("198.19.0.0/26")
	wepA         = netip.MustParseAddr("198.19.0.1")
	wepB         = netip.MustParseAddr("198.19.0.2")
	wepC         = netip.MustParseAddr("198.19.0.3") // routed only where a case adds the route
	unusedLocal  = netip.MustParseAddr("198.19.0.9")
	borrowedHere = netip.MustParseAddr("198.19.0.50") // a workload of thirdHost inside our block

	remoteBlock = netip.MustParsePrefix("198.19.0.64/26")
	remoteDst   = netip.MustParseAddr("198.19.0.66")
	remoteWep   = netip.MustParseAddr("198.19.0.70") // borrowed by thirdHost from otherHost's block

	// A block of a host on the uplink's own segment: no next hop, the destination is resolved.
	directBlock = netip.MustParsePrefix("198.19.0.128/26")
	directDst   = netip.MustParseAddr("198.19.0.130")

	noRoute = netip.MustParseAddr("198.19.1.1")
)

// world is the host under test: a network namespace with the interfaces above, the loaded
// dataplane and its maps holding the host's routes and endpoints.
type world struct {
	ns      *netns.NS
	dp      *loader.Dataplane
	maps    *maps.Set
	ifindex map[string]uint32
}

func newWorld(tb testing.TB) *world {
	tb.Helper()
	w := &world{ns: netns.New(tb, "mgyprog-"), ifindex: map[string]uint32{}}
	// Test runs need real devices: skb->dev (ifindex, pkt_type, bpf_check_mtu) and the XDP rx
	// queue come from them. veth rather than dummy, which kernels without CONFIG_DUMMY (such as
	// this one) lack; the peers exist only because a veth comes in pairs.
	for _, l := range []struct{ name, mac, peer, peerMAC string }{
		{caliA, hostVethMAC, "wep0a", wepAMAC},
		{caliB, hostVethMAC, "wep0b", wepBMAC},
		{caliC, hostVethMAC, "wep0c", wepCMAC},
		{uplink, uplinkMAC, "peer0", peerMAC},
	} {
		netns.Veth(tb, w.ns, l.name, w.ns, l.peer)
		w.ns.SetMAC(tb, l.name, l.mac)
		w.ns.SetMAC(tb, l.peer, l.peerMAC)
		w.ifindex[l.name] = uint32(w.ns.Link(tb, l.name).Attrs().Index)
	}
	// bpf_check_mtu reads the uplink's MTU; set it rather than rely on the veth default.
	if err := w.ns.Netlink().LinkSetMTU(w.ns.Link(tb, uplink), uplinkMTU); err != nil {
		tb.Fatalf("set MTU of %s: %v", uplink, err)
	}

	var err error
	w.dp, err = loader.Load(loader.WithRoot(netns.BPFFS(tb)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { w.dp.Close() })
	w.maps = maps.FromDataplane(w.dp)

	up := w.ifindex[uplink]
	for _, r := range []maps.Route{
		{Prefix: netip.PrefixFrom(thisHost, 32), Flags: maps.Host},
		{Prefix: netip.PrefixFrom(otherHost, 32), Flags: maps.Host},
		{Prefix: netip.PrefixFrom(thirdHost, 32), Flags: maps.Host},
		{Prefix: localBlock, Flags: maps.LocalBlock | maps.InPool},
		{Prefix: netip.PrefixFrom(wepA, 32), Flags: maps.LocalWorkload | maps.InPool, Ifindex: w.ifindex[caliA]},
		{Prefix: netip.PrefixFrom(wepB, 32), Flags: maps.LocalWorkload | maps.InPool, Ifindex: w.ifindex[caliB]},
		{Prefix: netip.PrefixFrom(borrowedHere, 32), Flags: maps.RemoteWorkload | maps.InPool, Ifindex: up, NextHop: thirdHost},
		{Prefix: remoteBlock, Flags: maps.RemoteBlock | maps.InPool, Ifindex: up, NextHop: otherHost},
		{Prefix: netip.PrefixFrom(remoteWep, 32), Flags: maps.RemoteWorkload | maps.InPool, Ifindex: up, NextHop: thirdHost},
		{Prefix: directBlock, Flags: maps.RemoteBlock | maps.InPool, Ifindex: up},
	} {
		if err := w.maps.Routes.Put(r); err != nil {
			tb.Fatal(err)
		}
	}
	for _, ep := range []maps.Endpoint{
		{Ifindex: w.ifindex[caliA], IPv4: wepA, MAC: mustMAC(wepAMAC)},
		{Ifindex: w.ifindex[caliB], IPv4: wepB, MAC: mustMAC(wepBMAC)},
	} {
		if err := w.maps.Endpoints.Put(ep); err != nil {
			tb.Fatal(err)
		}
	}
	return w
}

// putRoute adds a route for the rest of the test.
func (w *world) putRoute(tb testing.TB, r maps.Route) {
	tb.Helper()
	if err := w.maps.Routes.Put(r); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := w.maps.Routes.Delete(r.Prefix); err != nil {
			tb.Error(err)
		}
	})
}

// program is one of the dataplane's four programs.
type program int

const (
	fromWep program = iota
	toWep
	fromNet
	xdpFromNet
)

var programs = []program{fromWep, toWep, fromNet, xdpFromNet}

func (p program) String() string { return p.hook().String() }

func (p program) hook() maps.Hook {
	return [...]maps.Hook{maps.HookFromWep, maps.HookToWep, maps.HookFromNet, maps.HookXDPFromNet}[p]
}

// iface is where the program is attached on a real host, so where test runs deliver frames
// unless a case says otherwise.
func (p program) iface() string {
	return [...]string{caliA, caliB, uplink, uplink}[p]
}

func (w *world) prog(p program) *ebpf.Program {
	ps := w.dp.Programs()
	return [...]*ebpf.Program{ps.FromWep, ps.ToWep, ps.FromNet, ps.XdpFromNet}[p]
}

// Verdicts, from linux/pkt_cls.h and linux/bpf.h.
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
	xdpDrop       = 1
	xdpPass       = 2
)

func verdictName(p program, v uint32) string {
	names := map[uint32]string{tcActOK: "TC_ACT_OK", tcActShot: "TC_ACT_SHOT", tcActRedirect: "TC_ACT_REDIRECT"}
	if p == xdpFromNet {
		names = map[uint32]string{xdpDrop: "XDP_DROP", xdpPass: "XDP_PASS"}
	}
	if n, ok := names[v]; ok {
		return n
	}
	return fmt.Sprintf("undefined verdict %d", v)
}

// skbContext is struct __sk_buff (linux/bpf.h) up to ifindex. The kernel takes a prefix of the
// struct, zeroes the rest, and refuses non-zero fields it does not let a test run set (len,
// pkt_type, ...). With ifindex > 1, net/bpf/test_run.c takes skb->dev from that device in the
// caller's network namespace and runs eth_type_trans against it, which sets pkt_type from the
// destination MAC; without it the skb comes from lo.
type skbContext struct {
	_              [9]uint32 // len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto, priority
	IngressIfindex uint32
	Ifindex        uint32
}

// xdpContext is struct xdp_md (linux/bpf.h). data_end must be the frame's length; with
// ingress_ifindex set the buffer comes from rx queue 0 of that device in the caller's namespace.
type xdpContext struct {
	Data           uint32
	DataEnd        uint32
	DataMeta       uint32
	IngressIfindex uint32
	RxQueueIndex   uint32
	EgressIfindex  uint32
}

// outSlack is room beyond the input for the output frame: no program grows a frame, but a
// short buffer would turn a bug that did into ENOSPC instead of a readable difference.
const outSlack = 256

// run feeds frame to p as if it had arrived on iface and returns the verdict and the frame as
// the program left it. Test runs resolve ifindex in the caller's network namespace, hence Do.
func (w *world) run(p program, iface string, frame []byte) (uint32, []byte, error) {
	ifindex, ok := w.ifindex[iface]
	if !ok {
		return 0, nil, fmt.Errorf("run %v: no interface %q", p, iface)
	}
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+outSlack)}
	if p == xdpFromNet {
		opts.Context = xdpContext{DataEnd: uint32(len(frame)), IngressIfindex: ifindex}
	} else {
		opts.Context = skbContext{IngressIfindex: ifindex, Ifindex: ifindex}
	}
	var verdict uint32
	err := w.ns.Do(func() error {
		var err error
		verdict, err = w.prog(p).Run(opts)
		return err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("run %v on %s: %w", p, iface, err)
	}
	return verdict, opts.DataOut, nil
}

type counterKey struct {
	ifindex uint32
	hook    maps.Hook
	reason  maps.Reason
}

func (k counterKey) String() string {
	return fmt.Sprintf("{ifindex %d, %v, %v}", k.ifindex, k.hook, k.reason)
}

type counterValue struct{ packets, bytes uint64 }

// counters reads every counter, summed over CPUs.
func (w *world) counters(tb testing.TB) map[counterKey]counterValue {
	tb.Helper()
	all, err := w.maps.Counters.List()
	if err != nil {
		tb.Fatal(err)
	}
	out := make(map[counterKey]counterValue, len(all))
	for _, c := range all {
		out[counterKey{c.Ifindex, c.Hook, c.Reason}] = counterValue{c.Packets, c.Bytes}
	}
	return out
}

// growth is what each counter gained from before to after; counters that did not change are
// left out. Counters never shrink or vanish while a test runs, so any other change is a bug.
func growth(before, after map[counterKey]counterValue) (map[counterKey]counterValue, error) {
	out := map[counterKey]counterValue{}
	var errs []error
	for k := range before {
		if _, ok := after[k]; !ok {
			errs = append(errs, fmt.Errorf("counter %v vanished", k))
		}
	}
	for k, a := range after {
		b := before[k]
		if a.packets < b.packets || a.bytes < b.bytes {
			errs = append(errs, fmt.Errorf("counter %v went back from %+v to %+v", k, b, a))
			continue
		}
		if a != b {
			out[k] = counterValue{a.packets - b.packets, a.bytes - b.bytes}
		}
	}
	return out, errors.Join(errs...)
}

// expectCounted requires that exactly one counter changed between before and now: key, by one
// packet of n bytes.
func (w *world) expectCounted(tb testing.TB, before map[counterKey]counterValue, key counterKey, n int) {
	tb.Helper()
	grown, err := growth(before, w.counters(tb))
	if err != nil {
		tb.Error(err)
	}
	want := counterValue{1, uint64(n)}
	if got := grown[key]; got != want {
		tb.Errorf("counter %v grew by %d packets, %d bytes; want 1 packet, %d bytes", key, got.packets, got.bytes, n)
	}
	for k, g := range grown {
		if k != key {
			tb.Errorf("counter %v grew by %d packets, %d bytes; want no change", k, g.packets, g.bytes)
		}
	}
}

// expectNothingCounted requires that no counter changed since before.
func (w *world) expectNothingCounted(tb testing.TB, before map[counterKey]counterValue) {
	tb.Helper()
	grown, err := growth(before, w.counters(tb))
	if err != nil {
		tb.Error(err)
	}
	for k, g := range grown {
		tb.Errorf("counter %v grew by %d packets, %d bytes; want no change", k, g.packets, g.bytes)
	}
}
