package datastore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/control/policy/selector"
)

// PolicyType is a direction a policy applies to.
type PolicyType string

// The directions, spelled as in Calico and Kubernetes.
const (
	PolicyIngress PolicyType = "Ingress"
	PolicyEgress  PolicyType = "Egress"
)

// Policy is a network policy, at policies/<name>: Calico's (global) NetworkPolicy. It selects
// workloads by label; in each direction listed in Types, a selected workload accepts only what
// the rules of its policies allow, in order, the first match deciding.
type Policy struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	// Namespace is a namespaced NetworkPolicy's namespace, empty for a global one. A namespaced
	// policy is stored at policies/<namespace>/<name> (see Key); its selector, and the
	// selectors of its rules without a namespaceSelector, see only its namespace's workloads.
	Namespace string `json:"namespace,omitempty"`
	// Tier is the tier the policy is in; empty means DefaultTier.
	Tier string `json:"tier,omitempty"`
	// Order ranks policies within their tier: lower first; policies without an order come last,
	// then by name.
	Order *float64 `json:"order,omitempty"`
	// Selector picks the workloads the policy applies to; empty means all().
	Selector string `json:"selector,omitempty"`
	// NamespaceSelector (global policies only) narrows Selector to the workloads of the
	// namespaces whose labels match (Calico's pcns. labels); ServiceAccountSelector narrows it to
	// the workloads whose service account's labels match (pcsa. labels).
	NamespaceSelector      string `json:"namespaceSelector,omitempty"`
	ServiceAccountSelector string `json:"serviceAccountSelector,omitempty"`
	// Types lists the directions the policy governs. Left out, as Calico defaults it: Egress
	// when there are egress rules and no ingress rules, Ingress and Egress when there are both,
	// else Ingress. (A policy written through the store keeps the types it was given then.)
	Types   []PolicyType `json:"types,omitempty"`
	Ingress []Rule       `json:"ingress,omitempty"`
	Egress  []Rule       `json:"egress,omitempty"`
}

// Key is the policy's name in the store: <namespace>/<name> for a namespaced policy, else its
// name. Rule references and metrics name policies by it.
func (p Policy) Key() string {
	if p.Namespace != "" {
		return p.Namespace + "/" + p.Name
	}
	return p.Name
}

// TierName is the policy's tier, DefaultTier when it names none.
func (p Policy) TierName() string {
	if p.Tier == "" {
		return DefaultTier
	}
	return p.Tier
}

// Same reports whether p and q are stored alike: the same JSON, so an empty list and a missing
// one are alike.
func (p Policy) Same(q Policy) bool {
	jp, err1 := json.Marshal(p)
	jq, err2 := json.Marshal(q)
	return err1 == nil && err2 == nil && bytes.Equal(jp, jq)
}

// KubernetesPolicyPrefix starts the name of every policy margay-agent keeps for a Kubernetes
// NetworkPolicy (knp.default.<namespace>.<name>, as in Calico): its own, and no one else's to
// write (control/k8s).
const KubernetesPolicyPrefix = "knp.default."

// Rule actions. Allow and deny decide; log counts the rule and reports the flow, then the next
// rule goes on; pass skips the rest of the tier, to the next tier that selects the workload, or
// to its profiles.
const (
	ActionAllow = "allow"
	ActionDeny  = "deny"
	ActionLog   = "log"
	ActionPass  = "pass"
)

// Rule matches packets and says what to do with them.
type Rule struct {
	Action string `json:"action"` // allow, deny, log or pass
	// Protocol, when set, must match; ports need tcp, udp, sctp or udplite, icmp needs icmp.
	Protocol *Protocol  `json:"protocol,omitempty"`
	ICMP     *ICMPMatch `json:"icmp,omitempty"`
	// NotProtocol, when set, must not match: the rule takes every other protocol.
	NotProtocol *Protocol `json:"notProtocol,omitempty"`
	// NotICMP, when set, must not match: the rule takes every ICMP packet but those of this
	// type (and code); it needs protocol icmp, as icmp does.
	NotICMP *ICMPMatch `json:"notICMP,omitempty"`
	// Source and Destination match the two ends; in an ingress rule the destination is the
	// selected workload itself, in an egress rule the source is.
	Source      EntityRule `json:"source,omitzero"`
	Destination EntityRule `json:"destination,omitzero"`
	// Annotations are the operator's notes on the rule (a Calico rule's metadata.annotations),
	// kept for them and never matched.
	Annotations map[string]string `json:"annotations,omitempty"`
}

