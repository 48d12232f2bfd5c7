package benchsuite_test

import (
	"cmp"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/benchsuite"
	"github.com/margaynet/margay/tests/netns"
)

//go:embed findings.md
var findings string

// programGoals bound from_wep and from_net in c: 250 ns a run on an established flow (RR, on
// both hosts), 400 ns on a flow's first packet (the new-flows test's request: from_wep on the
// client's host A, from_net on the server's B).
func programGoals() []benchsuite.ProgramGoal {
	var gs []benchsuite.ProgramGoal
	for _, h := range []string{"A", "B"} {
		for _, p := range []string{"from_wep", "from_net"} {
			gs = append(gs, benchsuite.ProgramGoal{Topology: kindMargay, Test: "rr", Host: h, Program: p, Case: "established flow", Bound: 250})
		}
	}
	return append(gs,
		benchsuite.ProgramGoal{Topology: kindMargay, Test: "new flows", Host: "A", Program: "from_wep", Case: "first packet", Bound: 400},
		benchsuite.ProgramGoal{Topology: kindMargay, Test: "new flows", Host: "B", Program: "from_net", Case: "first packet", Bound: 400})
}

// kinds in the order every round runs them.
var kinds = []string{kindVeth, kindKernel, kindKernelFilter, kindMargay, kindMargayBare, kindMargayPolicy, kindMargayXDP, kindKernelSvc, kindMargaySvc}

func rulesOf(kind string, n int) int {
	if kind == kindKernelFilter || kind == kindMargayPolicy {
		return n
	}
	return 0
}

var forwardPolicy = regexp.MustCompile(`Chain FORWARD \(policy (\w+) (\d+) packets`)

// forwardDropped is the packets the FORWARD chain's policy applied to, and every rule's packets.
func forwardPackets(tb testing.TB, ns *netns.NS) uint64 {
	tb.Helper()
	out := ns.MustRun(tb, "iptables", "-w", "-n", "-v", "-x", "-L", "FORWARD")
	m := forwardPolicy.FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("no FORWARD policy in iptables output of %s:\n%s", ns.Name, out)
	}
	total, _ := strconv.ParseUint(m[2], 10, 64)
	for _, line := range strings.Split(out, "\n")[2:] {
		f := strings.Fields(line)
		if len(f) > 0 {
			v, _ := strconv.ParseUint(f[0], 10, 64)
			total += v
		}
	}
	return total
}

type hop struct {
	h       *host
	ifindex uint32
	hook    maps.Hook
	reason  loader.MargayReason
}

func (p hop) String() string {
	return fmt.Sprintf("host %s ifindex %d %s %s", p.h.name, p.ifindex, p.hook, maps.Reason(p.reason))
}

func (p hop) read(tb testing.TB) uint64 {
	tb.Helper()
	c, err := p.h.set.Counters.Get(p.ifindex, p.hook, maps.Reason(p.reason))
	if err != nil {
		tb.Fatal(err)
	}
	return c.Packets
}

// ebpfPath is the counters both directions of a client–server flow pass in c. Through a
// Service (c-svc) the client's host hands the flow to the kernel, which translates it, and its
// replies back to the kernel, which translates them back; the server's host forwards both ways.
func (t *topo) ebpfPath() []hop {
	a, b := t.hostA, t.hostB
	if t.kind == kindMargaySvc {
		return []hop{
			{a, a.caliIndex, maps.HookFromWep, loader.MargayReasonREASON_PASS_NO_ROUTE},
			{a, a.caliIndex, maps.HookNFPolicy, loader.MargayReasonREASON_PASS_NAT},
			{b, b.uplinkIndex, maps.HookFromNet, loader.MargayReasonREASON_FWD_LOCAL},
			{b, b.caliIndex, maps.HookFromWep, loader.MargayReasonREASON_FWD_REMOTE},
			{a, a.uplinkIndex, maps.HookFromNet, loader.MargayReasonREASON_PASS_NAT},
		}
	}
	return []hop{
		{a, a.caliIndex, maps.HookFromWep, loader.MargayReasonREASON_FWD_REMOTE},
		{b, b.uplinkIndex, maps.HookFromNet, loader.MargayReasonREASON_FWD_LOCAL},
		{b, b.caliIndex, maps.HookFromWep, loader.MargayReasonREASON_FWD_REMOTE},
		{a, a.uplinkIndex, maps.HookFromNet, loader.MargayReasonREASON_FWD_LOCAL},
	}
}

