package agent

import (
	"fmt"
	"log/slog"
	stdmaps "maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
	"github.com/margaynet/margay/maps"
)

// Calico's default failsafe ports: what a host needs to stay reachable and managed whatever the
// policy says: SSH, DHCP, BGP, etcd, Typha and the Kubernetes API in; DNS, DHCP, BGP, etcd, Typha
// and the Kubernetes API out.
const (
	DefaultFailsafeInbound  = "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
	DefaultFailsafeOutbound = "udp:53,tcp:53,udp:67,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
)

// ParseFailsafe reads inbound and outbound failsafe lists such as "tcp:22,udp:68".
func ParseFailsafe(inbound, outbound string) (map[maps.FailsafeKey]maps.FailsafeDirection, error) {
	out := map[maps.FailsafeKey]maps.FailsafeDirection{}
	for _, l := range []struct {
		s   string
		dir maps.FailsafeDirection
	}{{inbound, maps.FailsafeInbound}, {outbound, maps.FailsafeOutbound}} {
		for _, item := range strings.Split(l.s, ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			proto, port, ok := strings.Cut(item, ":")
			if !ok {
				return nil, fmt.Errorf("failsafe port %q: want protocol:port, such as tcp:22", item)
			}
			p, err := datastore.ParseProtocol(proto)
			if err != nil || !p.HasPorts() {
				return nil, fmt.Errorf("failsafe port %q: protocol must be tcp, udp, sctp or udplite", item)
			}
			n, err := strconv.ParseUint(port, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("failsafe port %q: port must be 0-65535", item)
			}
			out[maps.FailsafeKey{Protocol: uint8(p), Port: uint16(n)}] |= l.dir
		}
	}
	return out, nil
}

// ParseConntrackTimeouts reads "udp=30s,tcp-established=1h": any of tcp-syn, tcp-established,
// tcp-fin, tcp-closed, udp, icmp, other. Left out means the dataplane's default.
func ParseConntrackTimeouts(s string) (maps.Timeouts, error) {
	var t maps.Timeouts
	fields := map[string]*uint32{"tcp-syn": &t.TcpSyn, "tcp-established": &t.TcpEstablished, "tcp-fin": &t.TcpFin,
		"tcp-closed": &t.TcpClosed, "udp": &t.Udp, "icmp": &t.Icmp, "other": &t.Other}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		k, v, ok := strings.Cut(item, "=")
		f, known := fields[k]
		if !ok || !known {
			return t, fmt.Errorf("conntrack timeout %q: want one of tcp-syn, tcp-established, tcp-fin, tcp-closed, udp, icmp, other = a duration", item)
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > 30*24*time.Hour {
			return t, fmt.Errorf("conntrack timeout %q: want a duration from 1s to 720h", item)
		}
		*f = uint32(d / time.Second)
	}
	return t, nil
}

// policyEngine compiles the view's policies for the dataplane. Owned by the loop goroutine,
// except rules, which the metrics collector reads.
type policyEngine struct {
	log      *slog.Logger
	compiler *policy.Compiler
	failsafe map[maps.FailsafeKey]maps.FailsafeDirection
	timeouts maps.Timeouts
	last     dataplane.Policy               // the last compiled policy, kept when a compile fails
	lastEPs  map[netip.Addr]policy.Programs // its programs by workload address
	rules    atomic.Pointer[map[uint32]policy.RuleRef]
	rulesGen uint64 // the compiler's RulesGeneration that rules is of
	m        *policyMetrics

	filled filled // the policies, tiers and profiles of the last fill
	status atomic.Pointer[PolicyStatus]

	// set is the policy set of the last compilation: a pass whose policies did not change
	// compiles only the workloads that changed (policy.Compiler.Update), and a pass where
	// neither did (BGP routes, blocks, the periodic full pass, a retry) compiles nothing.
	set          *policy.Set
	compilations uint64 // successful ones, numbering dataplane.Policy.Compiled
}

// filled are the items (name -> ModRevision) of a fill.
type filled struct{ policies, tiers, profiles, workloads map[string]int64 }

