package programs_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// Conntrack and policy (bpf/include/policy.h) through test runs: every case sets up a world of its
// own, so that conntrack, policy and rule hits start empty, and then runs the packets of one or a
// few flows in order, checking after each the verdict, the one counter that moved and the
// conntrack entries and rule hits it left.

const (
	dropPolicyEgress  = loader.MargayReasonREASON_DROP_POLICY_EGRESS
	dropPolicyIngress = loader.MargayReasonREASON_DROP_POLICY_INGRESS
	dropFragment      = loader.MargayReasonREASON_DROP_FRAGMENT

	stSynSent     = maps.CTState(loader.MargayCtStateCT_TCP_SYN_SENT)
	stSynAcked    = maps.CTState(loader.MargayCtStateCT_TCP_SYN_ACKED)
	stEstablished = maps.CTState(loader.MargayCtStateCT_TCP_ESTABLISHED)
	stFinWait     = maps.CTState(loader.MargayCtStateCT_TCP_FIN_WAIT)
	stClosed      = maps.CTState(loader.MargayCtStateCT_TCP_CLOSED)
	stUDP         = maps.CTState(loader.MargayCtStateCT_UDP)
	stICMP        = maps.CTState(loader.MargayCtStateCT_ICMP)

	// The identity policy_ips gives every address (0.0.0.0/0), as the agent always has it.
	identityAny = 1

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10

	icmpEchoReply   = 0
	icmpUnreachable = 3
	icmpEcho        = 8
	icmpTimeExceed  = 11

	payloadLen = 32 // bytes after the L4 header of every packet built here
	tcpLen     = ethHeaderLen + ipv4MinLen + 20 + payloadLen
	udpLen     = ethHeaderLen + ipv4MinLen + 8 + payloadLen
	icmpLen    = ethHeaderLen + ipv4MinLen + 8 + payloadLen
)

// hop is where a frame is shown to the dataplane, with the MACs it carries there.
type hop struct {
	prog           program
	iface          string
	srcMAC, dstMAC string
}

var (
	sentByA    = hop{fromWep, caliA, wepAMAC, hostVethMAC} // workload A sends
	sentByB    = hop{fromWep, caliB, wepBMAC, hostVethMAC} // workload B sends
	fromUplink = hop{fromNet, uplink, peerMAC, uplinkMAC}  // the router sends to this host
	kernelToA  = hop{toWep, caliA, hostVethMAC, wepAMAC}   // the kernel delivers to A
	kernelToB  = hop{toWep, caliB, hostVethMAC, wepBMAC}   // the kernel delivers to B
)

// pkt is an IPv4 packet of a flow, built from scratch with correct IPv4 and L4 checksums.
type pkt struct {
	src, dst           netip.Addr
	proto              uint8
	sport, dport       uint16 // TCP, UDP
	flags              uint8  // TCP
	icmpType, icmpCode uint8
	icmpID             uint16 // ICMP echo
	about              []byte // ICMP error: the IPv4 packet it is about; its header and 8 bytes go in
	ipID               uint16 // 0: 0x4d47
	fragOff            uint16 // flags and offset as on the wire
	ttl                uint8  // 0: 64
	options            []byte // IPv4 options, a multiple of 4 bytes
}

func tcpPkt(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, flags uint8) pkt {
	return pkt{src: src, dst: dst, proto: unix.IPPROTO_TCP, sport: sport, dport: dport, flags: flags}
}

func udpPkt(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) pkt {
	return pkt{src: src, dst: dst, proto: unix.IPPROTO_UDP, sport: sport, dport: dport}
}

func echoPkt(src, dst netip.Addr, typ uint8, id uint16) pkt {
	return pkt{src: src, dst: dst, proto: unix.IPPROTO_ICMP, icmpType: typ, icmpID: id}
}

// icmpErrorPkt is an ICMP error from src to dst about the packet about (as it was sent).
func icmpErrorPkt(src, dst netip.Addr, typ, code uint8, about pkt) pkt {
	return pkt{src: src, dst: dst, proto: unix.IPPROTO_ICMP, icmpType: typ, icmpCode: code, about: about.ip()}
}

func (p pkt) with(fn func(*pkt)) pkt { fn(&p); return p }

// ip is the IPv4 packet. A fragment after the first carries payload only.
func (p pkt) ip() []byte {
	payload := make([]byte, payloadLen)
	for i := range payload {
		payload[i] = byte(i)
	}
	var l4 []byte
	switch {
	case p.fragOff&0x1fff != 0:
		l4 = payload
	case p.proto == unix.IPPROTO_TCP:
		l4 = make([]byte, 20, 20+payloadLen)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		binary.BigEndian.PutUint32(l4[4:], 1000) // sequence number
		if p.flags&tcpACK != 0 {
			binary.BigEndian.PutUint32(l4[8:], 2000)
		}
		l4[12] = 5 << 4
		l4[13] = p.flags
		binary.BigEndian.PutUint16(l4[14:], 64240)
		l4 = append(l4, payload...)
		binary.BigEndian.PutUint16(l4[16:], checksum(l4, pseudoHeader(p.src, p.dst, p.proto, len(l4))))
	case p.proto == unix.IPPROTO_UDP:
		l4 = make([]byte, 8, 8+payloadLen)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(8+payloadLen))
		l4 = append(l4, payload...)
		c := checksum(l4, pseudoHeader(p.src, p.dst, p.proto, len(l4)))
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[6:], c)
	case p.proto == unix.IPPROTO_ICMP:
		l4 = make([]byte, 8, 8+payloadLen)
		l4[0], l4[1] = p.icmpType, p.icmpCode
		if p.about != nil {
			l4 = append(l4, p.about[:ipv4MinLen+8]...) // RFC 792: the header and 8 bytes
		} else {
			binary.BigEndian.PutUint16(l4[4:], p.icmpID)
			binary.BigEndian.PutUint16(l4[6:], 1) // sequence
			l4 = append(l4, payload...)
		}
		binary.BigEndian.PutUint16(l4[2:], checksum(l4, 0))
	default:
		panic(fmt.Sprintf("no packets of protocol %d", p.proto))
	}

	hlen := ipv4MinLen + len(p.options)
	ip := make([]byte, hlen, hlen+len(l4))
	ip[0] = 4<<4 | byte(hlen/4)
	putTotLen(ip, hlen+len(l4))
	copy(ip[ipv4MinLen:], p.options)
	id := p.ipID
	if id == 0 {
		id = 0x4d47
	}
	binary.BigEndian.PutUint16(ip[4:], id)
	binary.BigEndian.PutUint16(ip[6:], p.fragOff)
	ip[8] = p.ttl
	if ip[8] == 0 {
		ip[8] = 64
	}
	ip[9] = p.proto
	copy(ip[12:16], p.src.AsSlice())
	copy(ip[16:20], p.dst.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	return append(ip, l4...)
}

func (h hop) frame(p pkt) []byte { return ethernet(h.dstMAC, h.srcMAC, unix.ETH_P_IP, p.ip()) }

// verdictFor is the verdict of p that goes with a reason (see reasonAgrees).
func verdictFor(p program, r loader.MargayReason) uint32 {
	if p == xdpFromNet {
		if maps.Reason(r).Drop() {
			return xdpDrop
		}
		return xdpPass
	}
	switch {
	case maps.Reason(r).Forward():
		return tcActRedirect
	case maps.Reason(r).Drop():
		return tcActShot
	}
	return tcActOK
}

