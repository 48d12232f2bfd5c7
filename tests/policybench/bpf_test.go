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

// bpfFixture is a namespace with the two workload veths and one dataplane per rule count (0: no
// policy), each with the same routes and endpoints and its own policy maps. Test runs only read
// the ifindex of the namespace, so the dataplanes share its interfaces.
type bpfFixture struct {
	ns      *netns.NS
	ifindex map[string]uint32
	hosts   map[int]*margayHost // by rule count
}

func newBPFFixture(tb testing.TB, counts []int) *bpfFixture {
	tb.Helper()
	f := &bpfFixture{ns: netns.New(tb, "mgpb"), ifindex: map[string]uint32{}, hosts: map[int]*margayHost{}}
	for _, name := range []string{wepA, wepB} {
		netns.Veth(tb, f.ns, name, netns.New(tb, "mgpbpeer"), "eth0")
		f.ns.SetMAC(tb, name, hostVethMAC.String())
		f.ifindex[name] = uint32(f.ns.Link(tb, name).Attrs().Index)
	}
	for _, n := range append([]int{0}, counts...) {
		h := loadMargay(tb, f.ns)
		h.install(tb, n,
			maps.Endpoint{Ifindex: f.ifindex[wepA], IPv4: clientIP, MAC: wepAMAC},
			maps.Endpoint{Ifindex: f.ifindex[wepB], IPv4: serverIP, MAC: wepBMAC})
		f.hosts[n] = h
	}
	return f
}

// bpfCase is from_wep of one dataplane on one packet the client sends to the server.
type bpfCase struct {
	name    string
	rules   int // which dataplane
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
}

// TCP flags.
const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

