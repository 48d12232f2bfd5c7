package programs_test

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/margaynet/margay/maps"
)

// eventsOf wraps the world's event maps and starts a reader of its ring buffer.
func (w *world) eventsOf(tb testing.TB) (*maps.Events, *maps.EventReader) {
	tb.Helper()
	ev := maps.EventsFromDataplane(w.dp)
	r, err := ev.Reader()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.Close() })
	return ev, r
}

// drain returns every event the ring buffer holds now, without waiting for more.
func drain(tb testing.TB, r *maps.EventReader) []maps.Event {
	tb.Helper()
	r.SetDeadline(time.Now())
	var out []maps.Event
	for {
		e, err := r.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, e)
	}
}

func lost(tb testing.TB, ev *maps.Events) maps.EventsLost {
	tb.Helper()
	l, err := ev.Lost()
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

func setTrace(tb testing.TB, ev *maps.Events, on bool) {
	tb.Helper()
	if _, err := ev.SetTrace(on); err != nil {
		tb.Fatal(err)
	}
}

// runPassing runs each program on packets it forwards or passes, also under installPolicy.
func runPassing(tb testing.TB, w *world) {
	tb.Helper()
	for _, c := range []struct {
		p     program
		frame []byte
	}{
		{fromWep, fromWorkload(to(remoteDst))},
		{fromWep, fromWorkload(to(noRoute), udp())},
		{toWep, fromHost(tcp(), from(otherHost))},
		{toWep, arp(wepBMAC, hostVethMAC, true, wepA, wepB)},
		{fromNet, fromNetwork(to(remoteDst))},
		{xdpFromNet, fromNetwork()},
	} {
		verdict, _, err := w.run(c.p, c.p.iface(), c.frame)
		if err != nil {
			tb.Fatal(err)
		}
		if c.p == xdpFromNet && verdict != xdpPass || c.p != xdpFromNet && verdict == tcActShot {
			tb.Fatalf("%v dropped a packet meant to pass", c.p)
		}
	}
}

// TestEventReasons ties the programs' test for a drop (reason >= DROP_MALFORMED) to the names.
func TestEventReasons(t *testing.T) {
	for _, r := range maps.Reasons() {
		if r.Drop() != (r >= maps.Reason(dropMalformed)) {
			t.Errorf("reason %v (%d): the programs take it for a drop: %v, its name says %v", r, r, r >= maps.Reason(dropMalformed), r.Drop())
		}
	}
}

// TestDropEvents: each drop makes one event with the reason, the 5-tuple as the packet had it,
// the interface and the hook; packets that pass make none while tracing is off.
func TestDropEvents(t *testing.T) {
	w := newWorld(t)
	installPolicy(t, w)
	ev, r := w.eventsOf(t)
	udpPorts := func(e *maps.Event) { e.HasPorts, e.SrcPort, e.DstPort = true, 40000, 53 }
	tcpPorts := func(e *maps.Event) { e.HasPorts, e.SrcPort, e.DstPort = true, 40000, 80 }

	for _, tc := range []struct {
		name  string
		prog  program
		iface string
		in    []byte
		want  maps.Event // Kind, Ifindex, Hook and Len are filled in
		ports func(*maps.Event)
	}{
		{name: "from_wep spoofed TCP", prog: fromWep, in: fromWorkload(from(wepB), to(remoteDst), tcp()),
			want: maps.Event{Reason: maps.Reason(dropSpoofed), Protocol: 6, Src: wepB, Dst: remoteDst}, ports: tcpPorts},
		{name: "from_wep without endpoint", prog: fromWep, iface: caliC, in: fromWorkload(from(wepC), udp()),
			want: maps.Event{Reason: maps.Reason(dropNoEndpoint), Protocol: 17, Src: wepC, Dst: wepB}, ports: udpPorts},
		{name: "from_wep ingress policy (UDP)", prog: fromWep, in: fromWorkload(udp()),
			want: maps.Event{Reason: maps.Reason(dropPolicyIngress), Protocol: 17, Src: wepA, Dst: wepB}, ports: udpPorts},
		{name: "from_wep ingress policy (ICMP echo)", prog: fromWep, in: fromWorkload(),
			want: maps.Event{Reason: maps.Reason(dropPolicyIngress), Protocol: 1, Src: wepA, Dst: wepB}},
		{name: "to_wep IHL 4: addresses, no ports", prog: toWep, in: fromHost(udp(), versionIHL(0x44)),
			want: maps.Event{Reason: maps.Reason(dropMalformed), Protocol: 17, Src: thisHost, Dst: wepB}},
		{name: "from_net bad checksum", prog: fromNet, in: fromNetwork(udp(), badChecksum()),
			want: maps.Event{Reason: maps.Reason(dropMalformed), Protocol: 17, Src: remoteDst, Dst: wepB}, ports: udpPorts},
		{name: "xdp_from_net truncated IPv4 header: no addresses", prog: xdpFromNet, in: truncate(fromNetwork(), ethHeaderLen+ipv4MinLen-1),
			want: maps.Event{Reason: maps.Reason(dropMalformed)}},
		{name: "xdp_from_net spoofed", prog: xdpFromNet, in: fromNetwork(from(wepA), tcp()),
			want: maps.Event{Reason: maps.Reason(dropSpoofed), Protocol: 6, Src: wepA, Dst: wepB}, ports: tcpPorts},
		{name: "xdp_from_net no workload", prog: xdpFromNet, in: fromNetwork(to(unusedLocal), udp()),
			want: maps.Event{Reason: maps.Reason(dropNoWorkload), Protocol: 17, Src: remoteDst, Dst: unusedLocal}, ports: udpPorts},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iface := tc.iface
			if iface == "" {
				iface = tc.prog.iface()
			}
			start := time.Now()
			if _, _, err := w.run(tc.prog, iface, tc.in); err != nil {
				t.Fatal(err)
			}
			want := tc.want
			want.Kind, want.Ifindex, want.Hook, want.Len = maps.EventDrop, w.ifindex[iface], tc.prog.hook(), uint32(len(tc.in))
			if tc.ports != nil {
				tc.ports(&want)
			}
			got := drain(t, r)
			if len(got) != 1 {
				t.Fatalf("%d events, want 1: %v", len(got), got)
			}
			e := got[0]
			if e.Time.Before(start.Add(-time.Second)) || e.Time.After(time.Now().Add(time.Second)) {
				t.Errorf("event time %v, want about %v", e.Time, start)
			}
			e.Time = time.Time{}
			if e != want {
				t.Errorf("event\n got %+v\nwant %+v", e, want)
			}
		})
	}

	// Nothing but drops while tracing is off.
	runPassing(t, w)
	if got := drain(t, r); len(got) != 0 {
		t.Errorf("packets that passed made events with tracing off: %v", got)
	}
	if l := lost(t, ev); l.Total() != 0 {
		t.Errorf("lost %+v, want none", l)
	}
}