// send shows p to the dataplane at h as the subtest name, and requires the verdict that goes with
// reason, exactly that counter grown by the frame, and the frame left as forwarding leaves it:
// delivered to the workload it is addressed to, routed out of the uplink, or unchanged. It returns
// the frame's length.
func (w *world) send(t *testing.T, name string, h hop, p pkt, reason loader.MargayReason) uint64 {
	t.Helper()
	frame := h.frame(p)
	t.Run(name, func(t *testing.T) {
		t.Helper()
		before := w.counters(t)
		verdict, out, err := w.run(h.prog, h.iface, frame)
		if err != nil {
			t.Fatal(err)
		}
		if want := verdictFor(h.prog, reason); verdict != want {
			t.Errorf("verdict %s, want %s", verdictName(h.prog, verdict), verdictName(h.prog, want))
		}
		w.expectCounted(t, before, counterKey{w.ifindex[h.iface], h.prog.hook(), maps.Reason(reason)}, len(frame))
		var want rewrite
		switch reason {
		case fwdLocal:
			mac := map[netip.Addr]string{wepA: wepAMAC, wepB: wepBMAC}[p.dst]
			if mac == "" {
				t.Fatalf("no workload MAC for %v", p.dst)
			}
			want = delivered(mac)
		case fwdRemote:
			want = routed()
		}
		checkOutput(t, frame, out, want)
	})
	return uint64(len(frame))
}

// policyWorld is newWorld as the agent leaves it once policy is on: every address has the
// identity identityAny, and this host's address is marked LOCAL_HOST.
func policyWorld(t *testing.T) *world {
	t.Helper()
	w := newWorld(t)
	if err := w.maps.PolicyIPs.Put(netip.MustParsePrefix("0.0.0.0/0"), identityAny); err != nil {
		t.Fatal(err)
	}
	if err := w.maps.Routes.Put(maps.Route{Prefix: netip.PrefixFrom(thisHost, 32), Flags: maps.Host | maps.LocalHost}); err != nil {
		t.Fatal(err)
	}
	return w
}

type policyEntry struct {
	key maps.PolicyKey
	val maps.PolicyValue
}

// denyAll is a program's default: every protocol and port of every peer denied.
func denyAll(prog uint32) policyEntry {
	return policyEntry{maps.PolicyKey{Program: prog, Identity: identityAny, AllProtocols: true},
		maps.PolicyValue{Action: maps.ActionDeny}}
}

// portEntry is the action of a program for one protocol and port of peers of identity id.
func portEntry(prog, id uint32, proto uint8, port uint16, action maps.PolicyAction, rule uint32) policyEntry {
	return policyEntry{maps.PolicyKey{Program: prog, Identity: id, Protocol: proto, Port: port, PortBits: 16},
		maps.PolicyValue{Action: action, Rule: rule}}
}

func allowPort(prog uint32, proto uint8, port uint16, rule uint32) policyEntry {
	return portEntry(prog, identityAny, proto, port, maps.ActionAllow, rule)
}

func (w *world) putPolicy(tb testing.TB, es ...policyEntry) {
	tb.Helper()
	for _, e := range es {
		if err := w.maps.Policy.Put(e.key, e.val); err != nil {
			tb.Fatal(err)
		}
	}
}

// setPrograms selects the policy programs of the workload behind iface.
func (w *world) setPrograms(tb testing.TB, iface string, ingress, egress uint32) {
	tb.Helper()
	ep, err := w.maps.Endpoints.Get(w.ifindex[iface])
	if err != nil {
		tb.Fatal(err)
	}
	ep.IngressProgram, ep.EgressProgram = ingress, egress
	if err := w.maps.Endpoints.Put(ep); err != nil {
		tb.Fatal(err)
	}
}

func (w *world) bumpGeneration(tb testing.TB) uint32 {
	tb.Helper()
	g, err := w.maps.Config.BumpGeneration()
	if err != nil {
		tb.Fatal(err)
	}
	return g
}

func (w *world) generation(tb testing.TB) uint32 {
	tb.Helper()
	g, err := w.maps.Config.Generation()
	if err != nil {
		tb.Fatal(err)
	}
	return g
}

// ctWant is what a conntrack entry must hold, told from the initiator's side.
type ctWant struct {
	proto                   uint8
	src                     netip.Addr
	sport                   uint16
	dst                     netip.Addr
	dport                   uint16
	state                   maps.CTState
	verdict                 maps.CTVerdict
	packets, bytes          [2]uint64
	ruleEgress, ruleIngress uint32
	generation              uint32
	policyPort              uint16
}

// flowOf is the tuple of the flow p opens, as conntrack tells it.
func flowOf(p pkt) ctWant {
	w := ctWant{proto: p.proto, src: p.src, sport: p.sport, dst: p.dst, dport: p.dport, policyPort: p.dport}
	if p.proto == unix.IPPROTO_ICMP {
		// A request's identifier is its source port, a reply's its destination port.
		w.sport, w.dport = p.icmpID, 0
		if p.icmpType == icmpEchoReply {
			w.sport, w.dport = 0, p.icmpID
		}
		w.policyPort = uint16(p.icmpType)<<8 | uint16(p.icmpCode)
	}
	return w
}

func (c ctWant) String() string {
	return fmt.Sprintf("proto %d %v:%d -> %v:%d", c.proto, c.src, c.sport, c.dst, c.dport)
}

func (w *world) flows(tb testing.TB) []maps.Flow {
	tb.Helper()
	fs, err := w.maps.Conntrack.List()
	if err != nil {
		tb.Fatal(err)
	}
	return fs
}

// expectFlow requires an entry of want's tuple, initiated by want.src, holding what want says.
func (w *world) expectFlow(tb testing.TB, want ctWant) {
	tb.Helper()
	fs := w.flows(tb)
	for _, f := range fs {
		if f.Protocol != want.proto || f.Src != want.src || f.SrcPort != want.sport || f.Dst != want.dst || f.DstPort != want.dport {
			continue
		}
		type fields struct {
			State                   maps.CTState
			Verdict                 maps.CTVerdict
			Packets, Bytes          [2]uint64
			RuleEgress, RuleIngress uint32
			Generation              uint32
			PolicyPort              uint16
		}
		got := fields{f.State, f.Verdict, f.Packets, f.Bytes, f.RuleEgress, f.RuleIngress, f.Generation, f.PolicyPort}
		exp := fields{want.state, want.verdict, want.packets, want.bytes, want.ruleEgress, want.ruleIngress,
			want.generation, want.policyPort}
		if got != exp {
			tb.Errorf("conntrack %v:\n got %+v\nwant %+v", want, got, exp)
		}
		return
	}
	tb.Errorf("no conntrack entry %v initiated by %v:%d; have %v", want, want.src, want.sport, fs)
}

func (w *world) expectFlowCount(tb testing.TB, n int) {
	tb.Helper()
	if fs := w.flows(tb); len(fs) != n {
		tb.Errorf("%d conntrack entries, want %d: %v", len(fs), n, fs)
	}
}

func (w *world) expectRuleHits(tb testing.TB, rule uint32, packets, bytes uint64) {
	tb.Helper()
	p, b, err := w.maps.RuleHits.Get(rule)
	if err != nil {
		tb.Fatal(err)
	}
	if p != packets || b != bytes {
		tb.Errorf("rule %d hit by %d packets, %d bytes; want %d packets, %d bytes", rule, p, b, packets, bytes)
	}
}

// putCT writes a conntrack entry directly, as the BPF programs key it: the lower (address, port)
// first. The initiator is (src, sport).
func (w *world) putCT(tb testing.TB, proto uint8, src netip.Addr, sport uint16, dst netip.Addr, dport uint16,
	v loader.MargayCtValue) {
	tb.Helper()
	be16 := func(p uint16) uint16 { return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, p)) }
	be32 := func(a netip.Addr) uint32 { b := a.As4(); return binary.NativeEndian.Uint32(b[:]) }
	srcIsA := src.Compare(dst) < 0 || (src == dst && sport <= dport)
	k := loader.MargayCtKey{AddrA: be32(src), AddrB: be32(dst), PortA: be16(sport), PortB: be16(dport), Protocol: proto}
	v.InitiatorIsA = 1
	if !srcIsA {
		k.AddrA, k.AddrB, k.PortA, k.PortB = k.AddrB, k.AddrA, k.PortB, k.PortA
		v.InitiatorIsA = 0
	}
	if err := w.dp.Maps().Conntrack.Put(&k, &v); err != nil {
		tb.Fatal(err)
	}
}

