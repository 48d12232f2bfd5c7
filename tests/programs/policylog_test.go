package programs_test

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// The policy Log action (Calico's Log: count, send an event, go on). A policy value's Log names a
// Log rule that matched a flow before its deciding rule: the flow's first packet counts it in
// rule_hits as a deciding rule is counted and sends one policy log event; the flow's other packets,
// its replies and a re-check after a policy change do neither, and the verdict is the decider's.

// logEvent is the policy log event of Log rule rule for the packet p, as program h.prog sees it
// on h.iface.
func (w *world) logEvent(h hop, p pkt, rule uint32) maps.Event {
	e := maps.Event{Kind: maps.EventPolicyLog, Ifindex: w.ifindex[h.iface], Hook: h.prog.hook(), Protocol: p.proto,
		Src: p.src, Dst: p.dst, Len: uint32(len(h.frame(p))), Rule: rule}
	if p.proto == unix.IPPROTO_TCP || p.proto == unix.IPPROTO_UDP {
		e.HasPorts, e.SrcPort, e.DstPort = true, p.sport, p.dport
	}
	return e
}

// dropEvent is the drop event of p at h for reason.
func (w *world) dropEvent(h hop, p pkt, reason maps.Reason) maps.Event {
	e := w.logEvent(h, p, 0)
	e.Kind, e.Reason = maps.EventDrop, reason
	return e
}

// expectEvents requires that the ring buffer holds exactly want, in order (times aside, which
// must be about now), and takes them out.
func expectEvents(tb testing.TB, r *maps.EventReader, want ...maps.Event) {
	tb.Helper()
	got := drain(tb, r)
	ok := len(got) == len(want)
	for i := range got {
		if got[i].Time.Before(time.Now().Add(-time.Minute)) || got[i].Time.After(time.Now().Add(time.Second)) {
			tb.Errorf("event %v at %v, want about now", got[i], got[i].Time)
		}
		got[i].Time = time.Time{}
		if ok && got[i] != want[i] {
			ok = false
		}
	}
	if !ok {
		tb.Errorf("events\n got %+v\nwant %+v", got, want)
	}
}

func logEntry(prog uint32, proto uint8, port uint16, action maps.PolicyAction, rule, log uint32) policyEntry {
	e := portEntry(prog, identityAny, proto, port, action, rule)
	e.val.Log = log
	return e
}