// values lists the values of m by key.
func values[T any](m map[string]T) []T {
	out := make([]T, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}

// PolicyStatus is what /policy serves: the policies, tiers and profiles the dataplane enforces,
// by the datastore revision of each (policies by Policy.Key), as of the last successful pass.
type PolicyStatus struct {
	Policies map[string]int64 `json:"policies"`
	Tiers    map[string]int64 `json:"tiers"`
	Profiles map[string]int64 `json:"profiles"`
	// Workloads are the workload records ("<node>/<id>") whose labels, profiles and ports the
	// policy in force was compiled with.
	Workloads  map[string]int64 `json:"workloads"`
	Rules      int              `json:"rules"`
	Programs   int              `json:"programs"`
	Identities int              `json:"identities"`
}

type policyMetrics struct {
	policies      prometheus.Gauge
	compileErrors prometheus.Counter
	compile       prometheus.Histogram
	ctEntries     prometheus.Gauge
	ctExpired     prometheus.Counter
}

func newPolicyEngine(log *slog.Logger, maxRules uint32, failsafe map[maps.FailsafeKey]maps.FailsafeDirection,
	timeouts maps.Timeouts, reg prometheus.Registerer) *policyEngine {
	e := &policyEngine{log: log, compiler: policy.NewCompiler(maxRules), failsafe: failsafe, timeouts: timeouts,
		m: &policyMetrics{
			policies: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "margay", Subsystem: "policy", Name: "policies",
				Help: "Network policies in force."}),
			compileErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "margay", Subsystem: "policy",
				Name: "compile_errors_total", Help: "Policy compilations that failed; the previous policy stayed in force."}),
			compile: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "margay", Subsystem: "policy",
				Name: "compile_seconds", Help: "Time to compile the policies for this node.",
				Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
			ctEntries: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "margay", Subsystem: "conntrack", Name: "entries",
				Help: "Conntrack entries left after the last sweep."}),
			ctExpired: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "margay", Subsystem: "conntrack",
				Name: "expired_total", Help: "Expired conntrack entries the agent swept."}),
		}}
	empty := map[uint32]policy.RuleRef{}
	e.rules.Store(&empty)
	e.status.Store(&PolicyStatus{Policies: map[string]int64{}, Tiers: map[string]int64{}, Profiles: map[string]int64{},
		Workloads: map[string]int64{}})
	reg.MustRegister(e.m.policies, e.m.compileErrors, e.m.compile, e.m.ctEntries, e.m.ctExpired)
	return e
}

// fill compiles the policies of v into s: the policy maps and every local workload's programs.
// Only what changed since the last fill is compiled: the workloads put or deleted, or everything
// when the policies changed. A failed compilation keeps the previous policy, and logs why.
func (e *policyEngine) fill(v *view, s *dataplane.State) {
	policiesChanged := e.set == nil
	for kind := range policyKinds {
		policiesChanged = policiesChanged || len(v.changed[kind]) > 0 || v.changedAll[kind]
	}
	// A profile's labels are its workloads' labels: they change with it.
	allWorkloads := !e.compiler.Incremental() || v.changedAll[kindWorkloads] || v.changedAll[kindProfiles]
	if !policiesChanged && !allWorkloads && len(v.changed[kindWorkloads]) == 0 && !e.compiler.Pending() {
		e.complete(v, s, false, nil)
		return
	}
	start := time.Now()
	set := e.set
	var err error
	if policiesChanged {
		set, err = policy.Build(policy.Input{Policies: values(v.policies), Tiers: values(v.tiers), Profiles: values(v.profiles)})
	}
	var (
		res     *policy.Result
		changes []policy.Change
	)
	if err == nil {
		changed := stdmaps.Clone(v.changed[kindWorkloads])
		if len(v.changed[kindProfiles]) > 0 && !allWorkloads {
			for key, w := range v.workloads {
				if slices.ContainsFunc(w.Profiles, func(p string) bool { return v.changed[kindProfiles][p] }) {
					changed[key] = true
				}
			}
		}
		keys := slices.Sorted(stdmaps.Keys(changed))
		if allWorkloads {
			keys = sortedKeys(v.workloads)
		}
		changes = make([]policy.Change, 0, len(keys))
		for _, key := range keys {
			ch := policy.Change{Key: key}
			if w, ok := v.workloads[key]; ok {
				if ep, ok := policy.EndpointWith(w, v.profiles); ok {
					ch.Endpoint, ch.Local = &ep, ep.Node == v.node
				}
			}
			if ch.Endpoint != nil || !allWorkloads {
				changes = append(changes, ch)
			}
		}
		res, err = e.compiler.Update(set, changes)
	}
	e.m.compile.Observe(time.Since(start).Seconds())
	if err != nil {
		// The changes stay recorded in v, and the compiler has no base left: the next pass
		// compiles everything again.
		e.m.compileErrors.Inc()
		e.log.Error("policy compilation failed; the previous policy stays in force", "error", err)
		e.complete(v, s, false, nil)
		return
	}
	clear(v.changed[kindWorkloads])
	for kind := range policyKinds {
		clear(v.changed[kind])
	}
	clear(v.changedAll)
	e.set = set
	e.m.policies.Set(float64(set.Len()))
	e.compilations++
	var delta *dataplane.PolicyDelta
	if res.Delta != nil && e.last.Compiled != 0 {
		delta = &dataplane.PolicyDelta{Base: e.last.Compiled, IPs: res.Delta.IPs, Identities: res.Delta.Identities,
			Stale: res.Delta.Stale}
	}
	e.last = dataplane.Policy{IPs: res.IPs, Programs: res.Programs, Identities: res.Identities,
		Tables: e.compiler, Compiled: e.compilations, Delta: delta}
	e.lastEPs = res.Endpoints
	e.publishRules(policiesChanged)
	if policiesChanged {
		e.filled.policies = stdmaps.Clone(v.revisions[kindPolicies])
		e.filled.tiers = stdmaps.Clone(v.revisions[kindTiers])
		e.filled.profiles = stdmaps.Clone(v.revisions[kindProfiles])
	}
	// The workloads compiled: a new map (readers hold the old one) of the records' revisions.
	if allWorkloads || e.filled.workloads == nil {
		e.filled.workloads = stdmaps.Clone(v.revisions[kindWorkloads])
	} else if len(changes) > 0 {
		ws := stdmaps.Clone(e.filled.workloads)
		for _, ch := range changes {
			if rev, ok := v.revisions[kindWorkloads][ch.Key]; ok {
				ws[ch.Key] = rev
			} else {
				delete(ws, ch.Key)
			}
		}
		e.filled.workloads = ws
	}
	if res.Delta != nil {
		e.complete(v, s, false, res.Delta.Endpoints)
	} else {
		e.complete(v, s, true, nil)
	}
}

