// Package policy turns network policies into what the BPF programs look up, and says in plain Go
// what they mean.
//
// Semantics (Calico's, which include Kubernetes NetworkPolicy's): policies are ordered by order,
// then name. For a workload and a direction, the policies that select it and govern that
// direction are walked in order, and their rules in order; the first rule that matches decides.
// A workload that no policy selects in a direction allows everything in it; a selected one denies
// whatever no rule allows. A flow is allowed when the sender's egress and the receiver's ingress
// both allow it. The host a workload runs on may always reach it, and failsafe ports between
// workloads and hosts are never cut.
//
// Set.Allowed is the reference: a straightforward walk of the rules. Compiler builds the BPF
// maps; tests hold the two against each other.
package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/control/policy/selector"
	"github.com/margaynet/margay/maps"
)

// NamespaceLabel carries a workload's namespace among its labels, as Calico's
// projectcalico.org/namespace does, so that selectors can pick namespaces.
// global() matches exactly the workloads without it.
const NamespaceLabel = selector.NamespaceLabel

// Direction is ingress or egress.
type Direction uint8

// The directions.
const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Ingress {
		return "ingress"
	}
	return "egress"
}

// Endpoint is a workload anywhere in the cluster as policy sees it.
type Endpoint struct {
	Key    string // "<node>/<id>"
	Node   string
	Addr   netip.Addr
	Labels map[string]string
}

// EndpointOf makes the Endpoint of a workload record: its address, its labels and its namespace
// label.
func EndpointOf(w datastore.Workload) (Endpoint, bool) {
	addr, ok := w.Addr()
	if !ok {
		return Endpoint{}, false
	}
	labels := make(map[string]string, len(w.Labels)+1)
	for k, v := range w.Labels {
		labels[k] = v
	}
	if w.Namespace != "" {
		labels[NamespaceLabel] = w.Namespace
	}
	return Endpoint{Key: hostconv.WorkloadKey(w.Node, w.ID), Node: w.Node, Addr: addr, Labels: labels}, true
}

// Flow is the first packet of a flow as policy sees it.
type Flow struct {
	Src, Dst netip.Addr
	Proto    uint8
	SrcPort  uint16
	// DstPort is the destination port; for ICMP, type << 8 | code.
	DstPort uint16
}

func (f Flow) String() string {
	return fmt.Sprintf("proto %d %s:%d -> %s:%d", f.Proto, f.Src, f.SrcPort, f.Dst, f.DstPort)
}

// RuleRef names a rule: its policy, direction and place.
type RuleRef struct {
	Policy    string    `json:"policy"`
	Direction Direction `json:"-"`
	Index     int       `json:"index"`
}

func (r RuleRef) String() string { return fmt.Sprintf("%s/%s/%d", r.Policy, r.Direction, r.Index) }

// interval is an inclusive range of ports.
type interval struct{ lo, hi uint16 }

// intervals is a sorted list of disjoint, non-adjacent ranges.
type intervals []interval

var allPorts = intervals{{0, 0xffff}}

func (s intervals) contains(p uint16) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i].hi >= p })
	return i < len(s) && s[i].lo <= p
}

func (s intervals) isAll() bool { return len(s) == 1 && s[0] == interval{0, 0xffff} }

// normalize sorts and merges.
func normalize(in []interval) intervals {
	s := slices.Clone(in)
	slices.SortFunc(s, func(a, b interval) int { return cmp.Compare(a.lo, b.lo) })
	var out intervals
	for _, iv := range s {
		if n := len(out); n > 0 && uint32(iv.lo) <= uint32(out[n-1].hi)+1 {
			out[n-1].hi = max(out[n-1].hi, iv.hi)
			continue
		}
		out = append(out, iv)
	}
	return out
}

// minus removes b from a.
func (s intervals) minus(b intervals) intervals {
	var out intervals
	for _, iv := range s {
		lo := uint32(iv.lo)
		for _, cut := range b {
			if uint32(cut.hi) < lo || cut.lo > iv.hi {
				continue
			}
			if uint32(cut.lo) > lo {
				out = append(out, interval{uint16(lo), cut.lo - 1})
			}
			lo = uint32(cut.hi) + 1
		}
		if lo <= uint32(iv.hi) {
			out = append(out, interval{uint16(lo), iv.hi})
		}
	}
	return out
}

func (s intervals) String() string {
	var b strings.Builder
	for i, iv := range s {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d-%d", iv.lo, iv.hi)
	}
	return b.String()
}

func portSet(ports, notPorts []datastore.PortRange) intervals {
	set := allPorts
	if len(ports) > 0 {
		ivs := make([]interval, len(ports))
		for i, p := range ports {
			ivs[i] = interval{p.Lo, p.Hi}
		}
		set = normalize(ivs)
	}
	if len(notPorts) > 0 {
		ivs := make([]interval, len(notPorts))
		for i, p := range notPorts {
			ivs[i] = interval{p.Lo, p.Hi}
		}
		set = set.minus(normalize(ivs))
	}
	return set
}