// portPrefixes covers [lo, hi] with the fewest (port, prefix length) blocks.
func portPrefixes(lo, hi uint16) []maps.PolicyKey {
	var out []maps.PolicyKey
	for l := uint32(lo); l <= uint32(hi); {
		bits := uint8(16)
		for bits > 0 {
			size := uint32(1) << (16 - (bits - 1))
			if l%size != 0 || l+size-1 > uint32(hi) {
				break
			}
			bits--
		}
		out = append(out, maps.PolicyKey{Port: uint16(l), PortBits: bits})
		l += 1 << (16 - bits)
	}
	return out
}

func TestPortPrefixes(t *testing.T) {
	ks := portPrefixes(1000, 1999)
	covered := map[uint16]bool{}
	for _, k := range ks {
		lo, hi := k.PortRange()
		for p := uint32(lo); p <= uint32(hi); p++ {
			if covered[uint16(p)] {
				t.Fatalf("port %d covered twice", p)
			}
			covered[uint16(p)] = true
		}
	}
	if len(covered) != 1000 || !covered[1000] || !covered[1999] {
		t.Fatalf("%v covers %d ports", ks, len(covered))
	}
}

func TestConntrackWithoutPolicy(t *testing.T) {
	t.Run("TCP handshake, FINs, then the ports reused", func(t *testing.T) {
		w := policyWorld(t)
		syn := tcpPkt(wepA, 40000, wepB, 80, tcpSYN)
		flow := flowOf(syn)
		flow.verdict = maps.VerdictAllow

		w.send(t, "SYN from A", sentByA, syn, fwdLocal)
		flow.state, flow.packets, flow.bytes = stSynSent, [2]uint64{1, 0}, [2]uint64{tcpLen, 0}
		w.expectFlow(t, flow)
		w.expectFlowCount(t, 1)

		w.send(t, "SYN-ACK from B", sentByB, tcpPkt(wepB, 80, wepA, 40000, tcpSYN|tcpACK), fwdLocal)
		flow.state, flow.packets, flow.bytes = stSynAcked, [2]uint64{1, 1}, [2]uint64{tcpLen, tcpLen}
		w.expectFlow(t, flow)

		w.send(t, "ACK from A", sentByA, tcpPkt(wepA, 40000, wepB, 80, tcpACK), fwdLocal)
		flow.state, flow.packets, flow.bytes = stEstablished, [2]uint64{2, 1}, [2]uint64{2 * tcpLen, tcpLen}
		w.expectFlow(t, flow)

		w.send(t, "data from B", sentByB, tcpPkt(wepB, 80, wepA, 40000, tcpACK), fwdLocal)
		flow.packets, flow.bytes = [2]uint64{2, 2}, [2]uint64{2 * tcpLen, 2 * tcpLen}
		w.expectFlow(t, flow)

		w.send(t, "FIN from A", sentByA, tcpPkt(wepA, 40000, wepB, 80, tcpFIN|tcpACK), fwdLocal)
		flow.state, flow.packets, flow.bytes = stFinWait, [2]uint64{3, 2}, [2]uint64{3 * tcpLen, 2 * tcpLen}
		w.expectFlow(t, flow)

		w.send(t, "FIN from B", sentByB, tcpPkt(wepB, 80, wepA, 40000, tcpFIN|tcpACK), fwdLocal)
		flow.state, flow.packets, flow.bytes = stClosed, [2]uint64{3, 3}, [2]uint64{3 * tcpLen, 3 * tcpLen}
		w.expectFlow(t, flow)

		w.send(t, "last ACK from A", sentByA, tcpPkt(wepA, 40000, wepB, 80, tcpACK), fwdLocal)
		flow.packets, flow.bytes = [2]uint64{4, 3}, [2]uint64{4 * tcpLen, 3 * tcpLen}
		w.expectFlow(t, flow)

		// A SYN on the ports of a closed connection opens a new one.
		w.send(t, "new SYN on the same ports", sentByA, syn, fwdLocal)
		flow.state, flow.packets, flow.bytes = stSynSent, [2]uint64{1, 0}, [2]uint64{tcpLen, 0}
		w.expectFlow(t, flow)
		w.expectFlowCount(t, 1)
	})

	t.Run("TCP RST closes", func(t *testing.T) {
		w := policyWorld(t)
		syn := tcpPkt(wepA, 40001, wepB, 443, tcpSYN)
		w.send(t, "SYN from A", sentByA, syn, fwdLocal)
		w.send(t, "RST from B", sentByB, tcpPkt(wepB, 443, wepA, 40001, tcpRST|tcpACK), fwdLocal)
		flow := flowOf(syn)
		flow.verdict, flow.state = maps.VerdictAllow, stClosed
		flow.packets, flow.bytes = [2]uint64{1, 1}, [2]uint64{tcpLen, tcpLen}
		w.expectFlow(t, flow)
	})

	t.Run("TCP picked up in the middle", func(t *testing.T) {
		w := policyWorld(t)
		ack := tcpPkt(wepA, 40002, wepB, 80, tcpACK)
		w.send(t, "ACK from A", sentByA, ack, fwdLocal)
		flow := flowOf(ack)
		flow.verdict, flow.state = maps.VerdictAllow, stEstablished
		flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{tcpLen, 0}
		w.expectFlow(t, flow)
	})

	t.Run("UDP", func(t *testing.T) {
		w := policyWorld(t)
		req := udpPkt(wepA, 40000, wepB, 53)
		w.send(t, "request from A", sentByA, req, fwdLocal)
		w.send(t, "reply from B", sentByB, udpPkt(wepB, 53, wepA, 40000), fwdLocal)
		flow := flowOf(req)
		flow.verdict, flow.state = maps.VerdictAllow, stUDP
		flow.packets, flow.bytes = [2]uint64{1, 1}, [2]uint64{udpLen, udpLen}
		w.expectFlow(t, flow)
		w.expectFlowCount(t, 1)
	})

	t.Run("ICMP echo request and reply share an entry", func(t *testing.T) {
		w := policyWorld(t)
		req := echoPkt(wepA, wepB, icmpEcho, 0x1234)
		w.send(t, "echo request from A", sentByA, req, fwdLocal)
		w.send(t, "echo reply from B", sentByB, echoPkt(wepB, wepA, icmpEchoReply, 0x1234), fwdLocal)
		w.send(t, "second echo request", sentByA, req, fwdLocal)
		flow := flowOf(req) // the identifier as the source port
		flow.verdict, flow.state = maps.VerdictAllow, stICMP
		flow.packets, flow.bytes = [2]uint64{2, 1}, [2]uint64{2 * icmpLen, icmpLen}
		w.expectFlow(t, flow)
		w.expectFlowCount(t, 1)

		w.send(t, "another identifier", sentByA, echoPkt(wepA, wepB, icmpEcho, 0x1235), fwdLocal)
		w.expectFlowCount(t, 2)

		// B's request with A's identifier is no reply: a flow of its own.
		w.send(t, "B's request with the same identifier", sentByB, echoPkt(wepB, wepA, icmpEcho, 0x1234), fwdLocal)
		w.expectFlowCount(t, 3)
	})

	t.Run("from the network, and remote", func(t *testing.T) {
		w := policyWorld(t)
		in := tcpPkt(remoteDst, 50000, wepB, 8080, tcpSYN)
		w.send(t, "SYN from a remote workload to B", fromUplink, in, fwdLocal)
		w.send(t, "SYN-ACK from B", sentByB, tcpPkt(wepB, 8080, remoteDst, 50000, tcpSYN|tcpACK), fwdRemote)
		flow := flowOf(in)
		flow.verdict, flow.state = maps.VerdictAllow, stSynAcked
		flow.packets, flow.bytes = [2]uint64{1, 1}, [2]uint64{tcpLen, tcpLen}
		w.expectFlow(t, flow)
	})
}

