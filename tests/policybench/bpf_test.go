package policybench_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
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
	tcActShot     = 2
	tcActRedirect = 7
)

// initialTTL is the TTL of every test packet. A test run with repeat hands the program one skb
// over and over, and forwarding decrements its TTL in place: from run 255 on the packet would
// take the much cheaper PASS_TTL path. So one call runs a forwarded packet at most 250 times.
// Denied packets are not modified, but run as often for the same timing method.
const initialTTL = 255

const (
	repeatPerCall = 250  // runs per BPF_PROG_TEST_RUN call: below initialTTL-1
	callsPerRound = 200  // 50k runs of each repeated case per round
	singleCalls   = 4000 // calls of repeat 1 per round, for first packets that are allowed
	bpfRounds     = 9
)

var wepAMAC = net.HardwareAddr{0x02, 0x00, 0xc6, 0x13, 0x00, 0x01} // the client's eth0
var wepBMAC = net.HardwareAddr{0x02, 0x00, 0xc6, 0x13, 0x00, 0x02} // the server's eth0

// bpfFixture is a namespace with the two workload veths and one dataplane per layout (always
// one without policy), each with the same routes and endpoints and its own policy maps. Test
// runs only read the ifindex of the namespace, so the dataplanes share its interfaces.
type bpfFixture struct {
	ns      *netns.NS
	ifindex map[string]uint32
	hosts   map[layout]*margayHost
	slices  int // of each case's calls in a round (see round); 0 or 1: one
}

// flat is the layouts of the rule counts, in one policy each.
func flat(counts []int) []layout {
	out := make([]layout, len(counts))
	for i, n := range counts {
		out[i] = layout{rules: n}
	}
	return out
}

func newBPFFixture(tb testing.TB, layouts []layout) *bpfFixture {
	tb.Helper()
	f := &bpfFixture{ns: netns.New(tb, "mgpb"), ifindex: map[string]uint32{}, hosts: map[layout]*margayHost{}}
	for _, name := range []string{wepA, wepB} {
		netns.Veth(tb, f.ns, name, netns.New(tb, "mgpbpeer"), "eth0")
		f.ns.SetMAC(tb, name, hostVethMAC.String())
		f.ifindex[name] = uint32(f.ns.Link(tb, name).Attrs().Index)
	}
	for _, l := range append([]layout{{}}, layouts...) {
		h := loadMargay(tb, f.ns)
		h.install(tb, l,
			maps.Endpoint{Ifindex: f.ifindex[wepA], IPv4: clientIP, MAC: wepAMAC},
			maps.Endpoint{Ifindex: f.ifindex[wepB], IPv4: serverIP, MAC: wepBMAC})
		f.hosts[l] = h
	}
	return f
}

// bpfCase is from_wep of one dataplane on one packet the client sends to the server.
type bpfCase struct {
	name    string
	dp      layout // which dataplane
	packet  []byte
	sport   uint16 // clientPort for established flows, clientPort+1 for first packets
	dport   uint16
	verdict uint32
	reason  loader.MargayReason
	repeat  uint32
	calls   int
	// established: the flow's conntrack entry exists before timing (a run creates it); firstPkt:
	// it must not exist, and an allowed first packet's entry is deleted after every call.
	established bool
	// baseline is the case this one is reported as a ratio to: the no-policy established flow
	// measured with the same repeat.
	baseline string
	// flat, for a tiered layout, is the case of the same packet with the same rules in one
	// policy: this one is also reported as the per-round ratio to it.
	flat string
}

// TCP flags.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

