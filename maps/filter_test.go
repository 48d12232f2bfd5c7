package maps_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

func TestFlowFilter(t *testing.T) {
	a, p := netip.MustParseAddr, netip.MustParsePrefix
	// A TCP flow initiated by 198.19.0.5 towards 198.18.0.1.
	fl := maps.Flow{Protocol: unix.IPPROTO_TCP, Src: a("198.19.0.5"), Dst: a("198.18.0.1"), SrcPort: 40000, DstPort: 80}
	for _, tc := range []struct {
		name string
		f    maps.FlowFilter
		want bool
	}{
		{"zero", maps.FlowFilter{}, true},
		{"initiator", maps.FlowFilter{Src: p("198.19.0.5/32")}, true},
		{"initiator's network", maps.FlowFilter{Src: p("198.19.0.0/16")}, true},
		{"the responder is no source", maps.FlowFilter{Src: p("198.18.0.1/32")}, false},
		{"responder", maps.FlowFilter{Dst: p("198.18.0.0/24")}, true},
		{"other responder", maps.FlowFilter{Dst: p("198.19.0.0/16")}, false},
		{"protocol", maps.FlowFilter{Protocol: unix.IPPROTO_TCP}, true},
		{"other protocol", maps.FlowFilter{Protocol: unix.IPPROTO_UDP}, false},
		{"all three", maps.FlowFilter{Src: p("198.19.0.0/24"), Dst: p("198.18.0.1/32"), Protocol: unix.IPPROTO_TCP}, true},
		{"all but one", maps.FlowFilter{Src: p("198.19.0.0/24"), Dst: p("198.18.0.1/32"), Protocol: unix.IPPROTO_ICMP}, false},
	} {
		if got := tc.f.Flow(fl); got != tc.want {
			t.Errorf("%s: Flow = %v, want %v", tc.name, got, tc.want)
		}
		// An event of the same packet is selected alike.
		ev := maps.Event{Protocol: fl.Protocol, Src: fl.Src, Dst: fl.Dst, HasPorts: true, SrcPort: fl.SrcPort, DstPort: fl.DstPort}
		if got := tc.f.Event(ev); got != tc.want {
			t.Errorf("%s: Event = %v, want %v", tc.name, got, tc.want)
		}
		// A packet without an IPv4 header only by the zero filter.
		if got := tc.f.Event(maps.Event{}); got != tc.f.IsZero() {
			t.Errorf("%s: Event of a non-IPv4 packet = %v, want %v", tc.name, got, tc.f.IsZero())
		}
	}
}