func TestPolicyEgress(t *testing.T) {
	const prog, rule = 1, 7
	w := policyWorld(t)
	w.putPolicy(t, denyAll(prog), allowPort(prog, unix.IPPROTO_TCP, 80, rule))
	w.setPrograms(t, caliA, 0, prog)

	syn := tcpPkt(wepA, 40000, wepB, 80, tcpSYN)
	n1 := w.send(t, "SYN to B:80 allowed", sentByA, syn, fwdLocal)
	flow := flowOf(syn)
	flow.verdict, flow.state, flow.ruleEgress = maps.VerdictAllow, stSynSent, rule
	flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{n1, 0}
	w.expectFlow(t, flow)
	w.expectRuleHits(t, rule, 1, n1)

	n2 := w.send(t, "SYN-ACK from B counts the rule too", sentByB, tcpPkt(wepB, 80, wepA, 40000, tcpSYN|tcpACK), fwdLocal)
	w.expectRuleHits(t, rule, 2, n1+n2)

	w.send(t, "SYN to B:81 denied", sentByA, tcpPkt(wepA, 40001, wepB, 81, tcpSYN), dropPolicyEgress)
	w.send(t, "UDP to B:80 denied", sentByA, udpPkt(wepA, 40002, wepB, 80), dropPolicyEgress)
	w.send(t, "ICMP echo to B denied", sentByA, echoPkt(wepA, wepB, icmpEcho, 1), dropPolicyEgress)
	w.send(t, "SYN to a remote workload:81 denied", sentByA, tcpPkt(wepA, 40003, remoteDst, 81, tcpSYN), dropPolicyEgress)
	w.send(t, "SYN to a remote workload:80 allowed", sentByA, tcpPkt(wepA, 40004, remoteDst, 80, tcpSYN), fwdRemote)
	// Egress policy covers what goes to the kernel too.
	w.send(t, "SYN to this host:81 denied", sentByA, tcpPkt(wepA, 40005, thisHost, 81, tcpSYN), dropPolicyEgress)
	w.send(t, "SYN with TTL 1 denied before the kernel sees it", sentByA,
		tcpPkt(wepA, 40006, wepB, 81, tcpSYN).with(func(p *pkt) { p.ttl = 1 }), dropPolicyEgress)
	w.send(t, "allowed SYN with TTL 1 goes to the kernel", sentByA,
		tcpPkt(wepA, 40007, wepB, 80, tcpSYN).with(func(p *pkt) { p.ttl = 1 }), passTTL)
	w.expectFlowCount(t, 3) // the three allowed SYNs
	w.expectRuleHits(t, rule, 4, n1+n2+2*tcpLen)
	w.expectRuleHits(t, 0, 0, 0)

	// A deny rule counts the packets it drops.
	const denyRule = 9
	w.putPolicy(t, portEntry(prog, identityAny, unix.IPPROTO_TCP, 22, maps.ActionDeny, denyRule))
	d := w.send(t, "SYN to B:22 denied by a rule", sentByA, tcpPkt(wepA, 40010, wepB, 22, tcpSYN), dropPolicyEgress)
	w.send(t, "and again", sentByA, tcpPkt(wepA, 40010, wepB, 22, tcpSYN), dropPolicyEgress)
	w.expectRuleHits(t, denyRule, 2, 2*d)

	// B has no egress policy: the egress program is A's only.
	w.send(t, "B sends to A:81", sentByB, tcpPkt(wepB, 40000, wepA, 81, tcpSYN), fwdLocal)
}

func TestPolicyIngress(t *testing.T) {
	const prog, rule, remoteRule = 2, 8, 9
	const remoteIdentity = 2
	w := policyWorld(t)
	// Workloads of remoteBlock have an identity of their own, which may reach B:443.
	if err := w.maps.PolicyIPs.Put(remoteBlock, remoteIdentity); err != nil {
		t.Fatal(err)
	}
	w.putPolicy(t, denyAll(prog), allowPort(prog, unix.IPPROTO_TCP, 80, rule),
		portEntry(prog, remoteIdentity, unix.IPPROTO_TCP, 443, maps.ActionAllow, remoteRule))
	w.setPrograms(t, caliB, prog, 0)

	syn := tcpPkt(wepA, 40000, wepB, 80, tcpSYN)
	n := w.send(t, "A to B:80 allowed", sentByA, syn, fwdLocal)
	flow := flowOf(syn)
	flow.verdict, flow.state, flow.ruleIngress = maps.VerdictAllow, stSynSent, rule
	flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{n, 0}
	w.expectFlow(t, flow)
	w.expectRuleHits(t, rule, 1, n)

	w.send(t, "A to B:81 denied", sentByA, tcpPkt(wepA, 40001, wepB, 81, tcpSYN), dropPolicyIngress)
	w.send(t, "A to B:443 denied: A is not of the remote identity", sentByA,
		tcpPkt(wepA, 40002, wepB, 443, tcpSYN), dropPolicyIngress)

	// borrowedHere is inside our block, not remoteBlock: identity identityAny, like A.
	w.send(t, "network to B:80 allowed", fromUplink, tcpPkt(borrowedHere, 50000, wepB, 80, tcpSYN), fwdLocal)
	w.send(t, "network to B:81 denied", fromUplink, tcpPkt(borrowedHere, 50001, wepB, 81, tcpSYN), dropPolicyIngress)
	w.send(t, "remote identity to B:443 allowed", fromUplink, tcpPkt(remoteDst, 50002, wepB, 443, tcpSYN), fwdLocal)
	w.send(t, "other identity to B:443 denied", fromUplink,
		tcpPkt(borrowedHere, 50003, wepB, 443, tcpSYN), dropPolicyIngress)
	// The remote identity has entries of its own only: no default of identityAny applies to it.
	w.send(t, "remote identity to B:80 denied", fromUplink, tcpPkt(remoteDst, 50004, wepB, 80, tcpSYN), dropPolicyIngress)
	w.send(t, "kernel delivers to B:81, denied", kernelToB, tcpPkt(borrowedHere, 50005, wepB, 81, tcpSYN), dropPolicyIngress)
	w.send(t, "kernel delivers to B:80, allowed", kernelToB, tcpPkt(borrowedHere, 50006, wepB, 80, tcpSYN), passDeliver)
	w.expectRuleHits(t, rule, 3, 3*tcpLen)
	w.expectRuleHits(t, remoteRule, 1, tcpLen)
	w.expectFlowCount(t, 4)

	// A has no ingress policy.
	w.send(t, "network to A:81", fromUplink, tcpPkt(remoteDst, 50006, wepA, 81, tcpSYN), fwdLocal)
}

// Replies of an allowed flow pass whatever the policy of their direction says.
func TestPolicyReplies(t *testing.T) {
	const prog = 3
	w := policyWorld(t)
	w.putPolicy(t, denyAll(prog))
	w.setPrograms(t, caliA, prog, 0) // A: ingress default deny

	syn := tcpPkt(wepA, 40000, wepB, 80, tcpSYN)
	w.send(t, "A opens to B", sentByA, syn, fwdLocal)
	w.send(t, "B replies", sentByB, tcpPkt(wepB, 80, wepA, 40000, tcpSYN|tcpACK), fwdLocal)
	w.send(t, "A acknowledges", sentByA, tcpPkt(wepA, 40000, wepB, 80, tcpACK), fwdLocal)
	w.send(t, "B sends data", sentByB, tcpPkt(wepB, 80, wepA, 40000, tcpACK), fwdLocal)
	flow := flowOf(syn)
	flow.verdict, flow.state = maps.VerdictAllow, stEstablished
	flow.packets, flow.bytes = [2]uint64{2, 2}, [2]uint64{2 * tcpLen, 2 * tcpLen}
	w.expectFlow(t, flow)

	w.send(t, "B opens to A: denied", sentByB, tcpPkt(wepB, 40000, wepA, 80, tcpSYN), dropPolicyIngress)
	w.send(t, "B opens to A from the reply's port: denied", sentByB, tcpPkt(wepB, 80, wepA, 40001, tcpSYN), dropPolicyIngress)
	w.expectFlowCount(t, 1)

	req := udpPkt(wepA, 40000, remoteDst, 53)
	w.send(t, "A asks a remote workload", sentByA, req, fwdRemote)
	w.send(t, "the answer from the network", fromUplink, udpPkt(remoteDst, 53, wepA, 40000), fwdLocal)
	w.send(t, "the answer through the kernel", kernelToA, udpPkt(remoteDst, 53, wepA, 40000), passDeliver)
	w.send(t, "new flow from the network: denied", fromUplink, udpPkt(remoteDst, 53, wepA, 40001), dropPolicyIngress)
	w.send(t, "new flow through the kernel: denied", kernelToA, udpPkt(remoteDst, 53, wepA, 40002), dropPolicyIngress)
	uflow := flowOf(req)
	uflow.verdict, uflow.state = maps.VerdictAllow, stUDP
	uflow.packets, uflow.bytes = [2]uint64{1, 2}, [2]uint64{udpLen, 2 * udpLen}
	w.expectFlow(t, uflow)
	w.expectFlowCount(t, 2)

	// A pings B and B answers; an echo request from B that reuses A's identifier is not an
	// answer and meets A's ingress policy.
	w.send(t, "A pings B", sentByA, echoPkt(wepA, wepB, icmpEcho, 0x4242), fwdLocal)
	w.send(t, "B answers", sentByB, echoPkt(wepB, wepA, icmpEchoReply, 0x4242), fwdLocal)
	w.send(t, "B pings A with A's identifier: denied", sentByB, echoPkt(wepB, wepA, icmpEcho, 0x4242), dropPolicyIngress)
	w.expectFlowCount(t, 3)
}

