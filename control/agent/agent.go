package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// Config is what an agent needs to know about its host.
type Config struct {
	NodeName  string
	Uplink    string // "" = the interface of the default route
	BPFFSRoot string
	// XDP says when the XDP prefilter goes on the uplink: dataplane.XDPAuto (default: not on a
	// veth), XDPOn or XDPOff.
	XDP      dataplane.XDPMode
	TCMode   loader.TCMode
	HTTPAddr string // health and metrics, "" = none
	// Pprof serves Go's profiles under /debug/pprof/ on HTTPAddr too (opt-in: they show the
	// agent's internals to whoever reaches that address).
	Pprof             bool
	ReconcileInterval time.Duration // full pass even without events
	GCInterval        time.Duration // IPAM garbage collection of this node's handles, 0 = 1 minute
	DefaultPool       netip.Prefix  // created when no pool exists; invalid = never
	// BGP runs the node's BGP speaker: peers from the mesh, reflector and explicit peer
	// settings, remote routes learned from them. Without it remote routes come from the blocks
	// and node addresses in the datastore.
	BGP     bool
	BGPPort int // 0 = 179
	// BGPListen are the addresses the speaker accepts sessions on; none = the node's address.
	BGPListen []netip.Addr
	// BGP session timers and graceful restart; zero keeps the speaker's defaults (hold 90 s,
	// keepalive 30 s, connect retry 5 s). The restart time (how long peers keep our routes while
	// we restart) is at most the hold time, as RFC 4724 suggests, and zero means the hold time:
	// so a host that stops for good has its routes withdrawn everywhere within the hold time.
	BGPHold, BGPKeepalive, BGPConnectRetry, BGPRestartTime time.Duration
	BGPNoGracefulRestart                                   bool
	// Failsafe ports between workloads and hosts, never cut by policy (ParseFailsafe); nil =
	// Calico's defaults.
	Failsafe map[maps.FailsafeKey]maps.FailsafeDirection
	// ConntrackTimeouts override the dataplane's defaults (zero fields keep them).
	ConntrackTimeouts maps.Timeouts
	// ConntrackSweepInterval is how often expired conntrack entries are deleted; 0 = 10 s.
	ConntrackSweepInterval time.Duration
}

// Agent runs one host. Run owns all state: watchers feed it through a channel.
type Agent struct {
	cfg  Config
	ds   *datastore.Client
	ipam *ipam.IPAM
	log  *slog.Logger
	reg  *prometheus.Registry
	m    *metrics
	// Metrics of the dataplane's maps (read at scrape time) and of each pass's view (collectors.go).
	dpMetrics   *dataplaneCollector
	passMetrics *passMetrics

	// gc is IPAM's garbage collection of this node's workloads: a workload's addresses are
	// released only when its record was missing at two collections in a row, so an ADD in flight
	// (handle written, record not yet) is never collected. Owned by the collector goroutine
	// (housekeeping.go).
	gc *ipam.Collector
	// orphans are this node's workloads whose veth and netns were gone at the last collection,
	// by key with the record's ModRevision: removed only if still so, unchanged, at the next
	// (orphans.go). Owned by the collector goroutine.
	orphans map[string]int64

	pol *policyEngine // compiles policy; made by Run, owned by the loop

	// beforeCollect, when set (tests), runs at the start of every collection, on the collector's
	// goroutine: where a collection that takes long (etcd slow to answer) is made.
	beforeCollect func(context.Context)

	bgp bgpStatus // what routing publishes, for the HTTP handlers and the metrics

	ready   atomic.Bool
	healthy atomic.Int64 // unix nanos of the owner loop's last turn
	httpLn  net.Listener
}

// Option configures an Agent.
type Option func(*Agent)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(a *Agent) { a.log = l } }

// WithRegistry serves the metrics of reg (where the datastore client registered its own, say)
// and registers the agent's there.
func WithRegistry(reg *prometheus.Registry) Option { return func(a *Agent) { a.reg = reg } }