// EntityRule matches one end of a flow; every field that is set must match.
type EntityRule struct {
	Nets        []netip.Prefix `json:"nets,omitempty"`        // the address is in one of them
	NotNets     []netip.Prefix `json:"notNets,omitempty"`     // ... in none of them
	Selector    string         `json:"selector,omitempty"`    // a workload whose labels match
	NotSelector string         `json:"notSelector,omitempty"` // not a workload whose labels match
	// NamespaceSelector picks the namespaces whose workloads Selector sees (their pcns.
	// labels); without it a namespaced policy's selectors see its own namespace, a global
	// policy's every workload.
	NamespaceSelector string `json:"namespaceSelector,omitempty"`
	// ServiceAccounts, when set, must match the workload's service account.
	ServiceAccounts *ServiceAccountMatch `json:"serviceAccounts,omitempty"`
	// Ports and NotPorts hold numbers, ranges and names: a name is the port of that name on the
	// workload at this end (its Ports), with the rule's protocol.
	Ports    []PortRange `json:"ports,omitempty"`    // the port is in one of them
	NotPorts []PortRange `json:"notPorts,omitempty"` // ... in none of them
}

// ServiceAccountMatch matches a workload's service account by name and by its labels.
type ServiceAccountMatch struct {
	Names    []string `json:"names,omitempty"`    // one of these
	Selector string   `json:"selector,omitempty"` // its labels (pcsa.) match
}

// IsZero reports whether e matches everything.
func (e EntityRule) IsZero() bool {
	return len(e.Nets) == 0 && len(e.NotNets) == 0 && e.Selector == "" && e.NotSelector == "" &&
		len(e.Ports) == 0 && len(e.NotPorts) == 0 && e.NamespaceSelector == "" && e.ServiceAccounts == nil
}

// SelectsWorkloads reports whether e can match only workloads: it has a selector, a namespace
// selector or a service account match.
func (e EntityRule) SelectsWorkloads() bool {
	return e.Selector != "" || e.NamespaceSelector != "" || e.ServiceAccounts != nil
}

// ICMPMatch matches an ICMP type, and a code of it.
type ICMPMatch struct {
	Type *uint8 `json:"type,omitempty"`
	Code *uint8 `json:"code,omitempty"`
}

// Protocol is an IP protocol number; JSON takes a name (tcp, udp, icmp, sctp, udplite, in any
// case) or a number.
type Protocol uint8

// ParseProtocol reads a protocol name or number 1-255 (hostconv.ParseProtocol).
func ParseProtocol(s string) (Protocol, error) {
	p, err := hostconv.ParseProtocol(s)
	return Protocol(p), err
}

// String is the protocol's name, else its number (hostconv.ProtocolName): "tcp", "47".
func (p Protocol) String() string { return hostconv.ProtocolName(uint8(p)) }

// HasPorts reports whether the protocol carries ports.
func (p Protocol) HasPorts() bool { return hostconv.ProtocolHasPorts(uint8(p)) }

// MarshalJSON writes the name of a known protocol, else the number.
func (p Protocol) MarshalJSON() ([]byte, error) {
	if _, err := strconv.Atoi(p.String()); err == nil {
		return []byte(p.String()), nil
	}
	return json.Marshal(p.String())
}

// stringOrNumber is the text of a JSON string, or a JSON number as written.
func stringOrNumber(b []byte) (string, error) {
	if len(b) > 0 && b[0] == '"' {
		var s string
		err := json.Unmarshal(b, &s)
		return s, err
	}
	return string(b), nil
}