// A verdict holds for the flow until the policy generation changes; then the flow's next packet
// is checked again.
func TestPolicyGeneration(t *testing.T) {
	t.Run("egress", func(t *testing.T) {
		const prog, rule = 1, 7
		w := policyWorld(t)
		w.putPolicy(t, denyAll(prog), allowPort(prog, unix.IPPROTO_TCP, 80, rule))
		w.setPrograms(t, caliA, 0, prog)
		g0 := w.generation(t)

		syn := tcpPkt(wepA, 40000, wepB, 80, tcpSYN)
		w.send(t, "SYN allowed", sentByA, syn, fwdLocal)
		flow := flowOf(syn)
		flow.verdict, flow.state, flow.ruleEgress, flow.generation = maps.VerdictAllow, stSynSent, rule, g0
		flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{tcpLen, 0}
		w.expectFlow(t, flow)

		// The policy now denies port 80, but the generation stays: the cached verdict holds.
		w.putPolicy(t, portEntry(prog, identityAny, unix.IPPROTO_TCP, 80, maps.ActionDeny, 0))
		w.send(t, "SYN-ACK passes on the cached verdict", sentByB, tcpPkt(wepB, 80, wepA, 40000, tcpSYN|tcpACK), fwdLocal)
		flow.state, flow.packets, flow.bytes = stSynAcked, [2]uint64{1, 1}, [2]uint64{tcpLen, tcpLen}
		w.expectFlow(t, flow)
		w.send(t, "a new flow to :80 is denied", sentByA, tcpPkt(wepA, 40001, wepB, 80, tcpSYN), dropPolicyEgress)

		g1 := w.bumpGeneration(t)
		if g1 == g0 {
			t.Fatalf("generation stayed %d", g0)
		}
		w.send(t, "ACK after the bump is denied", sentByA, tcpPkt(wepA, 40000, wepB, 80, tcpACK), dropPolicyEgress)
		flow.verdict, flow.generation, flow.ruleEgress = maps.VerdictDenyEgress, g1, 0
		w.expectFlow(t, flow) // state and counts untouched
		w.send(t, "B's packets of the flow are denied too, under A's egress", sentByB,
			tcpPkt(wepB, 80, wepA, 40000, tcpACK), dropPolicyEgress)
		w.expectFlow(t, flow)

		w.putPolicy(t, allowPort(prog, unix.IPPROTO_TCP, 80, rule))
		w.send(t, "allowed again without a bump: still denied", sentByA, tcpPkt(wepA, 40000, wepB, 80, tcpACK), dropPolicyEgress)
		g2 := w.bumpGeneration(t)
		w.send(t, "ACK after the second bump passes", sentByA, tcpPkt(wepA, 40000, wepB, 80, tcpACK), fwdLocal)
		flow.verdict, flow.generation, flow.ruleEgress = maps.VerdictAllow, g2, rule
		flow.state, flow.packets, flow.bytes = stEstablished, [2]uint64{2, 1}, [2]uint64{2 * tcpLen, tcpLen}
		w.expectFlow(t, flow)
		w.expectRuleHits(t, rule, 3, 3*tcpLen)
		w.expectFlowCount(t, 1)
	})

	t.Run("ingress", func(t *testing.T) {
		const prog, rule = 2, 8
		w := policyWorld(t)
		w.putPolicy(t, denyAll(prog), allowPort(prog, unix.IPPROTO_UDP, 53, rule))
		w.setPrograms(t, caliB, prog, 0)

		req := udpPkt(remoteDst, 50000, wepB, 53)
		w.send(t, "from the network to B:53", fromUplink, req, fwdLocal)
		w.putPolicy(t, portEntry(prog, identityAny, unix.IPPROTO_UDP, 53, maps.ActionDeny, 0))
		g := w.bumpGeneration(t)
		w.send(t, "B's reply is denied under B's ingress", sentByB, udpPkt(wepB, 53, remoteDst, 50000), dropPolicyIngress)
		w.send(t, "the next request too", fromUplink, req, dropPolicyIngress)
		flow := flowOf(req)
		flow.verdict, flow.state, flow.generation = maps.VerdictDenyIngress, stUDP, g
		flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{udpLen, 0}
		w.expectFlow(t, flow)
	})

	t.Run("the endpoint's program changes", func(t *testing.T) {
		const prog = 1
		w := policyWorld(t)
		w.putPolicy(t, denyAll(prog))
		req := udpPkt(wepA, 40000, wepB, 53)
		w.send(t, "no policy yet", sentByA, req, fwdLocal)
		w.setPrograms(t, caliA, 0, prog)
		w.send(t, "default deny selected, no bump: cached", sentByA, req, fwdLocal)
		w.bumpGeneration(t)
		w.send(t, "after the bump: denied", sentByA, req, dropPolicyEgress)
	})
}

