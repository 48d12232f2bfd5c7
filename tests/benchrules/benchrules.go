// Package benchrules is the rule set the policy benchmarks give both dataplanes: n TCP allow
// rules that a new flow walks in order, as a Margay policy and as the classic Calico filter in
// iptables, with the measured flows matching only the last rule.
package benchrules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
	"github.com/margaynet/margay/maps"
)

// ForwardDrop is an iptables-restore input that drops everything the host would forward: with
// it in force only the eBPF path can carry workload traffic.
const ForwardDrop = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

// Rules describes n rules. Rule i < n-1 allows TCP port BasePort+i from the i-th /28 from Base
// on (prefixes that hold no workload); the last allows ports LastLo–LastHi from LastNet, the
// measured client's prefix.
type Rules struct {
	N              int
	Base           netip.Addr
	BasePort       uint16
	LastNet        netip.Prefix
	LastLo, LastHi uint16
}

// Net is the source of rule i.
func (r Rules) Net(i int) netip.Prefix {
	if i == r.N-1 {
		return r.LastNet
	}
	v := binary.BigEndian.Uint32(r.Base.AsSlice()) + uint32(16*i)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v))), 28)
}

// Ports is the destination port range of rule i.
func (r Rules) Ports(i int) (lo, hi uint16) {
	if i == r.N-1 {
		return r.LastLo, r.LastHi
	}
	p := r.BasePort + uint16(i)
	return p, p
}

// Policy is the rules as ingress rules of a policy on every workload (selector all()).
func (r Rules) Policy() datastore.Policy {
	p := datastore.Policy{
		Version:  datastore.CurrentVersion,
		Name:     fmt.Sprintf("bench-%d", r.N),
		Selector: "all()",
		Types:    []datastore.PolicyType{datastore.PolicyIngress},
	}
	for i := range r.N {
		p.Ingress = append(p.Ingress, r.rule(i))
	}
	return p
}

