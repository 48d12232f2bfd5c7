package agent

import (
	"fmt"
	"log/slog"
	stdmaps "maps"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/benchrules"
)

// BenchmarkPolicyCompile measures what the agent does with the policies in a pass (policyEngine
// fill: the policy set parsed, every selector matched against every workload, the programs
// compiled, the map entries spelled out) for 1,000 workloads, 100 of them local, and 100 to
// 1,000 policies (benchrules.ScalePolicies), from a fresh compiler as after an agent start.
func BenchmarkPolicyCompile(b *testing.B) {
	var all, local []policy.Endpoint
	for i := range 1000 {
		node := fmt.Sprintf("vm%d", 100+i%10)
		w := datastore.Workload{Version: 1, ID: fmt.Sprintf("w%d", i), Name: fmt.Sprintf("w%d", i), Node: node,
			IfName: fmt.Sprintf("cali%011x", i), Labels: benchrules.ScaleLabels(i),
			IPv4: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i / 250), byte(i%250 + 1)}), 32)}}
		ep, ok := policy.EndpointOf(w)
		if !ok {
			b.Fatal("no endpoint")
		}
		all = append(all, ep)
		if node == "vm100" {
			local = append(local, ep)
		}
	}
	for _, n := range []int{100, 300, 1000} {
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			ps := benchrules.ScalePolicies(n)
			start := time.Now()
			for b.Loop() {
				c := policy.NewCompiler(1 << 16)
				set, err := policy.NewSet(ps)
				if err != nil {
					b.Fatal(err)
				}
				res, err := c.Compile(set, all, local)
				if err != nil {
					b.Fatal(err)
				}
				if len(c.Entries(res.Programs, res.Identities)) == 0 {
					b.Fatal("no entries")
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/compile")
		})
	}
}

// A pass whose policies and workloads are the same as at the last compilation reuses its result:
// it compiles nothing (the compile histogram does not move) and hands out the same programs; a
// changed workload or policy compiles again (the workload alone, or everything).
func TestPolicyCompileReused(t *testing.T) {
	const testN = 300
	reg := prometheus.NewRegistry()
	e := newPolicyEngine(slog.New(slog.DiscardHandler), 1<<16, nil, maps.Timeouts{}, reg)
	v := newView("vm100", false)
	for i := range testN {
		w := datastore.Workload{Version: 1, ID: fmt.Sprintf("w%d", i), Name: fmt.Sprintf("w%d", i), Node: "vm100",
			IfName: fmt.Sprintf("cali%011x", i), Labels: benchrules.ScaleLabels(i), MAC: fmt.Sprintf("02:00:00:00:%02x:%02x", i/256, i%256),
			IPv4: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i / 250), byte(i%250 + 1)}), 32)}}
		v.workloads["vm100/"+w.ID] = w
		v.revisions[kindWorkloads]["vm100/"+w.ID] = int64(100 + i)
	}
	v.touchAll(kindWorkloads)
	for i, p := range benchrules.ScalePolicies(testN) {
		v.policies[p.Name] = p
		v.revisions[kindPolicies][p.Name] = int64(200 + i)
	}
	v.touchAll(kindPolicies)
	compiles := func() uint64 {
		m := &dto.Metric{}
		if err := e.m.compile.Write(m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram().GetSampleCount()
	}
	pass := func() dataplane.State {
		s := v.state("ens32", false)
		e.fill(v, &s)
		e.applied(s)
		return s
	}
	first := pass()
	firstWorkloads := stdmaps.Clone(first.Workloads) // the state is kept and changed in place
	if compiles() != 1 || len(first.Policy.Programs) == 0 {
		t.Fatalf("first pass: %d compilations, %d programs", compiles(), len(first.Policy.Programs))
	}
	for range 3 {
		again := pass()
		if compiles() != 1 {
			t.Errorf("an unchanged pass compiled again (%d compilations)", compiles())
		}
		if again.Policy.Compiled != first.Policy.Compiled || !reflect.DeepEqual(again.Policy.Programs, first.Policy.Programs) ||
			!reflect.DeepEqual(again.Workloads, firstWorkloads) {
			t.Error("the reused result differs")
		}
	}
	w := v.workloads["vm100/w3"]
	w.Labels = map[string]string{"app": "other"}
	v.workloads["vm100/w3"], v.revisions[kindWorkloads]["vm100/w3"] = w, 300
	v.touch(kindWorkloads, "vm100/w3", false)
	s := pass()
	if compiles() != 2 || s.Policy.Compiled == first.Policy.Compiled || s.Policy.Delta == nil {
		t.Errorf("a changed workload: %d compilations, compilation %d, delta %v", compiles(), s.Policy.Compiled, s.Policy.Delta)
	}
	if pg := e.lastEPs[w.IPv4[0].Addr()]; pg.Ingress != 0 || pg.Egress != 0 {
		t.Errorf("a workload no policy selects any more has programs %+v", pg)
	}
	if got := s.Workloads[w.IfName]; got.IngressProgram != 0 || got.EgressProgram != 0 || s.Changed == nil || !s.Changed.Workloads[w.IfName] {
		t.Errorf("the state's workload after the change: %+v, changed %+v", got, s.Changed)
	}
	if before := firstWorkloads[w.IfName]; before.IngressProgram == 0 && before.EgressProgram == 0 {
		t.Errorf("the workload had no programs to lose: %+v", before)
	}
	p := v.policies["scale-0001"]
	p.Selector = "all()"
	v.policies["scale-0001"], v.revisions[kindPolicies]["scale-0001"] = p, 301
	v.touch(kindPolicies, "scale-0001", false)
	pass()
	// The matches the change left unused are forgotten once it is applied: one more compilation
	// takes them out of the identities, and then nothing changes.
	pass()
	n := compiles()
	pass()
	pass()
	if n > 4 || compiles() != n {
		t.Errorf("a changed policy: %d compilations, then %d more in unchanged passes", n, compiles()-n)
	}
}