func TestEventFilter(t *testing.T) {
	spoofed := maps.Reason(loader.MargayReasonREASON_DROP_SPOOFED)
	deliver := maps.Reason(loader.MargayReasonREASON_PASS_DELIVER)
	drop := maps.Event{Kind: maps.EventDrop, Ifindex: 7, Hook: maps.HookFromWep, Reason: spoofed, Protocol: unix.IPPROTO_UDP,
		Src: netip.MustParseAddr("198.19.0.7"), Dst: netip.MustParseAddr("198.19.0.9")}
	trace := maps.Event{Kind: maps.EventTrace, Ifindex: 7, Hook: maps.HookToWep, Reason: deliver}
	// A policy log event of the dropped packet: no reason of its own.
	log := drop
	log.Kind, log.Reason, log.Rule = maps.EventPolicyLog, 0, 12
	for _, tc := range []struct {
		name             string
		f                maps.EventFilter
		drop, trace, log bool
	}{
		{"zero", maps.EventFilter{}, true, true, true},
		{"drops only", maps.EventFilter{Kind: maps.EventDrop}, true, false, false},
		{"logs only", maps.EventFilter{Kind: maps.EventPolicyLog}, false, false, true},
		{"reasons", maps.EventFilter{Reasons: []maps.Reason{deliver, spoofed}}, true, true, false},
		{"one reason", maps.EventFilter{Reasons: []maps.Reason{deliver}}, false, true, false},
		{"hook", maps.EventFilter{Hooks: []maps.Hook{maps.HookFromWep}}, true, false, true},
		// HookFromWep is 0: a hook given is a hook matched, not "any".
		{"hook 0", maps.EventFilter{Hooks: []maps.Hook{maps.HookToWep}}, false, true, false},
		{"interface", maps.EventFilter{Ifindex: 7}, true, true, true},
		{"other interface", maps.EventFilter{Ifindex: 8}, false, false, false},
		{"protocol: only the IPv4 packet", maps.EventFilter{Flow: maps.FlowFilter{Protocol: unix.IPPROTO_UDP}}, true, false, true},
		{"source", maps.EventFilter{Flow: maps.FlowFilter{Src: netip.MustParsePrefix("198.18.0.0/16")}}, false, false, false},
	} {
		if got := tc.f.Match(drop); got != tc.drop {
			t.Errorf("%s: Match(drop) = %v, want %v", tc.name, got, tc.drop)
		}
		if got := tc.f.Match(trace); got != tc.trace {
			t.Errorf("%s: Match(trace) = %v, want %v", tc.name, got, tc.trace)
		}
		if got := tc.f.Match(log); got != tc.log {
			t.Errorf("%s: Match(log) = %v, want %v", tc.name, got, tc.log)
		}
	}
}

func TestParseReason(t *testing.T) {
	for _, s := range []string{"DROP_SPOOFED", "drop_spoofed", " REASON_DROP_SPOOFED ", "reason_drop_spoofed"} {
		if r, err := maps.ParseReason(s); err != nil || r != maps.Reason(loader.MargayReasonREASON_DROP_SPOOFED) {
			t.Errorf("ParseReason(%q) = %v, %v; want DROP_SPOOFED", s, r, err)
		}
	}
	for _, r := range maps.Reasons() {
		if got, err := maps.ParseReason(r.String()); err != nil || got != r {
			t.Errorf("ParseReason(%q) = %v, %v", r, got, err)
		}
	}
	_, err := maps.ParseReason("DROP_NOPE")
	if err == nil || !strings.HasPrefix(err.Error(), "unknown reason (one of ") || !strings.Contains(err.Error(), "DROP_SPOOFED, ") ||
		strings.Contains(err.Error(), "UNSPEC") || strings.Contains(err.Error(), "DROP_NOPE") {
		t.Errorf("ParseReason(DROP_NOPE) error = %v; want the reasons there are, UNSPEC aside", err)
	}
}

// Every hook the programs count and emit events under (HOOK_* in bpf/*.c) parses, by its C name
// and by the name String writes, and every hook of the table parses back from its name.
func TestParseHook(t *testing.T) {
	srcs, err := filepath.Glob("../bpf/*.c")
	if err != nil || len(srcs) == 0 {
		t.Fatalf("no BPF sources in ../bpf: %v", err)
	}
	emitted := map[string]bool{}
	for _, src := range srcs {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range regexp.MustCompile(`\bHOOK_[A-Z0-9_]+\b`).FindAllString(string(b), -1) {
			emitted[name] = true
		}
	}
	for _, want := range []string{"HOOK_FROM_WEP", "HOOK_TO_WEP", "HOOK_FROM_NET", "HOOK_XDP_FROM_NET", "HOOK_NF_POLICY"} {
		if !emitted[want] {
			t.Errorf("%s not found in bpf/*.c: does the scan still find the hooks?", want)
		}
	}
	for name := range emitted {
		short := strings.ToLower(strings.TrimPrefix(name, "HOOK_"))
		for _, s := range []string{name, short, strings.ToUpper(short)} {
			if h, err := maps.ParseHook(s); err != nil || h.String() != short {
				t.Errorf("ParseHook(%q) = %v, %v; want %s", s, h, err, short)
			}
		}
	}
	if h, err := maps.ParseHook("nf_policy"); err != nil || h != maps.HookNFPolicy {
		t.Errorf("ParseHook(nf_policy) = %v, %v; want HookNFPolicy", h, err)
	}
	for _, h := range maps.Hooks() {
		if got, err := maps.ParseHook(h.String()); err != nil || got != h {
			t.Errorf("ParseHook(%q) = %v, %v", h, got, err)
		}
	}
	_, err = maps.ParseHook("to_net")
	if err == nil || err.Error() != "unknown hook (one of from_wep, to_wep, from_net, xdp_from_net, nf_policy)" {
		t.Errorf("ParseHook(to_net) error = %v; want the hooks there are", err)
	}
}

