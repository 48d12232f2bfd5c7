package maps

import (
	"net/netip"
	"slices"
)

// FlowFilter selects conntrack entries and packets by source, destination and protocol, as
// margayctl conntrack list and monitor do with --src, --dst and --proto. A zero field selects
// anything.
type FlowFilter struct {
	Src, Dst netip.Prefix // IPv4 prefixes; the zero Prefix selects any address
	Protocol uint8        // an IP protocol number; 0 selects any protocol
}

// IsZero reports whether f selects everything.
func (f FlowFilter) IsZero() bool { return f == FlowFilter{} }

func (f FlowFilter) match(src, dst netip.Addr, protocol uint8) bool {
	return (!f.Src.IsValid() || f.Src.Contains(src)) &&
		(!f.Dst.IsValid() || f.Dst.Contains(dst)) &&
		(f.Protocol == 0 || f.Protocol == protocol)
}

// Flow reports whether f selects a conntrack entry: Src its initiator, Dst its responder.
func (f FlowFilter) Flow(fl Flow) bool { return f.match(fl.Src, fl.Dst, fl.Protocol) }

// Event reports whether f selects the packet of an event. A packet without an IPv4 header has
// nothing to match an address or protocol against: only the zero FlowFilter selects it.
func (f FlowFilter) Event(e Event) bool {
	if !e.Src.IsValid() {
		return f.IsZero()
	}
	return f.match(e.Src, e.Dst, e.Protocol)
}

// EventFilter selects events, as margayctl monitor's flags do. A zero field selects anything.
type EventFilter struct {
	Kind    EventKind // only events of this kind (EventDrop: drops only)
	Reasons []Reason  // only events of these reasons
	Hooks   []Hook    // only events of these hooks
	Ifindex uint32    // only packets handled on this interface
	Flow    FlowFilter
}

// Match reports whether f selects e.
func (f *EventFilter) Match(e Event) bool {
	return (f.Kind == 0 || e.Kind == f.Kind) &&
		(len(f.Reasons) == 0 || slices.Contains(f.Reasons, e.Reason)) &&
		(len(f.Hooks) == 0 || slices.Contains(f.Hooks, e.Hook)) &&
		(f.Ifindex == 0 || e.Ifindex == f.Ifindex) &&
		f.Flow.Event(e)
}
