package convert

import (
	"maps"
	"net/netip"
	"slices"
	"strconv"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/resource"
)

// policySpec is what a GlobalNetworkPolicy's and a NetworkPolicy's specs have in common,
// defaulted: the tier is named and the types are written out.
type policySpec struct {
	tier                   string
	order                  *float64
	selector               string
	types                  []resource.PolicyType
	ingress, egress        []resource.Rule
	serviceAccountSelector string
	hints                  []resource.PolicyPerformanceHint
}

// PolicyFromV3 converts a GlobalNetworkPolicy into a policy record (one without a namespace).
// Calico's defaults are filled in first, so the record's Types are Calico's
// (resource.DefaultTypes), written out: Margay's own default for a policy without types
// differs (egress rules only: Calico governs Egress, Margay's record format Ingress and
// Egress). The tier default is stored as no tier; any other tier by its name, and the policy
// by its name as given (Calico's <tier>.<name> form or not).
func PolicyFromV3(p *resource.GlobalNetworkPolicy) (datastore.Policy, error) {
	p = p.Defaulted()
	var e fieldErrs
	s := &p.Spec
	for _, f := range []struct {
		name string
		set  bool
	}{{"doNotTrack", s.DoNotTrack}, {"preDNAT", s.PreDNAT}, {"applyOnForward", s.ApplyOnForward}} {
		if f.set {
			e.unsupported("spec."+f.name, whyHostEPs)
		}
	}
	out := policyFromV3(&e, &p.ObjectMeta, policySpec{s.Tier, s.Order, s.Selector, s.Types, s.Ingress, s.Egress,
		s.ServiceAccountSelector, s.PerformanceHints})
	out.NamespaceSelector = s.NamespaceSelector
	return finish(&e, out)
}

// NetworkPolicyFromV3 converts a NetworkPolicy into a policy record of its namespace
// (resource.DefaultNamespace when it names none), stored at policies/<namespace>/<name>; as
// PolicyFromV3 otherwise.
func NetworkPolicyFromV3(p *resource.NetworkPolicy) (datastore.Policy, error) {
	p = p.Defaulted()
	var e fieldErrs
	s := &p.Spec
	out := policyFromV3(&e, &p.ObjectMeta, policySpec{s.Tier, s.Order, s.Selector, s.Types, s.Ingress, s.Egress,
		s.ServiceAccountSelector, s.PerformanceHints})
	out.Namespace = p.Namespace
	if out.Namespace == "" {
		out.Namespace = resource.DefaultNamespace
	}
	return finish(&e, out)
}

func policyFromV3(e *fieldErrs, m *resource.ObjectMeta, s policySpec) datastore.Policy {
	// Calico's tier label always names the policy's tier: a wrong tier is spec.tier's error.
	checkMeta(e, m, map[string]string{resource.TierLabel: s.tier})
	if len(s.hints) > 0 {
		e.notYet("spec.performanceHints", whyHints)
	}
	out := datastore.Policy{Version: datastore.CurrentVersion, Name: m.Name, Selector: s.selector,
		ServiceAccountSelector: s.serviceAccountSelector}
	if s.tier != resource.DefaultTierName {
		out.Tier = s.tier
	}
	if s.order != nil {
		out.Order = ptr(*s.order)
	}
	for _, t := range s.types {
		out.Types = append(out.Types, datastore.PolicyType(t))
	}
	out.Ingress = rulesFromV3(e, "spec.ingress", s.ingress)
	out.Egress = rulesFromV3(e, "spec.egress", s.egress)
	return out
}

// PolicyToV3 is the GlobalNetworkPolicy of a policy record without a namespace, with Calico's
// defaults (tier default and its label, types).
func PolicyToV3(p datastore.Policy) *resource.GlobalNetworkPolicy {
	out := &resource.GlobalNetworkPolicy{ObjectMeta: resource.ObjectMeta{Name: p.Name}}
	s := &out.Spec
	ps := policyToV3(p)
	s.Tier, s.Order, s.Selector, s.Types, s.Ingress, s.Egress = ps.tier, ps.order, ps.selector, ps.types, ps.ingress, ps.egress
	s.ServiceAccountSelector, s.NamespaceSelector = ps.serviceAccountSelector, p.NamespaceSelector
	return out.Defaulted()
}

