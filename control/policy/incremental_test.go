package policy_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
	bpfmaps "github.com/margaynet/margay/maps"
)

// fakePolicyMap stands in for the policy map: what the incremental path writes and deletes.
type fakePolicyMap map[bpfmaps.PolicyKey]bpfmaps.PolicyValue

func (m fakePolicyMap) Put(k bpfmaps.PolicyKey, v bpfmaps.PolicyValue) error { m[k] = v; return nil }
func (m fakePolicyMap) Delete(k bpfmaps.PolicyKey) error {
	if _, ok := m[k]; !ok {
		return fmt.Errorf("delete %+v: not in the map", k)
	}
	delete(m, k)
	return nil
}

// TestIncrementalMatchesCompile holds the incremental path against the full compilation: after
// every step of random workload and policy events, one compiler fed the changes (Update), and the
// policy map its deltas are applied to (dataplane.PolicyEntries, as the reconciler applies them),
// must hold what another compiler makes from scratch (Compile) with the same history: the same
// programs for every local workload, the same identity for every prefix and the same entries, up
// to the numbering; and the map the deltas built must equal every entry the compiler spells out.
func TestIncrementalMatchesCompile(t *testing.T) {
	seeds := uint64(80)
	if testing.Short() {
		seeds = 20
	}
	for seed := range seeds {
		runIncremental(t, seed)
	}
	// Identities renumbered (a match gone and back under a new id) are rare: some steps must
	// have had them.
	t.Logf("steps with identities renumbered: %d", dirtySteps)
}

var dirtySteps int

func runIncremental(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 18))
	inc, full := policy.NewCompiler(1<<16), policy.NewCompiler(1<<16)
	eps := map[string]policy.Endpoint{}
	var pols []datastore.Policy
	tiers, profiles := policy.RandomTiersAndProfiles(seed)
	mustSet := func(t *testing.T, ps []datastore.Policy) *policy.Set {
		t.Helper()
		s, err := policy.Build(policy.Input{Policies: ps, Tiers: tiers, Profiles: profiles})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	set := mustSet(t, pols)
	// The policy map and policy_ips as the incremental path leaves them.
	var (
		installed *dataplane.PolicyEntries
		fake      = fakePolicyMap{}
		ips       map[netip.Prefix]uint32
		last      dataplane.Policy
		compiled  uint64
	)
	addrs := make([]netip.Addr, 0, 12)
	for i := range 12 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{198, 19, byte(i % 2), byte(1 + i*3)}))
	}
	addrs[4] = netip.MustParseAddr("198.19.0.5") // named as a /32 by some rules
	labels := func() map[string]string {
		l := map[string]string{}
		for _, k := range []string{"app", "role", "tier"} {
			if r.IntN(2) == 0 {
				l[k] = []string{"web", "db", "fe", "be", "1"}[r.IntN(5)]
			}
		}
		if r.IntN(4) != 0 {
			l[policy.NamespaceLabel] = []string{"prod", "dev"}[r.IntN(2)]
		}
		return l
	}
	for step := range 40 {
		var changes []policy.Change
		put := func(key string, ep policy.Endpoint) {
			eps[key] = ep
			changes = append(changes, policy.Change{Key: key, Endpoint: &ep, Local: ep.Node == "host1"})
		}
		events := 1 + r.IntN(3)
		if step == 0 {
			events = 8
		}
		for range events {
			keys := slices.Sorted(maps.Keys(eps))
			switch k := r.IntN(10); {
			case k < 4 || len(keys) == 0: // a workload comes
				node := fmt.Sprintf("host%d", 1+r.IntN(3))
				key := fmt.Sprintf("%s/w%d-%d", node, step, r.IntN(1000))
				ep := policy.Endpoint{Key: key, Node: node, Addr: addrs[r.IntN(len(addrs))], Labels: labels()}
				policy.RandomExtras(r, &ep)
				put(key, ep)
			case k < 6: // one goes
				key := keys[r.IntN(len(keys))]
				delete(eps, key)
				changes = append(changes, policy.Change{Key: key})
			case k < 8: // one is relabelled
				key := keys[r.IntN(len(keys))]
				ep := eps[key]
				ep.Labels, ep.Ports, ep.Profiles = labels(), nil, nil
				policy.RandomExtras(r, &ep)
				put(key, ep)
			case k < 9: // a policy changes
				pols = mutatePolicies(r, pols, seed*1000+uint64(step))
				set = mustSet(t, pols)
			default: // nothing (a pass after Retain)
			}
		}
		// Duplicate changes of one key are allowed: the last one counts.
		res, err := inc.Update(set, changes)
		if err != nil {
			t.Fatalf("seed %d step %d: Update: %v", seed, step, err)
		}
		var all, local []policy.Endpoint
		for _, key := range slices.Sorted(maps.Keys(eps)) {
			all = append(all, eps[key])
			if eps[key].Node == "host1" {
				local = append(local, eps[key])
			}
		}
		ref, err := full.Compile(set, all, local)
		if err != nil {
			t.Fatalf("seed %d step %d: Compile: %v", seed, step, err)
		}
		where := fmt.Sprintf("seed %d step %d", seed, step)
		if a, b := describe(inc, res), describe(full, ref); a != b {
			t.Fatalf("%s: the incremental result differs from the full compilation's:\n%s", where, diffLines(a, b))
		}

		// The maps as the reconciler's incremental path leaves them.
		compiled++
		next := dataplane.Policy{IPs: res.IPs, Programs: res.Programs, Identities: res.Identities, Tables: inc,
			Compiled: compiled}
		if res.Delta == nil || installed == nil {
			if step > 0 {
				t.Fatalf("%s: no delta", where)
			}
			clear(fake)
			maps.Copy(fake, inc.Entries(res.Programs, res.Identities))
			installed = dataplane.NewPolicyEntries(maps.Clone(fake))
			ips = maps.Clone(res.IPs)
		} else {
			if len(res.Delta.Identities) > 0 {
				dirtySteps++
			}
			next.Delta = &dataplane.PolicyDelta{Base: last.Compiled, IPs: res.Delta.IPs, Identities: res.Delta.Identities,
				Stale: res.Delta.Stale}
			rm, _, err := installed.AddDelta(last, next, fake, nil)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			// Between the two halves the maps serve the old state and the new one.
			for k, v := range inc.Entries(union(last.Programs, next.Programs), union(last.Identities, next.Identities)) {
				if !(last.Programs[k.Program] || next.Programs[k.Program]) && k.Program&bpfmaps.SourcePortTable == 0 {
					continue
				}
				if got, ok := fake[k]; !ok || got != v {
					// Entries of pairs of programs and identities that only the old state used may
					// be the compiler's new content for them; only the new state's must be there.
					if next.Programs[k.Program] && next.Identities[k.Identity] {
						t.Fatalf("%s: between the halves, %+v is %+v (present %v), want %+v", where, k, got, ok, v)
					}
				}
			}
			for _, p := range res.Delta.IPs {
				if id, ok := res.IPs[p]; ok {
					ips[p] = id
				} else {
					delete(ips, p)
				}
			}
			if _, err := rm.Remove(fake); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
		}
		want := inc.Entries(res.Programs, res.Identities)
		if !maps.Equal(fake, want) || !maps.Equal(installed.Map(), want) {
			for k := range fake {
				if _, ok := want[k]; !ok {
					t.Logf("extra %+v: ident %s (last %v next %v) prog %s (last %v next %v) delta %+v", k, inc.DescribeIdentity(k.Identity), last.Identities[k.Identity], next.Identities[k.Identity], inc.DescribeProgram(k.Program), last.Programs[k.Program], next.Programs[k.Program], res.Delta)
					break
				}
			}
			t.Fatalf("%s: the policy map after the delta has %d entries (index %d), the state wants %d:\n%s", where, len(fake),
				len(installed.Map()), len(want), diffEntries(fake, want))
		}
		if !maps.Equal(ips, res.IPs) {
			t.Fatalf("%s: policy_ips after the delta:\n%v\nwant\n%v", where, ips, res.IPs)
		}
		last = next
		inc.Retain(res.Programs, res.Identities)
		full.Retain(ref.Programs, ref.Identities)
	}
}