// complete puts the last compiled policy into s, and the programs of the local workloads: of
// every one when s.Changed is nil or all is set (a compilation from scratch), else of those
// s.Changed names and those at addresses (whose programs the compilation changed), which it
// adds to s.Changed.
func (e *policyEngine) complete(v *view, s *dataplane.State, all bool, addresses []netip.Addr) {
	s.Policy = e.last
	s.Policy.NewRules = e.compiler.TakeNewRules()
	s.Policy.Failsafe = e.failsafe
	s.Policy.Timeouts = e.timeouts
	set := func(name string) {
		w, ok := s.Workloads[name]
		if !ok {
			return
		}
		pg := e.lastEPs[w.IPv4]
		if w.IngressProgram == pg.Ingress && w.EgressProgram == pg.Egress {
			return
		}
		w.IngressProgram, w.EgressProgram = pg.Ingress, pg.Egress
		s.Workloads[name] = w
		if s.Changed != nil {
			s.Changed.Workloads[name] = true
		}
	}
	if s.Changed == nil || all {
		for name := range s.Workloads {
			set(name)
		}
		return
	}
	for name := range s.Changed.Workloads {
		set(name)
	}
	for _, a := range addresses {
		if name, ok := v.localAt(a); ok {
			set(name)
		}
	}
}

// publishRules makes the compiler's rules the ones readers see, when they changed since the
// last publication (or always, with force).
func (e *policyEngine) publishRules(force bool) {
	if g := e.compiler.RulesGeneration(); force || g != e.rulesGen {
		rules := e.compiler.Rules()
		e.rules.Store(&rules)
		e.rulesGen = g
	}
}

// applied tells the engine the maps now hold s's policy and nothing older.
func (e *policyEngine) applied(s dataplane.State) {
	e.compiler.Retain(s.Policy.Programs, s.Policy.Identities)
	e.publishRules(false)
	e.status.Store(&PolicyStatus{Policies: e.filled.policies, Tiers: e.filled.tiers, Profiles: e.filled.profiles,
		Workloads: e.filled.workloads,
		Rules:     len(*e.rules.Load()), Programs: len(s.Policy.Programs),
		Identities: len(s.Policy.Identities)})
}

// sweep deletes expired conntrack entries.
func (e *policyEngine) sweep(ct *maps.Conntrack) {
	deleted, left, err := ct.Sweep(e.timeouts)
	e.m.ctExpired.Add(float64(deleted))
	e.m.ctEntries.Set(float64(left))
	if err != nil {
		e.log.Warn("conntrack sweep", "error", err)
	}
}

// ruleHitsCollector reads the per-rule counters at scrape time.
type ruleHitsCollector struct {
	e       *policyEngine
	hits    *maps.RuleHits
	packets *prometheus.Desc
	bytes   *prometheus.Desc
}

func newRuleHitsCollector(e *policyEngine, hits *maps.RuleHits) *ruleHitsCollector {
	labels := []string{"policy", "direction", "rule"}
	return &ruleHitsCollector{e: e, hits: hits,
		packets: prometheus.NewDesc("margay_policy_rule_hits_packets_total",
			"Packets of the flows each policy rule decided on this node.", labels, nil),
		bytes: prometheus.NewDesc("margay_policy_rule_hits_bytes_total",
			"Bytes of the flows each policy rule decided on this node.", labels, nil)}
}

func (c *ruleHitsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
}

func (c *ruleHitsCollector) Collect(ch chan<- prometheus.Metric) {
	rules := *c.e.rules.Load()
	ids := make([]uint32, 0, len(rules))
	for id := range rules {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	// A rule edited in place has an old and a new id until the old one is gone from the maps:
	// both count under the rule's labels.
	type sum struct{ packets, bytes uint64 }
	sums := map[policy.RuleRef]*sum{}
	var order []policy.RuleRef
	for _, id := range ids {
		r := rules[id]
		p, b, err := c.hits.Get(id)
		if err != nil {
			continue
		}
		if sums[r] == nil {
			sums[r] = &sum{}
			order = append(order, r)
		}
		sums[r].packets += p
		sums[r].bytes += b
	}
	for _, r := range order {
		owner := r.Policy
		if r.Profile != "" {
			owner = "profile:" + r.Profile
		}
		lv := []string{owner, r.Direction.String(), strconv.Itoa(r.Index)}
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(sums[r].packets), lv...)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(sums[r].bytes), lv...)
	}
}
