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
	tcp := datastore.Protocol(6)
	p := datastore.Policy{
		Version:  datastore.CurrentVersion,
		Name:     fmt.Sprintf("bench-%d", r.N),
		Selector: "all()",
		Types:    []datastore.PolicyType{datastore.PolicyIngress},
	}
	for i := range r.N {
		lo, hi := r.Ports(i)
		p.Ingress = append(p.Ingress, datastore.Rule{
			Action:      datastore.ActionAllow,
			Protocol:    &tcp,
			Source:      datastore.EntityRule{Nets: []netip.Prefix{r.Net(i)}},
			Destination: datastore.EntityRule{Ports: []datastore.PortRange{{Lo: lo, Hi: hi}}},
		})
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
	ps, err := policy.NewSet([]datastore.Policy{r.Policy()})
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