func union(a, b map[uint32]bool) map[uint32]bool {
	out := maps.Clone(a)
	if out == nil {
		out = map[uint32]bool{}
	}
	maps.Copy(out, b)
	return out
}

// mutatePolicies replaces, adds or removes one policy.
func mutatePolicies(r *rand.Rand, ps []datastore.Policy, seed uint64) []datastore.Policy {
	ps = slices.Clone(ps)
	fresh := policy.RandomPolicies(seed)
	switch {
	case len(ps) == 0 || r.IntN(3) == 0:
		p := fresh[r.IntN(len(fresh))]
		p.Name = fmt.Sprintf("p%d", r.IntN(6))
		ps = slices.DeleteFunc(ps, func(q datastore.Policy) bool { return q.Name == p.Name })
		ps = append(ps, p)
	case r.IntN(2) == 0:
		i := r.IntN(len(ps))
		ps = slices.Delete(ps, i, i+1)
	default:
		i := r.IntN(len(ps))
		p := fresh[r.IntN(len(fresh))]
		p.Name = ps[i].Name
		ps[i] = p
	}
	return ps
}

// describe spells a result out without its numbers: programs by their rules, identities by their
// matches, rules by their text.
func describe(c *policy.Compiler, res *policy.Result) string {
	var lines []string
	for p, id := range res.IPs {
		lines = append(lines, fmt.Sprintf("ip %v = %s", p, c.DescribeIdentity(id)))
	}
	for a, pg := range res.Endpoints {
		lines = append(lines, fmt.Sprintf("endpoint %v in %s out %s", a, c.DescribeProgram(pg.Ingress), c.DescribeProgram(pg.Egress)))
	}
	for p := range res.Programs {
		lines = append(lines, "program "+c.DescribeProgram(p))
	}
	for id := range res.Identities {
		lines = append(lines, "identity "+c.DescribeIdentity(id))
	}
	for k, v := range c.Entries(res.Programs, res.Identities) {
		lines = append(lines, "entry "+c.DescribeEntry(k, v))
	}
	slices.Sort(lines)
	return strings.Join(slices.Compact(lines), "\n")
}

func diffLines(a, b string) string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, l := range la {
		if !slices.Contains(lb, l) {
			out = append(out, "incremental only: "+l)
		}
	}
	for _, l := range lb {
		if !slices.Contains(la, l) {
			out = append(out, "full only: "+l)
		}
	}
	if len(out) > 20 {
		out = append(out[:20], "…")
	}
	return strings.Join(out, "\n")
}

func diffEntries(got, want map[bpfmaps.PolicyKey]bpfmaps.PolicyValue) string {
	var out []string
	for k, v := range got {
		if w, ok := want[k]; !ok || w != v {
			out = append(out, fmt.Sprintf("have %+v = %+v", k, v))
		}
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			out = append(out, fmt.Sprintf("want %+v = %+v", k, v))
		}
	}
	slices.Sort(out)
	if len(out) > 20 {
		out = append(out[:20], "…")
	}
	return strings.Join(out, "\n")
}
