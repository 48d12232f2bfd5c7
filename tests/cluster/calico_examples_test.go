package cluster_test

import (
	"encoding/json"
	"errors"
	"fmt"
	stdmaps "maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
	"github.com/margaynet/margay/control/policy/policytest"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/poll"
)

// TestCalicoExamples runs the table of Calico's documented behaviours (control/policy/policytest)
// end to end: its world's workloads on three hosts, and for each example its tiers, profiles and
// policies written to etcd and, once every agent reports exactly those in force, each of its
// flows tried with a real TCP connection from inside the source workload. An allowed flow must
// connect (and echo) within a deadline; a denied one must time out, and the agent that the
// reference names (the sender's for an egress denial, the receiver's for an ingress one) must
// count a policy drop of that direction for it. A flow the example says a Log rule reports must
// count on that rule's hits (the subtest "logged" of each example).
//
// The flows of an example run one after another, so that each drop and each Log hit is the one
// flow's.
func TestCalicoExamples(t *testing.T) {
	cluster.Binaries(t) // built once per test process: not the test's own time
	start := time.Now()
	c := cluster.New(t)
	hosts := []*cluster.Host{
		c.AddHost("vm100", "198.18.0.100/24", "--bgp"),
		c.AddHost("vm101", "198.18.0.101/24", "--bgp"),
		c.AddHost("vm102", "198.18.0.102/24", "--bgp"),
	}
	waits := make([]func() *cluster.Workload, len(policytest.World))
	for i, w := range policytest.World {
		waits[i] = c.StartWorkload(hosts[w.Host], w.Name)
	}
	wls := map[string]*cluster.Workload{}
	revs := map[string]int64{}
	for i, w := range policytest.World {
		cw := waits[i]()
		key, rev := cw.EditRecord(t, c.DS, func(v *datastore.Workload) {
			v.Namespace, v.Labels, v.Profiles, v.Ports = w.Namespace, stdmaps.Clone(w.Labels), slices.Clone(w.Profiles), slices.Clone(w.Ports)
		})
		revs[key] = rev
		echoServers(t, cw, policytest.Ports, nil)
		wls[w.Name] = cw
	}
	// Every agent must have compiled the records as edited: the examples' verdicts depend on them.
	cluster.WaitCompiled(t, hosts, revs)

	var inForce policyState
	// Baseline: net1 alone (it allows everything), and every workload reaches every other once
	// BGP has converged.
	inForce = applyExample(t, c.DS, hosts, inForce, policytest.Example{Name: "baseline"})
	for _, from := range policytest.World {
		for _, to := range policytest.World {
			if from.Name != to.Name {
				poll.Until(t, fmt.Sprintf("baseline %s → %s:80", from.Name, to.Name), 60*time.Second, func() error {
					return tcpProbe(wls[from.Name], wls[to.Name], 0, 80, 2*time.Second)
				})
			}
		}
	}
	t.Logf("setup and baseline: %v", time.Since(start).Round(time.Millisecond))

	for _, ex := range policytest.Examples() {
		t.Run(ex.Name, func(t *testing.T) {
			exStart := time.Now()
			inForce = applyExample(t, c.DS, hosts, inForce, ex)
			enforced := time.Since(exStart)
			set, err := policy.Build(policy.Input{Policies: ex.Policies, Tiers: ex.Tiers, Profiles: ex.AllProfiles()})
			if err != nil {
				t.Fatalf("the reference rejects the example: %v", err)
			}
			world := exampleWorld(t, c.DS, ex)
			var logged []logHit
			allowedN, deniedN := 0, 0
			for _, f := range ex.Flows {
				from, to := wls[f.From], wls[f.To]
				rf := policy.Flow{Src: from.IP, Dst: to.IP, Proto: 6, SrcPort: 40000, DstPort: f.Port}
				ref, dir := set.Allowed(world, rf)
				if ref != f.Allow {
					t.Errorf("%s → %s:%d: the table says allowed=%v, the reference %v", f.From, f.To, f.Port, f.Allow, ref)
				}
				lh, isLogged := logRuleOf(t, set, world, ex, f, from, to, rf)
				before := 0.0
				if isLogged {
					before = ruleHits(t, lh.host, lh.rule)
				}
				if f.Allow {
					allowedN++
					checkAllowed(t, f, from, to)
				} else {
					deniedN++
					checkDenied(t, f, from, to, dir)
				}
				if isLogged {
					// Counted by the programs as they handled the flow's packets, or by the agent
					// from the dataplane's reports: a short deadline for the latter.
					lh.before = before
					_ = poll.For(3*time.Second, func() error {
						if lh.after = ruleHits(t, lh.host, lh.rule); lh.after <= before {
							return errors.New("not counted")
						}
						return nil
					})
					logged = append(logged, lh)
				}
			}
			t.Run("logged", func(t *testing.T) {
				if len(logged) != len(ex.Logged) {
					t.Fatalf("%d of the example's %d logged flows are among its flows", len(logged), len(ex.Logged))
				}
				for _, lh := range logged {
					if lh.after <= lh.before {
						t.Errorf("%s → %s:%d: the Log rule %s on %s counted no hit (%s: %v before the flow, %v after)",
							lh.flow.From, lh.flow.To, lh.flow.Port, lh.rule, lh.host.Name, ruleHitsName, lh.before, lh.after)
					}
				}
			})
			t.Logf("%s: in force on every host after %v; %d allowed and %d denied flows, %d logged; took %v", ex.Name,
				enforced.Round(time.Millisecond), allowedN, deniedN, len(logged), time.Since(exStart).Round(time.Millisecond))
		})
	}
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

// checkAllowed requires the flow to connect and echo, retried within a deadline (a loaded machine).
func checkAllowed(t *testing.T, f policytest.Flow, from, to *cluster.Workload) {
	t.Helper()
	if err := poll.For(15*time.Second, func() error { return tcpProbe(from, to, 0, f.Port, 2*time.Second) }); err != nil {
		t.Errorf("%s → %s:%d is allowed, but does not connect: %v", f.From, f.To, f.Port, err)
	}
}

// checkDenied requires a connection of the flow, tried once the policies are in force, to time
// out (a policy drop is silent), and the host the reference names to count a policy drop of the
// denying direction meanwhile: the sender's for egress, the receiver's for ingress. The first
// connect waits less than the SYN's first retransmission, so one SYN is sent and dropped; when no
// drop was counted (a loaded machine may stall the dialer past its deadline before the SYN goes),
// it is tried again, longer. A try that connects fails the check at once.
func checkDenied(t *testing.T, f policytest.Flow, from, to *cluster.Workload, dir policy.Direction) {
	t.Helper()
	host, reason := from.Host, "DROP_POLICY_EGRESS"
	if dir == policy.Ingress {
		host, reason = to.Host, "DROP_POLICY_INGRESS"
	}
	var before, after float64
	for _, timeout := range []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second} {
		before = dataplaneDrops(t, host, reason)
		err := tcpProbe(from, to, 0, f.Port, timeout)
		var ne net.Error
		switch {
		case err == nil:
			t.Errorf("%s → %s:%d is denied (%s), but it connected", f.From, f.To, f.Port, dir)
			return
		case !errors.As(err, &ne) || !ne.Timeout():
			t.Errorf("%s → %s:%d is denied (%s), and failed, but not by a timeout as a drop makes it: %v", f.From, f.To, f.Port, dir, err)
			return
		}
		if poll.For(2*time.Second, func() error {
			if after = dataplaneDrops(t, host, reason); after <= before {
				return errors.New("not counted")
			}
			return nil
		}) == nil {
			return
		}
	}
	t.Errorf("%s → %s:%d is denied (%s) and did not connect, but %s counted no %s for it (%v before the last try, %v after)",
		f.From, f.To, f.Port, dir, host.Name, reason, before, after)
}