// New checks the configuration and returns an agent; nothing runs until Run.
func New(cfg Config, ds *datastore.Client, opts ...Option) (*Agent, error) {
	if err := datastore.ValidateName(cfg.NodeName); err != nil {
		return nil, fmt.Errorf("agent: node name %q: %w", cfg.NodeName, err)
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = 10 * time.Second
	}
	if cfg.GCInterval <= 0 {
		cfg.GCInterval = time.Minute
	}
	if cfg.BPFFSRoot == "" {
		cfg.BPFFSRoot = loader.DefaultRoot
	}
	if cfg.ConntrackSweepInterval <= 0 {
		cfg.ConntrackSweepInterval = 10 * time.Second
	}
	if cfg.Failsafe == nil {
		fs, err := ParseFailsafe(DefaultFailsafeInbound, DefaultFailsafeOutbound)
		if err != nil {
			panic(err) // the defaults are constants
		}
		cfg.Failsafe = fs
	}
	a := &Agent{cfg: cfg, ds: ds, log: slog.Default(), reg: prometheus.NewRegistry()}
	for _, o := range opts {
		o(a)
	}
	a.ipam = ipam.New(ds, ipam.WithLogger(a.log))
	a.gc = a.ipam.Collector(cfg.NodeName)
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.m = newMetrics(a.reg)
	a.dpMetrics, a.passMetrics = newDataplaneCollector(), newPassMetrics(a.reg)
	a.reg.MustRegister(a.dpMetrics)
	if cfg.BGP {
		a.reg.MustRegister(newBGPCollector(a))
	}
	return a, nil
}

// Registry is where the agent's metrics live; other components register theirs here too.
func (a *Agent) Registry() *prometheus.Registry { return a.reg }

// Ready reports whether the dataplane matched the datastore once.
func (a *Agent) Ready() bool { return a.ready.Load() }

// HTTPAddr is the address the health and metrics server listens on, once Run started it.
func (a *Agent) HTTPAddr() string {
	if a.httpLn == nil {
		return ""
	}
	return a.httpLn.Addr().String()
}

// Run registers the node, loads the dataplane and reconciles until ctx ends. It must be called on
// a goroutine in the host's network namespace: it locks its OS thread and does every netlink,
// sysctl and attach call from there.
func (a *Agent) Run(ctx context.Context) error {
	runtime.LockOSThread() // netns and /proc/sys/net are per thread: stay on this one

	nl, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("agent: open netlink: %w", err)
	}
	defer nl.Close()
	uplink, addr, err := detectUplink(nl, a.cfg.Uplink)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.log.Info("uplink", "interface", uplink, "address", addr)

	if err := a.register(ctx, uplink, addr); err != nil {
		return err
	}
	if a.cfg.DefaultPool.IsValid() {
		pool := datastore.DefaultPool()
		pool.CIDR = a.cfg.DefaultPool
		if created, err := a.ipam.EnsureDefaultPool(ctx, pool); err != nil {
			return fmt.Errorf("agent: %w", err)
		} else if created {
			a.log.Info("created default pool", "cidr", pool.CIDR)
		}
	}
	if blocks, err := a.ipam.EnsureBlock(ctx, a.cfg.NodeName); err != nil {
		// Not fatal: workloads can still borrow, and a pool may be added later.
		a.log.Warn("no block claimed", "error", err)
	} else {
		a.log.Info("blocks", "cidrs", blocks)
	}

	// Programs still attached from an earlier agent forward meanwhile: a BGP restart with the
	// forwarding state kept.
	forwarding := forwardingKept(a.cfg.BPFFSRoot)
	dp, err := loader.Load(loader.WithRoot(a.cfg.BPFFSRoot), loader.WithLogger(a.log), loader.WithTCMode(a.cfg.TCMode))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer dp.Close() // pins stay: forwarding goes on without us
	rec, err := dataplane.New(dp, dataplane.WithLogger(a.log), dataplane.WithXDPMode(a.cfg.XDP))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer rec.Close()
	set := maps.FromDataplane(dp)
	if a.pol == nil {
		a.pol = newPolicyEngine(a.log, set.RuleHits.MaxRules(), a.cfg.Failsafe, a.cfg.ConntrackTimeouts, a.reg)
		a.reg.MustRegister(newRuleHitsCollector(a.pol, set.RuleHits))
	}
	detachMetrics, err := a.dpMetrics.attach(set) // on this thread: in the host's namespace
	if err != nil {
		return err
	}
	defer detachMetrics()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := a.serveHTTP(ctx); err != nil {
		return err
	}

	updates := make(chan func(*view), 64)
	w := &watchers{ds: a.ds, log: a.log, updates: updates}
	w.start(ctx, a.cfg.BGP)
	var r *routing
	if a.cfg.BGP {
		r = a.newRouting(addr, forwarding)
		defer r.stop()
	}
	// nl, made on this thread in the host's namespace, is the collector's from here on.
	hk := a.startHousekeeping(ctx, nl, set.Conntrack)
	defer func() {
		cancel() // a collection under way ends with its context
		hk.wait()
	}()
	return a.loop(ctx, parts{rec: rec, routing: r, uplink: uplink, updates: updates, watch: w, house: hk})
}

