// Command margay-agent runs on every host: it registers the node, claims its IPAM block, loads
// Margay's eBPF dataplane and keeps routes, maps and attachments equal to what etcd says. Stopping
// it leaves forwarding running; the next agent adopts what it finds. `margay-agent --cleanup`
// removes the whole dataplane from the host.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/agent"
	"github.com/margaynet/margay/control/cni"
	"github.com/margaynet/margay/control/cni/wire"
	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/loader"
)

type options struct {
	node        string
	root        string
	uplink      string
	xdp         string
	tcMode      string
	httpAddr    string
	pprof       bool
	interval    time.Duration
	gcInterval  time.Duration
	defaultPool string
	cleanup     bool
	logLevel    string
	ds          datastore.Config
	configFile  string
	bgp         bool
	bgpPort     int
	bgpHold     time.Duration
	bgpKeep     time.Duration
	bgpRetry    time.Duration
	bgpRestart  time.Duration
	bgpNoGR     bool
	bgpListen   []string
	failsafeIn  string
	failsafeOut string
	ctTimeouts  string
	ctSweep     time.Duration
	kubeconfig  string
	k8sSync     bool
	cniSocket   string
}

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	if err := newCommand().Execute(); err != nil {
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:          "margay-agent",
		Version:      version,
		Short:        "Margay host agent: programs the eBPF dataplane from the datastore",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(o.logLevel)
			if err != nil {
				return err
			}
			// SIGTERM (systemctl stop or restart, a DaemonSet rollout) and SIGINT are a planned
			// stop: the dataplane stays, BGP sessions close without a Cease (graceful restart).
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			log.Info("margay-agent starting", "version", version, "pid", os.Getpid())
			if err := run(ctx, o, log); err != nil {
				log.Error("agent stopped", "error", err)
				return err
			}
			return nil
		},
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&o.node, "node-name", host, "this node's name in the datastore")
	f.StringVar(&o.root, "bpffs-root", loader.DefaultRoot, "bpffs directory for pinned maps and links")
	f.StringVar(&o.uplink, "uplink", "", "uplink interface, e.g. ens32 (default: the interface of the default route)")
	f.StringVar(&o.xdp, "xdp", "auto", "XDP prefilter on the uplink: auto (on, except on a veth, whose driver would turn TSO off), on or off")
	f.StringVar(&o.tcMode, "tc-mode", "auto", "how to attach TC programs: auto, tcx or legacy (clsact)")
	f.StringVar(&o.httpAddr, "http-addr", ":9091", "address of /metrics, /healthz and /readyz (empty: off)")
	f.BoolVar(&o.pprof, "pprof", false, "serve Go profiles under /debug/pprof/ on --http-addr (for profiling; off by default)")
	f.DurationVar(&o.interval, "reconcile-interval", 10*time.Second, "full reconcile pass at least this often")
	f.DurationVar(&o.gcInterval, "gc-interval", time.Minute, "how often workloads whose veth and netns are gone, and addresses no workload holds, are collected")
	f.StringVar(&o.defaultPool, "default-pool", datastore.DefaultPoolCIDR.String(), "pool created when none exists (empty: none)")
	f.BoolVar(&o.cleanup, "cleanup", false, "detach every Margay program, remove all pins and Margay's routes (proto margay), and exit")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&o.bgp, "bgp", false, "run the BGP speaker (mesh, reflectors, explicit peers) for remote routes; without it they come from the datastore")
	f.IntVar(&o.bgpPort, "bgp-port", 179, "TCP port of the BGP speaker")
	f.StringSliceVar(&o.bgpListen, "bgp-listen-address", nil, "addresses the BGP speaker listens on (default: the node's address)")
	f.DurationVar(&o.bgpHold, "bgp-hold-time", 90*time.Second, "BGP hold time: a silent peer is declared down after it")
	f.DurationVar(&o.bgpKeep, "bgp-keepalive", 30*time.Second, "BGP keepalive interval")
	f.DurationVar(&o.bgpRetry, "bgp-connect-retry", 5*time.Second, "BGP connect-retry interval")
	f.DurationVar(&o.bgpRestart, "bgp-restart-time", 0, "graceful restart: how long peers keep our routes while we restart, at most the hold time (default: the hold time)")
	f.BoolVar(&o.bgpNoGR, "bgp-no-graceful-restart", false, "do not negotiate graceful restart")
	f.StringVar(&o.failsafeIn, "failsafe-inbound", agent.DefaultFailsafeInbound, "protocol:port list a workload may always reach on a host, whatever policy says")
	f.StringVar(&o.failsafeOut, "failsafe-outbound", agent.DefaultFailsafeOutbound, "protocol:port list a host may always reach on a workload, whatever policy says")
	f.StringVar(&o.ctTimeouts, "conntrack-timeouts", "", "override conntrack idle timeouts, e.g. udp=30s,tcp-established=1h (tcp-syn, tcp-established, tcp-fin, tcp-closed, udp, icmp, other)")
	f.DurationVar(&o.ctSweep, "conntrack-sweep-interval", 10*time.Second, "how often expired conntrack entries are deleted")
	f.StringVar(&o.configFile, "config", "", "datastore config file (YAML or JSON), below flags and MARGAY_* variables")
	f.BoolVar(&o.k8sSync, "k8s-policy-sync", false, "keep the policies knp.default.* in the datastore equal to the cluster's Kubernetes NetworkPolicies")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file of --k8s-policy-sync (empty: the pod's in-cluster service account)")
	f.StringVar(&o.cniSocket, "cni-socket", wire.DefaultSocket, "where margay-cni's calls are served: an abstract socket (@name, of the agent's network namespace) or a socket file; \"off\": margay-cni runs them itself")
	o.ds.BindFlags(f)
	return cmd
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("parse --log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func parseTCMode(s string) (loader.TCMode, error) {
	switch strings.ToLower(s) {
	case "auto":
		return loader.TCAuto, nil
	case "tcx":
		return loader.TCX, nil
	case "legacy", "clsact":
		return loader.TCLegacy, nil
	}
	return 0, fmt.Errorf("parse --tc-mode: %q is not auto, tcx or legacy", s)
}

func (o options) agentConfig() (agent.Config, error) {
	mode, err := parseTCMode(o.tcMode)
	if err != nil {
		return agent.Config{}, err
	}
	xdp, err := dataplane.ParseXDPMode(o.xdp)
	if err != nil {
		return agent.Config{}, fmt.Errorf("parse --xdp: %w", err)
	}
	cfg := agent.Config{NodeName: o.node, Uplink: o.uplink, BPFFSRoot: o.root, XDP: xdp, TCMode: mode,
		HTTPAddr: o.httpAddr, Pprof: o.pprof, ReconcileInterval: o.interval, BGP: o.bgp, BGPPort: o.bgpPort,
		BGPHold: o.bgpHold, BGPKeepalive: o.bgpKeep, BGPConnectRetry: o.bgpRetry, BGPRestartTime: o.bgpRestart,
		BGPNoGracefulRestart: o.bgpNoGR, ConntrackSweepInterval: o.ctSweep, GCInterval: o.gcInterval}
	if cfg.Failsafe, err = agent.ParseFailsafe(o.failsafeIn, o.failsafeOut); err != nil {
		return agent.Config{}, fmt.Errorf("parse --failsafe-inbound/--failsafe-outbound: %w", err)
	}
	if cfg.ConntrackTimeouts, err = agent.ParseConntrackTimeouts(o.ctTimeouts); err != nil {
		return agent.Config{}, fmt.Errorf("parse --conntrack-timeouts: %w", err)
	}
	for _, s := range o.bgpListen {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return agent.Config{}, fmt.Errorf("parse --bgp-listen-address %q: %w", s, err)
		}
		cfg.BGPListen = append(cfg.BGPListen, a)
	}
	if o.defaultPool != "" {
		p, err := netip.ParsePrefix(o.defaultPool)
		if err != nil || !p.Addr().Is4() || p.Masked() != p {
			return agent.Config{}, fmt.Errorf("parse --default-pool %q: want an IPv4 network such as 192.168.0.0/16", o.defaultPool)
		}
		cfg.DefaultPool = p
	}
	return cfg, nil
}