func TestEventText(t *testing.T) {
	e := maps.Event{Kind: maps.EventDrop, Ifindex: 3, Hook: maps.HookFromNet, Reason: maps.Reason(loader.MargayReasonREASON_DROP_SPOOFED),
		Protocol: unix.IPPROTO_UDP, Src: netip.MustParseAddr("198.19.0.7"), Dst: netip.MustParseAddr("198.19.0.9"), Len: 58}
	for _, tc := range []struct {
		name     string
		e        maps.Event
		src, dst string
	}{
		{"no IPv4 header", maps.Event{}, "-", "-"},
		{"no ports", e, "198.19.0.7", "198.19.0.9"},
		{"ports", func() maps.Event { e := e; e.HasPorts, e.SrcPort, e.DstPort = true, 40000, 53; return e }(), "198.19.0.7:40000", "198.19.0.9:53"},
	} {
		if src, dst := tc.e.Addrs(); src != tc.src || dst != tc.dst {
			t.Errorf("%s: Addrs = %q, %q; want %q, %q", tc.name, src, dst, tc.src, tc.dst)
		}
	}
	if got, want := e.String(), "drop 3 from_net DROP_SPOOFED udp 198.19.0.7 -> 198.19.0.9 58"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	// A protocol without a name is its number, as hostconv.ProtocolName writes it.
	gre := e
	gre.Protocol = 47
	if got, want := gre.String(), "drop 3 from_net DROP_SPOOFED 47 198.19.0.7 -> 198.19.0.9 58"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if got, want := (maps.Flow{Protocol: 47, Src: e.Src, Dst: e.Dst}).String(), "47 198.19.0.7:0 -> 198.19.0.9:0 "; !strings.HasPrefix(got, want) {
		t.Errorf("Flow.String = %q, want it to start with %q", got, want)
	}
	// A policy log event reads as Calico's Log lines do, with the rule.
	log := e
	log.Kind, log.Reason, log.Rule = maps.EventPolicyLog, 0, 12
	log.Protocol, log.HasPorts, log.SrcPort, log.DstPort = unix.IPPROTO_TCP, true, 40000, 80
	if got, want := log.String(), "log rule=12 IN=3 HOOK=from_net SRC=198.19.0.7 DST=198.19.0.9 LEN=58 PROTO=TCP SPT=40000 DPT=80"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	log.Protocol, log.HasPorts = unix.IPPROTO_ICMP, false
	if got, want := log.LogLine("cali0a"), "log rule=12 IN=cali0a HOOK=from_net SRC=198.19.0.7 DST=198.19.0.9 LEN=58 PROTO=ICMP"; got != want {
		t.Errorf("LogLine = %q, want %q", got, want)
	}
	if got := maps.EventPolicyLog.String(); got != "log" {
		t.Errorf("EventPolicyLog.String() = %q, want log", got)
	}
	before := maps.EventsLost{RateLimited: 5, BufferFull: 1}
	if got := (maps.EventsLost{RateLimited: 9, BufferFull: 1}).Since(before); got != (maps.EventsLost{RateLimited: 4}) || got.Total() != 4 {
		t.Errorf("Since = %+v", got)
	}
}