// IPTables is the classic filter as an iptables-restore input for the FORWARD chain: conntrack's
// ESTABLISHED,RELATED accepted first, then the rules in order, then a drop.
func (r Rules) IPTables() string {
	var b strings.Builder
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	b.WriteString("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
	for i := range r.N {
		fmt.Fprintf(&b, "-A FORWARD -s %s -p tcp -m tcp --dport %s -j ACCEPT\n", r.Net(i), portMatch(r.Ports(i)))
	}
	b.WriteString("-A FORWARD -j DROP\nCOMMIT\n")
	return b.String()
}

func portMatch(lo, hi uint16) string {
	if lo == hi {
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d:%d", lo, hi)
}

// Install compiles the rules for the endpoints, local being this host's, as the agent does, and
// writes the programs' and the identities' entries into set. It returns the compiler (which
// knows the rule ids) and the result (which holds the endpoints' programs).
func (r Rules) Install(set *maps.Set, all, local []policy.Endpoint) (*policy.Compiler, *policy.Result, error) {
	return Install(set, policy.Input{Policies: []datastore.Policy{r.Policy()}}, all, local)
}

// Last is the rule the measured flow matches: the last ingress rule of Policy.
func (r Rules) Last() policy.RuleRef {
	return policy.RuleRef{Policy: r.Policy().Key(), Direction: policy.Ingress, Index: r.N - 1}
}

// AllowEgress is a policy that allows all egress of every workload. Beside Rules it gives the
// client the egress program that the profiles of Tiered give it, with neither tiers nor
// profiles.
func AllowEgress() datastore.Policy {
	return datastore.Policy{Version: datastore.CurrentVersion, Name: "bench-egress", Selector: "all()",
		Types: []datastore.PolicyType{datastore.PolicyEgress}, Egress: []datastore.Rule{{Action: datastore.ActionAllow}}}
}

// Install is what Rules.Install and Tiered.Install do, for any input.
func Install(set *maps.Set, in policy.Input, all, local []policy.Endpoint) (*policy.Compiler, *policy.Result, error) {
	ps, err := policy.Build(in)
	if err != nil {
		return nil, nil, err
	}
	c := policy.NewCompiler(set.RuleHits.MaxRules())
	res, err := c.Compile(ps, all, local)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range c.Entries(res.Programs, res.Identities) {
		if err := set.Policy.Put(k, v); err != nil {
			return nil, nil, err
		}
	}
	for p, id := range res.IPs {
		if err := set.PolicyIPs.Put(p, id); err != nil {
			return nil, nil, err
		}
	}
	return c, res, nil
}

// Tiered is the n rules of Rules spread over Tiers tiers and then Profiles profiles, so that the
// measured flow walks through every tier and, when there are profiles, into them (issue 20):
//
//   - The n-1 rules it does not match are dealt out in order, as evenly as the division allows,
//     to the tiers and then the profiles: group g of the G = Tiers+Profiles groups holds rules
//     (n-1)·g/G up to (n-1)·(g+1)/G.
//   - Tier t (order t, one ingress policy selecting all()) ends the walk of the client's flows
//     with a Pass, except the last tier when there are no profiles: an even tier with a Pass rule
//     for TCP from LastNet (any port: a flow to another port of the same client passes too) and
//     default action Deny, an odd tier with no such rule and default action Pass. So both ways a
//     tier passes are walked.
//   - The last rule, the allow of the measured flow, ends the last profile or, without profiles,
//     the last tier. The last tier's default action is Deny, and so is the profiles' end: a flow
//     that no rule allows walks everything and is denied at the end.
//   - The last profile also allows all egress, as Calico's namespace profiles do: every workload
//     has the profiles, so without it the client could send nothing. (Profiles thus give the
//     client an egress program, one more lookup per first packet that flat Rules do not make.)
//
// Tiers is at least 1. The pass rules come on top of the n rules; PassRules says how many.
type Tiered struct {
	Rules
	Tiers, Profiles int
}

// TierName is the name of tier i.
func (t Tiered) TierName(i int) string { return fmt.Sprintf("bench-tier-%02d", i) }

// ProfileNames are the profiles' names, in the order every workload lists them.
func (t Tiered) ProfileNames() []string {
	out := make([]string, t.Profiles)
	for i := range out {
		out[i] = fmt.Sprintf("bench-profile-%02d", i)
	}
	return out
}

// passes says whether tier i passes the client's flows, and how: by a rule (even tiers) or by
// its default action (odd ones).
func (t Tiered) passes(i int) (byRule, byDefault bool) {
	if i == t.Tiers-1 && t.Profiles == 0 {
		return false, false
	}
	return i%2 == 0, i%2 == 1
}

// PassRules is the number of Pass rules.
func (t Tiered) PassRules() int {
	n := 0
	for i := range t.Tiers {
		if byRule, _ := t.passes(i); byRule {
			n++
		}
	}
	return n
}

// group is the range of the rules the measured flow does not match that group g holds.
func (t Tiered) group(g int) (lo, hi int) {
	groups := t.Tiers + t.Profiles
	return (t.N - 1) * g / groups, (t.N - 1) * (g + 1) / groups
}

// rule is rule i of Rules.
func (r Rules) rule(i int) datastore.Rule {
	tcp := datastore.Protocol(6)
	lo, hi := r.Ports(i)
	return datastore.Rule{
		Action:      datastore.ActionAllow,
		Protocol:    &tcp,
		Source:      datastore.EntityRule{Nets: []netip.Prefix{r.Net(i)}},
		Destination: datastore.EntityRule{Ports: []datastore.PortRange{{Lo: lo, Hi: hi}}},
	}
}

// Input is the tiers, their policies and the profiles.
func (t Tiered) Input() policy.Input {
	tcp := datastore.Protocol(6)
	var in policy.Input
	for i := range t.Tiers {
		order := float64(i)
		byRule, byDefault := t.passes(i)
		tier := datastore.Tier{Version: datastore.CurrentVersion, Name: t.TierName(i), Order: &order, DefaultAction: datastore.TierDeny}
		if byDefault {
			tier.DefaultAction = datastore.TierPass
		}
		p := datastore.Policy{
			Version:  datastore.CurrentVersion,
			Name:     fmt.Sprintf("bench-%d-t%02d", t.N, i),
			Tier:     tier.Name,
			Order:    &order,
			Selector: "all()",
			Types:    []datastore.PolicyType{datastore.PolicyIngress},
		}
		lo, hi := t.group(i)
		for j := lo; j < hi; j++ {
			p.Ingress = append(p.Ingress, t.rule(j))
		}
		switch {
		case byRule:
			p.Ingress = append(p.Ingress, datastore.Rule{Action: datastore.ActionPass, Protocol: &tcp,
				Source: datastore.EntityRule{Nets: []netip.Prefix{t.LastNet}}})
		case !byDefault:
			p.Ingress = append(p.Ingress, t.rule(t.N-1))
		}
		in.Tiers = append(in.Tiers, tier)
		in.Policies = append(in.Policies, p)
	}
	for i, name := range t.ProfileNames() {
		pr := datastore.Profile{Version: datastore.CurrentVersion, Name: name}
		lo, hi := t.group(t.Tiers + i)
		for j := lo; j < hi; j++ {
			pr.Ingress = append(pr.Ingress, t.rule(j))
		}
		if i == t.Profiles-1 {
			pr.Ingress = append(pr.Ingress, t.rule(t.N-1))
			pr.Egress = []datastore.Rule{{Action: datastore.ActionAllow}}
		}
		in.Profiles = append(in.Profiles, pr)
	}
	return in
}

// Last is the rule the measured flow matches: the last ingress rule of the last profile, or of
// the last tier's policy without profiles.
func (t Tiered) Last() policy.RuleRef {
	in := t.Input()
	if t.Profiles > 0 {
		pr := in.Profiles[t.Profiles-1]
		return policy.RuleRef{Profile: pr.Name, Direction: policy.Ingress, Index: len(pr.Ingress) - 1}
	}
	p := in.Policies[t.Tiers-1]
	return policy.RuleRef{Policy: p.Key(), Direction: policy.Ingress, Index: len(p.Ingress) - 1}
}

// LastEgress is the rule that allows the client's egress: the last profile's, or none (ok
// false) without profiles, where no policy governs egress.
func (t Tiered) LastEgress() (ref policy.RuleRef, ok bool) {
	if t.Profiles == 0 {
		return policy.RuleRef{}, false
	}
	return policy.RuleRef{Profile: t.ProfileNames()[t.Profiles-1], Direction: policy.Egress, Index: 0}, true
}

// Install is Rules.Install for the tiered rules; every endpoint is given the profiles.
func (t Tiered) Install(set *maps.Set, all, local []policy.Endpoint) (*policy.Compiler, *policy.Result, error) {
	withProfiles := func(eps []policy.Endpoint) []policy.Endpoint {
		out := make([]policy.Endpoint, len(eps))
		for i, ep := range eps {
			ep.Profiles = t.ProfileNames()
			out[i] = ep
		}
		return out
	}
	return Install(set, t.Input(), withProfiles(all), withProfiles(local))
}

// Scale policies (issue 18): a cluster's worth of Kubernetes-style policies over workloads
// labelled by app (100 apps), tier (web, api, db) and namespace (20).

// ScaleLabels are the labels of workload i.
func ScaleLabels(i int) map[string]string {
	return map[string]string{"app": fmt.Sprintf("app-%d", i%100), "tier": [...]string{"web", "api", "db"}[i%3],
		"ns": fmt.Sprintf("ns-%d", i%20)}
}

// ScalePolicies are n policies: policy j selects one app, allows TCP to one port from the next
// app and from one namespace's web tier, and allows egress to the databases on 5432.
func ScalePolicies(n int) []datastore.Policy {
	tcp := datastore.Protocol(6)
	out := make([]datastore.Policy, n)
	for j := range out {
		order := float64(j)
		port := uint16(8000 + j%50)
		out[j] = datastore.Policy{Version: 1, Name: fmt.Sprintf("scale-%04d", j), Order: &order,
			Selector: fmt.Sprintf("app == \"app-%d\"", j%100), Types: []datastore.PolicyType{datastore.PolicyIngress, datastore.PolicyEgress},
			Ingress: []datastore.Rule{
				{Action: datastore.ActionAllow, Protocol: &tcp, Source: datastore.EntityRule{Selector: fmt.Sprintf("app == \"app-%d\"", (j+1)%100)},
					Destination: datastore.EntityRule{Ports: []datastore.PortRange{{Lo: port, Hi: port}}}},
				{Action: datastore.ActionAllow, Protocol: &tcp, Source: datastore.EntityRule{Selector: fmt.Sprintf("ns == \"ns-%d\" && tier == \"web\"", j%20)},
					Destination: datastore.EntityRule{Ports: []datastore.PortRange{{Lo: 443, Hi: 443}}}},
			},
			Egress: []datastore.Rule{
				{Action: datastore.ActionAllow, Protocol: &tcp, Destination: datastore.EntityRule{Selector: "tier == \"db\"",
					Ports: []datastore.PortRange{{Lo: 5432, Hi: 5432}}}},
			},
		}
	}
	return out
}
