// Package policy turns network policies into what the BPF programs look up, and says in plain Go
// what they mean.
//
// Semantics (Calico's, which include Kubernetes NetworkPolicy's): policies are grouped in tiers;
// tiers are ordered by order, then name, and the policies of a tier by order, then name. For a
// workload and a direction, each tier with a policy that selects the workload and governs that
// direction is walked in turn, its policies' rules in order:
//
//   - the first Allow or Deny rule that matches decides;
//   - a Log rule that matches is counted and reported, and the walk goes on;
//   - a Pass rule that matches ends the tier: the walk goes on with the next tier;
//   - when no rule of the tier decides, its default action does: Deny, or Pass.
//
// After the tiers come the workload's profiles (rules the same way, Pass excepted): when the walk
// reaches them, the first rule that decides decides, else Deny. A workload without profiles
// allows what reaches that point, and one that no tier selects and has no profiles allows
// everything in that direction. A flow is allowed when the sender's egress and the receiver's
// ingress both allow it. The host a workload runs on may always reach it, and failsafe ports
// between workloads and hosts are never cut.
//
// Selectors see a workload's labels, its profiles' labelsToApply under them, and the labels Calico
// gives it: projectcalico.org/namespace, pcns.projectcalico.org/name and, for a service account,
// pcsa.projectcalico.org/name. A namespaced policy selects in its namespace, and so do its rules'
// selectors unless they give a namespaceSelector; a namespaceSelector matches the pcns. labels,
// a service account selector the pcsa. labels (Calico's rewriting).
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

// The labels and prefixes of Calico's rewriting of namespace and service account matches.
const (
	// ServiceAccountLabel carries a workload's service account (Kubernetes pods).
	ServiceAccountLabel = "projectcalico.org/serviceaccount"
	// NamespacePrefix starts the labels a namespaceSelector sees: the namespace's labels.
	NamespacePrefix = "pcns."
	// ServiceAccountPrefix starts the labels a service account selector sees.
	ServiceAccountPrefix = "pcsa."
	// NameLabel, under either prefix, is the namespace's or the service account's name.
	NameLabel = "projectcalico.org/name"
)

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
	// Profiles are the workload's profiles, in order; Ports its named ports.
	Profiles []string
	Ports    []datastore.EndpointPort
}

// EndpointOf makes the Endpoint of a workload record: its address, its labels and Calico's
// namespace and service account labels. It leaves out its profiles' labels: EndpointWith.
func EndpointOf(w datastore.Workload) (Endpoint, bool) { return EndpointWith(w, nil) }