// parts are what the owner loop drives: Run makes them, and from then on the loop owns them.
type parts struct {
	rec     *dataplane.Reconciler
	routing *routing // nil without BGP
	uplink  string
	updates <-chan func(*view) // closures of the watchers
	watch   *watchers
	house   *housekeeping // collection and sweep, beside the loop
}

// loop is the owner goroutine: it applies updates to the view and reconciles when something
// changed (batched), when interfaces are still pending, and every ReconcileInterval.
func (a *Agent) loop(ctx context.Context, p parts) error {
	r, updates, w, hk := p.routing, p.updates, p.watch, p.house
	v := newView(a.cfg.NodeName, r != nil)
	deferral := a.retain(v, p.uplink)
	tick := time.NewTicker(a.cfg.ReconcileInterval)
	defer tick.Stop()
	gc := time.NewTicker(a.cfg.GCInterval)
	defer gc.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	// dirty asks for a pass; full makes it an Apply that checks everything against the kernel,
	// otherwise an Update of what changed since the last pass.
	dirty, full := false, true
	for {
		a.healthy.Store(time.Now().UnixNano())
		select {
		case <-ctx.Done():
			a.log.Info("stopping; the dataplane keeps forwarding")
			return nil
		case u := <-updates:
			u(v)
			dirty = true
			// Take whatever else is queued before the pass: one pass for a burst of events.
			for drained := false; !drained; {
				select {
				case u := <-updates:
					u(v)
				default:
					drained = true
				}
			}
		case u := <-r.updates():
			a.learn(v, u)
			dirty = true
		case <-tick.C:
			dirty, full = true, true
		case <-retry.C:
			dirty = true
		case <-deferral:
			a.release(v, "not every peer sent its End-of-RIB within the restart time")
			dirty = true
		case <-gc.C:
			if w.synced(v) && !hk.collect(v) {
				a.log.Debug("the last collection still runs; skipping this one")
			}
			continue
		}
		if !dirty || !w.synced(v) {
			continue
		}
		dirty = false
		ok, pending := a.pass(ctx, v, p, full)
		full = !ok
		if pending {
			retry.Reset(100 * time.Millisecond) // the CNI plugin is creating the interface
		}
	}
}

// pass brings the host in line with the view, part by part: the desired state, the speaker's
// peers and advertisements, the policy programs, the reconciler; then the pass's metrics. It
// reports whether the reconciler succeeded (else the next pass is a full one) and whether an
// interface is still pending.
func (a *Agent) pass(ctx context.Context, v *view, p parts, full bool) (ok, pending bool) {
	s := v.state(p.uplink, full)
	if r := p.routing; r != nil {
		a.bgp.learned.Store(int64(v.taken))
		if err := r.sync(ctx, a, v); err != nil {
			a.log.Error("bgp", "error", err)
		}
	}
	a.pol.fill(v, &s)
	pending, ok = a.reconcile(p.rec, s, full)
	if ok {
		a.pol.applied(s)
	}
	a.passMetrics.afterPass(v)
	if ok && !v.learnedAt.IsZero() {
		a.m.routeProgramming.Observe(time.Since(v.learnedAt).Seconds())
		v.learnedAt = time.Time{}
	}
	return ok, pending
}

func (a *Agent) reconcile(rec *dataplane.Reconciler, s dataplane.State, full bool) (pending, ok bool) {
	start := time.Now()
	apply, kind := rec.Update, "update"
	if full {
		apply, kind = rec.Apply, "full"
	}
	res, err := apply(s)
	a.m.reconcileDuration.Observe(time.Since(start).Seconds())
	a.m.changes.Add(float64(res.Changes))
	a.m.endpoints.Set(float64(len(s.Workloads)))
	a.m.pending.Set(float64(len(res.Pending)))
	if err != nil {
		a.m.reconciles.WithLabelValues(kind, "error").Inc()
		a.log.Error("reconcile", "kind", kind, "error", err, "changes", res.Changes)
		return true, false
	}
	a.m.reconciles.WithLabelValues(kind, "ok").Inc()
	if res.Changes > 0 {
		a.log.Info("reconciled", "kind", kind, "changes", res.Changes, "workloads", len(s.Workloads), "pending", res.Pending,
			"took", time.Since(start).Round(time.Microsecond))
	}
	if !a.ready.Load() {
		a.ready.Store(true)
		a.log.Info("ready")
	}
	return len(res.Pending) > 0, true
}