func TestConntrackExpiry(t *testing.T) {
	t.Run("an expired entry is a new flow", func(t *testing.T) {
		w := policyWorld(t)
		g := w.generation(t)
		now := maps.Monotonic()
		denied := loader.MargayCtValue{Created: now, LastSeen: now, Generation: g,
			State: loader.MargayCtStateCT_UDP, Verdict: loader.MargayCtVerdictCT_VERDICT_DENY_EGRESS}
		req := udpPkt(wepA, 40000, wepB, 53)

		w.putCT(t, unix.IPPROTO_UDP, wepA, 40000, wepB, 53, denied)
		w.send(t, "a fresh denied entry drops the flow", sentByA, req, dropPolicyEgress)

		idle := denied
		idle.Created, idle.LastSeen = now-10*uint64(time.Second), now-5*uint64(time.Second)
		w.putCT(t, unix.IPPROTO_UDP, wepA, 40000, wepB, 53, idle)
		w.send(t, "idle 5s under the default 60s: still dropped", sentByA, req, dropPolicyEgress)

		if _, err := w.maps.Config.SetTimeouts(maps.Timeouts{Udp: 1}); err != nil {
			t.Fatal(err)
		}
		w.send(t, "idle 5s under a 1s timeout: checked afresh and allowed", sentByA, req, fwdLocal)
		flow := flowOf(req)
		flow.verdict, flow.state, flow.generation = maps.VerdictAllow, stUDP, g
		flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{udpLen, 0}
		w.expectFlow(t, flow)
		w.expectFlowCount(t, 1)

		// The reply direction finds an expired entry just the same, and starts the flow from B.
		w.putCT(t, unix.IPPROTO_UDP, wepA, 40001, wepB, 53, idle)
		rep := udpPkt(wepB, 53, wepA, 40001)
		w.send(t, "an expired entry's reply is a new flow from B", sentByB, rep, fwdLocal)
		rflow := flowOf(rep)
		rflow.verdict, rflow.state, rflow.generation = maps.VerdictAllow, stUDP, g
		rflow.packets, rflow.bytes = [2]uint64{1, 0}, [2]uint64{udpLen, 0}
		w.expectFlow(t, rflow)
	})

	t.Run("TCP SYN timeout", func(t *testing.T) {
		w := policyWorld(t)
		now := maps.Monotonic()
		w.putCT(t, unix.IPPROTO_TCP, wepA, 40000, wepB, 80, loader.MargayCtValue{Created: now - 5e9, LastSeen: now - 5e9,
			Generation: w.generation(t), State: loader.MargayCtStateCT_TCP_SYN_SENT,
			Verdict: loader.MargayCtVerdictCT_VERDICT_DENY_INGRESS})
		ack := tcpPkt(wepA, 40000, wepB, 80, tcpACK)
		w.send(t, "within the default", sentByA, ack, dropPolicyIngress)
		if _, err := w.maps.Config.SetTimeouts(maps.Timeouts{TcpSyn: 1}); err != nil {
			t.Fatal(err)
		}
		w.send(t, "past a 1s SYN timeout", sentByA, ack, fwdLocal)
	})

	t.Run("Sweep deletes expired entries only", func(t *testing.T) {
		w := policyWorld(t)
		now := maps.Monotonic()
		old, fresh := now-5*uint64(time.Second), now
		v := func(state loader.MargayCtState, last uint64) loader.MargayCtValue {
			return loader.MargayCtValue{Created: last, LastSeen: last, State: state, Verdict: loader.MargayCtVerdictCT_VERDICT_ALLOW}
		}
		w.putCT(t, unix.IPPROTO_UDP, wepA, 40000, wepB, 53, v(loader.MargayCtStateCT_UDP, old))
		w.putCT(t, unix.IPPROTO_UDP, wepA, 40001, wepB, 53, v(loader.MargayCtStateCT_UDP, fresh))
		w.putCT(t, unix.IPPROTO_TCP, wepA, 40002, wepB, 80, v(loader.MargayCtStateCT_TCP_ESTABLISHED, old))
		w.putCT(t, unix.IPPROTO_ICMP, wepA, 7, wepB, 7, v(loader.MargayCtStateCT_ICMP, old))
		// One the dataplane made itself, just now.
		w.send(t, "a live flow", sentByA, udpPkt(wepA, 40003, wepB, 53), fwdLocal)

		timeouts := maps.Timeouts{Udp: 1, Icmp: 1}
		deleted, left, err := w.maps.Conntrack.Sweep(timeouts)
		if err != nil {
			t.Fatal(err)
		}
		if deleted != 2 || left != 3 {
			t.Errorf("Sweep deleted %d and left %d; want 2 and 3", deleted, left)
		}
		var kept []uint16
		for _, f := range w.flows(t) {
			kept = append(kept, f.SrcPort)
		}
		slices.Sort(kept)
		if fmt.Sprint(kept) != "[40001 40002 40003]" {
			t.Errorf("left the flows from ports %v; want [40001 40002 40003]", kept)
		}
		deleted, left, err = w.maps.Conntrack.Sweep(timeouts)
		if err != nil || deleted != 0 || left != 3 {
			t.Errorf("second Sweep: deleted %d, left %d, %v; want 0, 3, nil", deleted, left, err)
		}
	})
}

// An ICMP error about an allowed flow passes with it; one about no known flow is a packet of its
// own for policy.
func TestPolicyICMPErrors(t *testing.T) {
	const progA, progB, ruleB = 3, 2, 9
	w := policyWorld(t)
	// A: ingress default deny. B: ingress default deny but UDP 53.
	w.putPolicy(t, denyAll(progA), denyAll(progB), allowPort(progB, unix.IPPROTO_UDP, 53, ruleB))
	w.setPrograms(t, caliA, progA, 0)
	w.setPrograms(t, caliB, progB, 0)

	req := udpPkt(wepA, 40000, wepB, 53)
	w.send(t, "A to B:53", sentByA, req, fwdLocal)
	flow := flowOf(req)
	flow.verdict, flow.state, flow.ruleIngress = maps.VerdictAllow, stUDP, ruleB
	flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{udpLen, 0}

	w.send(t, "port unreachable from B about it", sentByB,
		icmpErrorPkt(wepB, wepA, icmpUnreachable, 3, req), fwdLocal)
	w.send(t, "port unreachable from B about an unknown flow", sentByB,
		icmpErrorPkt(wepB, wepA, icmpUnreachable, 3, udpPkt(wepA, 40000, wepB, 54)), dropPolicyIngress)
	w.send(t, "A to B:54, denied", sentByA, udpPkt(wepA, 40001, wepB, 54), dropPolicyIngress)
	w.send(t, "port unreachable about the denied flow", sentByB,
		icmpErrorPkt(wepB, wepA, icmpUnreachable, 3, udpPkt(wepA, 40001, wepB, 54)), dropPolicyIngress)
	w.send(t, "the same error through the kernel", kernelToA,
		icmpErrorPkt(wepB, wepA, icmpUnreachable, 3, req), passDeliver)
	// Errors are not flows: the flow they are about is left as it was.
	w.expectFlow(t, flow)
	w.expectFlowCount(t, 1)

	out := udpPkt(wepA, 40000, remoteDst, 33434)
	w.send(t, "A to a remote workload", sentByA, out, fwdRemote)
	w.send(t, "time exceeded from a router about it", fromUplink,
		icmpErrorPkt(otherHost, wepA, icmpTimeExceed, 0, out), fwdLocal)
	w.send(t, "host unreachable from the network about it", fromUplink,
		icmpErrorPkt(remoteDst, wepA, icmpUnreachable, 1, out), fwdLocal)
	w.send(t, "time exceeded about an unknown flow", fromUplink,
		icmpErrorPkt(otherHost, wepA, icmpTimeExceed, 0, udpPkt(wepA, 40000, remoteDst, 33435)), dropPolicyIngress)
	echo := echoPkt(wepA, remoteDst, icmpEcho, 0x77)
	w.send(t, "A pings a remote workload", sentByA, echo, fwdRemote)
	w.send(t, "time exceeded about the ping", fromUplink,
		icmpErrorPkt(otherHost, wepA, icmpTimeExceed, 0, echo), fwdLocal)
	w.send(t, "time exceeded about another ping", fromUplink,
		icmpErrorPkt(otherHost, wepA, icmpTimeExceed, 0, echoPkt(wepA, remoteDst, icmpEcho, 0x78)), dropPolicyIngress)
	w.expectFlowCount(t, 3)

	// Without A's ingress policy an unrelated error is allowed on its own, and still leaves no entry.
	w.setPrograms(t, caliA, 0, 0)
	w.send(t, "unknown flow, no policy", fromUplink,
		icmpErrorPkt(otherHost, wepA, icmpTimeExceed, 0, udpPkt(wepA, 40000, remoteDst, 33436)), fwdLocal)
	w.expectFlowCount(t, 3)
}

func TestPolicyFragments(t *testing.T) {
	const mf = 0x2000
	first := func(p pkt, id uint16) pkt {
		return p.with(func(p *pkt) { p.ipID, p.fragOff = id, mf })
	}
	later := func(p pkt, id, units uint16) pkt {
		return p.with(func(p *pkt) { p.ipID, p.fragOff = id, units })
	}
	laterLen := uint64(ethHeaderLen + ipv4MinLen + payloadLen)

	t.Run("no policy", func(t *testing.T) {
		w := policyWorld(t)
		req := udpPkt(wepA, 40000, wepB, 53)
		w.send(t, "first fragment", sentByA, first(req, 0x1111), passFragment)
		w.send(t, "middle fragment", sentByA, later(req, 0x1111, 5).with(func(p *pkt) { p.fragOff |= mf }), passFragment)
		w.send(t, "last fragment", sentByA, later(req, 0x1111, 10), passFragment)
		flow := flowOf(req)
		flow.verdict, flow.state = maps.VerdictAllow, stUDP
		flow.packets, flow.bytes = [2]uint64{3, 0}, [2]uint64{udpLen + 2*laterLen, 0}
		w.expectFlow(t, flow)

		w.send(t, "later fragment of an unknown first", sentByA, later(req, 0x2222, 10), dropFragment)
		w.send(t, "later fragment, known id but another protocol", sentByA,
			later(tcpPkt(wepA, 40000, wepB, 53, 0), 0x1111, 10), dropFragment)
		w.expectFlow(t, flow)
		w.expectFlowCount(t, 1)
	})

	t.Run("egress policy", func(t *testing.T) {
		const prog, rule = 1, 7
		w := policyWorld(t)
		w.putPolicy(t, denyAll(prog), allowPort(prog, unix.IPPROTO_UDP, 53, rule))
		w.setPrograms(t, caliA, 0, prog)
		ok, denied := udpPkt(wepA, 40000, wepB, 53), udpPkt(wepA, 40000, wepB, 54)
		w.send(t, "first fragment to :53", sentByA, first(ok, 0x1111), passFragment)
		w.send(t, "first fragment to :54", sentByA, first(denied, 0x3333), dropPolicyEgress)
		w.send(t, "later fragment to :53", sentByA, later(ok, 0x1111, 10), passFragment)
		w.send(t, "later fragment to :54", sentByA, later(denied, 0x3333, 10), dropPolicyEgress)
		w.expectRuleHits(t, rule, 2, udpLen+laterLen)
		w.expectFlowCount(t, 1)
	})
}