func (o options) datastoreConfig() (datastore.Config, error) {
	return o.ds.Resolve(os.Getenv, o.configFile)
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	if o.cleanup {
		if err := loader.Cleanup(o.root, log); err != nil {
			return fmt.Errorf("clean up: %w", err)
		}
		n, err := dataplane.RemoveRoutes()
		if err != nil {
			return fmt.Errorf("clean up: %w", err)
		}
		log.Info("dataplane removed", "root", o.root, "routes", n)
		return nil
	}
	cfg, err := o.agentConfig()
	if err != nil {
		return err
	}
	kube, err := o.kubeClient(log)
	if err != nil {
		return err
	}
	dsCfg, err := o.datastoreConfig()
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	connectCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	ds, err := datastore.New(connectCtx, dsCfg, datastore.WithLogger(log), datastore.WithRegisterer(reg))
	cancel()
	if err != nil {
		return err
	}
	defer ds.Close()
	a, err := agent.New(cfg, ds, agent.WithLogger(log), agent.WithRegistry(reg))
	if err != nil {
		return err
	}
	if kube != nil {
		defer startPolicySync(ctx, kube, ds, log)()
	}
	if o.cniSocket != "" && o.cniSocket != wire.Off {
		defer serveCNI(ctx, o, ds, dsCfg, reg, log)()
	}
	return a.Run(ctx)
}

// serveCNI serves margay-cni's calls on --cni-socket until ctx ends; the returned function waits
// for the calls under way (and ends them, if the agent stops for another reason). A socket that cannot be made is logged, not fatal: margay-cni then runs
// the calls itself (margay-cni-direct), as without an agent.
func serveCNI(ctx context.Context, o options, ds *datastore.Client, dsCfg datastore.Config, reg *prometheus.Registry, log *slog.Logger) func() {
	ln, err := cni.Listen(o.cniSocket)
	if err != nil {
		log.Error("not serving CNI calls; margay-cni will run them in margay-cni-direct", "err", err)
		return func() {}
	}
	srv := cni.NewServer(o.node, ds, dsCfg, log)
	reg.MustRegister(srv.Collectors()...)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, ln); err != nil {
			log.Error("CNI socket", "err", err)
		}
	}()
	log.Info("serving CNI calls", "socket", o.cniSocket)
	return func() { cancel(); <-done }
}