func (f *bpfFixture) cases(counts []int) []bpfCase {
	fwd, deny := loader.MargayReasonREASON_FWD_LOCAL, loader.MargayReasonREASON_DROP_POLICY_INGRESS
	top := counts[len(counts)-1]
	est := func(name string, n int, repeat uint32, calls int, baseline string) bpfCase {
		port := portFor(n, top)
		return bpfCase{name: name, rules: n, packet: tcpFrame(clientIP, serverIP, clientPort, port, tcpACK), sport: clientPort, dport: port,
			verdict: tcActRedirect, reason: fwd, repeat: repeat, calls: calls, established: true, baseline: baseline}
	}
	cs := []bpfCase{est("established/none", 0, repeatPerCall, callsPerRound, "")}
	for _, n := range counts {
		cs = append(cs, est(fmt.Sprintf("established/rules=%d", n), n, repeatPerCall, callsPerRound, "established/none"))
	}
	for _, n := range counts {
		cs = append(cs, bpfCase{name: fmt.Sprintf("first-denied/rules=%d", n), rules: n,
			packet: tcpFrame(clientIP, serverIP, clientPort+1, deniedPort, tcpSYN), sport: clientPort + 1, dport: deniedPort,
			verdict: tcActShot, reason: deny, repeat: repeatPerCall, calls: callsPerRound, baseline: "established/none"})
	}
	cs = append(cs, est("established-r1/none", 0, 1, singleCalls, ""))
	for _, n := range append([]int{0}, counts...) {
		name := fmt.Sprintf("first-allowed-r1/rules=%d", n)
		if n == 0 {
			name = "first-allowed-r1/none"
		}
		port := portFor(n, top)
		cs = append(cs, bpfCase{name: name, rules: n, packet: tcpFrame(clientIP, serverIP, clientPort+1, port, tcpSYN), sport: clientPort + 1, dport: port,
			verdict: tcActRedirect, reason: fwd, repeat: 1, calls: singleCalls, baseline: "established-r1/none"})
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
	err := f.hosts[c.rules].dp.Maps().Conntrack.Lookup(&k, &v)
	return v, err
}

func (f *bpfFixture) deleteCT(c bpfCase) error {
	k := ctKey(clientIP, c.sport, serverIP, c.dport)
	return f.hosts[c.rules].dp.Maps().Conntrack.Delete(&k)
}

// check proves, before anything is timed, that c takes the intended path: one run returns the
// intended verdict and counts the packet under the intended reason; an established flow has an
// allowing entry (with policy, naming the last rule); a denied first packet leaves no entry.
func (f *bpfFixture) check(tb testing.TB, c bpfCase) {
	tb.Helper()
	h := f.hosts[c.rules]
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
	case v.Verdict != loader.MargayCtVerdictCT_VERDICT_ALLOW || v.RuleIngress != h.lastRule:
		tb.Fatalf("%s: conntrack verdict %d rule %d, want allow by rule %d (the last)", c.name, v.Verdict, v.RuleIngress, h.lastRule)
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
// to delete after each call. scale divides every case's calls, for a quick run in a test.
func (f *bpfFixture) round(tb testing.TB, cs []bpfCase, first int, scale int) []float64 {
	tb.Helper()
	out := make([]float64, len(cs))
	a := f.ifindex[wepA]
	ctx := bpfbench.SKBContext(a)
	err := f.ns.Do(func() error {
		for i := range cs {
			j := (first + i) % len(cs)
			c := cs[j]
			prog := f.hosts[c.rules].dp.Programs().FromWep
			calls := max(1, c.calls/scale)
			var sum uint64
			for range calls {
				verdict, ns, err := bpfbench.Run(prog, c.packet, ctx, c.repeat)
				if err != nil {
					return fmt.Errorf("%s: %w", c.name, err)
				}
				if verdict != c.verdict {
					return fmt.Errorf("%s: verdict %d after %d runs, want %d", c.name, verdict, c.repeat, c.verdict)
				}
				if !c.established && c.verdict != tcActShot {
					if err := f.deleteCT(c); err != nil {
						return fmt.Errorf("%s: delete the conntrack entry the packet made: %w", c.name, err)
					}
				}
				sum += uint64(ns)
			}
			// The kernel rounds each call's mean down to whole nanoseconds: half a
			// nanosecond lost on average.
			out[j] = float64(sum)/float64(calls) + 0.5
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// BenchmarkPolicyBPF: from_wep on the client's veth, a TCP packet to a workload on the same host
// (forwarded by redirect_peer), through conntrack and the server's ingress policy. Established
// flows hit conntrack, whose entry holds the verdict; first packets evaluate the policy. A
// denied first packet leaves no entry, so every run evaluates: the flow's port matches no rule,
// the worst case of a linear walk. An allowed first packet makes an entry, so it is measured one
// run per call with the entry deleted between calls, against the no-policy established flow
// measured the same way (one run per call includes the kernel's timer reads).
func BenchmarkPolicyBPF(b *testing.B) {
	f := newBPFFixture(b, ruleCounts)
	cs := f.cases(ruleCounts)
	for _, c := range cs {
		f.check(b, c)
	}
	rounds := make([][]float64, 0, bpfRounds)
	for r := range bpfRounds {
		rounds = append(rounds, f.round(b, cs, r, 1))
	}
	byName := map[string]stats{}
	for i, c := range cs {
		v := make([]float64, len(rounds))
		for r := range rounds {
			v[r] = rounds[r][i]
		}
		byName[c.name] = summarize(v)
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%-28s %10s %10s %10s %8s  (%d rounds)\n", "case", "ns/pkt", "min", "max", "ratio", bpfRounds)
	for _, c := range cs {
		s := byName[c.name]
		m := map[string]float64{"ns/pkt": s.med, "min_ns/pkt": s.min, "max_ns/pkt": s.max}
		ratio := 1.0
		if c.baseline != "" {
			ratio = s.med / byName[c.baseline].med
			m["x_"+strings.Split(c.baseline, "/")[0]] = ratio
		}
		fmt.Fprintf(&table, "%-28s %10.1f %10.1f %10.1f %8.2f\n", c.name, s.med, s.min, s.max, ratio)
		report(b, c.name, m)
	}
	fmt.Fprintf(os.Stdout, "from_wep per packet, medians; ratio to the no-policy established flow of the same repeat:\n%s", table.String())
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