// NetworkPolicyToV3 is the NetworkPolicy of a policy record of a namespace, with Calico's
// defaults.
func NetworkPolicyToV3(p datastore.Policy) *resource.NetworkPolicy {
	out := &resource.NetworkPolicy{ObjectMeta: resource.ObjectMeta{Name: p.Name, Namespace: p.Namespace}}
	s := &out.Spec
	ps := policyToV3(p)
	s.Tier, s.Order, s.Selector, s.Types, s.Ingress, s.Egress = ps.tier, ps.order, ps.selector, ps.types, ps.ingress, ps.egress
	s.ServiceAccountSelector = ps.serviceAccountSelector
	return out.Defaulted()
}

// PolicyResourceToV3 is the resource of a policy record: a NetworkPolicy when it has a
// namespace, else a GlobalNetworkPolicy.
func PolicyResourceToV3(p datastore.Policy) resource.Resource {
	if p.Namespace != "" {
		return NetworkPolicyToV3(p)
	}
	return PolicyToV3(p)
}

func policyToV3(p datastore.Policy) policySpec {
	s := policySpec{tier: p.Tier, selector: p.Selector, serviceAccountSelector: p.ServiceAccountSelector}
	if p.Order != nil {
		s.order = ptr(*p.Order)
	}
	for _, t := range p.Types {
		s.types = append(s.types, resource.PolicyType(t))
	}
	s.ingress = rulesToV3(p.Ingress)
	s.egress = rulesToV3(p.Egress)
	return s
}

// TierFromV3 converts a Tier into a tier record: order and default action (Deny when not
// given, as Calico defaults it).
func TierFromV3(t *resource.Tier) (datastore.Tier, error) {
	t = t.Defaulted()
	var e fieldErrs
	checkMeta(&e, &t.ObjectMeta, nil)
	out := datastore.Tier{Version: datastore.CurrentVersion, Name: t.Name, DefaultAction: string(*t.Spec.DefaultAction)}
	if t.Spec.Order != nil {
		out.Order = ptr(*t.Spec.Order)
	}
	return finish(&e, out)
}

// TierToV3 is the Tier of a tier record, with Calico's defaults.
func TierToV3(t datastore.Tier) *resource.Tier {
	out := &resource.Tier{ObjectMeta: resource.ObjectMeta{Name: t.Name}}
	if t.Order != nil {
		out.Spec.Order = ptr(*t.Order)
	}
	if t.DefaultAction != "" {
		out.Spec.DefaultAction = ptr(resource.Action(t.DefaultAction))
	}
	return out.Defaulted()
}

// DefaultTierV3 is the tier default as Calico has it, for a datastore that holds no record of
// it (Margay's default tier needs none).
func DefaultTierV3() *resource.Tier {
	return TierToV3(datastore.Tier{Name: datastore.DefaultTier, Order: ptr(float64(datastore.DefaultTierOrder)), DefaultAction: datastore.TierDeny})
}

// ProfileFromV3 converts a Profile into a profile record: labelsToApply and the rules.
func ProfileFromV3(p *resource.Profile) (datastore.Profile, error) {
	var e fieldErrs
	checkMeta(&e, &p.ObjectMeta, nil)
	out := datastore.Profile{Version: datastore.CurrentVersion, Name: p.Name}
	if len(p.Spec.LabelsToApply) > 0 {
		out.LabelsToApply = maps.Clone(p.Spec.LabelsToApply)
	}
	out.Ingress = rulesFromV3(&e, "spec.ingress", p.Spec.Ingress)
	out.Egress = rulesFromV3(&e, "spec.egress", p.Spec.Egress)
	return finish(&e, out)
}

// ProfileToV3 is the Profile of a profile record.
func ProfileToV3(p datastore.Profile) *resource.Profile {
	out := &resource.Profile{ObjectMeta: resource.ObjectMeta{Name: p.Name}}
	if len(p.LabelsToApply) > 0 {
		out.Spec.LabelsToApply = maps.Clone(p.LabelsToApply)
	}
	out.Spec.Ingress = rulesToV3(p.Ingress)
	out.Spec.Egress = rulesToV3(p.Egress)
	return out
}

