package resource

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Limits of Calico's CRD schemas.
const (
	maxRules = 1024 // per direction of a policy or profile
	maxNets  = 256  // per nets or notNets
	maxPorts = 50   // per ports or notPorts
)

// Validate checks p as Calico does, plus what Margay cannot enforce.
func (p *NetworkPolicy) Validate() error {
	var errs errList
	validateMeta(&errs, KindNetworkPolicy, &p.ObjectMeta)
	s := &p.Spec
	checkPolicy(&errs, "spec", policyFields{s.Tier, s.Selector, s.Types, s.Ingress, s.Egress,
		s.ServiceAccountSelector, s.PerformanceHints})
	return errs.err()
}

// Validate checks p as Calico does, plus what Margay cannot enforce.
func (p *GlobalNetworkPolicy) Validate() error {
	var errs errList
	validateMeta(&errs, KindGlobalNetworkPolicy, &p.ObjectMeta)
	s := &p.Spec
	const at path = "spec"
	checkPolicy(&errs, at, policyFields{s.Tier, s.Selector, s.Types, s.Ingress, s.Egress,
		s.ServiceAccountSelector, s.PerformanceHints})
	checkSelector(&errs, at.child("namespaceSelector"), s.NamespaceSelector)
	checkNoGlobal(&errs, at.child("namespaceSelector"), s.NamespaceSelector)

	// Calico's rules for the host endpoint options, then Margay's.
	if s.PreDNAT && s.DoNotTrack {
		errs.addf(at.child("preDNAT"), "preDNAT and doNotTrack cannot both be true")
	}
	if s.PreDNAT && len(s.Egress) > 0 {
		errs.addf(at.child("preDNAT"), "a preDNAT policy cannot have egress rules")
	}
	if s.PreDNAT && slices.Contains(s.Types, PolicyTypeEgress) {
		errs.addf(at.child("preDNAT"), "a preDNAT policy cannot have type Egress")
	}
	if (s.PreDNAT || s.DoNotTrack) && !s.ApplyOnForward {
		errs.addf(at.child("applyOnForward"), "must be true when preDNAT or doNotTrack is")
	}
	for _, f := range []struct {
		name string
		set  bool
	}{{"doNotTrack", s.DoNotTrack}, {"preDNAT", s.PreDNAT}, {"applyOnForward", s.ApplyOnForward}} {
		if f.set {
			errs.unsupported(at.child(f.name), whyHostEndpoints)
		}
	}
	return errs.err()
}

// policyFields are the fields NetworkPolicySpec and GlobalNetworkPolicySpec share.
type policyFields struct {
	tier                   string
	selector               string
	types                  []PolicyType
	ingress, egress        []Rule
	serviceAccountSelector string
	hints                  []PolicyPerformanceHint
}

func checkPolicy(errs *errList, at path, f policyFields) {
	if f.tier != "" {
		// Calico checks the field as any name, and then that the tier exists; tiers have
		// label names.
		checkTierName(errs, at.child("tier"), f.tier)
	}
	checkSelector(errs, at.child("selector"), f.selector)
	checkNoGlobal(errs, at.child("selector"), f.selector)
	seen := make(map[PolicyType]bool)
	for i, t := range f.types {
		if checkOneOf(errs, at.child("types").index(i), t, PolicyTypeIngress, PolicyTypeEgress) && seen[t] {
			errs.addf(at.child("types").index(i), "%s given more than once", t)
		}
		seen[t] = true
	}
	if f.serviceAccountSelector != "" {
		checkSelector(errs, at.child("serviceAccountSelector"), f.serviceAccountSelector)
		checkNoGlobal(errs, at.child("serviceAccountSelector"), f.serviceAccountSelector)
	}
	seenHint := make(map[PolicyPerformanceHint]bool)
	for i, h := range f.hints {
		if checkOneOf(errs, at.child("performanceHints").index(i), h, PerfHintAssumeNeededOnEveryNode) && seenHint[h] {
			errs.addf(at.child("performanceHints").index(i), "%s given more than once", h)
		}
		seenHint[h] = true
	}
	checkRules(errs, at.child("ingress"), f.ingress)
	checkRules(errs, at.child("egress"), f.egress)
}