// cases are, for the layouts (none excepted, which every list has first): established flows
// and denied first packets, run repeatPerCall times per call, against the no-policy established
// flow; then allowed first packets, one run per call, against the no-policy established flow run
// the same way. A tiered layout's case names as its flat the case of the flat layout with its
// rule count and, with profiles, with benchrules.AllowEgress (which layouts must then hold): the
// same rules and the same directions looked up, without tiers or profiles.
func (f *bpfFixture) cases(layouts []layout) []bpfCase {
	fwd, deny := loader.MargayReasonREASON_FWD_LOCAL, loader.MargayReasonREASON_DROP_POLICY_INGRESS
	top := 0
	for _, l := range layouts {
		top = max(top, l.rules)
	}
	flatOf := func(kind string, l layout) string {
		if l.tiers == 0 {
			return ""
		}
		return kind + "/" + layout{rules: l.rules, egress: l.profiles > 0}.String()
	}
	est := func(kind string, l layout, repeat uint32, calls int, baseline string) bpfCase {
		port := portFor(l.rules, top)
		return bpfCase{name: kind + "/" + l.String(), dp: l, packet: tcpFrame(clientIP, serverIP, clientPort, port, tcpACK), sport: clientPort, dport: port,
			verdict: tcActRedirect, reason: fwd, repeat: repeat, calls: calls, established: true, baseline: baseline, flat: flatOf(kind, l)}
	}
	cs := []bpfCase{est("established", layout{}, repeatPerCall, callsPerRound, "")}
	for _, l := range layouts {
		cs = append(cs, est("established", l, repeatPerCall, callsPerRound, "established/none"))
	}
	for _, l := range layouts {
		cs = append(cs, bpfCase{name: "first-denied/" + l.String(), dp: l,
			packet: tcpFrame(clientIP, serverIP, clientPort+1, deniedPort, tcpSYN), sport: clientPort + 1, dport: deniedPort,
			verdict: tcActShot, reason: deny, repeat: repeatPerCall, calls: callsPerRound, baseline: "established/none", flat: flatOf("first-denied", l)})
	}
	cs = append(cs, est("established-r1", layout{}, 1, singleCalls, ""))
	for _, l := range append([]layout{{}}, layouts...) {
		port := portFor(l.rules, top)
		cs = append(cs, bpfCase{name: "first-allowed-r1/" + l.String(), dp: l, packet: tcpFrame(clientIP, serverIP, clientPort+1, port, tcpSYN), sport: clientPort + 1, dport: port,
			verdict: tcActRedirect, reason: fwd, repeat: 1, calls: singleCalls, baseline: "established-r1/none", flat: flatOf("first-allowed-r1", l)})
	}
	return cs
}

// portFor is the port of the flow allowed by n rules; with no policy any port goes, so it takes
// that of the largest set.
func portFor(n, top int) uint16 {
	if n == 0 {
		return allowedPort(top)
	}
	return allowedPort(n)
}

func (f *bpfFixture) ct(c bpfCase) (loader.MargayCtValue, error) {
	k := ctKey(clientIP, c.sport, serverIP, c.dport)
	var v loader.MargayCtValue
	err := f.hosts[c.dp].dp.Maps().Conntrack.Lookup(&k, &v)
	return v, err
}

func (f *bpfFixture) deleteCT(c bpfCase) error {
	k := ctKey(clientIP, c.sport, serverIP, c.dport)
	return f.hosts[c.dp].dp.Maps().Conntrack.Delete(&k)
}

// check proves, before anything is timed, that c takes the intended path: one run returns the
// intended verdict and counts the packet under the intended reason; an established flow has an
// allowing entry (with policy, naming the last rule, and the rule that allows the client's
// egress where a policy governs it: for tiered layouts, the allow after every tier passed); a
// denied first packet leaves no entry.
func (f *bpfFixture) check(tb testing.TB, c bpfCase) {
	tb.Helper()
	h := f.hosts[c.dp]
	a := f.ifindex[wepA]
	if !c.established {
		if _, err := f.ct(c); !errors.Is(err, ebpf.ErrKeyNotExist) {
			tb.Fatalf("%s: conntrack entry before the first packet (err %v)", c.name, err)
		}
	}
	before := h.counter(tb, a, c.reason)
	var verdict uint32
	err := f.ns.Do(func() (err error) {
		verdict, _, err = bpfbench.Run(h.dp.Programs().FromWep, c.packet, bpfbench.SKBContext(a), 1)
		return err
	})
	if err != nil {
		tb.Fatalf("%s: %v", c.name, err)
	}
	if verdict != c.verdict {
		tb.Fatalf("%s: verdict %d, want %d", c.name, verdict, c.verdict)
	}
	if got := h.counter(tb, a, c.reason) - before; got != 1 {
		tb.Fatalf("%s: %d packets counted as %v, want 1", c.name, got, maps.Reason(c.reason))
	}
	v, err := f.ct(c)
	switch {
	case c.verdict == tcActShot:
		if !errors.Is(err, ebpf.ErrKeyNotExist) {
			tb.Fatalf("%s: a denied first packet left a conntrack entry (err %v)", c.name, err)
		}
	case err != nil:
		tb.Fatalf("%s: no conntrack entry after an allowed packet: %v", c.name, err)
	case v.Verdict != loader.MargayCtVerdictCT_VERDICT_ALLOW || v.RuleIngress != h.lastRule || v.RuleEgress != h.lastEgress:
		tb.Fatalf("%s: conntrack verdict %d rules %d (ingress) and %d (egress), want allow by rules %d (the last) and %d",
			c.name, v.Verdict, v.RuleIngress, v.RuleEgress, h.lastRule, h.lastEgress)
	}
	if !c.established && c.verdict != tcActShot {
		if err := f.deleteCT(c); err != nil {
			tb.Fatal(err)
		}
	}
}

