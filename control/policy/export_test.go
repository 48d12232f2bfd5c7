package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/maps"
)

// RandomPolicies are the random policies of the compiler's tests, for the tests outside the
// package.
func RandomPolicies(seed uint64) []datastore.Policy {
	return gen{rand.New(rand.NewPCG(seed, 7))}.policies()
}

// RandomExtras gives a random workload named ports, a service account, profiles and its
// namespace's labels, as the compiler's tests do.
func RandomExtras(r *rand.Rand, ep *Endpoint) { randomExtras(r, ep) }

// RandomTiersAndProfiles are the tier records and profiles of the compiler's tests.
func RandomTiersAndProfiles(seed uint64) ([]datastore.Tier, []datastore.Profile) {
	g := gen{rand.New(rand.NewPCG(seed, 7))}
	return g.tiers(), g.profiles()
}

// DescribeIdentity spells identity id out by the matches it holds, without their numbers.
func (c *Compiler) DescribeIdentity(id uint32) string {
	if _, ok := c.identSet[id]; !ok {
		return fmt.Sprintf("unknown identity %d", id)
	}
	var keys []string
	for _, m := range c.identSet[id] {
		keys = append(keys, c.matchKey(m))
	}
	for _, p := range c.identPorts[id] {
		keys = append(keys, fmt.Sprintf("port %s %d %d", p.Name, p.Protocol, p.Port))
	}
	slices.Sort(keys)
	return "{" + strings.Join(keys, "; ") + "}"
}

// DescribeProgram spells program p out by its content (the rules' text).
func (c *Compiler) DescribeProgram(p uint32) string {
	if p == 0 {
		return "none"
	}
	if content, ok := c.programs[p]; ok {
		return "[" + content + "]"
	}
	return fmt.Sprintf("unknown program %d", p)
}

func (c *Compiler) describeRule(id uint32) string {
	for text, rid := range c.ruleOf {
		if rid == id {
			return text
		}
	}
	return fmt.Sprintf("unknown rule %d", id)
}

func (c *Compiler) describeValue(v maps.PolicyValue) string {
	if v.Action != maps.ActionSourcePort {
		out := v.Action.String()
		if v.Rule != 0 {
			out += " " + c.describeRule(v.Rule)
		}
		if v.Log != 0 {
			out += " log " + c.describeRule(v.Log)
		}
		return out
	}
	var b strings.Builder
	b.WriteString("table(")
	for _, e := range c.tableAt[v.Rule] {
		fmt.Fprintf(&b, "%d-%d: %s; ", e.lo, e.hi, c.describeValue(e.c.value()))
	}
	b.WriteString(")")
	return b.String()
}

// DescribeEntry spells a policy map entry out without numbers.
func (c *Compiler) DescribeEntry(k maps.PolicyKey, v maps.PolicyValue) string {
	if k.Program&maps.SourcePortTable != 0 {
		return fmt.Sprintf("%s port %d/%d: %s", c.describeValue(maps.PolicyValue{Action: maps.ActionSourcePort, Rule: k.Program}),
			k.Port, k.PortBits, c.describeValue(v))
	}
	return fmt.Sprintf("%s × %s all %v proto %d port %d/%d: %s", c.DescribeProgram(k.Program), c.DescribeIdentity(k.Identity),
		k.AllProtocols, k.Protocol, k.Port, k.PortBits, c.describeValue(v))
}