// Failsafe ports between workloads and hosts are never cut; this host may always reach its
// workloads.
func TestPolicyFailsafeAndHosts(t *testing.T) {
	t.Run("egress to hosts", func(t *testing.T) {
		const prog = 1
		w := policyWorld(t)
		w.putPolicy(t, denyAll(prog))
		w.setPrograms(t, caliA, 0, prog)

		ssh := tcpPkt(wepA, 40000, thisHost, 22, tcpSYN)
		w.send(t, "SSH to this host without failsafe: denied", sentByA, ssh, dropPolicyEgress)
		w.expectFlowCount(t, 0)
		if _, err := w.maps.Failsafe.Sync(map[maps.FailsafeKey]maps.FailsafeDirection{
			{Protocol: unix.IPPROTO_TCP, Port: 22}: maps.FailsafeInbound,
			{Protocol: unix.IPPROTO_UDP, Port: 53}: maps.FailsafeOutbound,
		}); err != nil {
			t.Fatal(err)
		}
		w.send(t, "SSH to this host on an inbound failsafe port", sentByA, ssh, passKernel)
		flow := flowOf(ssh)
		flow.verdict, flow.state = maps.VerdictAllow, stSynSent
		flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{tcpLen, 0}
		w.expectFlow(t, flow)
		w.send(t, "SSH to another host", sentByA, tcpPkt(wepA, 40001, otherHost, 22, tcpSYN), passKernel)
		w.send(t, "SSH to a workload: no failsafe", sentByA, tcpPkt(wepA, 40002, wepB, 22, tcpSYN), dropPolicyEgress)
		w.send(t, "SSH to a remote workload: no failsafe", sentByA, tcpPkt(wepA, 40003, remoteDst, 22, tcpSYN), dropPolicyEgress)
		w.send(t, "DNS to this host: outbound only", sentByA, udpPkt(wepA, 40004, thisHost, 53), dropPolicyEgress)
		w.send(t, "SSH to this host over UDP: no failsafe", sentByA, udpPkt(wepA, 40005, thisHost, 22), dropPolicyEgress)
	})

	t.Run("ingress from hosts", func(t *testing.T) {
		const prog = 2
		w := policyWorld(t)
		w.putPolicy(t, denyAll(prog))
		w.setPrograms(t, caliB, prog, 0)
		if _, err := w.maps.Failsafe.Sync(map[maps.FailsafeKey]maps.FailsafeDirection{
			{Protocol: unix.IPPROTO_TCP, Port: 22}: maps.FailsafeInbound,
			{Protocol: unix.IPPROTO_UDP, Port: 53}: maps.FailsafeOutbound,
		}); err != nil {
			t.Fatal(err)
		}

		probe := tcpPkt(thisHost, 40000, wepB, 8080, tcpSYN)
		w.send(t, "this host probes B", kernelToB, probe, passDeliver)
		w.send(t, "B answers this host", sentByB, tcpPkt(wepB, 8080, thisHost, 40000, tcpSYN|tcpACK), passKernel)
		flow := flowOf(probe)
		flow.verdict, flow.state = maps.VerdictAllow, stSynAcked
		flow.packets, flow.bytes = [2]uint64{1, 1}, [2]uint64{tcpLen, tcpLen}
		w.expectFlow(t, flow)
		w.send(t, "this host pings B", kernelToB, echoPkt(thisHost, wepB, icmpEcho, 1), passDeliver)

		w.send(t, "another host to B: denied", kernelToB, tcpPkt(otherHost, 40000, wepB, 8080, tcpSYN), dropPolicyIngress)
		// From another host, the network hands it to the kernel (both ways through its
		// conntrack); to_wep checks B's ingress policy then, as kernelToB above.
		w.send(t, "another host to B from the network: the kernel's", fromUplink,
			tcpPkt(otherHost, 40001, wepB, 8080, tcpSYN), passKernel)
		w.send(t, "another host to B's DNS: outbound failsafe", kernelToB, udpPkt(otherHost, 40002, wepB, 53), passDeliver)
		w.send(t, "another host to B's DNS from the network", fromUplink, udpPkt(otherHost, 40003, wepB, 53), passKernel)
		w.send(t, "another host to B's SSH: inbound only", kernelToB, tcpPkt(otherHost, 40004, wepB, 22, tcpSYN), dropPolicyIngress)
		w.send(t, "a remote workload to B's DNS: not a host", fromUplink, udpPkt(remoteDst, 40005, wepB, 53), dropPolicyIngress)
		w.send(t, "workload A to B's DNS: not a host", sentByA, udpPkt(wepA, 40006, wepB, 53), dropPolicyIngress)
	})

	t.Run("this host without LOCAL_HOST is any host", func(t *testing.T) {
		const prog = 2
		w := policyWorld(t)
		w.putPolicy(t, denyAll(prog))
		w.setPrograms(t, caliB, prog, 0)
		if err := w.maps.Routes.Put(maps.Route{Prefix: netip.PrefixFrom(thisHost, 32), Flags: maps.Host}); err != nil {
			t.Fatal(err)
		}
		w.send(t, "this host probes B", kernelToB, tcpPkt(thisHost, 40000, wepB, 8080, tcpSYN), dropPolicyIngress)
	})
}

// Anti-spoofing comes before policy: a spoofed packet is DROP_SPOOFED whatever policy says, and
// leaves nothing in conntrack.
func TestPolicyAfterAntiSpoofing(t *testing.T) {
	const prog, progB = 1, 2
	w := policyWorld(t)
	w.putPolicy(t, denyAll(prog), denyAll(progB))
	w.setPrograms(t, caliA, 0, prog)
	w.setPrograms(t, caliB, progB, 0)

	w.send(t, "as B to a remote workload", sentByA, tcpPkt(wepB, 40000, remoteDst, 80, tcpSYN), dropSpoofed)
	w.send(t, "as a remote workload to B", sentByA, udpPkt(remoteDst, 40000, wepB, 53), dropSpoofed)
	// This host's address would pass B's ingress policy.
	w.send(t, "as this host to B", sentByA, tcpPkt(thisHost, 40000, wepB, 80, tcpSYN), dropSpoofed)
	// An ICMP error about nothing: policy would take it alone.
	w.send(t, "an ICMP error as B", sentByA,
		icmpErrorPkt(wepB, remoteDst, icmpUnreachable, 3, udpPkt(remoteDst, 1, wepB, 2)), dropSpoofed)
	w.expectFlowCount(t, 0)

	w.setPrograms(t, caliA, 0, 0)
	w.setPrograms(t, caliB, 0, 0)
	w.send(t, "without policy: as B to A", sentByA, tcpPkt(wepB, 40000, wepA, 80, tcpSYN), dropSpoofed)
	w.expectFlowCount(t, 0)
}