// round measures every case for its calls×repeat runs, one after the other, starting with case
// number first%len(cs) so that none always runs first. It returns ns per run in the order of cs.
// Every call's verdict is checked, and an allowed first packet's conntrack entry must be there
// to delete after each call. scale divides every case's calls, for a quick run in a test. With
// f.slices > 1 each case's calls are split into that many slices, and the round runs every
// case's first slice, then every case's second (starting one case further), and so on: the
// machine's drift within a round then falls on all the cases alike.
func (f *bpfFixture) round(tb testing.TB, cs []bpfCase, first int, scale int) []float64 {
	tb.Helper()
	parts := max(1, f.slices)
	sums := make([]uint64, len(cs))
	counts := make([]int, len(cs))
	a := f.ifindex[wepA]
	ctx := bpfbench.SKBContext(a)
	err := f.ns.Do(func() error {
		for k := range parts {
			for i := range cs {
				j := (first + k + i) % len(cs)
				c := cs[j]
				calls := max(1, c.calls/scale)
				n := calls*(k+1)/parts - calls*k/parts
				sum, err := f.calls(c, ctx, n)
				if err != nil {
					return err
				}
				sums[j] += sum
				counts[j] += n
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	out := make([]float64, len(cs))
	for j := range cs {
		// The kernel rounds each call's mean down to whole nanoseconds: half a nanosecond lost
		// on average.
		out[j] = float64(sums[j])/float64(counts[j]) + 0.5
	}
	return out
}

// calls makes n test runs of case c, repeat runs each, and returns the sum of their ns per run.
func (f *bpfFixture) calls(c bpfCase, ctx []byte, n int) (uint64, error) {
	prog := f.hosts[c.dp].dp.Programs().FromWep
	var sum uint64
	for range n {
		verdict, ns, err := bpfbench.Run(prog, c.packet, ctx, c.repeat)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", c.name, err)
		}
		if verdict != c.verdict {
			return 0, fmt.Errorf("%s: verdict %d after %d runs, want %d", c.name, verdict, c.repeat, c.verdict)
		}
		if !c.established && c.verdict != tcActShot {
			if err := f.deleteCT(c); err != nil {
				return 0, fmt.Errorf("%s: delete the conntrack entry the packet made: %w", c.name, err)
			}
		}
		sum += uint64(ns)
	}
	return sum, nil
}

// BenchmarkPolicyBPF: from_wep on the client's veth, a TCP packet to a workload on the same host
// (forwarded by redirect_peer), through conntrack and the server's ingress policy. Established
// flows hit conntrack, whose entry holds the verdict; first packets evaluate the policy. A
// denied first packet leaves no entry, so every run evaluates: the flow's port matches no rule,
// the worst case of a linear walk. An allowed first packet makes an entry, so it is measured one
// run per call with the entry deleted between calls, against the no-policy established flow
// measured the same way (one run per call includes the kernel's timer reads).
func BenchmarkPolicyBPF(b *testing.B) {
	benchBPF(b, flat(ruleCounts), "", 1)
}

// Tiers and profiles measured by BenchmarkPolicyBPFTiers, at the largest rule count, and the
// slices it cuts each case's calls into in a round: it compares cases whose differences are
// smaller than this machine's drift over a round of one block per case.
var (
	tierCounts    = []int{1, 10, 50}
	profileCounts = []int{0, 1, 5}
)

const tierSlices = 10

// tiered is the layouts of n rules spread over each number of tiers and of profiles, after the
// flat layouts of n rules they are compared with, without and with an egress policy.
func tiered(n int, tiers, profiles []int) []layout {
	out := []layout{{rules: n}, {rules: n, egress: true}}
	for _, t := range tiers {
		for _, p := range profiles {
			out = append(out, layout{rules: n, tiers: t, profiles: p})
		}
	}
	return out
}

// BenchmarkPolicyBPFTiers is BenchmarkPolicyBPF's measurement with the largest rule set spread
// over 1, 10 and 50 tiers and then 0, 1 and 5 profiles (benchrules.Tiered: the measured flow
// passes every tier, by a Pass rule or the tier's default action, and is allowed by the last
// rule of the last profile, or of the last tier without profiles; the denied flow walks as far
// and is denied at the end), beside the same rules in one policy, all in the same interleaved
// rounds. Profiles, which every workload has, also give the client an egress program (the last
// profile allows all egress): a first packet then looks up the client's egress as well. So the
// flat rules are measured twice, alone and with a policy that allows all egress (rules=N,egress),
// and each tiered case is also reported as the median, min and max over the rounds of its ratio
// to the flat case of the same packet that looks up the same directions: the cost of tiers and
// profiles themselves.
func BenchmarkPolicyBPFTiers(b *testing.B) {
	n := ruleCounts[len(ruleCounts)-1]
	benchBPF(b, tiered(n, tierCounts, profileCounts), fmt.Sprintf("%d rules, %d slices a round; ", n, tierSlices), tierSlices)
}

// benchBPF checks and measures the cases of the layouts in bpfRounds interleaved rounds, each
// case's calls in a round cut into slices (see round), and reports each case's median and
// range, its ratio to its baseline and, for tiered layouts, to the flat case.
func benchBPF(b *testing.B, layouts []layout, title string, slices int) {
	f := newBPFFixture(b, layouts)
	f.slices = slices
	cs := f.cases(layouts)
	for _, c := range cs {
		f.check(b, c)
	}
	rounds := make([][]float64, 0, bpfRounds)
	for r := range bpfRounds {
		rounds = append(rounds, f.round(b, cs, r, 1))
	}
	index := map[string]int{}
	for i, c := range cs {
		index[c.name] = i
	}
	column := func(i int) []float64 {
		v := make([]float64, len(rounds))
		for r := range rounds {
			v[r] = rounds[r][i]
		}
		return v
	}
	perRoundRatio := func(i, j int) []float64 {
		v := make([]float64, len(rounds))
		for r := range rounds {
			v[r] = rounds[r][i] / rounds[r][j]
		}
		return v
	}
	tiers := false
	for _, c := range cs {
		tiers = tiers || c.flat != ""
	}
	width := 28
	for _, c := range cs {
		width = max(width, len(c.name))
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%-*s %10s %10s %10s %8s", width, "case", "ns/pkt", "min", "max", "ratio")
	if tiers {
		fmt.Fprintf(&table, " %20s", "x flat (min-max)")
	}
	fmt.Fprintf(&table, "  (%d rounds)\n", bpfRounds)
	for i, c := range cs {
		s := summarize(column(i))
		m := map[string]float64{"ns/pkt": s.med, "min_ns/pkt": s.min, "max_ns/pkt": s.max}
		ratio := 1.0
		if c.baseline != "" {
			ratio = s.med / summarize(column(index[c.baseline])).med
			m["x_"+strings.Split(c.baseline, "/")[0]] = ratio
		}
		fmt.Fprintf(&table, "%-*s %10.1f %10.1f %10.1f %8.2f", width, c.name, s.med, s.min, s.max, ratio)
		if c.flat != "" {
			r := summarize(perRoundRatio(i, index[c.flat]))
			m["x_flat"], m["min_x_flat"], m["max_x_flat"] = r.med, r.min, r.max
			fmt.Fprintf(&table, " %8.2f (%.2f-%.2f)", r.med, r.min, r.max)
		}
		table.WriteString("\n")
		report(b, c.name, m)
	}
	fmt.Fprintf(os.Stdout, "from_wep per packet, medians; %sratio to the no-policy established flow of the same repeat:\n%s", title, table.String())
}

// tcpFrame is a 64-byte Ethernet/IPv4/TCP frame from the client's eth0 to the host veth, with
// TTL initialTTL and a valid IPv4 checksum (the programs do not check TCP's).
func tcpFrame(src, dst netip.Addr, sport, dport uint16, flags uint8) []byte {
	const ethLen, ipLen, tcpLen, payload = 14, 20, 20, 10
	b := make([]byte, ethLen+ipLen+tcpLen+payload)
	copy(b[0:6], hostVethMAC)
	copy(b[6:12], wepAMAC)
	binary.BigEndian.PutUint16(b[12:14], unix.ETH_P_IP)

	ip := b[ethLen : ethLen+ipLen]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], ipLen+tcpLen+payload)
	ip[8] = initialTTL
	ip[9] = unix.IPPROTO_TCP
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

	tcp := b[ethLen+ipLen:]
	binary.BigEndian.PutUint16(tcp[0:2], sport)
	binary.BigEndian.PutUint16(tcp[2:4], dport)
	binary.BigEndian.PutUint32(tcp[4:8], 1)
	tcp[12] = 5 << 4 // data offset
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:16], 65535)
	return b
}