// EndpointWith is EndpointOf with the labelsToApply of the workload's profiles under its own
// labels (profiles: every profile, by name).
func EndpointWith(w datastore.Workload, profiles map[string]datastore.Profile) (Endpoint, bool) {
	addr, ok := w.Addr()
	if !ok {
		return Endpoint{}, false
	}
	labels := datastore.ProfileLabels(w.Labels, w.Profiles, profiles)
	if w.Namespace != "" {
		labels[NamespaceLabel] = w.Namespace
		if _, ok := labels[NamespacePrefix+NameLabel]; !ok {
			labels[NamespacePrefix+NameLabel] = w.Namespace
		}
	}
	if sa, ok := labels[ServiceAccountLabel]; ok {
		if _, ok := labels[ServiceAccountPrefix+NameLabel]; !ok {
			labels[ServiceAccountPrefix+NameLabel] = sa
		}
	}
	return Endpoint{Key: hostconv.WorkloadKey(w.Node, w.ID), Node: w.Node, Addr: addr, Labels: labels,
		Profiles: slices.Clone(w.Profiles), Ports: slices.Clone(w.Ports)}, true
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

// RuleRef names a rule: its policy (Policy.Key) or profile, direction and place.
type RuleRef struct {
	Policy    string    `json:"policy,omitempty"`
	Profile   string    `json:"profile,omitempty"`
	Direction Direction `json:"-"`
	Index     int       `json:"index"`
}

func (r RuleRef) String() string {
	if r.Profile != "" {
		return fmt.Sprintf("profile:%s/%s/%d", r.Profile, r.Direction, r.Index)
	}
	return fmt.Sprintf("%s/%s/%d", r.Policy, r.Direction, r.Index)
}

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

// portSpec is a rule's ports at one end: numbers, ranges and names. A name is the port of that
// name, with the rule's protocol, on the workload at that end.
type portSpec struct {
	any      bool // no ports: every port (notPorts aside)
	nums     intervals
	names    []string
	notNums  intervals
	notNames []string
}

func newPortSpec(ports, notPorts []datastore.PortRange) portSpec {
	split := func(rs []datastore.PortRange) (intervals, []string) {
		var ivs []interval
		var names []string
		for _, r := range rs {
			if r.Named() {
				names = append(names, r.Name)
			} else {
				ivs = append(ivs, interval{r.Lo, r.Hi})
			}
		}
		slices.Sort(names)
		return normalize(ivs), slices.Compact(names)
	}
	ps := portSpec{any: len(ports) == 0}
	ps.nums, ps.names = split(ports)
	ps.notNums, ps.notNames = split(notPorts)
	return ps
}

// named reports whether the set depends on the workload at that end.
func (ps *portSpec) named() bool { return len(ps.names)+len(ps.notNames) > 0 }

// set is the ports the spec takes for protocol proto, its names resolved against ports (the
// named ports of the workload at that end; none when it is no workload).
func (ps *portSpec) set(proto uint8, ports []datastore.EndpointPort) intervals {
	resolve := func(names []string) []interval {
		var out []interval
		for _, p := range ports {
			if uint8(p.Protocol) == proto {
				if _, found := slices.BinarySearch(names, p.Name); found {
					out = append(out, interval{p.Port, p.Port})
				}
			}
		}
		return out
	}
	set := allPorts
	if !ps.any {
		set = normalize(append(slices.Clone([]interval(ps.nums)), resolve(ps.names)...))
	}
	if cut := append(slices.Clone([]interval(ps.notNums)), resolve(ps.notNames)...); len(cut) > 0 {
		set = set.minus(normalize(cut))
	}
	return set
}

func (ps *portSpec) String() string {
	return fmt.Sprintf("any=%v nums=%v names=%v not=%v notNames=%v", ps.any, ps.nums, ps.names, ps.notNums, ps.notNames)
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

// action is what a rule, or the end of a tier, does.
type action uint8

const (
	actAllow action = iota
	actDeny
	actLog  // count and report, and go on
	actPass // go on with the next tier
)

func actionOf(s string) action {
	switch s {
	case datastore.ActionAllow:
		return actAllow
	case datastore.ActionLog:
		return actLog
	case datastore.ActionPass:
		return actPass
	}
	return actDeny
}

func (a action) String() string { return [...]string{"allow", "deny", "log", "pass"}[a] }

// rule is a validated rule, ready to match.
type rule struct {
	ref    RuleRef
	text   string // canonical text of the rule, part of program identities
	action action
	proto  uint8 // 0: any
	// notProto is a protocol the rule does not take (0: none).
	notProto uint8
	// dst and src are the destination and source ports; ICMP type and code travel as the
	// destination port.
	dst, src portSpec
	peer     match // the other end
	local    match // the selected workload's own end
}

// ports returns the rule's destination and source port sets, the names resolved against the
// workloads at either end (nil: none).
func (r *rule) ports(dstEP, srcEP *Endpoint) (dports, sports intervals) {
	of := func(ep *Endpoint) []datastore.EndpointPort {
		if ep == nil {
			return nil
		}
		return ep.Ports
	}
	return r.dst.set(r.proto, of(dstEP)), r.src.set(r.proto, of(srcEP))
}

type parsedPolicy struct {
	name  string // Policy.Key
	order *float64
	sel   selector.Selector // with its namespace, namespace and service account selectors
	types [2]bool
	rules [2][]rule
}

type parsedTier struct {
	name     string
	order    *float64
	pass     bool // default action Pass
	policies []parsedPolicy
}

type parsedProfile struct {
	rules [2][]rule
}

// Set is a validated, ordered set of policies, with their tiers and the profiles.
type Set struct {
	tiers    []parsedTier
	profiles map[string]*parsedProfile
	n        int
}

// Input is what a Set is built from.
type Input struct {
	Policies []datastore.Policy
	// Tiers are the tier records; the default tier needs none, and a tier that policies name
	// without a record sorts last and denies (it cannot be made by margayctl).
	Tiers    []datastore.Tier
	Profiles []datastore.Profile
}

// NewSet checks and orders policies, all in the default tier unless they name another. A
// malformed policy is an error naming it.
func NewSet(ps []datastore.Policy) (*Set, error) { return Build(Input{Policies: ps}) }

// Build checks and orders policies, tiers and profiles. A malformed one is an error naming it.
func Build(in Input) (*Set, error) {
	s := &Set{profiles: map[string]*parsedProfile{}}
	defaultOrder := datastore.DefaultTierOrder
	tiers := map[string]*parsedTier{datastore.DefaultTier: {name: datastore.DefaultTier, order: &defaultOrder}}
	for _, t := range in.Tiers {
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("tier %q: %w", t.Name, err)
		}
		tiers[t.Name] = &parsedTier{name: t.Name, order: t.Order, pass: t.DefaultAction == datastore.TierPass}
	}
	for _, p := range in.Policies {
		pp, err := parse(p)
		if err != nil {
			return nil, fmt.Errorf("policy %q: %w", p.Key(), err)
		}
		t := tiers[p.TierName()]
		if t == nil {
			t = &parsedTier{name: p.TierName()}
			tiers[t.name] = t
		}
		t.policies = append(t.policies, pp)
		s.n++
	}
	for _, pr := range in.Profiles {
		if err := pr.Validate(); err != nil {
			return nil, fmt.Errorf("profile %q: %w", pr.Name, err)
		}
		pp := &parsedProfile{}
		for dir, rules := range [2][]datastore.Rule{pr.Ingress, pr.Egress} {
			for i, r := range rules {
				x, err := parseRule(r, RuleRef{Profile: pr.Name, Direction: Direction(dir), Index: i}, "")
				if err != nil {
					return nil, fmt.Errorf("profile %q: %s[%d]: %w", pr.Name, Direction(dir), i, err)
				}
				pp.rules[dir] = append(pp.rules[dir], x)
			}
		}
		s.profiles[pr.Name] = pp
	}
	byOrder := datastore.CompareOrder
	for _, t := range tiers {
		if len(t.policies) == 0 {
			continue
		}
		slices.SortFunc(t.policies, func(a, b parsedPolicy) int { return byOrder(a.name, a.order, b.name, b.order) })
		s.tiers = append(s.tiers, *t)
	}
	slices.SortFunc(s.tiers, func(a, b parsedTier) int { return byOrder(a.name, a.order, b.name, b.order) })
	return s, nil
}

// Len is the number of policies.
func (s *Set) Len() int { return s.n }

// namespaced narrows sel to the workloads of namespace ns (when set).
func namespaced(ns string, sel selector.Selector) selector.Selector {
	if ns == "" {
		return sel
	}
	return selector.And(selector.Equal(NamespaceLabel, ns), sel)
}

// policySelector is the selector a policy applies by: Calico's rewriting of its namespace, its
// namespaceSelector and its serviceAccountSelector into one.
func policySelector(p datastore.Policy) (selector.Selector, error) {
	var sels []selector.Selector
	for _, x := range []struct{ text, prefix, allAs string }{
		{p.Selector, "", ""},
		{p.NamespaceSelector, NamespacePrefix, NamespaceLabel},
		{p.ServiceAccountSelector, ServiceAccountPrefix, ""},
	} {
		if x.text == "" {
			continue
		}
		sel, err := selector.Parse(x.text)
		if err != nil {
			return selector.Selector{}, err
		}
		if x.prefix != "" {
			sel = sel.Prefixed(x.prefix, x.allAs)
		}
		sels = append(sels, sel)
	}
	return namespaced(p.Namespace, selector.And(sels...)), nil
}

// entitySelector is Calico's rewriting of a rule end's selector, namespaceSelector and
// serviceAccounts into one selector ("" when the end selects no workloads), for a rule of a
// policy in namespace ns ("" for a global policy or a profile).
func entitySelector(e datastore.EntityRule, ns string) (string, error) {
	var sels []selector.Selector
	if sa := e.ServiceAccounts; sa != nil {
		if sa.Selector != "" {
			sel, err := selector.Parse(sa.Selector)
			if err != nil {
				return "", err
			}
			sels = append(sels, sel.Prefixed(ServiceAccountPrefix, ""))
		}
		if len(sa.Names) > 0 {
			sels = append(sels, selector.In(ServiceAccountLabel, sa.Names))
		}
	}
	if e.Selector != "" {
		sel, err := selector.Parse(e.Selector)
		if err != nil {
			return "", err
		}
		sels = append(sels, sel)
	}
	var nsSel selector.Selector
	switch {
	case e.NamespaceSelector != "":
		sel, err := selector.Parse(e.NamespaceSelector)
		if err != nil {
			return "", err
		}
		nsSel = sel.Prefixed(NamespacePrefix, NamespaceLabel)
	case ns != "":
		nsSel = selector.Equal(NamespaceLabel, ns)
	}
	if len(sels) == 0 && e.NotSelector == "" && e.NamespaceSelector == "" {
		return "", nil // nets and ports only: any address, in a namespace or not
	}
	sel := selector.And(sels...)
	if !nsSel.IsAll() {
		sel = selector.And(nsSel, sel)
	}
	if sel.IsAll() && len(sels) == 0 && e.NamespaceSelector == "" {
		return "", nil // only a notSelector, in a global policy
	}
	return sel.String(), nil
}

func parse(p datastore.Policy) (parsedPolicy, error) {
	if err := p.Validate(); err != nil {
		return parsedPolicy{}, err
	}
	sel, err := policySelector(p)
	if err != nil {
		return parsedPolicy{}, err
	}
	pp := parsedPolicy{name: p.Key(), order: p.Order, sel: sel}
	pp.types[Ingress] = p.AppliesTo(datastore.PolicyIngress)
	pp.types[Egress] = p.AppliesTo(datastore.PolicyEgress)
	for dir, rules := range [2][]datastore.Rule{p.Ingress, p.Egress} {
		for i, r := range rules {
			pr, err := parseRule(r, RuleRef{Policy: p.Key(), Direction: Direction(dir), Index: i}, p.Namespace)
			if err != nil {
				return parsedPolicy{}, fmt.Errorf("%s[%d]: %w", Direction(dir), i, err)
			}
			pp.rules[dir] = append(pp.rules[dir], pr)
		}
	}
	return pp, nil
}

// parseRule parses a rule of a policy in namespace ns ("" for a global policy or a profile).
func parseRule(r datastore.Rule, ref RuleRef, ns string) (rule, error) {
	pr := rule{ref: ref, action: actionOf(r.Action),
		dst: newPortSpec(r.Destination.Ports, r.Destination.NotPorts),
		src: newPortSpec(r.Source.Ports, r.Source.NotPorts)}
	if r.Protocol != nil {
		pr.proto = uint8(*r.Protocol)
	}
	if r.NotProtocol != nil {
		pr.notProto = uint8(*r.NotProtocol)
	}
	// ICMP type and code travel as a port: type << 8 | code.
	if iv, ok := icmpPorts(r.ICMP); ok {
		pr.dst = portSpec{nums: intervals{iv}}
	}
	if iv, ok := icmpPorts(r.NotICMP); ok {
		pr.dst.notNums = intervals{iv}
	}
	ends := [2]datastore.EntityRule{r.Source, r.Destination}
	for i := range ends {
		sel, err := entitySelector(ends[i], ns)
		if err != nil {
			return pr, err
		}
		ends[i].Selector = sel
	}
	peer, local := ends[0], ends[1]
	if ref.Direction == Egress {
		peer, local = ends[1], ends[0]
	}
	var err error
	if pr.peer, err = newMatch(peer); err != nil {
		return pr, err
	}
	if pr.local, err = newMatch(local); err != nil {
		return pr, err
	}
	pr.text = fmt.Sprintf("%s %s proto=%d notproto=%d d{%s} s{%s} peer{%s} local{%s}", ref, pr.action, pr.proto, pr.notProto,
		&pr.dst, &pr.src, pr.peer.key(), pr.local.key())
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

// takesProto reports whether the rule applies to protocol proto at all (its ports aside).
func takesProto(proto, notProto, p uint8) bool {
	return (proto == 0 || proto == p) && notProto != p
}

// end is how a tier, or the profiles, end when no rule decides.
type end uint8

const (
	endNone  end = iota // a rule, not an end
	endDeny             // a tier with default action Deny, or the profiles
	endPass             // a tier with default action Pass
	endAllow            // the end of the walk of a workload without profiles
)

// link is a step of a workload's walk in one direction: a rule, or the end of its group (a
// tier, or the profiles).
type link struct {
	r     *rule
	end   end
	group int // the tier's place among those that select the workload; the profiles last
}

// walk lists, in order, the steps for ep in direction dir: the rules of each tier that selects
// it, each followed by the tier's end, then those of its profiles, then the final end. It is nil
// when no tier selects it and it has no profiles.
func (s *Set) walk(ep *Endpoint, dir Direction) []link {
	var out []link
	group := 0
	for ti := range s.tiers {
		t := &s.tiers[ti]
		selected := false
		for pi := range t.policies {
			p := &t.policies[pi]
			if !p.types[dir] || !p.sel.Matches(ep.Labels) {
				continue
			}
			selected = true
			for j := range p.rules[dir] {
				out = append(out, link{r: &p.rules[dir][j], group: group})
			}
		}
		if selected {
			e := endDeny
			if t.pass {
				e = endPass
			}
			out = append(out, link{end: e, group: group})
			group++
		}
	}
	if len(ep.Profiles) == 0 {
		if out == nil {
			return nil
		}
		return append(out, link{end: endAllow, group: group})
	}
	for _, name := range ep.Profiles {
		if pr := s.profiles[name]; pr != nil {
			for j := range pr.rules[dir] {
				out = append(out, link{r: &pr.rules[dir][j], group: group})
			}
		}
	}
	return append(out, link{end: endDeny, group: group})
}

// Decision is what one direction of policy says about a flow.
type Decision struct {
	Allow    bool
	Selected bool     // some tier selects the workload in this direction, or it has profiles
	Rule     *RuleRef // the rule that decided; nil for "no policy" and a tier's or the profiles' end
	// Log is the first Log rule that matched before the decision (nil: none).
	Log *RuleRef
}

// Decide walks the rules for workload ep in direction dir: the flow's peer is at peer, held by
// peerEP (nil: no workload).
func (s *Set) Decide(ep *Endpoint, dir Direction, peer netip.Addr, peerEP *Endpoint, f Flow) Decision {
	steps := s.walk(ep, dir)
	if steps == nil {
		return Decision{Allow: true}
	}
	dstEP, srcEP := ep, peerEP
	if dir == Egress {
		dstEP, srcEP = peerEP, ep
	}
	d := Decision{Selected: true}
	for i := 0; i < len(steps); i++ {
		st := steps[i]
		if st.r == nil {
			if st.end == endPass {
				continue
			}
			d.Allow = st.end == endAllow
			return d
		}
		r := st.r
		if !takesProto(r.proto, r.notProto, f.Proto) {
			continue
		}
		dports, sports := r.ports(dstEP, srcEP)
		if !dports.contains(f.DstPort) || !sports.contains(f.SrcPort) ||
			!r.local.matches(ep.Addr, ep) || !r.peer.matches(peer, peerEP) {
			continue
		}
		switch r.action {
		case actLog:
			if d.Log == nil {
				ref := r.ref
				d.Log = &ref
			}
		case actPass:
			for i+1 < len(steps) && steps[i+1].group == st.group {
				i++ // to the group's end, which the loop steps over
			}
		default:
			ref := r.ref
			d.Allow, d.Rule = r.action == actAllow, &ref
			return d
		}
	}
	return d // not reached: every walk ends with an end that decides
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