func rulesFromV3(e *fieldErrs, at string, rules []resource.Rule) []datastore.Rule {
	var out []datastore.Rule
	for i, r := range rules {
		out = append(out, ruleFromV3(e, at+"["+strconv.Itoa(i)+"]", r))
	}
	return out
}

// actions are Calico's rule actions and the record's.
var actions = map[resource.Action]string{
	resource.Allow: datastore.ActionAllow,
	resource.Deny:  datastore.ActionDeny,
	resource.Log:   datastore.ActionLog,
	resource.Pass:  datastore.ActionPass,
}

func ruleFromV3(e *fieldErrs, at string, r resource.Rule) datastore.Rule {
	var out datastore.Rule
	if a, ok := actions[r.Action]; ok {
		out.Action = a
	} else {
		e.addf(at+".action", "%q is not an action: want Allow, Deny, Log or Pass", r.Action)
	}
	if r.IPVersion != nil {
		e.notYet(at+".ipVersion", whyIPVersion)
	}
	if r.Protocol != nil {
		n, ok := r.Protocol.Num()
		if !ok {
			e.addf(at+".protocol", "%q is not a protocol Margay knows", r.Protocol)
		}
		out.Protocol = ptr(datastore.Protocol(n))
	}
	if r.ICMP != nil {
		out.ICMP = &datastore.ICMPMatch{Type: icmpFromV3(e, at+".icmp.type", r.ICMP.Type), Code: icmpFromV3(e, at+".icmp.code", r.ICMP.Code)}
	}
	if r.NotProtocol != nil {
		n, ok := r.NotProtocol.Num()
		if !ok {
			e.addf(at+".notProtocol", "%q is not a protocol Margay knows", r.NotProtocol)
		}
		out.NotProtocol = ptr(datastore.Protocol(n))
	}
	if r.NotICMP != nil {
		out.NotICMP = &datastore.ICMPMatch{Type: icmpFromV3(e, at+".notICMP.type", r.NotICMP.Type),
			Code: icmpFromV3(e, at+".notICMP.code", r.NotICMP.Code)}
	}
	if r.HTTP != nil {
		e.unsupported(at+".http", "application layer policy needs a proxy, which Margay does not have")
	}
	if r.Metadata != nil && len(r.Metadata.Annotations) > 0 {
		out.Annotations = maps.Clone(r.Metadata.Annotations)
	}
	out.Source = entityFromV3(e, at+".source", r.Source, r.Protocol)
	out.Destination = entityFromV3(e, at+".destination", r.Destination, r.Protocol)
	return out
}

func icmpFromV3(e *fieldErrs, at string, v *int) *uint8 {
	if v == nil {
		return nil
	}
	if *v < 0 || *v > 255 {
		e.addf(at, "%d: want 0 to 255", *v)
		return nil
	}
	return ptr(uint8(*v))
}

func entityFromV3(e *fieldErrs, at string, r resource.EntityRule, proto *resource.Protocol) datastore.EntityRule {
	out := datastore.EntityRule{Selector: r.Selector, NotSelector: r.NotSelector, NamespaceSelector: r.NamespaceSelector}
	out.Nets = netsFromV3(e, at+".nets", r.Nets)
	out.NotNets = netsFromV3(e, at+".notNets", r.NotNets)
	out.Ports = portsFromV3(e, at+".ports", r.Ports, proto)
	out.NotPorts = portsFromV3(e, at+".notPorts", r.NotPorts, proto)
	if sa := r.ServiceAccounts; sa != nil {
		if len(sa.Names) == 0 && sa.Selector == "" {
			e.addf(at+".serviceAccounts", "empty: give names, a selector or both (or leave serviceAccounts out)")
		}
		for i, n := range sa.Names {
			if err := datastore.ValidateName(n); err != nil {
				e.addf(at+".serviceAccounts.names["+strconv.Itoa(i)+"]", "%s", err)
			}
		}
		out.ServiceAccounts = &datastore.ServiceAccountMatch{Names: slices.Clone(sa.Names), Selector: sa.Selector}
	}
	if r.Services != nil {
		e.unsupported(at+".services", "Margay does not follow Kubernetes Services")
	}
	return out
}