func checkRules(errs *errList, at path, rules []Rule) {
	if len(rules) > maxRules {
		errs.addf(at, "%d rules, more than %d", len(rules), maxRules)
	}
	for i := range rules {
		checkRule(errs, at.index(i), &rules[i])
	}
}

func checkRule(errs *errList, at path, r *Rule) {
	switch r.Action {
	case Allow, Deny, Log, Pass:
	case "":
		errs.addf(at.child("action"), "required (Allow, Deny, Log or Pass)")
	default:
		checkOneOf(errs, at.child("action"), r.Action, Allow, Deny, Log, Pass)
	}
	if r.IPVersion != nil {
		switch *r.IPVersion {
		case 4:
		case 6:
			errs.unsupported(at.child("ipVersion"), whyIPv6)
		default:
			errs.addf(at.child("ipVersion"), "%d is not an IP version: want 4 or 6", *r.IPVersion)
		}
	}
	checkProtocol(errs, at.child("protocol"), r.Protocol, r.IPVersion)
	checkProtocol(errs, at.child("notProtocol"), r.NotProtocol, r.IPVersion)
	checkICMP(errs, at.child("icmp"), r.ICMP, r.Protocol)
	checkICMP(errs, at.child("notICMP"), r.NotICMP, r.Protocol)

	nets := netScan{errs: errs, ipVersion: r.IPVersion}
	nets.scan(at.child("source").child("nets"), r.Source.Nets, false)
	nets.scan(at.child("source").child("notNets"), r.Source.NotNets, true)
	nets.scan(at.child("destination").child("nets"), r.Destination.Nets, false)
	nets.scan(at.child("destination").child("notNets"), r.Destination.NotNets, true)
	checkEntity(errs, at.child("source"), &r.Source, r.Protocol)
	checkEntity(errs, at.child("destination"), &r.Destination, r.Protocol)

	if r.HTTP != nil {
		errs.unsupported(at.child("http"), whyHTTP)
	}
	if r.Metadata != nil {
		checkAnnotations(errs, at.child("metadata").child("annotations"), r.Metadata.Annotations)
	}
}

const protocolNames = "TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number from 1 to 255"

func checkProtocol(errs *errList, at path, p *Protocol, ipVersion *int) {
	if p == nil {
		return
	}
	if _, known := p.Num(); !known {
		errs.addf(at, "%q is not a protocol: want %s", p.Name, protocolNames)
		return
	}
	if p.Name == "" && p.Number == 0 {
		errs.addf(at, "0 is not a protocol: want %s", protocolNames)
		return
	}
	switch {
	case p.IsICMP() && ipVersion != nil && *ipVersion != 4:
		errs.addf(at, "%s needs ipVersion 4", p)
	case p.IsICMPv6() && ipVersion != nil && *ipVersion != 6:
		errs.addf(at, "%s needs ipVersion 6", p)
	}
	if p.IsICMPv6() {
		errs.unsupported(at, whyIPv6)
	}
}

// checkICMP checks an icmp or notICMP match. Calico requires protocol ICMP or ICMPv6 for icmp
// only; Margay requires it for notICMP too, which matches nothing else.
func checkICMP(errs *errList, at path, f *ICMPFields, proto *Protocol) {
	if f == nil {
		return
	}
	if f.Type != nil && (*f.Type < 0 || *f.Type > 254) {
		errs.addf(at.child("type"), "%d is not an ICMP type: want 0 to 254", *f.Type)
	}
	if f.Code != nil && (*f.Code < 0 || *f.Code > 255) {
		errs.addf(at.child("code"), "%d is not an ICMP code: want 0 to 255", *f.Code)
	}
	if f.Code != nil && f.Type == nil {
		errs.addf(at.child("code"), "needs a type")
	}
	if proto == nil || !(proto.IsICMP() || proto.IsICMPv6()) {
		errs.addf(at, "needs protocol ICMP or ICMPv6")
	}
}