// check proves the topology carries TCP on the intended path: in b both hosts' kernels forward
// it; in c every eBPF counter of the path grows while the kernel forwards nothing and the FORWARD
// chain (policy DROP) sees nothing; with a filter, a port no rule allows is silently dropped.
// It returns what it proved, for the report.
func (t *topo) check(tb testing.TB) string {
	tb.Helper()
	hosts := []*host{t.hostA, t.hostB}
	margay := isMargay(t.kind)
	dropsForward := margay || t.kind == kindMargayBare
	fwd0, chain0, ebpf0 := map[*host]uint64{}, map[*host]uint64{}, map[hop]uint64{}
	if t.hostA != nil {
		for _, h := range hosts {
			fwd0[h] = forwarded(tb, h.ns)
			if dropsForward {
				chain0[h] = forwardPackets(tb, h.ns)
			}
		}
	}
	if margay {
		for _, p := range t.ebpfPath() {
			ebpf0[p] = p.read(tb)
		}
	}
	if err := t.exchange(); err != nil {
		tb.Fatal(err)
	}
	var s benchsuite.Sample
	if err := t.stream(1, &s); err != nil {
		tb.Fatal(err)
	}
	switch t.kind {
	case kindVeth:
		return fmt.Sprintf("%s: TCP exchange and iperf3 work (%.1f Gbit/s in 1 s).", t, s.StreamGbps)
	case kindMargayBare:
		for _, h := range hosts {
			if d := forwarded(tb, h.ns) - fwd0[h]; d != 0 {
				tb.Fatalf("%v: host %s's kernel forwarded %d datagrams: some traffic left the eBPF path", t, h.name, d)
			}
			if d := forwardPackets(tb, h.ns) - chain0[h]; d != 0 {
				tb.Fatalf("%v: host %s's FORWARD chain saw %d packets: some traffic left the eBPF path", t, h.name, d)
			}
		}
		return fmt.Sprintf("%s: TCP exchange and iperf3 work while neither kernel forwarded a datagram (Ip ForwDatagrams) and neither FORWARD chain (policy DROP) counted a packet: the bare programs carried all of it.", t)
	case kindMargaySvc:
		for _, p := range t.ebpfPath() {
			if got := p.read(tb); got-ebpf0[p] < 10 {
				tb.Fatalf("%v: counter %v grew by %d, want the flow's packets", t, p, got-ebpf0[p])
			}
		}
		if d := forwarded(tb, t.hostB.ns) - fwd0[t.hostB]; d != 0 {
			tb.Fatalf("%v: the server's host's kernel forwarded %d datagrams: some traffic left the eBPF path", t, d)
		}
		if d := forwarded(tb, t.hostA.ns) - fwd0[t.hostA]; d < 10 {
			tb.Fatalf("%v: the client's host's kernel forwarded %d datagrams, want the translated flow's", t, d)
		}
		return fmt.Sprintf("%s: TCP exchange and iperf3 to the ClusterIP work; on the client's host from_wep handed the flow to the kernel (PASS_NO_ROUTE), nf_policy saw it translated (PASS_NAT) and the kernel forwarded it, and from_net handed the replies back to the kernel (PASS_NAT); the server's host forwarded both ways in eBPF (FWD_LOCAL, FWD_REMOTE) and its kernel forwarded nothing.", t)
	case kindKernel, kindKernelFilter, kindKernelSvc:
		for _, h := range hosts {
			if d := forwarded(tb, h.ns) - fwd0[h]; d < 10 {
				tb.Fatalf("%v: host %s's kernel forwarded %d datagrams, want the flow's", t, h.name, d)
			}
		}
		msg := fmt.Sprintf("%s: TCP exchange and iperf3 work, and both hosts' kernels forwarded them (Ip ForwDatagrams grew).", t)
		if t.kind == kindKernelSvc {
			msg = fmt.Sprintf("%s: TCP exchange and iperf3 to the ClusterIP work, translated by kube-proxy's rules, and both hosts' kernels forwarded them (Ip ForwDatagrams grew).", t)
		}
		if t.kind == kindKernelFilter {
			if err := t.denied(); err != nil {
				tb.Fatal(err)
			}
			msg += fmt.Sprintf(" A connection to port %d, which no rule allows, times out: the filter is in force.", deniedPort)
		}
		return msg
	}
	for _, p := range t.ebpfPath() {
		if got := p.read(tb); got-ebpf0[p] < 10 {
			tb.Fatalf("%v: counter %v grew by %d, want the flow's packets", t, p, got-ebpf0[p])
		}
	}
	for _, h := range hosts {
		if d := forwarded(tb, h.ns) - fwd0[h]; d != 0 {
			tb.Fatalf("%v: host %s's kernel forwarded %d datagrams: some traffic left the eBPF path", t, h.name, d)
		}
		if d := forwardPackets(tb, h.ns) - chain0[h]; d != 0 {
			tb.Fatalf("%v: host %s's FORWARD chain saw %d packets: some traffic left the eBPF path", t, h.name, d)
		}
	}
	msg := fmt.Sprintf("%s: TCP exchange and iperf3 work; the eBPF counters FWD_REMOTE (from_wep) and FWD_LOCAL (from_net) grew on both hosts in both directions, while neither kernel forwarded a datagram (Ip ForwDatagrams) and neither FORWARD chain (policy DROP) counted a packet.", t)
	if t.kind == kindMargayPolicy {
		if err := t.denied(); err != nil {
			tb.Fatal(err)
		}
		msg += fmt.Sprintf(" A connection to port %d, which none of the rules allows, times out: the policy is in force.", deniedPort)
	}
	return msg
}

