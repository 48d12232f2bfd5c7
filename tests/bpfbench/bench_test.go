package bpfbench_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/bpfbench"
	"github.com/margaynet/margay/tests/netns"
)

// TC verdicts (linux/pkt_cls.h).
const (
	tcActOK       = 0
	tcActRedirect = 7
)

// initialTTL is the TTL of every test packet. A test run with repeat hands the program one skb
// over and over, and the forwarding paths decrement its TTL in place: from run 255 on they see
// TTL 1 and leave the packet to the kernel (PASS_TTL), a different and much cheaper path. So one
// call may run a packet at most initialTTL-1 times, and a round is many such calls.
const initialTTL = 255

const (
	repeatPerCall = 250 // runs per BPF_PROG_TEST_RUN call: below initialTTL-1
	callsPerRound = 400 // 100k runs of each program per round
	minRounds     = 7   // more as -benchtime allows
)

// Interface names in the benchmark's host namespace: two workloads' host-side veths and the
// uplink.
const (
	wepA   = "cali0000000000a"
	wepB   = "cali0000000000b"
	uplink = "ens32"
)

var (
	hostVethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee} // as Calico's cali*
	uplinkMAC   = net.HardwareAddr{0x02, 0x00, 0xc6, 0x12, 0x00, 0x01}
	peerMAC     = net.HardwareAddr{0x02, 0x00, 0xc6, 0x12, 0x00, 0x02} // another host on the uplink
	wepAMAC     = net.HardwareAddr{0x02, 0x00, 0xc6, 0x13, 0x00, 0x01}
	wepBMAC     = net.HardwareAddr{0x02, 0x00, 0xc6, 0x13, 0x00, 0x02}
)

func BenchmarkPrograms(b *testing.B) {
	for _, n := range []int{10, 1000, 100000} {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			f := newFixture(b, n)
			for _, c := range f.cases() {
				b.Run(c.name, func(b *testing.B) {
					f.check(b, c)
					set := f.withBaselines(c)
					var rounds [][]float64
					for b.Loop() {
						rounds = append(rounds, f.round(b, set, len(rounds), callsPerRound, repeatPerCall))
					}
					for len(rounds) < minRounds {
						rounds = append(rounds, f.round(b, set, len(rounds), callsPerRound, repeatPerCall))
					}
					med := medians(rounds)
					b.ReportMetric(0, "ns/op") // the time per round says nothing; ns/pkt does
					b.ReportMetric(med[0], "ns/pkt")
					b.ReportMetric(med[0]/med[indexOf(set, f.base.Empty)], "x_empty")
					b.ReportMetric(med[0]/med[indexOf(set, f.base.LpmLookup)], "x_lpm")
				})
			}
		})
	}
}

// TestPrograms runs the benchmark's code once, at a tiny size and repeat 1, so that every test
// run proves the measured paths are the intended ones.
func TestPrograms(t *testing.T) {
	f := newFixture(t, 10)
	for _, c := range f.cases() {
		t.Run(c.name, func(t *testing.T) {
			f.check(t, c)
			set := f.withBaselines(c)
			if r := f.round(t, set, 0, 1, 1); len(r) != len(set) {
				t.Fatalf("round measured %d programs, want %d", len(r), len(set))
			}
		})
	}
}

// benchCase is one program on one packet, as it arrives on one interface.
type benchCase struct {
	name    string
	prog    *ebpf.Program
	ifindex uint32
	packet  []byte
	verdict uint32
	// kind is the kind of route the packet's destination must hit.
	kind maps.RouteFlags
	// hook and reason are what the dataplane programs count the packet under; baselines count
	// nothing and leave reason 0.
	hook   maps.Hook
	reason maps.Reason
}

type fixture struct {
	ns        *netns.NS
	dp        *loader.Dataplane
	set       *maps.Set
	base      bpfbench.BenchPrograms
	ifindex   map[string]uint32
	wl        [2]netip.Addr // workloads A and B, behind wepA and wepB
	remoteDst netip.Addr    // in a remote /26 block that holds no /32 for it
}