// netScan checks the nets and notNets of a rule, which must all be of one IP version.
type netScan struct {
	errs         *errList
	ipVersion    *int
	seen4, seen6 bool
}

func (s *netScan) scan(at path, nets []string, negated bool) {
	if len(nets) > maxNets {
		s.errs.addf(at, "%d CIDRs, more than %d", len(nets), maxNets)
	}
	var v4, v6 bool
	for i, n := range nets {
		p, err := parseMaskedCIDR(n)
		if err != nil {
			if a, ipErr := parseIP(n); ipErr == nil {
				err = fmt.Errorf("%q is an address, not a CIDR: write %s/%d", n, a, a.BitLen())
			}
			s.errs.addf(at.index(i), "%s", err)
			continue
		}
		if p.Addr().Is4() {
			v4 = true
		} else {
			v6 = true
			s.errs.unsupported(at.index(i), whyIPv6)
		}
		if negated && p.Bits() == 0 {
			s.errs.addf(at.index(i), "%s matches every address, so the rule would match nothing", n)
		}
	}
	if v := s.ipVersion; v != nil && (v4 && *v != 4 || v6 && *v != 6) {
		s.errs.addf(at, "CIDRs of another IP version than the rule's ipVersion %d", *v)
	}
	if v4 && (v6 || s.seen6) || v6 && s.seen4 {
		s.errs.addf(at, "a rule cannot mix IPv4 and IPv6 CIDRs")
	}
	s.seen4, s.seen6 = s.seen4 || v4, s.seen6 || v6
}

func checkEntity(errs *errList, at path, e *EntityRule, proto *Protocol) {
	checkSelector(errs, at.child("selector"), e.Selector)
	checkNoGlobal(errs, at.child("selector"), e.Selector)
	checkSelector(errs, at.child("notSelector"), e.NotSelector)
	if sel, ok := checkSelector(errs, at.child("namespaceSelector"), e.NamespaceSelector); ok &&
		strings.Contains(e.NamespaceSelector, "global(") && sel.String() != "global()" {
		errs.addf(at.child("namespaceSelector"), "global() cannot be combined with other selectors")
	}
	if e.Services != nil {
		errs.unsupported(at.child("services"), whyServices)
	}
	checkPorts(errs, at.child("ports"), e.Ports, proto)
	checkPorts(errs, at.child("notPorts"), e.NotPorts, proto)
	if sa := e.ServiceAccounts; sa != nil && sa.Selector != "" {
		checkSelector(errs, at.child("serviceAccounts").child("selector"), sa.Selector)
	}
}

func checkPorts(errs *errList, at path, ports []Port, proto *Protocol) {
	if len(ports) == 0 {
		return
	}
	if len(ports) > maxPorts {
		errs.addf(at, "%d ports, more than %d", len(ports), maxPorts)
	}
	numeric := false
	for i, p := range ports {
		switch {
		case p.Name != "":
			if p.Min != 0 || p.Max != 0 {
				errs.addf(at.index(i), "a named port has no numbers")
			}
			// Calico takes any name here, but an endpoint's ports are named as Kubernetes
			// names a container's (checkEndpointPort): another name matches no port.
			if msgs := validation.IsValidPortName(p.Name); len(msgs) > 0 {
				errs.addf(at.index(i), "%q names no port an endpoint can have: %s", p.Name, strings.Join(msgs, "; "))
			}
		case p.Min == 0 || p.Max == 0:
			numeric = true
			errs.addf(at.index(i), "port 0: want 1 to 65535")
		case p.Min > p.Max:
			numeric = true
			errs.addf(at.index(i), "range %d:%d runs backwards", p.Min, p.Max)
		default:
			numeric = true
		}
	}
	switch {
	case proto == nil && numeric:
		errs.addf(at, "port numbers need protocol TCP, UDP or SCTP")
	case proto != nil && !proto.SupportsPorts():
		errs.addf(at, "ports need protocol TCP, UDP or SCTP, not %s", proto)
	}
}