func netsFromV3(e *fieldErrs, at string, nets []string) []netip.Prefix {
	var out []netip.Prefix
	for i, n := range nets {
		p, err := parseNet(n)
		if err != nil {
			e.addf(at+"["+strconv.Itoa(i)+"]", "%s", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

func portsFromV3(e *fieldErrs, at string, ports []resource.Port, proto *resource.Protocol) []datastore.PortRange {
	var out []datastore.PortRange
	for i, p := range ports {
		if p.Name == "" {
			out = append(out, datastore.PortRange{Lo: p.Min, Hi: p.Max})
			continue
		}
		if proto == nil {
			// Calico takes a named port without a protocol; Margay finds the port by its name
			// and the rule's protocol.
			e.unsupported(at+"["+strconv.Itoa(i)+"]", "a named port needs the rule's protocol (TCP, UDP or SCTP): Margay matches the endpoint's port of that name and protocol")
			continue
		}
		if err := datastore.ValidatePortName(p.Name); err != nil {
			e.addf(at+"["+strconv.Itoa(i)+"]", "%s", err)
			continue
		}
		out = append(out, datastore.PortRange{Name: p.Name})
	}
	return out
}

func rulesToV3(rules []datastore.Rule) []resource.Rule {
	var out []resource.Rule
	for _, r := range rules {
		out = append(out, ruleToV3(r))
	}
	return out
}

func ruleToV3(r datastore.Rule) resource.Rule {
	var out resource.Rule
	for a, rec := range actions {
		if rec == r.Action {
			out.Action = a
		}
	}
	if r.Protocol != nil {
		out.Protocol = ptr(ProtocolToV3(uint8(*r.Protocol)))
	}
	if r.ICMP != nil {
		out.ICMP = &resource.ICMPFields{Type: icmpToV3(r.ICMP.Type), Code: icmpToV3(r.ICMP.Code)}
	}
	if r.NotProtocol != nil {
		out.NotProtocol = ptr(ProtocolToV3(uint8(*r.NotProtocol)))
	}
	if r.NotICMP != nil {
		out.NotICMP = &resource.ICMPFields{Type: icmpToV3(r.NotICMP.Type), Code: icmpToV3(r.NotICMP.Code)}
	}
	if len(r.Annotations) > 0 {
		out.Metadata = &resource.RuleMetadata{Annotations: maps.Clone(r.Annotations)}
	}
	out.Source = entityToV3(r.Source)
	out.Destination = entityToV3(r.Destination)
	return out
}

func icmpToV3(v *uint8) *int {
	if v == nil {
		return nil
	}
	return ptr(int(*v))
}

func entityToV3(r datastore.EntityRule) resource.EntityRule {
	out := resource.EntityRule{Selector: r.Selector, NotSelector: r.NotSelector, NamespaceSelector: r.NamespaceSelector}
	for _, n := range r.Nets {
		out.Nets = append(out.Nets, n.String())
	}
	for _, n := range r.NotNets {
		out.NotNets = append(out.NotNets, n.String())
	}
	out.Ports = portsToV3(r.Ports)
	out.NotPorts = portsToV3(r.NotPorts)
	if sa := r.ServiceAccounts; sa != nil {
		out.ServiceAccounts = &resource.ServiceAccountMatch{Names: slices.Clone(sa.Names), Selector: sa.Selector}
	}
	return out
}

func portsToV3(ports []datastore.PortRange) []resource.Port {
	var out []resource.Port
	for _, p := range ports {
		if p.Named() {
			out = append(out, resource.NamedPort(p.Name))
		} else {
			out = append(out, resource.PortRange(p.Lo, p.Hi))
		}
	}
	return out
}

// protocolNames are the protocols Calico names, in Calico's spelling.
var protocolNames = map[uint8]string{1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP", 136: "UDPLite"}

// ProtocolToV3 is protocol n as Calico writes it: its name (TCP) if Calico has one, else n.
func ProtocolToV3(n uint8) resource.Protocol {
	if name, ok := protocolNames[n]; ok {
		return resource.ProtocolNamed(name)
	}
	return resource.ProtocolNumber(n)
}
