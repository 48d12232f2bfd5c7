package maps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/loader"
)

// EventKind says why the dataplane sent an event (C enum event_kind).
type EventKind uint8

// Event kinds.
const (
	// EventDrop: the packet was dropped; every drop makes one, rate limits allowing.
	EventDrop = EventKind(loader.MargayEventKindEVENT_DROP)
	// EventTrace: any other packet, while tracing is on.
	EventTrace = EventKind(loader.MargayEventKindEVENT_TRACE)
	// EventPolicyLog: a policy Log rule matched a flow's first packet (Calico's Log action). It
	// names the rule (Event.Rule); its Reason is REASON_UNSPEC, since the verdict is not the
	// log's: the packet's own drop or trace event, if any, follows.
	EventPolicyLog = EventKind(loader.MargayEventKindEVENT_POLICY_LOG)
)

func (k EventKind) String() string {
	switch k {
	case EventDrop:
		return "drop"
	case EventTrace:
		return "trace"
	case EventPolicyLog:
		return "log"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Event is one packet a program reported, with the verdict's reason and its 5-tuple as far as the
// packet's linear data held it.
type Event struct {
	Time    time.Time
	Kind    EventKind
	Ifindex uint32 // the interface the program ran on
	Hook    Hook
	Reason  Reason
	// Protocol, Src and Dst come from the IPv4 header; Src and Dst are invalid (the zero Addr)
	// for a packet that has none.
	Protocol uint8
	Src, Dst netip.Addr
	// SrcPort and DstPort are set for TCP, UDP, SCTP and UDP-Lite when HasPorts: not for later
	// fragments, nor when the L4 header lay beyond the linear data.
	HasPorts         bool
	SrcPort, DstPort uint16
	Len              uint32 // the whole packet's length, as counted
	// Rule is the Log rule of an EventPolicyLog: its id in the rule_hits map, which the agent's
	// margay_policy_rule_hits_* metrics name by policy, direction and index. 0 in other events.
	Rule uint32
}

// String prints a drop or trace event on one line; a policy log event as Calico's Log action's
// lines read, with the rule id: "log rule=7 IN=12 HOOK=from_wep SRC=198.19.0.1 DST=198.19.0.2
// LEN=86 PROTO=TCP SPT=40000 DPT=80".
func (e Event) String() string {
	if e.Kind == EventPolicyLog {
		return e.LogLine(strconv.FormatUint(uint64(e.Ifindex), 10))
	}
	src, dst := e.Addrs()
	return fmt.Sprintf("%s %d %s %s %s %s -> %s %d", e.Kind, e.Ifindex, e.Hook, e.Reason, hostconv.ProtocolName(e.Protocol), src, dst, e.Len)
}

// LogLine is the policy log event e as Calico's Log action's lines read (String), with the
// interface named in.
func (e Event) LogLine(in string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s rule=%d IN=%s HOOK=%s", e.Kind, e.Rule, in, e.Hook)
	if e.Src.IsValid() {
		fmt.Fprintf(&b, " SRC=%s DST=%s", e.Src, e.Dst)
	}
	fmt.Fprintf(&b, " LEN=%d", e.Len)
	if e.Src.IsValid() {
		fmt.Fprintf(&b, " PROTO=%s", strings.ToUpper(hostconv.ProtocolName(e.Protocol)))
	}
	if e.HasPorts {
		fmt.Fprintf(&b, " SPT=%d DPT=%d", e.SrcPort, e.DstPort)
	}
	return b.String()
}

// Addrs returns the packet's source and destination as text: "198.19.0.5:40000" when the event
// has the ports, the address alone when not, "-" for a packet without an IPv4 header.
func (e Event) Addrs() (src, dst string) {
	if !e.Src.IsValid() {
		return "-", "-"
	}
	if e.HasPorts {
		return netip.AddrPortFrom(e.Src, e.SrcPort).String(), netip.AddrPortFrom(e.Dst, e.DstPort).String()
	}
	return e.Src.String(), e.Dst.String()
}

// The dataplane's rate limit of events, per CPU and kind (drops, traces, policy logs): at most
// EventsBurst at once, refilled at EventsRate a second (hostconv, which the programs share).
const (
	EventsRate  = hostconv.EventsRate
	EventsBurst = hostconv.EventsBurst
)

// EventsLost counts events the dataplane did not send, summed over CPUs.
type EventsLost struct {
	RateLimited uint64 `json:"rateLimited"` // over the per-CPU rate limit
	BufferFull  uint64 `json:"bufferFull"`  // the ring buffer had no room: nobody read, or too slowly
}

// Total is every event lost.
func (l EventsLost) Total() uint64 { return l.RateLimited + l.BufferFull }

// Since is what the dataplane lost between two readings of Lost: before, then l.
func (l EventsLost) Since(before EventsLost) EventsLost {
	return EventsLost{RateLimited: l.RateLimited - before.RateLimited, BufferFull: l.BufferFull - before.BufferFull}
}

// Events are the maps behind margayctl monitor: the ring buffer, the per-CPU rate limits and
// lost counts, and the monitor settings. They are apart from Set, so that the other commands keep
// working against a dataplane pinned before events existed.
type Events struct {
	ring, state, monitor *ebpf.Map

	owned []*ebpf.Map
}

// EventsFromDataplane wraps the event maps of a loaded dataplane; the Dataplane keeps owning them.
func EventsFromDataplane(d *loader.Dataplane) *Events {
	m := d.Maps()
	return &Events{ring: m.Events, state: m.EventsState, monitor: m.Monitor}
}

// OpenEvents opens the event maps pinned under a bpffs root.
func OpenEvents(root string) (*Events, error) {
	e := &Events{}
	for _, p := range []struct {
		name string
		m    **ebpf.Map
	}{{"events", &e.ring}, {"events_state", &e.state}, {"monitor", &e.monitor}} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(root, p.name), nil)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", p.name, err)
		}
		e.owned = append(e.owned, m)
		*p.m = m
	}
	return e, nil
}