// fakePolicyMap stands in for the policy map in BenchmarkPolicyEvent.
type fakePolicyMap map[maps.PolicyKey]maps.PolicyValue

func (m fakePolicyMap) Put(k maps.PolicyKey, v maps.PolicyValue) error { m[k] = v; return nil }
func (m fakePolicyMap) Delete(k maps.PolicyKey) error                  { delete(m, k); return nil }

// BenchmarkPolicyEvent measures what one workload event costs the policy side of a pass on issue
// 18's busy host (1,000 local workloads, 1,000 policies): the engine's fill (the incremental
// compilation) and the policy map writes of its delta (dataplane.PolicyEntries, against a map
// in memory), for a workload added and for one deleted.
func BenchmarkPolicyEvent(b *testing.B) {
	const n = 1000
	e := newPolicyEngine(slog.New(slog.DiscardHandler), 1<<16, nil, maps.Timeouts{}, prometheus.NewRegistry())
	v := newView("vm100", false)
	workload := func(i int) datastore.Workload {
		return datastore.Workload{Version: 1, ID: fmt.Sprintf("w%d", i), Name: fmt.Sprintf("w%d", i), Node: "vm100",
			IfName: fmt.Sprintf("cali%011x", i), MAC: "02:00:00:00:00:01", Labels: benchrules.ScaleLabels(i),
			IPv4: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i / 250), byte(i%250 + 1)}), 32)}}
	}
	for i := range n {
		v.workloads["vm100/"+workload(i).ID] = workload(i)
	}
	v.touchAll(kindWorkloads)
	for _, p := range benchrules.ScalePolicies(n) {
		v.policies[p.Name] = p
	}
	v.touchAll(kindPolicies)
	fake := fakePolicyMap{}
	var installed *dataplane.PolicyEntries
	var last dataplane.Policy
	pass := func() {
		var s dataplane.State
		e.fill(v, &s)
		switch {
		case installed == nil || s.Policy.Delta == nil:
			for k, val := range s.Policy.Tables.Entries(s.Policy.Programs, s.Policy.Identities) {
				fake[k] = val
			}
			installed = dataplane.NewPolicyEntries(stdmaps.Clone(fake))
		case s.Policy.Compiled != last.Compiled:
			rm, _, err := installed.AddDelta(last, s.Policy, fake, nil)
			if err == nil {
				_, err = rm.Remove(fake)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		last = s.Policy
		e.applied(s)
	}
	pass()
	var add, del time.Duration
	i := n
	for b.Loop() {
		w := workload(i)
		key := "vm100/" + w.ID
		start := time.Now()
		v.workloads[key] = w
		v.touch(kindWorkloads, key, false)
		pass()
		add += time.Since(start)
		start = time.Now()
		delete(v.workloads, key)
		v.touch(kindWorkloads, key, false)
		pass()
		del += time.Since(start)
		i++
	}
	b.ReportMetric(float64(add.Microseconds())/1000/float64(b.N), "ms/add")
	b.ReportMetric(float64(del.Microseconds())/1000/float64(b.N), "ms/delete")
}