// match is one end of a rule: where the address is and whose labels it carries.
type match struct {
	nets, notNets []netip.Prefix
	sel, notSel   *selector.Selector
}

func newMatch(e datastore.EntityRule) (match, error) {
	m := match{nets: sortedPrefixes(e.Nets), notNets: sortedPrefixes(e.NotNets)}
	if e.Selector != "" {
		s, err := selector.Parse(e.Selector)
		if err != nil {
			return m, err
		}
		m.sel = &s
	}
	if e.NotSelector != "" {
		s, err := selector.Parse(e.NotSelector)
		if err != nil {
			return m, err
		}
		m.notSel = &s
	}
	return m, nil
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	return slices.Compact(out)
}

func (m match) any() bool {
	return len(m.nets) == 0 && len(m.notNets) == 0 && m.sel == nil && m.notSel == nil
}

// key is the canonical text of the match: equal keys match the same addresses.
func (m match) key() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nets%v notNets%v", m.nets, m.notNets)
	if m.sel != nil {
		fmt.Fprintf(&b, " sel(%s)", m.sel)
	}
	if m.notSel != nil {
		fmt.Fprintf(&b, " notSel(%s)", m.notSel)
	}
	return b.String()
}

// matches reports whether an address, with the workload holding it (nil: none), matches.
func (m match) matches(a netip.Addr, ep *Endpoint) bool {
	if len(m.nets) > 0 && !slices.ContainsFunc(m.nets, func(n netip.Prefix) bool { return n.Contains(a) }) {
		return false
	}
	if slices.ContainsFunc(m.notNets, func(n netip.Prefix) bool { return n.Contains(a) }) {
		return false
	}
	if m.sel != nil && (ep == nil || !m.sel.Matches(ep.Labels)) {
		return false
	}
	if m.notSel != nil && ep != nil && m.notSel.Matches(ep.Labels) {
		return false
	}
	return true
}

// matchesRegion is matches for every address of prefix p that no longer prefix among the
// addresses the match names carves out, none of them a workload's. Nets either contain p or
// miss that part of it wholly.
func (m match) matchesRegion(p netip.Prefix) bool {
	covers := func(n netip.Prefix) bool { return n.Bits() <= p.Bits() && n.Contains(p.Addr()) }
	if len(m.nets) > 0 && !slices.ContainsFunc(m.nets, covers) {
		return false
	}
	if slices.ContainsFunc(m.notNets, covers) {
		return false
	}
	return m.sel == nil
}

// rule is a validated rule, ready to match.
type rule struct {
	ref   RuleRef
	text  string // canonical JSON of the rule, part of program identities
	allow bool
	proto uint8 // 0: any
	// notProto is a protocol the rule does not take (0: none).
	notProto uint8
	dports   intervals
	sports   intervals
	peer     match // the other end
	local    match // the selected workload's own end
}

type parsedPolicy struct {
	name  string
	order *float64
	sel   selector.Selector
	types [2]bool
	rules [2][]rule
}

// Set is a validated, ordered set of policies.
type Set struct {
	policies []parsedPolicy
}