// UnmarshalJSON reads a name or a number.
func (p *Protocol) UnmarshalJSON(b []byte) error {
	s, err := stringOrNumber(b)
	if err != nil {
		return err
	}
	v, err := ParseProtocol(s)
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// PortRange is a port, an inclusive range or a named port; JSON takes 80, "80", "8000:8080" or
// "http".
type PortRange struct {
	Lo, Hi uint16
	// Name, when set, is a named port (Lo and Hi are 0): the port of that name of the workload
	// at the rule's end.
	Name string
}

// Named reports whether r is a named port.
func (r PortRange) Named() bool { return r.Name != "" }

// ParsePortRange reads "80", "8000:8080" or a port name ("http"). A port name is what holds
// anything but digits and colons: it may start with a digit ("9p" and "8080-http" are valid
// Kubernetes port names), since it must hold a letter.
func ParsePortRange(s string) (PortRange, error) {
	if strings.ContainsFunc(s, func(c rune) bool { return c != ':' && (c < '0' || c > '9') }) {
		if err := ValidatePortName(s); err != nil {
			return PortRange{}, fmt.Errorf("port %q: want a port 0-65535, a range lo:hi or a port name: %w", s, err)
		}
		return PortRange{Name: s}, nil
	}
	lo, hi, isRange := strings.Cut(s, ":")
	l, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return PortRange{}, fmt.Errorf("port %q: want a port 0-65535 or a range lo:hi", s)
	}
	h := l
	if isRange {
		if h, err = strconv.ParseUint(hi, 10, 16); err != nil {
			return PortRange{}, fmt.Errorf("port %q: want a port 0-65535 or a range lo:hi", s)
		}
	}
	if h < l {
		return PortRange{}, fmt.Errorf("port range %q: end before start", s)
	}
	return PortRange{Lo: uint16(l), Hi: uint16(h)}, nil
}

// ValidatePortName checks a port name as Kubernetes does (an IANA service name): 1 to 15
// lowercase letters, digits and hyphens, with a letter, and no hyphen first, last or twice in a
// row.
func ValidatePortName(s string) error {
	switch {
	case s == "" || len(s) > 15:
		return fmt.Errorf("a port name is 1 to 15 characters, not %d", len(s))
	case strings.Contains(s, "--") || s[0] == '-' || s[len(s)-1] == '-':
		return errors.New("a port name has no hyphen first, last or next to another")
	}
	letter := false
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z':
			letter = true
		case c >= '0' && c <= '9' || c == '-':
		default:
			return fmt.Errorf("%q is not allowed in a port name (lowercase letters, digits and hyphens)", c)
		}
	}
	if !letter {
		return errors.New("a port name needs a letter")
	}
	return nil
}

func (r PortRange) String() string {
	if r.Named() {
		return r.Name
	}
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return fmt.Sprintf("%d:%d", r.Lo, r.Hi)
}

// MarshalJSON writes a number for a single port, "lo:hi" for a range, the name of a named port.
func (r PortRange) MarshalJSON() ([]byte, error) {
	if !r.Named() && r.Lo == r.Hi {
		return []byte(r.String()), nil
	}
	return json.Marshal(r.String())
}