// newFixture builds a namespace with the interfaces, loads the dataplane and the baselines into
// a private bpffs, and fills the routes trie with n routes.
func newFixture(tb testing.TB, n int) *fixture {
	tb.Helper()
	f := &fixture{ns: netns.New(tb, "mgbench"), ifindex: map[string]uint32{}}
	// The interfaces are what they are on a host: veths to workloads in their own namespaces, and
	// an uplink to another host. Only their ifindexes, MACs and MTUs matter to a test run.
	for _, l := range []struct {
		name, peerName string
		mac            net.HardwareAddr
	}{
		{wepA, "eth0", hostVethMAC},
		{wepB, "eth0", hostVethMAC},
		{uplink, uplink, uplinkMAC},
	} {
		netns.Veth(tb, f.ns, l.name, netns.New(tb, "mgbenchpeer"), l.peerName)
		f.ns.SetMAC(tb, l.name, l.mac.String())
		f.ifindex[l.name] = uint32(f.ns.Link(tb, l.name).Attrs().Index)
	}

	var err error
	f.dp, err = loader.Load(loader.WithRoot(netns.BPFFS(tb)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.dp.Close() })
	f.set = maps.FromDataplane(f.dp)
	// As the agent sets it with the XDP prefilter on the uplink, its default: from_net then
	// leaves the source checks to XDP.
	if _, err := f.set.Config.SetPrefilter(true); err != nil {
		tb.Fatal(err)
	}

	spec, err := bpfbench.LoadBench()
	if err != nil {
		tb.Fatal(err)
	}
	// Only the programs are loaded: lpm_lookup's one map is the dataplane's own routes trie.
	err = spec.LoadAndAssign(&f.base, &ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{bpfbench.BenchMapRoutes: f.dp.Maps().Routes},
	})
	if err != nil {
		tb.Fatalf("load baselines: %v", err)
	}
	tb.Cleanup(func() { f.base.Close() })

	var routes []maps.Route
	routes, f.wl, f.remoteDst = routeTable(tb, n, f.ifindex[wepA], f.ifindex[wepB], f.ifindex[uplink])
	for _, r := range routes {
		if err := f.set.Routes.Put(r); err != nil {
			tb.Fatal(err)
		}
	}
	for _, ep := range []maps.Endpoint{
		{Ifindex: f.ifindex[wepA], IPv4: f.wl[0], MAC: wepAMAC},
		{Ifindex: f.ifindex[wepB], IPv4: f.wl[1], MAC: wepBMAC},
	} {
		if err := f.set.Endpoints.Put(ep); err != nil {
			tb.Fatal(err)
		}
	}
	return f
}

// Addresses: hosts in 198.18.0.0/24, the /26 blocks from 198.19.0.0/16 (the lab's pool) on,
// continuing into the rest of 198.18.0.0/15 when a large table needs more blocks.
var (
	firstHost  = netip.MustParseAddr("198.18.0.2") // the other hosts: .2 to .254
	poolStart  = netip.MustParseAddr("198.19.0.0")
	spillStart = netip.MustParseAddr("198.18.1.0") // after the hosts' /24
)

const (
	blockSize   = 64
	poolBlocks  = 1024 // in 198.19.0.0/16
	spillBlocks = 1020 // in 198.18.1.0 - 198.18.255.255
)

// blockAddr is the first address of block k; block 0 is this host's own.
func blockAddr(k int) netip.Addr {
	base, i := poolStart, k
	if k >= poolBlocks {
		base, i = spillStart, k-poolBlocks
	}
	v := binary.BigEndian.Uint32(base.AsSlice()) + uint32(i*blockSize)
	return netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v)))
}

func offset(a netip.Addr, off int) netip.Addr {
	v := binary.BigEndian.Uint32(a.AsSlice()) + uint32(off)
	return netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v)))
}

// remoteHost is the host that owns remote block k.
func remoteHost(k int) netip.Addr { return offset(firstHost, k%253) }

