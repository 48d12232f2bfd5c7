package maps

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/loader"
)

// CTState is a conntrack entry's state (C enum ct_state), printed without the CT_ prefix.
type CTState uint8

func (s CTState) String() string { return enumName("ct_state", uint64(s)) }

// CTVerdict is a conntrack entry's policy verdict (C enum ct_verdict).
type CTVerdict uint8

func (v CTVerdict) String() string { return enumName("ct_verdict", uint64(v)) }

// Conntrack verdicts.
const (
	VerdictAllow       = CTVerdict(loader.MargayCtVerdictCT_VERDICT_ALLOW)
	VerdictDenyEgress  = CTVerdict(loader.MargayCtVerdictCT_VERDICT_DENY_EGRESS)
	VerdictDenyIngress = CTVerdict(loader.MargayCtVerdictCT_VERDICT_DENY_INGRESS)
)

// Flow is one conntrack entry, told from its initiator's side.
type Flow struct {
	Protocol uint8      `json:"protocol"`
	Src      netip.Addr `json:"src"` // the initiator
	Dst      netip.Addr `json:"dst"`
	SrcPort  uint16     `json:"srcPort"`
	DstPort  uint16     `json:"dstPort"`
	// PolicyPort is the port policy matched: the destination port, or ICMP type << 8 | code.
	PolicyPort uint16    `json:"policyPort"`
	State      CTState   `json:"-"`
	Verdict    CTVerdict `json:"-"`
	// KernelNAT: the kernel's conntrack translates the flow (a Service, a NodePort), so it takes
	// the kernel path in both directions.
	KernelNAT   bool          `json:"kernelNAT,omitempty"`
	Generation  uint32        `json:"generation"`
	RuleEgress  uint32        `json:"ruleEgress,omitempty"`
	RuleIngress uint32        `json:"ruleIngress,omitempty"`
	Packets     [2]uint64     `json:"packets"` // initiator to responder, replies
	Bytes       [2]uint64     `json:"bytes"`
	Age         time.Duration `json:"age"`  // since the first packet
	Idle        time.Duration `json:"idle"` // since the latest packet

	key      loader.MargayCtKey
	lastSeen uint64
}

func (f Flow) String() string {
	return fmt.Sprintf("%s %s:%d -> %s:%d %s %s", hostconv.ProtocolName(f.Protocol), f.Src, f.SrcPort, f.Dst, f.DstPort, f.State, f.Verdict)
}

// Monotonic is CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns.
func Monotonic() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // cannot fail on Linux
	}
	return uint64(ts.Nano())
}

// Conntrack is the conntrack LRU hash.
type Conntrack struct{ m *ebpf.Map }

// NewConntrack wraps a loaded conntrack map.
func NewConntrack(m *ebpf.Map) *Conntrack { return &Conntrack{m: m} }

func decodeFlow(k loader.MargayCtKey, v loader.MargayCtValue, now uint64) Flow {
	a, b := addrFromBE32(k.AddrA), addrFromBE32(k.AddrB)
	pa, pb := bits.ReverseBytes16(k.PortA), bits.ReverseBytes16(k.PortB)
	f := Flow{Protocol: k.Protocol, Src: a, Dst: b, SrcPort: pa, DstPort: pb,
		PolicyPort: bits.ReverseBytes16(v.PolicyPort), State: CTState(v.State), Verdict: CTVerdict(v.Verdict), KernelNAT: v.KernelNat != 0,
		Generation: v.Generation, RuleEgress: v.RuleEgress, RuleIngress: v.RuleIngress,
		Packets: v.Packets, Bytes: v.Bytes, key: k, lastSeen: v.LastSeen}
	if v.InitiatorIsA == 0 {
		f.Src, f.Dst, f.SrcPort, f.DstPort = b, a, pb, pa
	}
	if now > v.Created {
		f.Age = time.Duration(now - v.Created)
	}
	if now > v.LastSeen {
		f.Idle = time.Duration(now - v.LastSeen)
	}
	return f
}

// List returns every entry, sorted by initiator and responder.
func (c *Conntrack) List() ([]Flow, error) {
	var (
		k   loader.MargayCtKey
		v   loader.MargayCtValue
		out []Flow
	)
	now := Monotonic()
	it := c.m.Iterate()
	for it.Next(&k, &v) {
		out = append(out, decodeFlow(k, v, now))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list conntrack: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].less(out[j]) })
	return out, nil
}

func (f Flow) less(o Flow) bool {
	if c := f.Src.Compare(o.Src); c != 0 {
		return c < 0
	}
	if c := f.Dst.Compare(o.Dst); c != 0 {
		return c < 0
	}
	if f.Protocol != o.Protocol {
		return f.Protocol < o.Protocol
	}
	if f.SrcPort != o.SrcPort {
		return f.SrcPort < o.SrcPort
	}
	return f.DstPort < o.DstPort
}

// Timeout is how long an entry in state s lives without packets, as the BPF programs count it.
func Timeout(t Timeouts, s CTState) time.Duration {
	pick := func(v, def uint32) time.Duration {
		if v == 0 {
			v = def
		}
		return time.Duration(v) * time.Second
	}
	switch loader.MargayCtState(s) {
	case loader.MargayCtStateCT_TCP_SYN_SENT, loader.MargayCtStateCT_TCP_SYN_ACKED:
		return pick(t.TcpSyn, hostconv.CTDefaultTCPSyn)
	case loader.MargayCtStateCT_TCP_ESTABLISHED:
		return pick(t.TcpEstablished, hostconv.CTDefaultTCPEstablished)
	case loader.MargayCtStateCT_TCP_FIN_WAIT:
		return pick(t.TcpFin, hostconv.CTDefaultTCPFin)
	case loader.MargayCtStateCT_TCP_CLOSED:
		return pick(t.TcpClosed, hostconv.CTDefaultTCPClosed)
	case loader.MargayCtStateCT_UDP:
		return pick(t.Udp, hostconv.CTDefaultUDP)
	case loader.MargayCtStateCT_ICMP:
		return pick(t.Icmp, hostconv.CTDefaultICMP)
	}
	return pick(t.Other, hostconv.CTDefaultOther)
}

// Sweep deletes the entries idle for longer than their state's timeout, and returns how many it
// deleted and how many are left. The BPF programs already treat such entries as gone; sweeping
// makes room and keeps dumps honest.
func (c *Conntrack) Sweep(t Timeouts) (deleted, left int, err error) {
	flows, err := c.List()
	if err != nil {
		return 0, 0, err
	}
	var errs []error
	for _, f := range flows {
		if f.Idle <= Timeout(t, f.State) {
			left++
			continue
		}
		// The entry may have seen a packet since List: check again right before deleting.
		var v loader.MargayCtValue
		if err := c.m.Lookup(&f.key, &v); err != nil {
			continue
		}
		if now := Monotonic(); now <= v.LastSeen || time.Duration(now-v.LastSeen) <= Timeout(t, CTState(v.State)) {
			left++
			continue
		}
		if err := c.m.Delete(&f.key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete conntrack %v: %w", f, err))
			continue
		}
		deleted++
	}
	return deleted, left, errors.Join(errs...)
}

// Flush deletes every entry, as `margayctl conntrack flush` does.
func (c *Conntrack) Flush() (int, error) {
	flows, err := c.List()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, f := range flows {
		if err := c.m.Delete(&f.key); err == nil {
			n++
		}
	}
	return n, nil
}