// UnmarshalJSON reads 80, "80" or "8000:8080".
func (r *PortRange) UnmarshalJSON(b []byte) error {
	s, err := stringOrNumber(b)
	if err != nil {
		return err
	}
	v, err := ParsePortRange(s)
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// Limits that keep one policy from exhausting the agent or the maps.
const (
	MaxRulesPerPolicy = 10000
	MaxMatchesPerList = 1000
)

// AppliesTo reports whether the policy governs direction t.
func (p Policy) AppliesTo(t PolicyType) bool {
	for _, x := range p.Types {
		if x == t {
			return true
		}
	}
	return false
}

// Validate reports the first thing wrong with p, naming where it is.
func (p Policy) Validate() error {
	if err := checkVersion(p.Version); err != nil {
		return err
	}
	if err := ValidateName(p.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	if err := checkOrder(p.Order); err != nil {
		return err
	}
	if p.Namespace != "" {
		if err := ValidateNamespace(p.Namespace); err != nil {
			return fmt.Errorf("namespace: %w", err)
		}
		if p.NamespaceSelector != "" {
			return errors.New("namespaceSelector: only a global policy has one (a namespaced policy selects in its namespace)")
		}
	}
	if p.Tier != "" {
		if err := ValidateName(p.Tier); err != nil {
			return fmt.Errorf("tier: %w", err)
		}
	}
	for _, sel := range []struct{ name, s string }{{"selector", p.Selector}, {"namespaceSelector", p.NamespaceSelector},
		{"serviceAccountSelector", p.ServiceAccountSelector}} {
		if _, err := selector.Parse(sel.s); err != nil {
			return fmt.Errorf("%s: %w", sel.name, err)
		}
	}
	seen := map[PolicyType]bool{}
	for i, t := range p.Types {
		if t != PolicyIngress && t != PolicyEgress {
			return fmt.Errorf("types[%d]: %q, want Ingress or Egress", i, t)
		}
		if seen[t] {
			return fmt.Errorf("types[%d]: %s listed twice", i, t)
		}
		seen[t] = true
	}
	if len(p.Ingress)+len(p.Egress) > MaxRulesPerPolicy {
		return fmt.Errorf("%d rules, limit %d", len(p.Ingress)+len(p.Egress), MaxRulesPerPolicy)
	}
	if len(p.Ingress) > 0 && !seen[PolicyIngress] {
		return errors.New("ingress rules, but types leaves out Ingress")
	}
	if len(p.Egress) > 0 && !seen[PolicyEgress] {
		return errors.New("egress rules, but types leaves out Egress")
	}
	return validateRules(p.Ingress, p.Egress, true)
}

// validateRules checks the rules of a policy or a profile (pass: whether Pass is allowed).
func validateRules(ingress, egress []Rule, pass bool) error {
	for _, dir := range []struct {
		name  string
		rules []Rule
	}{{"ingress", ingress}, {"egress", egress}} {
		for i, r := range dir.rules {
			if err := r.Validate(); err != nil {
				return fmt.Errorf("%s[%d]: %w", dir.name, i, err)
			}
			if r.Action == ActionPass && !pass {
				return fmt.Errorf("%s[%d]: action pass: a profile comes after every tier, so there is nothing to pass to", dir.name, i)
			}
		}
	}
	return nil
}

// Validate reports the first thing wrong with r.
func (r Rule) Validate() error {
	switch r.Action {
	case ActionAllow, ActionDeny, ActionLog, ActionPass:
	default:
		return fmt.Errorf("action %q: want allow, deny, log or pass", r.Action)
	}
	for _, m := range []struct {
		name string
		m    *ICMPMatch
	}{{"icmp", r.ICMP}, {"notICMP", r.NotICMP}} {
		if m.m == nil {
			continue
		}
		if r.Protocol == nil || *r.Protocol != 1 {
			return fmt.Errorf("%s: needs protocol icmp", m.name)
		}
		if m.m.Code != nil && m.m.Type == nil {
			return fmt.Errorf("%s: code without type", m.name)
		}
	}
	if r.NotProtocol != nil && r.Protocol != nil && *r.NotProtocol == *r.Protocol {
		return fmt.Errorf("notProtocol %s: the same as protocol, so the rule matches nothing", *r.NotProtocol)
	}
	if err := checkLabels(r.Annotations); err != nil {
		return fmt.Errorf("annotations: %w", err)
	}
	for _, side := range []struct {
		name string
		e    EntityRule
	}{{"source", r.Source}, {"destination", r.Destination}} {
		if err := side.e.validate(r.Protocol); err != nil {
			return fmt.Errorf("%s: %w", side.name, err)
		}
	}
	return nil
}

func (e EntityRule) validate(proto *Protocol) error {
	for _, l := range []struct {
		name string
		n    int
	}{{"nets", len(e.Nets)}, {"notNets", len(e.NotNets)}, {"ports", len(e.Ports)}, {"notPorts", len(e.NotPorts)}} {
		if l.n > MaxMatchesPerList {
			return fmt.Errorf("%s: %d entries, limit %d", l.name, l.n, MaxMatchesPerList)
		}
	}
	for i, n := range e.Nets {
		if err := checkPrefix4(fmt.Sprintf("nets[%d]", i), n); err != nil {
			return err
		}
	}
	for i, n := range e.NotNets {
		if err := checkPrefix4(fmt.Sprintf("notNets[%d]", i), n); err != nil {
			return err
		}
	}
	for _, sel := range []struct{ name, s string }{{"selector", e.Selector}, {"notSelector", e.NotSelector},
		{"namespaceSelector", e.NamespaceSelector}} {
		if _, err := selector.Parse(sel.s); err != nil {
			return fmt.Errorf("%s: %w", sel.name, err)
		}
	}
	if sa := e.ServiceAccounts; sa != nil {
		if len(sa.Names) == 0 && sa.Selector == "" {
			return errors.New("serviceAccounts: give names, a selector or both")
		}
		if len(sa.Names) > MaxMatchesPerList {
			return fmt.Errorf("serviceAccounts.names: %d entries, limit %d", len(sa.Names), MaxMatchesPerList)
		}
		for i, n := range sa.Names {
			if err := ValidateName(n); err != nil {
				return fmt.Errorf("serviceAccounts.names[%d]: %w", i, err)
			}
		}
		if _, err := selector.Parse(sa.Selector); err != nil {
			return fmt.Errorf("serviceAccounts.selector: %w", err)
		}
	}
	if len(e.Ports)+len(e.NotPorts) > 0 && (proto == nil || !proto.HasPorts()) {
		return errors.New("ports need protocol tcp, udp, sctp or udplite")
	}
	for i, r := range append(append([]PortRange(nil), e.Ports...), e.NotPorts...) {
		if r.Named() {
			if r.Lo != 0 || r.Hi != 0 {
				return fmt.Errorf("port %d: named port %q with numbers", i, r.Name)
			}
			if err := ValidatePortName(r.Name); err != nil {
				return fmt.Errorf("port %d: %w", i, err)
			}
			continue
		}
		if r.Hi < r.Lo {
			return fmt.Errorf("port range %d: %s ends before it starts", i, r)
		}
	}
	return nil
}

func (p *Policy) version() *int { return &p.Version }

// normalize makes empty lists nil, as they are written (omitempty), so that a value reads back
// the same.
func normalizeRule(r *Rule) {
	r.Action = strings.ToLower(r.Action)
	r.Source.normalize()
	r.Destination.normalize()
	r.Annotations = nilIfEmpty(r.Annotations)
}

func (e *EntityRule) normalize() {
	if e.ServiceAccounts != nil && len(e.ServiceAccounts.Names) == 0 {
		e.ServiceAccounts.Names = nil
	}
	if len(e.Nets) == 0 {
		e.Nets = nil
	}
	if len(e.NotNets) == 0 {
		e.NotNets = nil
	}
	if len(e.Ports) == 0 {
		e.Ports = nil
	}
	if len(e.NotPorts) == 0 {
		e.NotPorts = nil
	}
}

// DefaultTypes is Calico's default of a policy's types for a policy with or without ingress and
// egress rules: ingress rules or none, Ingress; egress rules only, Egress; both, both.
func DefaultTypes(ingress, egress bool) []PolicyType {
	switch {
	case ingress && egress:
		return []PolicyType{PolicyIngress, PolicyEgress}
	case egress:
		return []PolicyType{PolicyEgress}
	}
	return []PolicyType{PolicyIngress}
}

func (p *Policy) setDefaults() {
	if p.Tier == DefaultTier {
		p.Tier = ""
	}
	if len(p.Types) == 0 {
		p.Types = DefaultTypes(len(p.Ingress) > 0, len(p.Egress) > 0)
	}
	normalizeRules(&p.Ingress, &p.Egress)
}

// normalizeRules normalizes the rules of a policy or profile, and makes empty lists nil.
func normalizeRules(lists ...*[]Rule) {
	for _, rules := range lists {
		for i := range *rules {
			normalizeRule(&(*rules)[i])
		}
		if len(*rules) == 0 {
			*rules = nil
		}
	}
}

// DecodePolicy reads one policy from JSON as `margayctl policy apply` and the agent do: unknown
// fields are errors, defaults are applied, and the result is validated.
func DecodePolicy(data []byte) (Policy, error) {
	var p Policy
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, fmt.Errorf("decode policy: %w", err)
	}
	if dec.More() {
		return Policy{}, errors.New("decode policy: more than one JSON value")
	}
	if p.Version == 0 {
		p.Version = CurrentVersion
	}
	p.setDefaults()
	if err := p.Validate(); err != nil {
		if p.Name != "" {
			return Policy{}, fmt.Errorf("policy %q: %w", p.Name, err)
		}
		return Policy{}, fmt.Errorf("policy: %w", err)
	}
	return p, nil
}