// Close releases maps that OpenEvents opened; it leaves a dataplane's maps alone.
func (e *Events) Close() error {
	var errs []error
	for _, m := range e.owned {
		errs = append(errs, m.Close())
	}
	e.owned = nil
	return errors.Join(errs...)
}

// Lost returns the events not sent since the dataplane was loaded.
func (e *Events) Lost() (EventsLost, error) {
	var (
		zero   uint32
		perCPU []loader.MargayEventState
		l      EventsLost
	)
	if err := e.state.Lookup(&zero, &perCPU); err != nil {
		return l, fmt.Errorf("read events state: %w", err)
	}
	for _, s := range perCPU {
		l.RateLimited += s.LostRate
		l.BufferFull += s.LostFull
	}
	return l, nil
}

// Trace reports whether the programs send trace events.
func (e *Events) Trace() (bool, error) {
	var (
		zero uint32
		v    loader.MargayMonitorValue
	)
	if err := e.monitor.Lookup(&zero, &v); err != nil {
		return false, fmt.Errorf("read monitor settings: %w", err)
	}
	return v.Flags&loader.MargayMonitorFlagsMONITOR_TRACE != 0, nil
}

// SetTrace turns trace events on or off and reports whether that changed the setting. Only
// margayctl monitor writes this map.
func (e *Events) SetTrace(on bool) (bool, error) {
	var (
		zero uint32
		v    loader.MargayMonitorValue
	)
	if err := e.monitor.Lookup(&zero, &v); err != nil {
		return false, fmt.Errorf("read monitor settings: %w", err)
	}
	flags := v.Flags &^ loader.MargayMonitorFlagsMONITOR_TRACE
	if on {
		flags |= loader.MargayMonitorFlagsMONITOR_TRACE
	}
	if flags == v.Flags {
		return false, nil
	}
	v.Flags = flags
	if err := e.monitor.Put(&zero, &v); err != nil {
		return false, fmt.Errorf("write monitor settings: %w", err)
	}
	return true, nil
}

// EventReader reads events from the ring buffer. A ring buffer has one consumer position: events
// are shared out, not copied, among concurrent readers.
type EventReader struct {
	r    *ringbuf.Reader
	rec  ringbuf.Record
	wall int64 // wall clock minus CLOCK_MONOTONIC, ns
}

// Reader starts reading events; what the ring buffer holds already comes first.
func (e *Events) Reader() (*EventReader, error) {
	r, err := ringbuf.NewReader(e.ring)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	return &EventReader{r: r, wall: time.Now().UnixNano() - int64(Monotonic())}, nil
}

// Read blocks until the next event, the deadline (os.ErrDeadlineExceeded) or Close
// (os.ErrClosed).
func (r *EventReader) Read() (Event, error) {
	if err := r.r.ReadInto(&r.rec); err != nil {
		return Event{}, err
	}
	return decodeEvent(r.rec.RawSample, r.wall)
}

// Discard drops the events the ring buffer holds now, without decoding them, and returns how
// many there were.
func (r *EventReader) Discard() (int, error) {
	r.r.SetDeadline(time.Now())
	defer r.r.SetDeadline(time.Time{})
	n := 0
	for {
		err := r.r.ReadInto(&r.rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
	}
}

// SetDeadline makes Read return os.ErrDeadlineExceeded once t has passed and the ring is empty;
// the zero time removes it.
func (r *EventReader) SetDeadline(t time.Time) { r.r.SetDeadline(t) }

// Close interrupts Read and releases the reader.
func (r *EventReader) Close() error { return r.r.Close() }

func decodeEvent(raw []byte, wall int64) (Event, error) {
	var v loader.MargayEvent
	if _, err := binary.Decode(raw, binary.NativeEndian, &v); err != nil {
		return Event{}, fmt.Errorf("decode %d-byte event: %w", len(raw), err)
	}
	e := Event{Time: time.Unix(0, wall+int64(v.Timestamp)), Kind: EventKind(v.Kind), Ifindex: v.Ifindex,
		Hook: Hook(v.Hook), Reason: Reason(v.Reason), Len: v.Len, Rule: v.Rule}
	if v.Flags&loader.MargayEventFlagsEVENT_F_IPV4 != 0 {
		e.Protocol = v.Protocol
		e.Src, e.Dst = addrFromBE32(v.Saddr), addrFromBE32(v.Daddr)
	}
	if v.Flags&loader.MargayEventFlagsEVENT_F_PORTS != 0 {
		e.HasPorts = true
		e.SrcPort, e.DstPort = bits.ReverseBytes16(v.Sport), bits.ReverseBytes16(v.Dport)
	}
	return e, nil
}