// A port entry may hand the decision on to a table of source ports.
func TestPolicySourcePorts(t *testing.T) {
	const prog, rule = 1, 11
	const table = maps.SourcePortTable | 1
	w := policyWorld(t)
	w.putPolicy(t, denyAll(prog),
		policyEntry{maps.PolicyKey{Program: prog, Identity: identityAny, Protocol: unix.IPPROTO_TCP, Port: 80, PortBits: 16},
			maps.PolicyValue{Action: maps.ActionSourcePort, Rule: table}})
	for _, k := range portPrefixes(1000, 1999) {
		k.Program = table
		w.putPolicy(t, policyEntry{k, maps.PolicyValue{Action: maps.ActionAllow, Rule: rule}})
	}
	w.setPrograms(t, caliA, 0, prog)

	syn := tcpPkt(wepA, 1500, wepB, 80, tcpSYN)
	w.send(t, "from 1500", sentByA, syn, fwdLocal)
	flow := flowOf(syn)
	flow.verdict, flow.state, flow.ruleEgress = maps.VerdictAllow, stSynSent, rule
	flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{tcpLen, 0}
	w.expectFlow(t, flow)

	for _, c := range []struct {
		sport  uint16
		reason loader.MargayReason
	}{{2500, dropPolicyEgress}, {999, dropPolicyEgress}, {1000, fwdLocal}, {1999, fwdLocal}, {2000, dropPolicyEgress}} {
		w.send(t, fmt.Sprintf("from %d", c.sport), sentByA, tcpPkt(wepA, c.sport, wepB, 80, tcpSYN), c.reason)
	}
	w.send(t, "from 1500 to :81", sentByA, tcpPkt(wepA, 1501, wepB, 81, tcpSYN), dropPolicyEgress)
	w.send(t, "UDP from 1500 to :80", sentByA, udpPkt(wepA, 1502, wepB, 80), dropPolicyEgress)
	w.expectRuleHits(t, rule, 3, 3*tcpLen)
	w.expectFlowCount(t, 3)

	// A re-check after a generation bump follows the table as well.
	w.bumpGeneration(t)
	w.send(t, "from 1500 after a bump", sentByA, tcpPkt(wepA, 1500, wepB, 80, tcpACK), fwdLocal)
	flow.generation, flow.packets, flow.bytes = w.generation(t), [2]uint64{2, 0}, [2]uint64{2 * tcpLen, 0}
	w.expectFlow(t, flow)
}

// ip_rcv() drops a packet whose IPv4 header checksum is wrong before netfilter's conntrack sees it.
// from_wep drops it too (DROP_MALFORMED), and its conntrack must not see it either: the tuple
// may be corrupt, and a flow that never happened must neither be opened, nor counted against a
// rule, nor be denied by policy under another reason than the one the packet is dropped for.
func TestPolicyBadChecksum(t *testing.T) {
	t.Run("no policy", func(t *testing.T) {
		w := policyWorld(t)
		bad := sentByA.frame(udpPkt(wepA, 40000, wepB, 53))
		bad[csumOffset] ^= 0x5a
		w.sendFrame(t, "bad checksum", sentByA, bad, dropMalformed)
		w.expectFlowCount(t, 0)
	})
	t.Run("egress policy", func(t *testing.T) {
		const prog, rule = 1, 7
		w := policyWorld(t)
		w.putPolicy(t, denyAll(prog), allowPort(prog, unix.IPPROTO_UDP, 53, rule))
		w.setPrograms(t, caliA, 0, prog)
		bad := sentByA.frame(udpPkt(wepA, 40000, wepB, 53))
		bad[csumOffset] ^= 0x5a
		w.sendFrame(t, "bad checksum, allowed flow", sentByA, bad, dropMalformed)
		w.expectRuleHits(t, rule, 0, 0)
		bad = sentByA.frame(udpPkt(wepA, 40000, wepB, 54))
		bad[csumOffset] ^= 0x5a
		w.sendFrame(t, "bad checksum, denied flow", sentByA, bad, dropMalformed)
		w.expectFlowCount(t, 0)
	})
	// tc_checksum checks option-less headers only ("with options the kernel checks it"), but
	// conntrack sees a packet with options before the kernel does.
	t.Run("IP options", func(t *testing.T) {
		const prog, rule = 1, 7
		w := policyWorld(t)
		w.putPolicy(t, denyAll(prog), allowPort(prog, unix.IPPROTO_UDP, 53, rule))
		w.setPrograms(t, caliA, 0, prog)
		bad := sentByA.frame(udpPkt(wepA, 40000, wepB, 53).with(func(p *pkt) { p.options = routerAlert }))
		bad[csumOffset] ^= 0x5a
		w.sendFrame(t, "bad checksum with options, allowed flow", sentByA, bad, dropMalformed)
		w.expectRuleHits(t, rule, 0, 0)
		w.expectFlowCount(t, 0)
	})
}

// sendFrame is send for a frame built by hand, which no forwarding case may be.
func (w *world) sendFrame(t *testing.T, name string, h hop, frame []byte, reason loader.MargayReason) {
	t.Helper()
	if maps.Reason(reason).Forward() {
		panic("sendFrame does not check forwarded frames")
	}
	t.Run(name, func(t *testing.T) {
		before := w.counters(t)
		verdict, out, err := w.run(h.prog, h.iface, frame)
		if err != nil {
			t.Fatal(err)
		}
		if want := verdictFor(h.prog, reason); verdict != want {
			t.Errorf("verdict %s, want %s", verdictName(h.prog, verdict), verdictName(h.prog, want))
		}
		w.expectCounted(t, before, counterKey{w.ifindex[h.iface], h.prog.hook(), maps.Reason(reason)}, len(frame))
		checkOutput(t, frame, out, nil)
	})
}

// IPv4 options go to the kernel, after conntrack and policy: the ports lie past the options.
func TestPolicyIPOptions(t *testing.T) {
	const prog, rule = 1, 7
	w := policyWorld(t)
	w.putPolicy(t, denyAll(prog), allowPort(prog, unix.IPPROTO_TCP, 80, rule))
	w.setPrograms(t, caliA, 0, prog)
	withOptions := func(p pkt) pkt { return p.with(func(p *pkt) { p.options = routerAlert }) }

	syn := withOptions(tcpPkt(wepA, 40000, wepB, 80, tcpSYN))
	n := w.send(t, "to B:80 allowed, to the kernel", sentByA, syn, passIPOptions)
	flow := flowOf(syn)
	flow.verdict, flow.state, flow.ruleEgress = maps.VerdictAllow, stSynSent, rule
	flow.packets, flow.bytes = [2]uint64{1, 0}, [2]uint64{n, 0}
	w.expectFlow(t, flow)
	w.expectRuleHits(t, rule, 1, n)
	w.send(t, "to B:81 denied", sentByA, withOptions(tcpPkt(wepA, 40001, wepB, 81, tcpSYN)), dropPolicyEgress)
	w.expectFlowCount(t, 1)
}

// A packet from the network that claims an address of this host as its source is spoofed: the
// kernel would drop it as a martian (fib_validate_source), but from_net bypasses the kernel, and
// policy exempts LOCAL_HOST sources from every workload's ingress policy. The prefilter must drop
// it as it drops sources of local workloads, or anyone on the uplink's segment reaches every port
// of every workload.
func TestPolicyHostAddressFromNetwork(t *testing.T) {
	const prog = 2
	w := policyWorld(t)
	w.putPolicy(t, denyAll(prog))
	w.setPrograms(t, caliB, prog, 0)
	spoofed := tcpPkt(thisHost, 40000, wepB, 8080, tcpSYN)
	w.send(t, "XDP drops this host's address as a source", hop{xdpFromNet, uplink, peerMAC, uplinkMAC}, spoofed, dropSpoofed)
	// Another host's address is no more than any peer's: B's ingress policy applies, in to_wep
	// once the kernel delivers (from_net leaves what a host sends to the kernel).
	w.send(t, "another host's address to B", fromUplink, tcpPkt(otherHost, 40000, wepB, 8080, tcpSYN), passKernel)
	w.send(t, "another host's address to B, delivered", kernelToB, tcpPkt(otherHost, 40000, wepB, 8080, tcpSYN), dropPolicyIngress)
}