// routeTable returns n routes of the kinds a Margay host holds: its own block (LOCAL_BLOCK) with
// workloads A and B (LOCAL_WEP); a quarter of the rest as other hosts' /26 blocks (REMOTE_BLOCK),
// as far as 198.18.0.0/15 has room; the others as /32 workloads borrowed on yet other hosts
// (REMOTE_WEP), spread evenly over the remote blocks at offsets 1-62. At 100000 routes that is
// 2043 blocks and 97954 /32s. Offset 63 of every remote block stays free: remoteDst is one, in
// the middle block, so it matches a /26 only.
func routeTable(tb testing.TB, n int, ifA, ifB, ifUplink uint32) (routes []maps.Route, local [2]netip.Addr, remoteDst netip.Addr) {
	tb.Helper()
	const perBlock = 62 // workload offsets 1-62
	blocks := min(max(1, (n-3)/4), poolBlocks+spillBlocks-1)
	workloads := n - 3 - blocks
	if workloads < 0 || workloads > blocks*perBlock {
		tb.Fatalf("route table: %d routes do not fit 198.18.0.0/15 as laid out", n)
	}
	own := blockAddr(0)
	local = [2]netip.Addr{offset(own, 1), offset(own, 2)}
	routes = []maps.Route{
		{Prefix: netip.PrefixFrom(own, 26), Flags: maps.LocalBlock | maps.InPool},
		{Prefix: netip.PrefixFrom(local[0], 32), Flags: maps.LocalWorkload | maps.InPool, Ifindex: ifA},
		{Prefix: netip.PrefixFrom(local[1], 32), Flags: maps.LocalWorkload | maps.InPool, Ifindex: ifB},
	}
	for k := 1; k <= blocks; k++ {
		routes = append(routes, maps.Route{Prefix: netip.PrefixFrom(blockAddr(k), 26),
			Flags: maps.RemoteBlock | maps.InPool, Ifindex: ifUplink, NextHop: remoteHost(k)})
	}
	for j := range workloads {
		k := 1 + j%blocks
		routes = append(routes, maps.Route{Prefix: netip.PrefixFrom(offset(blockAddr(k), 1+j/blocks), 32),
			Flags: maps.RemoteWorkload | maps.InPool, Ifindex: ifUplink, NextHop: remoteHost(k + 1)})
	}
	return routes, local, offset(blockAddr(1+blocks/2), blockSize-1)
}

// cases are the measured paths, then the two baselines on the first path's packet.
func (f *fixture) cases() []benchCase {
	progs := f.dp.Programs()
	a := f.ifindex[wepA]
	fwdLocal := maps.Reason(loader.MargayReasonREASON_FWD_LOCAL)
	fwdRemote := maps.Reason(loader.MargayReasonREASON_FWD_REMOTE)
	remote := benchCase{
		name: "from_wep-remote", prog: progs.FromWep, ifindex: a, verdict: tcActRedirect,
		packet: frame(hostVethMAC, wepAMAC, f.wl[0], f.remoteDst),
		kind:   maps.RemoteBlock, hook: maps.HookFromWep, reason: fwdRemote,
	}
	cs := []benchCase{
		remote,
		{
			name: "from_wep-local", prog: progs.FromWep, ifindex: a, verdict: tcActRedirect,
			packet: frame(hostVethMAC, wepAMAC, f.wl[0], f.wl[1]),
			kind:   maps.LocalWorkload, hook: maps.HookFromWep, reason: fwdLocal,
		},
		{
			name: "from_net-local", prog: progs.FromNet, ifindex: f.ifindex[uplink], verdict: tcActRedirect,
			packet: frame(uplinkMAC, peerMAC, offset(f.remoteDst, -1), f.wl[1]), // from a remote workload
			kind:   maps.LocalWorkload, hook: maps.HookFromNet, reason: fwdLocal,
		},
	}
	return append(cs, f.empty(remote), f.lpm(remote))
}

// empty and lpm are the baselines for c: the same packet on the same interface.
func (f *fixture) empty(c benchCase) benchCase {
	return benchCase{name: "empty", prog: f.base.Empty, ifindex: c.ifindex, packet: c.packet, verdict: tcActOK, kind: c.kind}
}

func (f *fixture) lpm(c benchCase) benchCase {
	return benchCase{name: "lpm_lookup", prog: f.base.LpmLookup, ifindex: c.ifindex, packet: c.packet, verdict: tcActOK, kind: c.kind}
}

// withBaselines is c followed by those of its baselines that c is not itself.
func (f *fixture) withBaselines(c benchCase) []benchCase {
	set := []benchCase{c}
	for _, bl := range []benchCase{f.empty(c), f.lpm(c)} {
		if bl.prog != c.prog {
			set = append(set, bl)
		}
	}
	return set
}

func indexOf(set []benchCase, prog *ebpf.Program) int {
	return slices.IndexFunc(set, func(c benchCase) bool { return c.prog == prog })
}