// TestTraceEvents runs every fixture with tracing on: each run still has its verdict, its one
// counter and its output, and makes exactly one event of its reason, or counts one as lost to
// the rate limit. Turning tracing off stops trace events.
func TestTraceEvents(t *testing.T) {
	w := newWorld(t)
	ev, r := w.eventsOf(t)
	setTrace(t, ev, true)
	if on, err := ev.Trace(); err != nil || !on {
		t.Fatalf("Trace() = %v, %v after SetTrace(true)", on, err)
	}
	var sent, traced int
	for _, fx := range allFixtures() {
		t.Run(fx.prog.String()+"/"+fx.name, func(t *testing.T) {
			iface := fx.iface
			if iface == "" {
				iface = fx.prog.iface()
			}
			if fx.setup != nil {
				fx.setup(t, w)
			}
			before, lostBefore := w.counters(t), lost(t, ev)
			verdict, out, err := w.run(fx.prog, iface, fx.in)
			if fx.refused {
				if err == nil {
					t.Fatal("the kernel ran a frame it used to refuse")
				}
				w.expectNothingCounted(t, before)
				if got := drain(t, r); len(got) != 0 || lost(t, ev) != lostBefore {
					t.Errorf("a refused frame made events %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if verdict != fx.verdict {
				t.Errorf("verdict %s, want %s", verdictName(fx.prog, verdict), verdictName(fx.prog, fx.verdict))
			}
			w.expectCounted(t, before, counterKey{w.ifindex[iface], fx.prog.hook(), maps.Reason(fx.reason)}, len(fx.in))
			checkOutput(t, fx.in, out, fx.out)

			kind := maps.EventTrace
			if maps.Reason(fx.reason).Drop() {
				kind = maps.EventDrop
			}
			got, l := drain(t, r), lost(t, ev)
			switch {
			case len(got) == 1 && l == lostBefore:
				e := got[0]
				if e.Kind != kind || e.Reason != maps.Reason(fx.reason) || e.Hook != fx.prog.hook() ||
					e.Ifindex != w.ifindex[iface] || e.Len != uint32(len(fx.in)) {
					t.Errorf("event %v, want a %v event of %v on %s, %d bytes", e, kind, maps.Reason(fx.reason), iface, len(fx.in))
				}
				sent++
				if kind == maps.EventTrace {
					traced++
				}
			case len(got) == 0 && l.RateLimited == lostBefore.RateLimited+1 && l.BufferFull == lostBefore.BufferFull:
			default:
				t.Errorf("events %v, lost %+v (before %+v): want one event or one lost", got, l, lostBefore)
			}
		})
	}
	if traced == 0 {
		t.Errorf("no trace events among %d", sent)
	}

	setTrace(t, ev, false)
	if on, err := ev.Trace(); err != nil || on {
		t.Fatalf("Trace() = %v, %v after SetTrace(false)", on, err)
	}
	if changed, err := ev.SetTrace(false); changed || err != nil {
		t.Errorf("SetTrace(false) again = %v, %v; want no change", changed, err)
	}
	runPassing(t, w)
	if got := drain(t, r); len(got) != 0 {
		t.Errorf("trace events after tracing was turned off: %v", got)
	}
}

// TestEventsRateLimit: a burst of drops far beyond the rate limit sends about EventsBurst events
// and counts the rest as lost; the verdict and the counter are those of every drop.
func TestEventsRateLimit(t *testing.T) {
	w := newWorld(t)
	ev, r := w.eventsOf(t)
	const runs = 5000
	frame := fromWorkload(from(wepB), to(remoteDst), udp())
	before := w.counters(t)

	opts := &ebpf.RunOptions{Data: frame, Repeat: runs,
		Context: skbContext{IngressIfindex: w.ifindex[caliA], Ifindex: w.ifindex[caliA]}}
	var verdict uint32
	start := time.Now()
	err := w.ns.Do(func() error {
		var err error
		verdict, err = w.prog(fromWep).Run(opts)
		return err
	})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if verdict != tcActShot {
		t.Errorf("verdict %s, want TC_ACT_SHOT", verdictName(fromWep, verdict))
	}
	grown, err := growth(before, w.counters(t))
	if err != nil {
		t.Error(err)
	}
	key := counterKey{w.ifindex[caliA], maps.HookFromWep, maps.Reason(dropSpoofed)}
	if len(grown) != 1 || grown[key] != (counterValue{runs, runs * uint64(len(frame))}) {
		t.Errorf("counters grew by %v, want %v by %d packets", grown, key, runs)
	}

	got, l := drain(t, r), lost(t, ev)
	// The runs share one CPU unless the scheduler moves the thread between two of them; each CPU
	// has its own bucket, which refills during the runs.
	refill := int(elapsed.Seconds()*maps.EventsRate) + 1
	maxSent := (maps.EventsBurst + refill) * ebpf.MustPossibleCPU()
	if len(got) < maps.EventsBurst || len(got) > maxSent {
		t.Errorf("%d events sent of %d drops in %v, want %d to %d", len(got), runs, elapsed, maps.EventsBurst, maxSent)
	}
	if uint64(len(got))+l.RateLimited != runs || l.BufferFull != 0 {
		t.Errorf("%d events sent and %+v lost of %d drops", len(got), l, runs)
	}
	for _, e := range got {
		if e.Kind != maps.EventDrop || e.Reason != maps.Reason(dropSpoofed) || e.Src != wepB || e.Dst != remoteDst || e.DstPort != 53 {
			t.Fatalf("event %v", e)
		}
	}
	t.Logf("%d drops in %v: %d events, %d lost", runs, elapsed, len(got), l.RateLimited)
}