// policyState is what is in force: the names of the tiers, profiles and policies written, with
// their revisions, as the agents' /policy reports them.
type policyState struct {
	Policies map[string]int64 `json:"policies"`
	Tiers    map[string]int64 `json:"tiers"`
	Profiles map[string]int64 `json:"profiles"`
}

// applyExample replaces prev's tiers, profiles and policies in the datastore with ex's and waits
// until every host's agent reports exactly those in force, at their revisions. Policies go first
// and come last, since they name tiers.
func applyExample(t *testing.T, ds *datastore.Client, hosts []*cluster.Host, prev policyState, ex policytest.Example) policyState {
	t.Helper()
	ctx := t.Context()
	next := policyState{Policies: map[string]int64{}, Tiers: map[string]int64{}, Profiles: map[string]int64{}}
	keep := map[string]bool{}
	for _, p := range ex.Policies {
		keep["policy "+p.Key()] = true
	}
	for _, tr := range ex.Tiers {
		keep["tier "+tr.Name] = true
	}
	profiles := ex.AllProfiles()
	for _, p := range profiles {
		keep["profile "+p.Name] = true
	}
	gone := func(err error) error {
		if errors.Is(err, datastore.ErrNotFound) {
			return nil
		}
		return err
	}
	for name := range prev.Policies {
		if !keep["policy "+name] {
			if err := gone(ds.Policies().Delete(ctx, name, 0)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name := range prev.Profiles {
		if !keep["profile "+name] {
			if err := gone(ds.Profiles().Delete(ctx, name, 0)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name := range prev.Tiers {
		if !keep["tier "+name] {
			if err := gone(ds.Tiers().Delete(ctx, name, 0)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tr := range ex.Tiers {
		rev, err := ds.Tiers().Put(ctx, tr.Name, tr)
		if err != nil {
			t.Fatalf("put tier %s: %v", tr.Name, err)
		}
		next.Tiers[tr.Name] = rev
	}
	for _, p := range profiles {
		rev, err := ds.Profiles().Put(ctx, p.Name, p)
		if err != nil {
			t.Fatalf("put profile %s: %v", p.Name, err)
		}
		next.Profiles[p.Name] = rev
	}
	for _, p := range ex.Policies {
		rev, err := ds.Policies().Put(ctx, p.Key(), p)
		if err != nil {
			t.Fatalf("put policy %s: %v", p.Key(), err)
		}
		next.Policies[p.Key()] = rev
	}
	for _, h := range hosts {
		poll.Until(t, h.Name+" enforces "+ex.Name, 30*time.Second, func() error {
			code, body, err := h.Get("/policy")
			if err != nil {
				return err
			}
			if code != 200 {
				return fmt.Errorf("/policy: %d %s", code, body)
			}
			var st policyState
			if err := json.Unmarshal([]byte(body), &st); err != nil {
				return fmt.Errorf("/policy %q: %w", body, err)
			}
			if !stdmaps.Equal(st.Policies, next.Policies) || !stdmaps.Equal(st.Tiers, next.Tiers) ||
				!stdmaps.Equal(st.Profiles, next.Profiles) {
				return fmt.Errorf("enforces %+v, want %+v", st, next)
			}
			return nil
		})
	}
	return next
}

// exampleWorld is the reference world from the datastore's workload records, with the labels of
// the example's profiles.
func exampleWorld(t *testing.T, ds *datastore.Client, ex policytest.Example) *policy.World {
	t.Helper()
	profiles := map[string]datastore.Profile{}
	for _, p := range ex.AllProfiles() {
		profiles[p.Name] = p
	}
	w := worldOf(t, ds)
	items, _, err := ds.AllWorkloads().List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if ep, ok := policy.EndpointWith(it.Value, profiles); ok {
			w.Endpoints[ep.Addr] = &ep
		}
	}
	return w
}

// logHit is a flow a Log rule reports: the rule, the host that counts it, and its hits before and
// after the flow.
type logHit struct {
	flow          policytest.Flow
	rule          policy.RuleRef
	host          *cluster.Host
	before, after float64
}

// logRuleOf says whether the example has f among its logged flows and, if so, which Log rule
// reports it (the reference's) and where it counts: the sender's host for an egress rule, the
// receiver's for an ingress one. The rule must be one with action log in the example.
func logRuleOf(t *testing.T, set *policy.Set, world *policy.World, ex policytest.Example, f policytest.Flow,
	from, to *cluster.Workload, rf policy.Flow) (logHit, bool) {
	t.Helper()
	if !slices.Contains(ex.Logged, policytest.Logged{From: f.From, To: f.To, Port: f.Port}) {
		return logHit{}, false
	}
	src, dst := world.Endpoints[rf.Src], world.Endpoints[rf.Dst]
	eg := set.Decide(src, policy.Egress, rf.Dst, dst, rf)
	in := set.Decide(dst, policy.Ingress, rf.Src, src, rf)
	lh := logHit{flow: f}
	switch {
	case eg.Log != nil:
		lh.rule, lh.host = *eg.Log, from.Host
	case eg.Allow && in.Log != nil:
		lh.rule, lh.host = *in.Log, to.Host
	default:
		t.Fatalf("%s → %s:%d: the table says a Log rule reports it, the reference names none", f.From, f.To, f.Port)
	}
	var rules [2][]datastore.Rule
	for _, p := range ex.Policies {
		if lh.rule.Profile == "" && p.Key() == lh.rule.Policy {
			rules = [2][]datastore.Rule{p.Ingress, p.Egress}
		}
	}
	for _, p := range ex.AllProfiles() {
		if lh.rule.Profile == p.Name {
			rules = [2][]datastore.Rule{p.Ingress, p.Egress}
		}
	}
	if rs := rules[lh.rule.Direction]; lh.rule.Index >= len(rs) || rs[lh.rule.Index].Action != datastore.ActionLog {
		t.Fatalf("%s → %s:%d: the reference's Log rule %s is no rule with action log of the example", f.From, f.To, f.Port, lh.rule)
	}
	return lh, true
}

const ruleHitsName = "margay_policy_rule_hits_packets_total"

// ruleHits is the agent's count of packets rule decided (or, for a Log rule, reported).
func ruleHits(t *testing.T, h *cluster.Host, rule policy.RuleRef) float64 {
	t.Helper()
	owner := rule.Policy
	if rule.Profile != "" {
		owner = "profile:" + rule.Profile
	}
	return metricSum(t, h, ruleHitsName,
		map[string]string{"policy": owner, "direction": rule.Direction.String(), "rule": strconv.Itoa(rule.Index)})
}

// dataplaneDrops is the host's count of packets dropped for reason, on all its interfaces and hooks.
func dataplaneDrops(t *testing.T, h *cluster.Host, reason string) float64 {
	t.Helper()
	return metricSum(t, h, "margay_dataplane_packets_total", map[string]string{"reason": reason})
}

// metricSum is the sum of the samples of the metric name whose labels include want, on h's /metrics.
func metricSum(t *testing.T, h *cluster.Host, name string, want map[string]string) float64 {
	t.Helper()
	code, body, err := h.Get("/metrics")
	if err != nil || code != 200 {
		t.Fatalf("%s /metrics: %d %v", h.Name, code, err)
	}
	sum := 0.0
	for _, line := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		end := strings.LastIndex(rest, "}")
		if end < 0 {
			t.Fatalf("%s /metrics: %q", h.Name, line)
		}
		labels, err := parseLabels(rest[:end])
		if err != nil {
			t.Fatalf("%s /metrics: %q: %v", h.Name, line, err)
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		fields := strings.Fields(rest[end+1:])
		if len(fields) == 0 {
			t.Fatalf("%s /metrics: %q has no value", h.Name, line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			t.Fatalf("%s /metrics: %q: %v", h.Name, line, err)
		}
		sum += v
	}
	return sum
}

// parseLabels reads `a="x",b="y\"z"`, the labels of a sample in Prometheus' text format.
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for s != "" {
		k, rest, ok := strings.Cut(s, `="`)
		if !ok {
			return nil, fmt.Errorf("label %q", s)
		}
		var v strings.Builder
		i := 0
		for ; i < len(rest) && rest[i] != '"'; i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				if rest[i] == 'n' {
					v.WriteByte('\n')
					continue
				}
			}
			v.WriteByte(rest[i])
		}
		if i == len(rest) {
			return nil, fmt.Errorf("unterminated value of %s", k)
		}
		out[strings.TrimPrefix(k, ",")] = v.String()
		s = strings.TrimPrefix(rest[i+1:], ",")
	}
	return out, nil
}