// NewSet checks and orders policies. A malformed policy is an error naming it.
func NewSet(ps []datastore.Policy) (*Set, error) {
	s := &Set{}
	for _, p := range ps {
		pp, err := parse(p)
		if err != nil {
			return nil, fmt.Errorf("policy %q: %w", p.Name, err)
		}
		s.policies = append(s.policies, pp)
	}
	slices.SortFunc(s.policies, func(a, b parsedPolicy) int {
		switch {
		case a.order != nil && b.order != nil && *a.order != *b.order:
			return cmp.Compare(*a.order, *b.order)
		case a.order != nil && b.order == nil:
			return -1
		case a.order == nil && b.order != nil:
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	return s, nil
}

// Len is the number of policies.
func (s *Set) Len() int { return len(s.policies) }

func parse(p datastore.Policy) (parsedPolicy, error) {
	if err := p.Validate(); err != nil {
		return parsedPolicy{}, err
	}
	sel, err := selector.Parse(p.Selector)
	if err != nil {
		return parsedPolicy{}, err
	}
	pp := parsedPolicy{name: p.Name, order: p.Order, sel: sel}
	pp.types[Ingress] = p.AppliesTo(datastore.PolicyIngress)
	pp.types[Egress] = p.AppliesTo(datastore.PolicyEgress)
	for dir, rules := range [2][]datastore.Rule{p.Ingress, p.Egress} {
		for i, r := range rules {
			pr, err := parseRule(r, RuleRef{Policy: p.Name, Direction: Direction(dir), Index: i})
			if err != nil {
				return parsedPolicy{}, fmt.Errorf("%s[%d]: %w", Direction(dir), i, err)
			}
			pp.rules[dir] = append(pp.rules[dir], pr)
		}
	}
	return pp, nil
}

func parseRule(r datastore.Rule, ref RuleRef) (rule, error) {
	pr := rule{ref: ref, allow: r.Action == datastore.ActionAllow,
		dports: portSet(r.Destination.Ports, r.Destination.NotPorts),
		sports: portSet(r.Source.Ports, r.Source.NotPorts)}
	if r.Protocol != nil {
		pr.proto = uint8(*r.Protocol)
	}
	if r.NotProtocol != nil {
		pr.notProto = uint8(*r.NotProtocol)
	}
	// ICMP type and code travel as a port: type << 8 | code.
	if iv, ok := icmpPorts(r.ICMP); ok {
		pr.dports = intervals{iv}
	}
	if iv, ok := icmpPorts(r.NotICMP); ok {
		pr.dports = pr.dports.minus(intervals{iv})
	}
	peer, local := r.Source, r.Destination
	if ref.Direction == Egress {
		peer, local = r.Destination, r.Source
	}
	var err error
	if pr.peer, err = newMatch(peer); err != nil {
		return pr, err
	}
	if pr.local, err = newMatch(local); err != nil {
		return pr, err
	}
	pr.text = fmt.Sprintf("%s %v proto=%d notproto=%d d=%v s=%v peer{%s} local{%s}", ref, pr.allow, pr.proto, pr.notProto,
		pr.dports, pr.sports, pr.peer.key(), pr.local.key())
	return pr, nil
}

// icmpPorts is the port interval of an ICMP type (every code) or type and code.
func icmpPorts(m *datastore.ICMPMatch) (interval, bool) {
	if m == nil || m.Type == nil {
		return interval{}, false
	}
	t := uint16(*m.Type) << 8
	if m.Code != nil {
		return interval{t | uint16(*m.Code), t | uint16(*m.Code)}, true
	}
	return interval{t, t | 0xff}, true
}

// matchesTraffic reports whether the rule's protocol and ports match.
func (r *rule) matchesTraffic(f Flow) bool {
	if r.proto != 0 && r.proto != f.Proto || r.notProto != 0 && r.notProto == f.Proto {
		return false
	}
	return r.dports.contains(f.DstPort) && r.sports.contains(f.SrcPort)
}

// rulesFor lists, in order, the rules of the policies that select ep in direction dir, and
// whether any policy does.
func (s *Set) rulesFor(ep *Endpoint, dir Direction) ([]*rule, bool) {
	var out []*rule
	selected := false
	for i := range s.policies {
		p := &s.policies[i]
		if !p.types[dir] || !p.sel.Matches(ep.Labels) {
			continue
		}
		selected = true
		for j := range p.rules[dir] {
			out = append(out, &p.rules[dir][j])
		}
	}
	return out, selected
}

// Decision is what one direction of policy says about a flow.
type Decision struct {
	Allow    bool
	Selected bool     // some policy selects the workload in this direction
	Rule     *RuleRef // the rule that decided; nil for "no policy" and "default deny"
}

// Decide walks the rules for workload ep in direction dir: the flow's peer is at peer, held by
// peerEP (nil: no workload).
func (s *Set) Decide(ep *Endpoint, dir Direction, peer netip.Addr, peerEP *Endpoint, f Flow) Decision {
	rules, selected := s.rulesFor(ep, dir)
	if !selected {
		return Decision{Allow: true}
	}
	for _, r := range rules {
		if r.matchesTraffic(f) && r.local.matches(ep.Addr, ep) && r.peer.matches(peer, peerEP) {
			ref := r.ref
			return Decision{Allow: r.allow, Selected: true, Rule: &ref}
		}
	}
	return Decision{Selected: true}
}

// World is what the reference evaluation needs besides the policies.
type World struct {
	Endpoints map[netip.Addr]*Endpoint
	Hosts     map[netip.Addr]string // host address -> node name
	Failsafe  map[maps.FailsafeKey]maps.FailsafeDirection
}

func (w *World) failsafe(host netip.Addr, f Flow, dir maps.FailsafeDirection) bool {
	if _, ok := w.Hosts[host]; !ok {
		return false
	}
	switch f.Proto {
	case 6, 17, 132, 136:
	default:
		return false
	}
	return w.Failsafe[maps.FailsafeKey{Protocol: f.Proto, Port: f.DstPort}]&dir != 0
}

// Allowed is the reference verdict for the first packet of f anywhere in the cluster: the
// sender's egress, then the receiver's ingress.
func (s *Set) Allowed(w *World, f Flow) (bool, Direction) {
	return s.AllowedOn(w, "", f)
}

// AllowedOn is Allowed as one node enforces it: only the policies of the workloads on node count
// ("" means every node).
func (s *Set) AllowedOn(w *World, node string, f Flow) (bool, Direction) {
	src, dst := w.Endpoints[f.Src], w.Endpoints[f.Dst]
	here := func(ep *Endpoint) bool { return ep != nil && (node == "" || ep.Node == node) }
	if here(src) && !w.failsafe(f.Dst, f, maps.FailsafeInbound) {
		if !s.Decide(src, Egress, f.Dst, dst, f).Allow {
			return false, Egress
		}
	}
	if here(dst) && w.Hosts[f.Src] != dst.Node && !w.failsafe(f.Src, f, maps.FailsafeOutbound) {
		if !s.Decide(dst, Ingress, f.Src, src, f).Allow {
			return false, Ingress
		}
	}
	return true, 0
}