func TestPolicyLog(t *testing.T) {
	const prog = 1

	// (a) and (b): Log then Allow. The first packet is allowed, counts both rules once and sends
	// one log event; the flow's next packets and its replies count the decider only.
	t.Run("allow", func(t *testing.T) {
		const rule, logRule = 7, 20
		w := policyWorld(t)
		_, r := w.eventsOf(t)
		w.putPolicy(t, denyAll(prog), logEntry(prog, unix.IPPROTO_TCP, 80, maps.ActionAllow, rule, logRule))
		w.setPrograms(t, caliA, 0, prog)

		syn := tcpPkt(wepA, 40000, wepB, 80, tcpSYN)
		n := w.send(t, "SYN allowed", sentByA, syn, fwdLocal)
		expectEvents(t, r, w.logEvent(sentByA, syn, logRule))
		w.expectRuleHits(t, rule, 1, n)
		w.expectRuleHits(t, logRule, 1, n)
		flow := flowOf(syn)
		flow.verdict, flow.state, flow.ruleEgress = maps.VerdictAllow, stSynSent, rule
		flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{n, 0}
		w.expectFlow(t, flow)

		w.send(t, "SYN-ACK from B", sentByB, tcpPkt(wepB, 80, wepA, 40000, tcpSYN|tcpACK), fwdLocal)
		w.send(t, "ACK from A", sentByA, tcpPkt(wepA, 40000, wepB, 80, tcpACK), fwdLocal)
		w.send(t, "the SYN again", sentByA, syn, fwdLocal)
		expectEvents(t, r)
		w.expectRuleHits(t, rule, 4, 4*n)
		w.expectRuleHits(t, logRule, 1, n)

		// Another flow logs on its own first packet.
		syn2 := tcpPkt(wepA, 40001, wepB, 80, tcpSYN)
		w.send(t, "another flow's SYN", sentByA, syn2, fwdLocal)
		expectEvents(t, r, w.logEvent(sentByA, syn2, logRule))
		w.expectRuleHits(t, rule, 5, 5*n)
		w.expectRuleHits(t, logRule, 2, 2*n)
		w.expectFlowCount(t, 2)
	})

	// Both ends' policies log: two events, egress first, each rule counted once.
	t.Run("egress and ingress", func(t *testing.T) {
		const progB, ruleA, ruleB, logA, logB = 2, 7, 8, 20, 21
		w := policyWorld(t)
		_, r := w.eventsOf(t)
		w.putPolicy(t, denyAll(prog), logEntry(prog, unix.IPPROTO_UDP, 53, maps.ActionAllow, ruleA, logA),
			denyAll(progB), logEntry(progB, unix.IPPROTO_UDP, 53, maps.ActionAllow, ruleB, logB))
		w.setPrograms(t, caliA, 0, prog)
		w.setPrograms(t, caliB, progB, 0)

		req := udpPkt(wepA, 40000, wepB, 53)
		n := w.send(t, "A to B:53", sentByA, req, fwdLocal)
		expectEvents(t, r, w.logEvent(sentByA, req, logA), w.logEvent(sentByA, req, logB))
		w.send(t, "B answers", sentByB, udpPkt(wepB, 53, wepA, 40000), fwdLocal)
		expectEvents(t, r)
		for _, c := range []struct{ rule, packets uint64 }{{ruleA, 2}, {ruleB, 2}, {logA, 1}, {logB, 1}} {
			w.expectRuleHits(t, uint32(c.rule), c.packets, c.packets*n)
		}

		// Where the flow comes from the network or the kernel, the event names that hook.
		in := udpPkt(remoteDst, 50000, wepB, 53)
		w.send(t, "from the network to B:53", fromUplink, in, fwdLocal)
		expectEvents(t, r, w.logEvent(fromUplink, in, logB))
		viaKernel := udpPkt(otherHost, 50001, wepB, 53)
		w.send(t, "the kernel delivers to B:53", kernelToB, viaKernel, passDeliver)
		expectEvents(t, r, w.logEvent(kernelToB, viaKernel, logB))
		w.expectRuleHits(t, logB, 3, 3*n)
	})

	// (c) Log then Deny: the packet is dropped as the deny rule says, after its log event, then
	// its drop event. A denied first packet leaves no entry, so each one logs.
	t.Run("deny", func(t *testing.T) {
		const denyRule, logRule = 9, 22
		w := policyWorld(t)
		_, r := w.eventsOf(t)
		w.putPolicy(t, denyAll(prog), logEntry(prog, unix.IPPROTO_TCP, 22, maps.ActionDeny, denyRule, logRule))
		w.setPrograms(t, caliA, 0, prog)

		syn := tcpPkt(wepA, 40000, wepB, 22, tcpSYN)
		n := w.send(t, "SYN denied", sentByA, syn, dropPolicyEgress)
		expectEvents(t, r, w.logEvent(sentByA, syn, logRule), w.dropEvent(sentByA, syn, maps.Reason(dropPolicyEgress)))
		w.expectRuleHits(t, denyRule, 1, n)
		w.expectRuleHits(t, logRule, 1, n)
		w.expectFlowCount(t, 0)

		w.send(t, "the SYN again, denied again", sentByA, syn, dropPolicyEgress)
		expectEvents(t, r, w.logEvent(sentByA, syn, logRule), w.dropEvent(sentByA, syn, maps.Reason(dropPolicyEgress)))
		w.expectRuleHits(t, denyRule, 2, 2*n)
		w.expectRuleHits(t, logRule, 2, 2*n)

		// A Log rule before the default deny (rule 0): logged, dropped.
		w.putPolicy(t, logEntry(prog, unix.IPPROTO_UDP, 53, maps.ActionDeny, 0, logRule))
		req := udpPkt(wepA, 40001, wepB, 53)
		w.send(t, "UDP denied by default", sentByA, req, dropPolicyEgress)
		expectEvents(t, r, w.logEvent(sentByA, req, logRule), w.dropEvent(sentByA, req, maps.Reason(dropPolicyEgress)))
		w.expectRuleHits(t, logRule, 3, 2*n+udpLen)
		w.expectRuleHits(t, 0, 0, 0)
	})

	// (d) A source-port table: the table's entry carries the log of its ports; the log of the
	// entry that names the table is not looked at.
	t.Run("source ports", func(t *testing.T) {
		const table = maps.SourcePortTable | 1
		const allowRule, denyRule, logAllow, logDeny, logIgnored = 11, 12, 23, 24, 25
		w := policyWorld(t)
		_, r := w.eventsOf(t)
		w.putPolicy(t, denyAll(prog), logEntry(prog, unix.IPPROTO_TCP, 80, maps.ActionSourcePort, table, logIgnored))
		for _, c := range []struct {
			lo, hi    uint16
			action    maps.PolicyAction
			rule, log uint32
		}{{1000, 1999, maps.ActionAllow, allowRule, logAllow}, {3000, 3999, maps.ActionDeny, denyRule, logDeny}} {
			for _, k := range portPrefixes(c.lo, c.hi) {
				k.Program = table
				w.putPolicy(t, policyEntry{k, maps.PolicyValue{Action: c.action, Rule: c.rule, Log: c.log}})
			}
		}
		w.setPrograms(t, caliA, 0, prog)

		allowed := tcpPkt(wepA, 1500, wepB, 80, tcpSYN)
		w.send(t, "from 1500: allowed", sentByA, allowed, fwdLocal)
		expectEvents(t, r, w.logEvent(sentByA, allowed, logAllow))
		w.send(t, "from 1500 again", sentByA, tcpPkt(wepA, 1500, wepB, 80, tcpACK), fwdLocal)
		expectEvents(t, r)

		denied := tcpPkt(wepA, 3500, wepB, 80, tcpSYN)
		w.send(t, "from 3500: denied", sentByA, denied, dropPolicyEgress)
		expectEvents(t, r, w.logEvent(sentByA, denied, logDeny), w.dropEvent(sentByA, denied, maps.Reason(dropPolicyEgress)))

		// No entry of the table: denied, nothing logged.
		other := tcpPkt(wepA, 2500, wepB, 80, tcpSYN)
		w.send(t, "from 2500: no entry", sentByA, other, dropPolicyEgress)
		expectEvents(t, r, w.dropEvent(sentByA, other, maps.Reason(dropPolicyEgress)))

		w.expectRuleHits(t, allowRule, 2, 2*tcpLen)
		w.expectRuleHits(t, logAllow, 1, tcpLen)
		w.expectRuleHits(t, denyRule, 1, tcpLen)
		w.expectRuleHits(t, logDeny, 1, tcpLen)
		w.expectRuleHits(t, logIgnored, 0, 0)
	})

	// (e) A policy change re-checks an established flow on its next packet: the verdict and rule
	// follow the new policy, but the re-check logs nothing and counts no Log rule, whether the new
	// policy logs the flow under the same rule, another, or denies it.
	t.Run("re-check", func(t *testing.T) {
		const rule, denyRule, logRule, newLog = 7, 9, 20, 26
		w := policyWorld(t)
		_, r := w.eventsOf(t)
		w.putPolicy(t, denyAll(prog), logEntry(prog, unix.IPPROTO_TCP, 80, maps.ActionAllow, rule, logRule))
		w.setPrograms(t, caliA, 0, prog)

		syn := tcpPkt(wepA, 40000, wepB, 80, tcpSYN)
		ack := tcpPkt(wepA, 40000, wepB, 80, tcpACK)
		w.send(t, "SYN allowed", sentByA, syn, fwdLocal)
		w.send(t, "SYN-ACK from B", sentByB, tcpPkt(wepB, 80, wepA, 40000, tcpSYN|tcpACK), fwdLocal)
		w.send(t, "ACK from A", sentByA, ack, fwdLocal)
		expectEvents(t, r, w.logEvent(sentByA, syn, logRule))
		flow := flowOf(syn)
		flow.verdict, flow.state, flow.ruleEgress, flow.generation = maps.VerdictAllow, stEstablished, rule, w.generation(t)
		flow.packets, flow.bytes = [2]uint64{2, 1}, [2]uint64{2 * tcpLen, tcpLen}
		w.expectFlow(t, flow)

		for i, c := range []struct {
			name    string
			entry   policyEntry
			reason  loader.MargayReason
			verdict maps.CTVerdict
			rule    uint32 // the rule the flow counts under after the re-check
		}{
			{"the same Log rule", logEntry(prog, unix.IPPROTO_TCP, 80, maps.ActionAllow, rule, logRule), fwdLocal, maps.VerdictAllow, rule},
			{"another Log rule", logEntry(prog, unix.IPPROTO_TCP, 80, maps.ActionAllow, rule, newLog), fwdLocal, maps.VerdictAllow, rule},
			{"Log then Deny", logEntry(prog, unix.IPPROTO_TCP, 80, maps.ActionDeny, denyRule, newLog), dropPolicyEgress,
				maps.VerdictDenyEgress, denyRule},
		} {
			w.putPolicy(t, c.entry)
			g := w.bumpGeneration(t)
			w.send(t, fmt.Sprintf("ACK after policy change %d (%s)", i+1, c.name), sentByA, ack, c.reason)
			var want []maps.Event
			if maps.Reason(c.reason).Drop() {
				want = append(want, w.dropEvent(sentByA, ack, maps.Reason(c.reason)))
			} else {
				// A denied packet leaves the entry's state and counts as they were.
				flow.packets[0]++
				flow.bytes[0] += tcpLen
			}
			expectEvents(t, r, want...)
			flow.verdict, flow.generation, flow.ruleEgress = c.verdict, g, c.rule
			w.expectFlow(t, flow)
		}
		w.expectRuleHits(t, logRule, 1, tcpLen)
		w.expectRuleHits(t, newLog, 0, 0)
		w.expectRuleHits(t, rule, 5, 5*tcpLen)
		w.expectRuleHits(t, denyRule, 1, tcpLen)
	})
}
