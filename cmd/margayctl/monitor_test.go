package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/margaynet/margay/control/agentapi"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

// udpFrame is an Ethernet frame with an IPv4 UDP datagram from src:40000 to dst:53.
func udpFrame(src, dst string) []byte {
	b := make([]byte, 14+20+8+16)
	copy(b[0:6], []byte{0xee, 0xee, 0xee, 0xee, 0xee, 0xee})
	copy(b[6:12], []byte{0x0a, 0x58, 0xc6, 0x13, 0x00, 0x01})
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(b)-14))
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(b[34:], 40000)
	binary.BigEndian.PutUint16(b[36:], 53)
	binary.BigEndian.PutUint16(b[38:], 8+16)
	return b
}

// monitorctl runs margayctl and returns what it wrote to stdout and to stderr.
func monitorctl(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newRoot()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

// TestMonitor runs the programs in the background (test runs on lo, ifindex 1) while margayctl
// monitor reads their events: a workload on lo sends from an address not its own (DROP_SPOOFED
// in from_wep), and the host delivers to it (PASS_DELIVER in to_wep, traced only with --trace).
func TestMonitor(t *testing.T) {
	root := netns.BPFFS(t)
	d, err := loader.Load(loader.WithRoot(root))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := maps.FromDataplane(d).Endpoints.Put(maps.Endpoint{Ifindex: 1, IPv4: netip.MustParseAddr("198.19.0.1"),
		MAC: []byte{0x0a, 0x58, 0xc6, 0x13, 0x00, 0x01}}); err != nil {
		t.Fatal(err)
	}
	ev := maps.EventsFromDataplane(d)
	spoofed := udpFrame("198.19.0.7", "198.19.0.9")
	delivered := udpFrame("198.18.0.1", "198.19.0.1")

	var (
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		sawTrace atomic.Bool
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			for _, run := range []struct {
				prog    *ebpf.Program
				frame   []byte
				verdict uint32
			}{{d.Programs().FromWep, spoofed, 2}, {d.Programs().ToWep, delivered, 0}} {
				v, err := run.prog.Run(&ebpf.RunOptions{Data: run.frame})
				if err != nil || v != run.verdict {
					t.Errorf("run %v: verdict %d, %v; want %d", run.prog, v, err, run.verdict)
					return
				}
			}
			if on, _ := ev.Trace(); on {
				sawTrace.Store(true)
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()

	// No agent names the rules (a port nothing listens on), unless a run says --agent.
	run := func(args ...string) (string, string) {
		t.Helper()
		if !slices.Contains(args, "--agent") {
			args = append(args, "--agent", "127.0.0.1:1")
		}
		out, errOut, err := monitorctl(t, append([]string{"--bpffs-root", root, "monitor"}, args...)...)
		if err != nil {
			t.Fatalf("margayctl monitor %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out, errOut
	}

	// Table: a header, then one line per event; drops only while tracing is off.
	out, errOut := run("--count", "3")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "TIME INTERFACE HOOK REASON PROTO SRC -> DST LEN" {
		t.Fatalf("monitor --count 3:\n%s", out)
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if got := strings.Join(f[1:], " "); got != "lo from_wep DROP_SPOOFED udp 198.19.0.7:40000 -> 198.19.0.9:53 58" {
			t.Errorf("event line %q", l)
		}
		if _, err := time.Parse("15:04:05.000000", f[0]); err != nil {
			t.Errorf("event time %q: %v", f[0], err)
		}
	}
	if !strings.Contains(errOut, "3 events shown; the dataplane lost 0 events") {
		t.Errorf("monitor summary: %q", errOut)
	}

	// JSON lines, through every filter.
	out, _ = run("--count", "2", "-o", "json", "--reason", "drop_spoofed,DROP_NO_ENDPOINT", "--hook", "from_wep",
		"--interface", "lo", "--src", "198.19.0.0/24", "--dst", "198.19.0.9", "--proto", "udp")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("monitor --count 2 -o json:\n%s", out)
	}
	for _, l := range lines {
		var e eventJSON
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		if e.Kind != "drop" || e.Interface != "lo" || e.Ifindex != 1 || e.Hook != "from_wep" || e.Reason != "DROP_SPOOFED" ||
			e.Proto != "udp" || e.Src != "198.19.0.7" || e.SrcPort != 40000 || e.Dst != "198.19.0.9" || e.DstPort != 53 ||
			e.Len != 58 || time.Since(e.Time) > time.Minute || time.Since(e.Time) < 0 {
			t.Errorf("event %+v", e)
		}
	}

	// Filters that match nothing: only --duration ends the command.
	for _, args := range [][]string{
		{"--reason", "DROP_NO_WORKLOAD"}, {"--hook", "to_wep"}, {"--src", "198.18.0.0/24"}, {"--proto", "tcp"},
		{"--interface", "2"}, {"--dst", "198.19.0.1"},
	} {
		start := time.Now()
		out, errOut := run(append(args, "--duration", "200ms")...)
		if el := time.Since(start); el < 200*time.Millisecond || el > 5*time.Second {
			t.Errorf("monitor %s --duration 200ms took %v", strings.Join(args, " "), el)
		}
		if n := len(strings.Split(strings.TrimSpace(out), "\n")); n != 1 || !strings.Contains(errOut, "0 events shown") {
			t.Errorf("monitor %s:\n%s%s", strings.Join(args, " "), out, errOut)
		}
	}

	// --trace: trace events while it runs, and the setting off again after.
	out, _ = run("--trace", "--count", "2", "--hook", "to_wep", "-o", "json")
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var e eventJSON
		if err := json.Unmarshal([]byte(l), &e); err != nil || e.Kind != "trace" || e.Reason != "PASS_DELIVER" ||
			e.Src != "198.18.0.1" || e.Dst != "198.19.0.1" {
			t.Errorf("trace event %q (%v)", l, err)
		}
	}
	if on, err := ev.Trace(); err != nil || on {
		t.Errorf("tracing after monitor --trace: %v, %v; want off", on, err)
	}
	if !sawTrace.Load() {
		t.Error("tracing was never seen on while monitor --trace ran")
	}

	// Tracing left on by someone else: a note, and --drops-only hides the trace events.
	if _, err := ev.SetTrace(true); err != nil {
		t.Fatal(err)
	}
	out, errOut = run("--drops-only", "--count", "5", "-o", "json")
	if strings.Contains(out, `"trace"`) || strings.Count(out, `"DROP_SPOOFED"`) != 5 || !strings.Contains(errOut, "tracing is on") {
		t.Errorf("monitor --drops-only with tracing on:\n%s%s", out, errOut)
	}
	if on, _ := ev.Trace(); !on {
		t.Error("monitor without --trace turned tracing off")
	}
	if _, err := ev.SetTrace(false); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{
		{"--trace", "--drops-only"}, {"--hook", "ingress"}, {"--reason", "DROP_NOPE"}, {"--interface", "nosuchif0"},
		{"--src", "nope"}, {"--proto", "bogus"}, {"--count", "-1"}, {"-o", "yaml"},
	} {
		if out, errOut, err := monitorctl(t, append([]string{"--bpffs-root", root, "monitor", "--duration", "1s"}, args...)...); err == nil {
			t.Errorf("monitor %s succeeded:\n%s%s", strings.Join(args, " "), out, errOut)
		}
	}
	if _, _, err := monitorctl(t, "--bpffs-root", root+"/nothing", "monitor", "--duration", "1s"); err == nil {
		t.Error("monitor of a root without pins succeeded")
	}
}

// TestMonitorPolicyLog: a Log rule in the receiver's ingress policy logs the first packet of every
// flow the host delivers to it (to_wep on lo, a new source port each time): monitor prints these
// policy log events with the rule, in the table and as JSON, and --logs-only keeps them alone
// among trace events.
func TestMonitorPolicyLog(t *testing.T) {
	const program, rule, logRule = 5, 3, 12
	root := netns.BPFFS(t)
	d, err := loader.Load(loader.WithRoot(root))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	set := maps.FromDataplane(d)
	wep := netip.MustParseAddr("198.19.0.1")
	if err := set.Routes.Put(maps.Route{Prefix: netip.PrefixFrom(wep, 32), Flags: maps.LocalWorkload, Ifindex: 1}); err != nil {
		t.Fatal(err)
	}
	if err := set.Endpoints.Put(maps.Endpoint{Ifindex: 1, IPv4: wep, MAC: []byte{0x0a, 0x58, 0xc6, 0x13, 0x00, 0x01},
		IngressProgram: program}); err != nil {
		t.Fatal(err)
	}
	// No policy_ips: every peer has identity 0.
	if err := set.Policy.Put(maps.PolicyKey{Program: program, AllProtocols: true},
		maps.PolicyValue{Action: maps.ActionAllow, Rule: rule, Log: logRule}); err != nil {
		t.Fatal(err)
	}
	ev := maps.EventsFromDataplane(d)

	var (
		stop = make(chan struct{})
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		frame := udpFrame("198.18.0.1", wep.String())
		for sport := uint16(1024); ; sport++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			binary.BigEndian.PutUint16(frame[34:], sport) // a new flow: UDP without a checksum
			if v, err := d.Programs().ToWep.Run(&ebpf.RunOptions{Data: frame}); err != nil || v != 0 {
				t.Errorf("run to_wep: verdict %d, %v; want TC_ACT_OK", v, err)
				return
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()

	// No agent names the rules (a port nothing listens on), unless a run says --agent.
	run := func(args ...string) (string, string) {
		t.Helper()
		if !slices.Contains(args, "--agent") {
			args = append(args, "--agent", "127.0.0.1:1")
		}
		out, errOut, err := monitorctl(t, append([]string{"--bpffs-root", root, "monitor"}, args...)...)
		if err != nil {
			t.Fatalf("margayctl monitor %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
		return out, errOut
	}

	out, _ := run("--count", "2")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("monitor --count 2:\n%s", out)
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != 10 || strings.Join(f[1:6], " ") != "lo to_wep LOG rule=12 udp" || !strings.HasPrefix(f[6], "198.18.0.1:") ||
			strings.Join(f[7:], " ") != "-> 198.19.0.1:53 58" {
			t.Errorf("log event line %q", l)
		}
	}

	// With the agent's names of the rules (its /policy/rules, served here as the agent serves it).
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != agentapi.PathPolicyRules {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(map[uint32]agentapi.Rule{
			logRule: {Policy: "prod/web", Direction: "ingress", Index: 0}, rule: {Profile: "net1", Direction: "ingress", Index: 2}})
	}))
	defer agent.Close()
	out, _ = run("--count", "1", "--agent", strings.TrimPrefix(agent.URL, "http://"))
	if f := strings.Fields(strings.Split(strings.TrimSpace(out), "\n")[1]); len(f) < 6 || strings.Join(f[3:5], " ") != "LOG prod/web/ingress/0" {
		t.Errorf("log event line with the agent's names:\n%s", out)
	}
	out, _ = run("--count", "1", "-o", "json", "--agent", strings.TrimPrefix(agent.URL, "http://"))
	if !strings.Contains(out, `"rule":12,"ruleName":"prod/web/ingress/0"`) {
		t.Errorf("log event with the agent's names: %s", out)
	}

	out, _ = run("--count", "2", "-o", "json", "--hook", "to_wep", "--dst", "198.19.0.1")
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var e eventJSON
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		if e.Kind != "log" || e.Rule != logRule || e.Reason != "" || e.Interface != "lo" || e.Hook != "to_wep" ||
			e.Proto != "udp" || e.Src != "198.18.0.1" || e.SrcPort < 1024 || e.Dst != "198.19.0.1" || e.DstPort != 53 || e.Len != 58 {
			t.Errorf("log event %q", l)
		}
		if strings.Contains(l, `"reason"`) {
			t.Errorf("log event with a reason: %q", l)
		}
	}

	// Tracing on: each packet makes a trace event too; --logs-only shows the logs alone, and
	// --reason leaves them out.
	if _, err := ev.SetTrace(true); err != nil {
		t.Fatal(err)
	}
	out, _ = run("--logs-only", "--count", "4", "-o", "json")
	if strings.Count(out, `"kind":"log"`) != 4 || strings.Contains(out, `"trace"`) {
		t.Errorf("monitor --logs-only with tracing on:\n%s", out)
	}
	out, _ = run("--reason", "PASS_DELIVER", "--count", "4", "-o", "json")
	if strings.Count(out, `"kind":"trace"`) != 4 || strings.Contains(out, `"log"`) {
		t.Errorf("monitor --reason PASS_DELIVER with tracing on:\n%s", out)
	}
	if _, err := ev.SetTrace(false); err != nil {
		t.Fatal(err)
	}

	for _, args := range [][]string{{"--logs-only", "--drops-only"}, {"--logs-only", "--trace"}} {
		if out, errOut, err := monitorctl(t, append([]string{"--bpffs-root", root, "monitor", "--duration", "1s"}, args...)...); err == nil {
			t.Errorf("monitor %s succeeded:\n%s%s", strings.Join(args, " "), out, errOut)
		}
	}
}
