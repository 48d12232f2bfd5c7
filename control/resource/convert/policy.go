package convert

import (
	"maps"
	"net/netip"
	"strconv"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/resource"
)

// PolicyFromV3 converts a GlobalNetworkPolicy into a policy record. Calico's defaults are
// filled in first, so the record's Types are Calico's (resource.DefaultTypes), written out:
// Margay's own default for a policy without types differs (egress rules only: Calico governs
// Egress, Margay's record format Ingress and Egress).
func PolicyFromV3(p *resource.GlobalNetworkPolicy) (datastore.Policy, error) {
	p = p.Defaulted()
	var e fieldErrs
	s := &p.Spec
	// Calico's tier label always names the policy's tier: a wrong tier is spec.tier's error.
	checkMeta(&e, &p.ObjectMeta, map[string]string{resource.TierLabel: s.Tier})
	if s.Tier != resource.DefaultTierName {
		e.notYet("spec.tier", whyTiers)
	}
	for _, f := range []struct {
		name string
		set  bool
		why  string
	}{
		{"doNotTrack", s.DoNotTrack, whyHostEPs},
		{"preDNAT", s.PreDNAT, whyHostEPs},
		{"applyOnForward", s.ApplyOnForward, whyHostEPs},
		{"serviceAccountSelector", s.ServiceAccountSelector != "", whySAs},
		{"namespaceSelector", s.NamespaceSelector != "", whyNamespaces},
		{"performanceHints", len(s.PerformanceHints) > 0, whyHints},
	} {
		if f.set {
			e.notYet("spec."+f.name, f.why)
		}
	}
	out := datastore.Policy{Version: datastore.CurrentVersion, Name: p.Name, Selector: s.Selector}
	if s.Order != nil {
		out.Order = ptr(*s.Order)
	}
	for _, t := range s.Types {
		out.Types = append(out.Types, datastore.PolicyType(t))
	}
	out.Ingress = rulesFromV3(&e, "spec.ingress", s.Ingress)
	out.Egress = rulesFromV3(&e, "spec.egress", s.Egress)
	e.check(out)
	if err := e.err(); err != nil {
		return datastore.Policy{}, err
	}
	return out, nil
}

// PolicyToV3 is the GlobalNetworkPolicy of a policy record, with Calico's defaults (tier
// default and its label, types).
func PolicyToV3(p datastore.Policy) *resource.GlobalNetworkPolicy {
	out := &resource.GlobalNetworkPolicy{ObjectMeta: resource.ObjectMeta{Name: p.Name}}
	s := &out.Spec
	s.Selector = p.Selector
	if p.Order != nil {
		s.Order = ptr(*p.Order)
	}
	for _, t := range p.Types {
		s.Types = append(s.Types, resource.PolicyType(t))
	}
	s.Ingress = rulesToV3(p.Ingress)
	s.Egress = rulesToV3(p.Egress)
	return out.Defaulted()
}

func rulesFromV3(e *fieldErrs, at string, rules []resource.Rule) []datastore.Rule {
	var out []datastore.Rule
	for i, r := range rules {
		out = append(out, ruleFromV3(e, at+"["+strconv.Itoa(i)+"]", r))
	}
	return out
}

func ruleFromV3(e *fieldErrs, at string, r resource.Rule) datastore.Rule {
	var out datastore.Rule
	switch r.Action {
	case resource.Allow:
		out.Action = datastore.ActionAllow
	case resource.Deny:
		out.Action = datastore.ActionDeny
	default:
		e.notYet(at+".action", string(r.Action)+": "+whyActions)
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
		e.notYet(at+".http", "application layer policy needs a proxy, which Margay does not have")
	}
	if r.Metadata != nil && len(r.Metadata.Annotations) > 0 {
		out.Annotations = maps.Clone(r.Metadata.Annotations)
	}
	out.Source = entityFromV3(e, at+".source", r.Source)
	out.Destination = entityFromV3(e, at+".destination", r.Destination)
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

func entityFromV3(e *fieldErrs, at string, r resource.EntityRule) datastore.EntityRule {
	out := datastore.EntityRule{Selector: r.Selector, NotSelector: r.NotSelector}
	out.Nets = netsFromV3(e, at+".nets", r.Nets)
	out.NotNets = netsFromV3(e, at+".notNets", r.NotNets)
	out.Ports = portsFromV3(e, at+".ports", r.Ports)
	out.NotPorts = portsFromV3(e, at+".notPorts", r.NotPorts)
	if r.NamespaceSelector != "" {
		e.notYet(at+".namespaceSelector", whyNamespaces)
	}
	if r.ServiceAccounts != nil {
		e.notYet(at+".serviceAccounts", whySAs)
	}
	if r.Services != nil {
		e.notYet(at+".services", "Margay does not follow Kubernetes Services")
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

func portsFromV3(e *fieldErrs, at string, ports []resource.Port) []datastore.PortRange {
	var out []datastore.PortRange
	for i, p := range ports {
		if p.Name != "" {
			e.notYet(at+"["+strconv.Itoa(i)+"]", "Margay's workloads carry no named ports: use port numbers")
			continue
		}
		out = append(out, datastore.PortRange{Lo: p.Min, Hi: p.Max})
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
	out := resource.Rule{Action: resource.Deny}
	if r.Action == datastore.ActionAllow {
		out.Action = resource.Allow
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
	out := resource.EntityRule{Selector: r.Selector, NotSelector: r.NotSelector}
	for _, n := range r.Nets {
		out.Nets = append(out.Nets, n.String())
	}
	for _, n := range r.NotNets {
		out.NotNets = append(out.NotNets, n.String())
	}
	for _, p := range r.Ports {
		out.Ports = append(out.Ports, resource.PortRange(p.Lo, p.Hi))
	}
	for _, p := range r.NotPorts {
		out.NotPorts = append(out.NotPorts, resource.PortRange(p.Lo, p.Hi))
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