// TestBenchsuiteTopologies builds every topology once, at the benchmark's size, and proves each
// carries TCP on its intended path, so the suite never measures a broken or wrong path.
func TestBenchsuiteTopologies(t *testing.T) {
	for _, k := range kinds {
		t.Run(k, func(t *testing.T) {
			top := newTopo(t, k, rulesOf(k, 1000))
			t.Log(top.check(t))
			var s benchsuite.Sample
			if err := top.rr(50*time.Millisecond, &s); err != nil {
				t.Fatal(err)
			}
			if err := top.crr(50*time.Millisecond, &s); err != nil {
				t.Fatal(err)
			}
			if s.RR == 0 || s.CRR == 0 {
				t.Fatalf("%v: rr %.0f/s, crr %.0f/s", top, s.RR, s.CRR)
			}
		})
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkSuite is issue 8's benchmark: topologies a, b-empty, b-filter, c and c-policy,
// measured interleaved round by round, then the BPF_PROG_TEST_RUN curve and the control-plane
// figures; it writes BENCHMARKS.md and the PNG plots. Settings (environment):
// BENCH_ROUNDS (7), BENCH_STREAM_SECONDS (3), BENCH_RR_SECONDS (2), BENCH_CRR_SECONDS (2),
// BENCH_RULES (1000), BENCH_EXTRAS (1; 0 skips the BPF curve and the control plane),
// BENCH_OUT (../../BENCHMARKS.md), BENCH_PLOTS (../../docs/bench).
func BenchmarkSuite(b *testing.B) {
	rounds := envInt("BENCH_ROUNDS", 7)
	streamSec := envInt("BENCH_STREAM_SECONDS", 3)
	rrSec := envFloat("BENCH_RR_SECONDS", 2)
	crrSec := envFloat("BENCH_CRR_SECONDS", 2)
	nRules := envInt("BENCH_RULES", 1000)
	extras := os.Getenv("BENCH_EXTRAS") != "0"
	out := os.Getenv("BENCH_OUT")
	if out == "" {
		out = "../../BENCHMARKS.md"
	}
	plots := os.Getenv("BENCH_PLOTS")
	if plots == "" {
		plots = "../../docs/bench"
	}
	for b.Loop() {
	}
	b.ReportMetric(0, "ns/op")

	r := &benchsuite.Report{
		Generated: time.Now(),
		Command:   fmt.Sprintf("BENCH_ROUNDS=%d BENCH_STREAM_SECONDS=%d BENCH_RR_SECONDS=%g BENCH_CRR_SECONDS=%g BENCH_RULES=%d go test -run '^$' -bench Suite -benchtime 1x ./tests/benchsuite/", rounds, streamSec, rrSec, crrSec, nRules),
		Machine:   machine(),
		Rounds:    rounds, StreamSec: float64(streamSec), RRSec: rrSec, CRRSec: crrSec,
		Samples: map[string][]benchsuite.Sample{},
		Topologies: []benchsuite.Topology{
			{Key: kindVeth, Title: "a: single veth", Description: "two namespaces joined by one veth pair, /32 addresses and fixed neighbours, empty netfilter: the limit."},
			{Key: kindKernel, Title: "b: kernel path, empty iptables", Description: "the classic Calico path: workload → cali veth → host kernel routing (proxy ARP, /32 dev cali, remote /26 via the peer) → uplink veth ens32 → other host → cali veth → workload; no netfilter table loaded."},
			{Key: kindKernelFilter, Title: fmt.Sprintf("b: kernel path, classic filter (%d rules)", nRules), Description: fmt.Sprintf("the same, with both hosts' FORWARD chain holding the classic filter: `-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT` first, then %d rules that every new flow walks (the last allows the measured flows), then DROP.", nRules)},
			{Key: kindMargay, Title: "c: Margay", Description: "the same namespaces shape as b, with Margay's programs attached and their maps filled as the agent does by default on veth uplinks (from_wep/to_wep on the cali veths, from_net on ens32; `--xdp auto` leaves XDP off a veth); FORWARD policy DROP, so only the eBPF path can carry traffic."},
			{Key: kindMargayBare, Title: "c-bare: the mechanism alone", Description: "c's namespaces, attach points (tcx ingress of the cali veths and ens32) and maps, with programs that only look the destination up in the routes trie and redirect (bpf_redirect_peer into the workload after the MAC rewrite, bpf_redirect_neigh out of the uplink), TTL decremented: no conntrack, policy, anti-spoofing, checksum or ip_rcv() checks, counters or events (bpf/bench/bare.c); FORWARD policy DROP. c-bare / b is what the mechanism gives on this kernel; c / c-bare is what Margay's programs cost."},
			{Key: kindMargayPolicy, Title: fmt.Sprintf("c: Margay, %d rules in eBPF", nRules), Description: fmt.Sprintf("c with the same %d ingress rules (selector all(), the measured flows matching the last) compiled by control/policy into both workloads' programs.", nRules)},
			{Key: kindKernelSvc, Title: "b: kernel path through a ClusterIP", Description: "b with kube-proxy's iptables nat rules (KUBE-SERVICES, KUBE-SVC, KUBE-SEP DNAT, masquerade marks; tests/kubeproxy) on both hosts, the client connecting to a ClusterIP whose endpoint is the server."},
			{Key: kindMargaySvc, Title: "c: Margay through a ClusterIP", Description: "c with the same kube-proxy rules and the client connecting to the ClusterIP: the client's host leaves the translated flow to the kernel in both directions (PASS_NO_ROUTE, nf_policy, PASS_NAT), the server's host forwards it in eBPF; FORWARD accepts."},
			{Key: kindMargayXDP, Title: "c with XDP on the veth uplinks (diagnostic)", Description: "c with the XDP prefilter attached to the ens32 veths as well (`--xdp on`, AttachUplink(ens32, true)): not a goal, measured to show what XDP costs on a veth, which is why the agent leaves it off there."},
		},
		Comparisons: []benchsuite.Comparison{
			{Num: kindMargay, Den: kindVeth, Title: "c / a (single veth)"},
			{Num: kindMargay, Den: kindKernel, Title: "c / b (empty iptables)"},
			{Num: kindMargayPolicy, Den: kindKernelFilter, Title: fmt.Sprintf("c-policy / b-filter (%d rules)", nRules)},
			{Num: kindKernel, Den: kindVeth, Title: "b / a (reference)"},
			{Num: kindKernelFilter, Den: kindKernel, Title: "b-filter / b (cost of the filter)"},
			{Num: kindMargayPolicy, Den: kindMargay, Title: "c-policy / c (cost of the rules)"},
			{Num: kindMargayXDP, Den: kindMargay, Title: "c-xdp / c (cost of XDP on the veth uplink)"},
			{Num: kindMargaySvc, Den: kindKernelSvc, Title: "c-svc / b-svc (through a ClusterIP)"},
			{Num: kindMargaySvc, Den: kindMargay, Title: "c-svc / c (cost of the Service)"},
			{Num: kindMargayBare, Den: kindKernel, Title: "c-bare / b (the mechanism against the kernel path)"},
			{Num: kindMargay, Den: kindMargayBare, Title: "c / c-bare (what Margay's programs cost)"},
		},
		// The goals of issue 18; comparisons by index above.
		Goals: []benchsuite.Goal{
			{Comparison: 0, Measure: "stream", Bound: 0.95},
			{Comparison: 0, Measure: "rr", Bound: 0.97},
			{Comparison: 0, Measure: "crr", Bound: 0.95},
			{Comparison: 1, Measure: "stream", Bound: 1},
			{Comparison: 1, Measure: "stream_cpu", Bound: 1, AtMost: true},
			{Comparison: 1, Measure: "rr", Bound: 1.05},
			{Comparison: 1, Measure: "rr_p50", Bound: 1, AtMost: true},
			{Comparison: 1, Measure: "rr_p99", Bound: 1, AtMost: true},
			{Comparison: 1, Measure: "rr_cpu", Bound: 0.95, AtMost: true},
			{Comparison: 1, Measure: "crr", Bound: 1.05},
			{Comparison: 1, Measure: "crr_cpu", Bound: 1, AtMost: true},
			{Comparison: 2, Measure: "crr", Bound: 1.4},
			{Comparison: 2, Measure: "rr", Bound: 1.2},
			{Comparison: 2, Measure: "crr_cpu", Bound: 0.8, AtMost: true},
			{Comparison: 2, Measure: "rr_cpu", Bound: 0.8, AtMost: true},
			{Comparison: 10, Measure: "rr", Bound: 0.98},
			{Comparison: 10, Measure: "crr", Bound: 0.98},
		},
		ProgramGoals: programGoals(),
		Findings:     findings,
	}

	tops := map[string]*topo{}
	for _, k := range kinds {
		tops[k] = newTopo(b, k, rulesOf(k, nRules))
		r.Checks = append(r.Checks, tops[k].check(b))
	}
	// Warm up every path (caches, the first TIME_WAITs) before the first round.
	for _, k := range kinds {
		var s benchsuite.Sample
		if err := tops[k].rr(200*time.Millisecond, &s); err != nil {
			b.Fatal(err)
		}
		if err := tops[k].crr(200*time.Millisecond, &s); err != nil {
			b.Fatal(err)
		}
	}
	for round := range rounds {
		for _, k := range kinds {
			t := tops[k]
			var s benchsuite.Sample
			if err := t.stream(streamSec, &s); err != nil {
				b.Fatal(err)
			}
			if err := t.rr(time.Duration(rrSec*float64(time.Second)), &s); err != nil {
				b.Fatal(err)
			}
			if err := t.crr(time.Duration(crrSec*float64(time.Second)), &s); err != nil {
				b.Fatal(err)
			}
			r.Samples[k] = append(r.Samples[k], s)
			fmt.Fprintf(os.Stderr, "round %d %-9s stream %6.2f Gbit/s (%.3f CPU s/Gbit, %g retrans)  rr %6.0f/s p50 %5.1f p99 %6.1f µs (%.1f CPU µs)  crr %6.0f/s (%.1f CPU µs)\n",
				round, k, s.StreamGbps, s.StreamCPUPerGbit, s.StreamRetrans, s.RR, s.RRP50, s.RRP99, s.RRCPU, s.CRR, s.CRRCPU)
		}
	}

	r.Programs, r.Evidence = programFigures(b, tops, streamSec, envInt("BENCH_PROG_ROUNDS", 5))
	r.Evidence = append(r.Evidence, offloadEvidence(b, tops)...)
	r.Evidence = append(r.Evidence, diagnostics(b, tops, streamSec)...)
	if err := os.MkdirAll(plots, 0o755); err != nil {
		b.Fatal(err)
	}
	if os.Getenv("BENCH_PERF") != "0" {
		rel, _ := filepath.Rel(filepath.Dir(out), plots)
		r.Evidence = append(r.Evidence, perfProfiles(b, tops, plots, rel)...)
	}

	if extras {
		runExtras(b, r)
	} else {
		r.BPFNote = "Skipped in this run (BENCH_EXTRAS=0)."
		r.ControlNote = "Skipped in this run (BENCH_EXTRAS=0); `make bench` runs: " + strings.Join(controlCommands, "; ")
		r.DockerNote = "This run of the suite left it out (BENCH_EXTRAS=0)."
	}
	if err := os.MkdirAll(plots, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := r.Save(filepath.Join(plots, "results.json")); err != nil {
		b.Fatal(err)
	}
	render(b, r, out, plots)
}

// render writes BENCHMARKS.md and the plots.
func render(tb testing.TB, r *benchsuite.Report, out, plots string) {
	tb.Helper()
	rel, err := filepath.Rel(filepath.Dir(out), plots)
	if err != nil {
		rel = plots
	}
	r.Plots = nil
	for _, dir := range []string{plots, filepath.Dir(out)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	// The docker run benchmark's last results, whichever run wrote them: they carry their own
	// command and time.
	r.Docker = nil
	if d, err := benchsuite.LoadDockerRun(filepath.Join(plots, dockerResults)); err == nil {
		r.Docker = d
		if !d.Generated.Equal(r.DockerGenerated) {
			// Measured alone (make bench-docker), not by the run the rest comes from.
			r.DockerNote = fmt.Sprintf("Measured alone, not in the suite's run of %s that the rest of this file comes from.",
				r.Generated.UTC().Format("2006-01-02 15:04 UTC"))
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		tb.Fatal(err)
	}
	if err := r.WritePlots(plots, rel); err != nil {
		tb.Fatal(err)
	}
	md, err := r.Markdown()
	if err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(out, md, 0o644); err != nil {
		tb.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "wrote %s and %s\n", out, strings.Join(r.Plots, ", "))
}

// TestRenderBenchmarks rewrites BENCHMARKS.md and the plots from the results.json the last
// BenchmarkSuite saved, with the current template and findings: BENCH_RENDER=1 go test -run
// RenderBenchmarks ./tests/benchsuite/. Without BENCH_RENDER it only checks that the template
// renders.
func TestRenderBenchmarks(t *testing.T) {
	out, plots := os.Getenv("BENCH_OUT"), os.Getenv("BENCH_PLOTS")
	if out == "" {
		out = "../../BENCHMARKS.md"
	}
	if plots == "" {
		plots = "../../docs/bench"
	}
	if os.Getenv("BENCH_RENDER") == "" {
		r := &benchsuite.Report{Samples: map[string][]benchsuite.Sample{"x": {{StreamGbps: 1}}},
			Topologies: []benchsuite.Topology{{Key: "x"}}, Comparisons: []benchsuite.Comparison{{Num: "x", Den: "x"}},
			Goals: []benchsuite.Goal{{Measure: "stream", Bound: 1}}, Findings: findings}
		if _, err := r.Markdown(); err != nil {
			t.Fatal(err)
		}
		r.Docker = &benchsuite.DockerRun{Command: "cmd", Containers: 1, Drivers: []benchsuite.DockerDriver{{Key: "m"}, {Key: "b"}},
			Rounds: []benchsuite.DockerRound{{Order: []string{"m", "b"},
				Samples: map[string][]benchsuite.DockerSample{"m": {{ReachMs: 2}}, "b": {{ReachMs: 1}}}}}}
		md, err := r.Markdown()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(md), "| m / b (per-round ratio) | **2.00** (2.00–2.00) |") {
			t.Fatalf("no ratio in the docker section:\n%s", md)
		}
		return
	}
	r, err := benchsuite.Load(filepath.Join(plots, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	r.Findings = findings
	render(t, r, out, plots)
}

// programFigures runs, with the kernel's BPF run-time statistics on (only then: they cost every
// program run a few ns), progRounds rounds of a short stream, RR, CRR and new-flow test on each
// Margay topology and c-bare, interleaved, and reads each attached program's runs and time per
// test and round, and its size.
func programFigures(tb testing.TB, tops map[string]*topo, streamSec, progRounds int) ([]benchsuite.ProgramFigure, []string) {
	tb.Helper()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, []string{fmt.Sprintf("BPF run-time statistics unavailable: %v", err)}
	}
	defer stats.Close()
	var figs []benchsuite.ProgramFigure
	var ev []string
	type progRef struct {
		h    *host
		name string
		p    *ebpf.Program
	}
	refsOf := func(t *topo) []progRef {
		var refs []progRef
		for _, h := range []*host{t.hostA, t.hostB} {
			if h.bare != nil {
				refs = append(refs, progRef{h, "bare_from_wep", h.bare.BareFromWep}, progRef{h, "bare_from_net", h.bare.BareFromNet})
				continue
			}
			p := h.d.Programs()
			refs = append(refs, progRef{h, "from_wep", p.FromWep}, progRef{h, "to_wep", p.ToWep},
				progRef{h, "from_net", p.FromNet}, progRef{h, "xdp_from_net", p.XdpFromNet})
		}
		return refs
	}
	for round := range progRounds {
		for _, k := range []string{kindMargay, kindMargayBare, kindMargayPolicy, kindMargayXDP} {
			t := tops[k]
			refs := refsOf(t)
			var s benchsuite.Sample
			var flows int
			tests := []struct {
				name string
				run  func() error
			}{
				{"stream", func() error { return t.stream(streamSec, &s) }},
				{"rr", func() error { return t.rr(time.Second, &s) }},
				{"crr", func() error { return t.crr(time.Second, &s) }},
				{"new flows", func() (err error) { flows, err = t.newFlows(time.Second); return err }},
			}
			for _, test := range tests {
				if test.name == "stream" && round > 0 {
					continue // one stream is enough: it is not a goal
				}
				if test.name == "new flows" && k == kindMargayPolicy {
					continue // the rules allow TCP only
				}
				before := map[*ebpf.Program]*ebpf.ProgramStats{}
				for _, ref := range refs {
					st, err := ref.p.Stats()
					if err != nil {
						return figs, append(ev, fmt.Sprintf("program statistics: %v", err))
					}
					before[ref.p] = st
				}
				if err := test.run(); err != nil {
					tb.Fatal(err)
				}
				for _, ref := range refs {
					after, err := ref.p.Stats()
					if err != nil {
						tb.Fatal(err)
					}
					f := benchsuite.ProgramFigure{Topology: k, Test: test.name, Host: ref.h.name, Program: ref.name,
						Round: round, RunCount: after.RunCount - before[ref.p].RunCount}
					if f.RunCount == 0 {
						continue
					}
					f.NsPerRun = float64(after.Runtime-before[ref.p].Runtime) / float64(f.RunCount)
					if info, err := ref.p.Info(); err == nil {
						if n, err := info.TranslatedSize(); err == nil {
							f.XlatedInsns = n / 8
						}
						if n, err := info.JitedSize(); err == nil {
							f.JitedBytes = int(n)
						}
					}
					figs = append(figs, f)
				}
			}
			ev = append(ev, fmt.Sprintf("%s with BPF statistics on, round %d: RR %.0f/s, CRR %.0f/s, %d new UDP flows in 1 s.", k, round, s.RR, s.CRR, flows))
		}
	}
	return figs, ev
}

// offloadEvidence records the segmentation offloads of the uplinks in b, c and c-xdp: a veth whose peer
// has an XDP program loses them when the program cannot take multi-buffer frames.
func offloadEvidence(tb testing.TB, tops map[string]*topo) []string {
	tb.Helper()
	var ev []string
	for _, k := range []string{kindKernel, kindMargay, kindMargayXDP} {
		t := tops[k]
		for _, h := range []*host{t.hostA, t.hostB} {
			out, err := h.ns.Run("ethtool", "-k", uplink)
			if err != nil {
				ev = append(ev, fmt.Sprintf("ethtool -k unavailable: %v", err))
				return ev
			}
			var keep []string
			for _, line := range strings.Split(out, "\n") {
				line = strings.TrimSpace(line)
				for _, f := range []string{"tcp-segmentation-offload:", "generic-segmentation-offload:", "generic-receive-offload:", "tx-checksumming:"} {
					if strings.HasPrefix(line, f) {
						keep = append(keep, line)
					}
				}
			}
			ev = append(ev, fmt.Sprintf("%s, host %s, %s offloads: %s", k, h.name, uplink, strings.Join(keep, "; ")))
		}
	}
	return ev
}

// uplinkDrops is the packets the host's uplink dropped, both ways, so far.
func uplinkDrops(tb testing.TB, h *host) uint64 {
	tb.Helper()
	st := h.ns.Link(tb, uplink).Attrs().Statistics
	if st == nil {
		return 0
	}
	return st.TxDropped + st.RxDropped
}

// diagnostics runs the experiments behind the findings: the drops and retransmissions of a
// stream in b, c and c-xdp, and c-xdp's stream again with GRO switched on on both uplinks (veth
// with an XDP program runs NAPI and can rebuild large packets before from_net).
func diagnostics(tb testing.TB, tops map[string]*topo, streamSec int) []string {
	tb.Helper()
	var ev []string
	for _, k := range []string{kindKernel, kindMargay, kindMargayXDP} {
		t := tops[k]
		d0 := uplinkDrops(tb, t.hostA) + uplinkDrops(tb, t.hostB)
		var s benchsuite.Sample
		if err := t.stream(streamSec, &s); err != nil {
			tb.Fatal(err)
		}
		d := uplinkDrops(tb, t.hostA) + uplinkDrops(tb, t.hostB) - d0
		ev = append(ev, fmt.Sprintf("%s: one more %d s stream: %.2f Gbit/s, %g TCP retransmissions, %d packets dropped by the ens32 veths.", k, streamSec, s.StreamGbps, s.StreamRetrans, d))
	}
	t := tops[kindMargayXDP]
	for _, h := range []*host{t.hostA, t.hostB} {
		if _, err := h.ns.Run("ethtool", "-K", uplink, "gro", "on"); err != nil {
			return append(ev, fmt.Sprintf("GRO experiment impossible: %v", err))
		}
	}
	var v []float64
	var retrans []float64
	for range 3 {
		var s benchsuite.Sample
		if err := t.stream(streamSec, &s); err != nil {
			tb.Fatal(err)
		}
		v, retrans = append(v, s.StreamGbps), append(retrans, s.StreamRetrans)
	}
	for _, h := range []*host{t.hostA, t.hostB} {
		_, _ = h.ns.Run("ethtool", "-K", uplink, "gro", "off")
	}
	st := benchsuite.Summarize(v)
	ev = append(ev, fmt.Sprintf("c-xdp with `ethtool -K ens32 gro on` on both hosts (an experiment after the rounds, switched back off): stream %.2f Gbit/s (median of 3, %.2f–%.2f), retransmissions %v.", st.Med, st.Min, st.Max, retrans))
	return ev
}

// perfProfiles records `perf record -a -g` across an RR and a stream in b-empty, c and c-xdp
// and keeps the flat profile (self time by symbol, above 0.5%) next to the plots.
func perfProfiles(tb testing.TB, tops map[string]*topo, dir, rel string) []string {
	tb.Helper()
	if _, err := exec.LookPath("perf"); err != nil {
		return []string{"perf is missing: no profiles (apt-get install linux-perf)."}
	}
	var ev []string
	tmp := tb.TempDir()
	for _, k := range []string{kindKernel, kindMargay, kindMargayXDP} {
		t := tops[k]
		for _, test := range []string{"rr", "stream"} {
			data := filepath.Join(tmp, k+"-"+test+".data")
			rec := exec.Command("perf", "record", "-a", "-g", "-q", "-o", data, "--", "sleep", "2")
			if err := rec.Start(); err != nil {
				return append(ev, fmt.Sprintf("perf record: %v", err))
			}
			time.Sleep(100 * time.Millisecond)
			var s benchsuite.Sample
			var err error
			if test == "rr" {
				err = t.rr(1800*time.Millisecond, &s)
			} else {
				err = t.stream(2, &s)
			}
			if werr := rec.Wait(); werr != nil {
				return append(ev, fmt.Sprintf("perf record: %v", werr))
			}
			if err != nil {
				tb.Fatal(err)
			}
			out, err := exec.Command("perf", "report", "-i", data, "--no-children", "--sort", "symbol",
				"--stdio", "-g", "none", "--percent-limit", "0.5").Output()
			if err != nil {
				return append(ev, fmt.Sprintf("perf report: %v", err))
			}
			name := fmt.Sprintf("perf-%s-%s.txt", k, test)
			if err := os.WriteFile(filepath.Join(dir, name), out, 0o644); err != nil {
				tb.Fatal(err)
			}
			ev = append(ev, fmt.Sprintf("perf profile of %s during %s (`perf record -a -g`, self time by symbol): [%s](%s/%s)", k, test, name, rel, name))
		}
	}
	return ev
}

var controlCommands = []string{
	"go test -run '^$' -bench CNIAdd -benchtime 1x -count 1 ./cmd/margay-cni/",
	"go test -run '^$' -bench EventToMap -benchtime 3x -count 1 ./control/agent/",
	// Issue 18: BGP at 1k, 10k and 30k routes (about 1.5 minutes; BENCH_BGP_100K=1 adds 100k,
	// about a minute more), policy compilation (15 s), and one host with 1,000 workloads (about
	// six minutes, most of it making and removing the workloads through the CNI plugin;
	// BENCH_HOST=0 skips it).
	"go test -run '^$' -bench BGPScale -benchtime 1x -count 3 ./tests/cluster/",
	"go test -run '^$' -bench PolicyCompile -count 3 ./control/agent/",
	"go test -run '^$' -bench HostWorkloads -benchtime 1x -count 1 ./tests/cluster/",
}

const bpfCommand = "go test -run '^$' -bench . -count 1 ./tests/bpfbench/"

// dockerCommand is issue 21's benchmark, docker run until reachable (docker_test.go).
const dockerCommand = "go test -run '^$' -bench DockerRun -benchtime 1x -count 1 -timeout 40m ./tests/benchsuite/"

func goTest(command string) (string, error) {
	// The go that runs this benchmark (make passes $(GO) through GO), else the one on PATH.
	gobin := os.Getenv("GO")
	if gobin == "" {
		gobin = "go"
	}
	args := strings.Fields(strings.ReplaceAll(command, "'", ""))[1:]
	cmd := exec.Command(gobin, args...)
	cmd.Dir = "../.."
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// runExtras runs the BPF_PROG_TEST_RUN benchmark and the control-plane benchmarks of the other
// issues as `go test` processes and parses their figures.
func runExtras(tb testing.TB, r *benchsuite.Report) {
	tb.Helper()
	r.BPFCommand = bpfCommand
	start := time.Now()
	out, err := goTest(bpfCommand)
	r.BPF = benchsuite.ParseBPFBench(out)
	r.BPFNote = fmt.Sprintf("Took %v.", time.Since(start).Round(time.Second))
	if err != nil || len(r.BPF) == 0 {
		r.BPFNote = fmt.Sprintf("The benchmark failed: %v. %s", err, lastLines(out, 5))
	}
	runDocker(tb, r)
	var notes []string
	for _, c := range controlCommands {
		if os.Getenv("BENCH_HOST") == "0" && strings.Contains(c, "HostWorkloads") {
			notes = append(notes, fmt.Sprintf("`%s` skipped (BENCH_HOST=0).", c))
			continue
		}
		start := time.Now()
		out, err := goTest(c)
		figs := benchsuite.ParseMetrics(out, c)
		if err != nil || len(figs) == 0 {
			notes = append(notes, fmt.Sprintf("`%s` failed after %v: %v: %s", c, time.Since(start).Round(time.Second), err, lastLines(out, 3)))
			continue
		}
		r.Control = append(r.Control, figs...)
		notes = append(notes, fmt.Sprintf("`%s` took %v.", c, time.Since(start).Round(time.Second)))
	}
	r.ControlNote = "CNI ADD: time from the plugin's start to its result, per pod (p50/p99); in HostWorkloads with 1,000 workloads present, without (nowait) and with (wait) policySetupTimeout. Event-to-map: time from a datastore write to the dataplane map entry (HostWorkloads: add and delete, under 1,000 workloads and policies). BGPScale: s is from the BGP session's establishment until every route is in the routes map and the kernel table, s-from-start from BIRD's start (BIRD's start-up and the session's set-up, about 0.9 s, included), MiB-RSS the agent's resident memory after. HostWorkloads: ms-full-pass and ms-compile are the means over the periodic full passes of a 30 s idle window, %CPU-idle the agent's CPU in it. " + strings.Join(notes, " ")
}

// runDocker runs the docker run benchmark (BenchmarkDockerRun) as a go test process, which
// writes its results beside the plots for render; BENCH_DOCKER=0 leaves it out.
func runDocker(tb testing.TB, r *benchsuite.Report) {
	tb.Helper()
	if os.Getenv("BENCH_DOCKER") == "0" {
		r.DockerNote = "This run of the suite left it out (BENCH_DOCKER=0)."
		return
	}
	start := time.Now()
	out, err := goTest(dockerCommand)
	if err != nil {
		r.DockerNote = fmt.Sprintf("This run of the suite (%s) could not measure it: `%s` failed after %v: %v: %s",
			r.Generated.UTC().Format("2006-01-02 15:04 UTC"), dockerCommand, time.Since(start).Round(time.Second), err, lastLines(out, 3))
		return
	}
	d, err := benchsuite.LoadDockerRun(filepath.Join(plotsDir(), dockerResults))
	if err != nil || d.Generated.Before(start) {
		// The benchmark passed but its results could not be written or read (or are older than this run).
		r.DockerNote = fmt.Sprintf("This run of the suite (%s) has no results from `%s` (%v): %s",
			r.Generated.UTC().Format("2006-01-02 15:04 UTC"), dockerCommand, err, lastLines(out, 3))
		return
	}
	r.DockerGenerated = d.Generated
	r.DockerNote = fmt.Sprintf("It took %v in this run of the suite.", time.Since(start).Round(time.Second))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

func machine() []string {
	var out []string
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		out = append(out, "kernel: "+unix.ByteSliceToString(u.Release[:]))
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				_, cpu, _ = strings.Cut(l, ":")
				break
			}
		}
	}
	out = append(out, fmt.Sprintf("CPUs: %d × %s", runtime.NumCPU(), strings.TrimSpace(cpu)))
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		l, _, _ := strings.Cut(string(b), "\n")
		out = append(out, "memory: "+strings.Join(strings.Fields(l)[1:], " "))
	}
	out = append(out, "Go: "+runtime.Version())
	for _, c := range [][]string{{"iperf3", "--version"}, {"iptables", "-V"}} {
		if o, err := exec.Command(c[0], c[1:]...).Output(); err == nil {
			l, _, _ := strings.Cut(string(o), "\n")
			out = append(out, c[0]+": "+strings.TrimSpace(l))
		}
	}
	out = append(out, "a virtual machine shared with other work: CPU figures count the whole machine, and rounds interleave the topologies so that drift hits all of them alike.")
	return out
}

// TestControlPlot draws control-scale.png from the output of the control-plane benchmarks run
// by hand (`go test -bench ... | tee out.txt`), between two runs of the suite:
// BENCH_CONTROL_OUT=out.txt go test -run ControlPlot ./tests/benchsuite/ (into BENCH_PLOTS,
// ../../docs/bench by default). Without BENCH_CONTROL_OUT it does nothing.
func TestControlPlot(t *testing.T) {
	in := os.Getenv("BENCH_CONTROL_OUT")
	if in == "" {
		t.Skip("BENCH_CONTROL_OUT not set")
	}
	plots := cmp.Or(os.Getenv("BENCH_PLOTS"), "../../docs/bench")
	raw, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	r := &benchsuite.Report{Control: benchsuite.ParseMetrics(string(raw), "")}
	ok, err := r.ControlPlot(filepath.Join(plots, "control-scale.png"), "s", "MiB-RSS", "ms/compile")
	if err != nil || !ok {
		t.Fatalf("plot: %v %v", ok, err)
	}
	for _, row := range r.ControlSummary() {
		t.Logf("%s %s: median %.4g, %.4g–%.4g, %d runs", row.Name, row.Unit, row.Med, row.Min, row.Max, row.Runs)
	}
}