// check proves, before anything is timed, that c takes the intended path: its destination hits
// a route of the intended kind, one run returns the intended verdict, and a dataplane program
// counts it under the intended reason.
func (f *fixture) check(tb testing.TB, c benchCase) {
	tb.Helper()
	dst := netip.AddrFrom4([4]byte(c.packet[ethLen+16 : ethLen+20]))
	key := loader.MargayRouteKey{Prefixlen: 32, Addr: binary.NativeEndian.Uint32(dst.AsSlice())}
	var rt loader.MargayRouteValue
	if err := f.dp.Maps().Routes.Lookup(&key, &rt); err != nil {
		tb.Fatalf("%s: route for %v: %v", c.name, dst, err)
	}
	if kind := maps.RouteFlags(rt.Flags) &^ maps.InPool; kind != c.kind {
		tb.Fatalf("%s: %v matches a %v route, want %v", c.name, dst, kind, c.kind)
	}

	before := f.counter(tb, c)
	var verdict uint32
	err := f.ns.Do(func() error {
		var err error
		verdict, _, err = bpfbench.Run(c.prog, c.packet, bpfbench.SKBContext(c.ifindex), 1)
		return err
	})
	if err != nil {
		tb.Fatalf("%s: %v", c.name, err)
	}
	if verdict != c.verdict {
		tb.Fatalf("%s: verdict %d, want %d", c.name, verdict, c.verdict)
	}
	if after := f.counter(tb, c); c.reason != 0 && after-before != 1 {
		tb.Fatalf("%s: %v counted %d packets, want 1", c.name, c.reason, after-before)
	}
}

func (f *fixture) counter(tb testing.TB, c benchCase) uint64 {
	tb.Helper()
	if c.reason == 0 {
		return 0
	}
	ct, err := f.set.Counters.Get(c.ifindex, c.hook, c.reason)
	if err != nil {
		tb.Fatal(err)
	}
	return ct.Packets
}

// round measures each program of set for calls×repeat runs, one after the other, starting with
// program number first%len(set) so that no program always runs first. It returns ns per run in
// the order of set. Every call's verdict is checked: a run that left the path fails the round.
func (f *fixture) round(tb testing.TB, set []benchCase, first, calls int, repeat uint32) []float64 {
	tb.Helper()
	out := make([]float64, len(set))
	err := f.ns.Do(func() error {
		for i := range set {
			c := set[(first+i)%len(set)]
			ctx := bpfbench.SKBContext(c.ifindex)
			var sum uint64
			for range calls {
				verdict, ns, err := bpfbench.Run(c.prog, c.packet, ctx, repeat)
				if err != nil {
					return fmt.Errorf("%s: %w", c.name, err)
				}
				if verdict != c.verdict {
					return fmt.Errorf("%s: verdict %d after %d runs of one packet, want %d", c.name, verdict, repeat, c.verdict)
				}
				sum += uint64(ns)
			}
			// The kernel rounds each call's mean down to whole nanoseconds; over many calls
			// that loses half a nanosecond on average, which matters next to an empty program.
			out[(first+i)%len(set)] = float64(sum)/float64(calls) + 0.5
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

func medians(rounds [][]float64) []float64 {
	out := make([]float64, len(rounds[0]))
	for p := range out {
		v := make([]float64, len(rounds))
		for r := range rounds {
			v[r] = rounds[r][p]
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			out[p] = v[len(v)/2]
		} else {
			out[p] = (v[len(v)/2-1] + v[len(v)/2]) / 2
		}
	}
	return out
}

// Header lengths of the test frames: Ethernet, IPv4 without options, UDP.
const ethLen, ipLen, udpLen = 14, 20, 8

// frame is a 64-byte Ethernet/IPv4/UDP frame with TTL initialTTL and a valid IPv4 checksum.
func frame(dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr) []byte {
	const payload = 22
	b := make([]byte, ethLen+ipLen+udpLen+payload)
	copy(b[0:6], dstMAC)
	copy(b[6:12], srcMAC)
	binary.BigEndian.PutUint16(b[12:14], unix.ETH_P_IP)

	ip := b[ethLen : ethLen+ipLen]
	ip[0] = 0x45 // version 4, IHL 5
	binary.BigEndian.PutUint16(ip[2:4], ipLen+udpLen+payload)
	ip[8] = initialTTL
	ip[9] = unix.IPPROTO_UDP
	copy(ip[12:16], src.AsSlice())
	copy(ip[16:20], dst.AsSlice())
	var sum uint32
	for i := 0; i < ipLen; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:12], ^uint16(sum))

	udp := b[ethLen+ipLen:]
	binary.BigEndian.PutUint16(udp[0:2], 40000)
	binary.BigEndian.PutUint16(udp[2:4], 8080)
	binary.BigEndian.PutUint16(udp[4:6], udpLen+payload)
	return b
}
