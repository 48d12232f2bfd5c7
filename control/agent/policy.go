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
	m        *policyMetrics

	filled map[string]int64 // the policies (name -> ModRevision) of the last fill
	status atomic.Pointer[PolicyStatus]

	// The revisions of the policies and workloads the last successful compilation read: a pass
	// for anything else (BGP routes, blocks, the periodic full pass, a retry) reuses its result,
	// once stable, instead of compiling the same input again, which costs 100 ms and more at
	// 1,000 policies and workloads.
	compiledPolicies, compiledWorkloads map[string]int64
	compilations                        uint64 // successful ones, numbering dataplane.Policy.Compiled
	stable                              bool   // compiling that input again gave the same result
}

// PolicyStatus is what /policy serves: the policies the dataplane enforces, by the datastore
// revision of each, and the policy generation, as of the last successful pass.
type PolicyStatus struct {
	Policies   map[string]int64 `json:"policies"`
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
	e.status.Store(&PolicyStatus{Policies: map[string]int64{}})
	reg.MustRegister(e.m.policies, e.m.compileErrors, e.m.compile, e.m.ctEntries, e.m.ctExpired)
	return e
}

// fill compiles the policies of v into s: the policy maps and every local workload's programs.
// A failed compilation keeps the previous policy, and logs why.
func (e *policyEngine) fill(v *view, s *dataplane.State) {
	sameInput := e.compiledPolicies != nil && stdmaps.Equal(e.compiledPolicies, v.revisions[kindPolicies]) &&
		stdmaps.Equal(e.compiledWorkloads, v.revisions[kindWorkloads])
	if sameInput && e.stable {
		e.complete(s)
		return
	}
	e.compiledPolicies, e.compiledWorkloads = nil, nil
	start := time.Now()
	var ps []datastore.Policy
	for _, name := range sortedKeys(v.policies) {
		ps = append(ps, v.policies[name])
	}
	var all, local []policy.Endpoint
	for _, key := range sortedKeys(v.workloads) {
		ep, ok := policy.EndpointOf(v.workloads[key])
		if !ok {
			continue
		}
		all = append(all, ep)
		if ep.Node == v.node {
			local = append(local, ep)
		}
	}
	set, err := policy.NewSet(ps)
	var res *policy.Result
	if err == nil {
		res, err = e.compiler.Compile(set, all, local)
	}
	e.m.compile.Observe(time.Since(start).Seconds())
	if err != nil {
		e.m.compileErrors.Inc()
		e.log.Error("policy compilation failed; the previous policy stays in force", "error", err)
	} else {
		e.m.policies.Set(float64(set.Len()))
		// The compiler keeps what the state in the maps still needs until the pass after it
		// (Retain), so the same input can compile to less the second time: a compilation is
		// reused once compiling its input again gave the same result.
		e.stable = sameInput && stdmaps.Equal(res.IPs, e.last.IPs) && stdmaps.Equal(res.Programs, e.last.Programs) &&
			stdmaps.Equal(res.Identities, e.last.Identities) && stdmaps.Equal(res.Endpoints, e.lastEPs)
		if !e.stable {
			e.compilations++
		}
		e.last = dataplane.Policy{IPs: res.IPs, Programs: res.Programs, Identities: res.Identities,
			Entries: e.compiler.Entries, Compiled: e.compilations}
		e.lastEPs = res.Endpoints
		rules := e.compiler.Rules()
		e.rules.Store(&rules)
		e.compiledPolicies, e.compiledWorkloads = stdmaps.Clone(v.revisions[kindPolicies]), stdmaps.Clone(v.revisions[kindWorkloads])
	}
	if err == nil {
		e.filled = make(map[string]int64, len(v.policies))
		for name, rev := range v.revisions[kindPolicies] {
			e.filled[name] = rev
		}
	}
	e.complete(s)
}

// complete puts the last compiled policy into s, and every local workload's programs.
func (e *policyEngine) complete(s *dataplane.State) {
	s.Policy = e.last
	s.Policy.NewRules = e.compiler.TakeNewRules()
	s.Policy.Failsafe = e.failsafe
	s.Policy.Timeouts = e.timeouts
	for i := range s.Workloads {
		pg := e.lastEPs[s.Workloads[i].IPv4]
		s.Workloads[i].IngressProgram, s.Workloads[i].EgressProgram = pg.Ingress, pg.Egress
	}
}

// applied tells the engine the maps now hold s's policy and nothing older.
func (e *policyEngine) applied(s dataplane.State) {
	e.compiler.Retain(s.Policy.Programs, s.Policy.Identities)
	e.status.Store(&PolicyStatus{Policies: e.filled, Rules: len(*e.rules.Load()), Programs: len(s.Policy.Programs),
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
		lv := []string{r.Policy, r.Direction.String(), strconv.Itoa(r.Index)}
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(sums[r].packets), lv...)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(sums[r].bytes), lv...)
	}
}
