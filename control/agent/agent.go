package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/bgp"
	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/hostconv"
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

	speaker    atomic.Pointer[bgp.Speaker] // for the HTTP handlers and metrics, once the loop started it
	learned    atomic.Int64                // learned routes the import policy takes, for metrics
	advertised atomic.Int64                // prefixes the speaker originates, for metrics
	retained   atomic.Int64                // remote routes kept from before a restart, for metrics

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

// register writes this node's record, keeping what operators set on it (labels, AS, reflector).
func (a *Agent) register(ctx context.Context, uplink string, addr netip.Prefix) error {
	written := false
	err := datastore.Retry(ctx, func() error {
		cur, err := a.ds.Nodes().Get(ctx, a.cfg.NodeName)
		n := datastore.Node{Version: datastore.CurrentVersion, Name: a.cfg.NodeName}
		if err == nil {
			n = cur.Value
		} else if !errors.Is(err, datastore.ErrNotFound) {
			return err
		}
		if err == nil && n.AddressV4 == addr && n.Uplink == uplink {
			return nil
		}
		n.AddressV4, n.Uplink = addr, uplink
		if err == nil {
			_, err = a.ds.Nodes().Update(ctx, a.cfg.NodeName, n, cur.ModRevision)
		} else if _, err = a.ds.Nodes().Create(ctx, a.cfg.NodeName, n); errors.Is(err, datastore.ErrExists) {
			return datastore.ErrConflict // created meanwhile: read it
		}
		written = err == nil
		return err
	})
	if err != nil {
		return fmt.Errorf("agent: register node %s: %w", a.cfg.NodeName, err)
	}
	if written {
		a.log.Info("registered node", "node", a.cfg.NodeName, "address", addr, "uplink", uplink)
	}
	return nil
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
	rec, r, uplink, updates, w, hk := p.rec, p.routing, p.uplink, p.updates, p.watch, p.house
	v := newView(a.cfg.NodeName, r != nil)
	deferral := a.retain(v, uplink)
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
		s := v.state(uplink, full)
		a.learned.Store(int64(v.taken))
		if r != nil {
			if err := r.sync(ctx, a, v); err != nil {
				a.log.Error("bgp", "error", err)
			}
			if r.speaker != nil {
				a.speaker.Store(&r.speaker)
			}
		}
		a.pol.fill(v, &s)
		pending, ok := a.reconcile(rec, s, full)
		if ok {
			a.pol.applied(s)
		}
		a.passMetrics.afterPass(v)
		full = !ok
		if ok && !v.learnedAt.IsZero() {
			a.m.routeProgramming.Observe(time.Since(v.learnedAt).Seconds())
			v.learnedAt = time.Time{}
		}
		if pending {
			retry.Reset(100 * time.Millisecond) // the CNI plugin is creating the interface
		}
	}
}

// gcTimeout bounds one collection.
const gcTimeout = 10 * time.Second

// datastoreAnswers reads this node's record within a second, to tell whether etcd is reachable
// before a collection starts work that would wait for it.
func (a *Agent) datastoreAnswers(ctx context.Context) bool {
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := a.ds.Nodes().Get(pctx, a.cfg.NodeName)
	if err != nil && !errors.Is(err, datastore.ErrNotFound) && !errors.Is(err, datastore.ErrMalformed) {
		a.log.Warn("etcd does not answer; IPAM garbage collection skipped", "error", err)
		return false
	}
	return true
}

// collectGarbage removes the records of this node's workloads whose veth and netns are gone (a
// runtime that never called CNI DEL), frees the addresses of workloads whose record is gone, and
// gives up empty blocks beyond the first.
func (a *Agent) collectGarbage(ctx context.Context, nl *netlink.Handle, j gcJob) {
	if a.beforeCollect != nil {
		a.beforeCollect(ctx)
	}
	a.collectOrphans(ctx, nl, j)
	freed, err := a.gc.Run(ctx, j.workloads)
	if err != nil {
		a.log.Warn("ipam garbage collection", "error", err)
		return
	}
	if len(freed) > 0 {
		a.log.Info("ipam garbage collection freed addresses", "ips", freed)
	}
	if released, err := a.ipam.ReleaseEmptyBlocks(ctx, a.cfg.NodeName, 1); err != nil {
		a.log.Warn("release empty blocks", "error", err)
	} else if len(released) > 0 {
		a.log.Info("released empty blocks", "blocks", released)
	}
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

func (a *Agent) serveHTTP(ctx context.Context) error {
	if a.cfg.HTTPAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("agent: listen on %s: %w", a.cfg.HTTPAddr, err)
	}
	a.httpLn = ln
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		// Healthy while the owner loop turns: a pass never takes this long.
		if time.Since(time.Unix(0, a.healthy.Load())) > a.cfg.ReconcileInterval+time.Minute {
			http.Error(w, "owner loop stuck", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/bgp/peers", a.serveBGPPeers)
	mux.HandleFunc("/policy", a.servePolicy)
	if a.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not reconciled yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return nil
}

// serveBGPPeers answers with the sessions of the node's speaker, as calicoctl reads BIRD's.
func (a *Agent) serveBGPPeers(w http.ResponseWriter, req *http.Request) {
	sp := a.speaker.Load()
	if sp == nil {
		http.Error(w, "bgp is not running on this node", http.StatusServiceUnavailable)
		return
	}
	peers, err := (*sp).Peers(req.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	out := []hostconv.PeerStatus{}
	for _, p := range peers {
		out = append(out, hostconv.PeerStatus{Address: p.Address.String(), Type: p.Type.String(), State: p.State.String(), Since: p.Since, Info: p.Info})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// servePolicy answers which policies (by datastore revision) the dataplane enforces.
func (a *Agent) servePolicy(w http.ResponseWriter, _ *http.Request) {
	if a.pol == nil {
		http.Error(w, "not started", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.pol.status.Load())
}
