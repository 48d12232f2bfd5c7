package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/cni/wire"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
)

// maxConcurrent bounds the calls the agent serves at once; more wait for a slot. Runtimes start
// a node's pods a few at a time; a burst beyond this queues instead of loading the agent.
const maxConcurrent = 16

// Server serves margay-cni's calls in the agent (wire.Request, one per connection): the same
// commands as margay-cni-direct, run with the agent's etcd connection. Only root may call, as
// only root may run a CNI plugin. A call the agent cannot run as margay-cni-direct would is
// answered wire.Response.NotMine, and margay-cni runs it itself: its network config names another
// node or another etcd than the agent's, or a file the agent cannot see (the agent may run in a
// container), or does not parse (margay-cni-direct reports why); or the agent cannot see the
// container's network namespace.
type Server struct {
	plugin   Plugin
	node     string
	store    datastore.Config
	slots    chan struct{}
	requests *prometheus.CounterVec
	seconds  *prometheus.HistogramVec
}

// NewServer returns the server of the agent of node, whose etcd client ds was made from store.
func NewServer(node string, ds *datastore.Client, store datastore.Config, log *slog.Logger) *Server {
	return &Server{
		plugin: Plugin{Datastore: ds, Log: log.With("via", "agent"), Blocks: ipam.NewBlocks()},
		node:   node,
		store:  store,
		slots:  make(chan struct{}, maxConcurrent),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "margay_cni_requests_total",
			Help: "CNI calls margay-cni forwarded to this agent, by command and outcome (ok, error, not_mine: run by margay-cni itself, denied: not root).",
		}, []string{"command", "outcome"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "margay_cni_request_seconds",
			Help:    "Time the agent took to serve a CNI call, by command (ADD includes policySetupTimeout's wait).",
			Buckets: []float64{.002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 20},
		}, []string{"command"}),
	}
}

// Collectors returns the server's metrics.
func (s *Server) Collectors() []prometheus.Collector {
	return append([]prometheus.Collector{s.requests, s.seconds}, s.plugin.Blocks.Collectors()...)
}

// Listen makes the server's socket: an abstract socket for a name starting with "@" (see
// wire.DefaultSocket), else a socket file that only root may use, replacing a stale one.
func Listen(addr string) (net.Listener, error) {
	if !strings.HasPrefix(addr, "@") {
		if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
			return nil, fmt.Errorf("cni socket %s: %w", addr, err)
		}
		if c, err := net.DialTimeout("unix", addr, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("cni socket %s: another process serves it", addr)
		}
		_ = os.Remove(addr) // stale: nobody answers
	}
	ln, err := net.Listen("unix", addr)
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return nil, fmt.Errorf("cni socket %s: another process in this network namespace serves it (a second agent?): %w", addr, err)
		}
		return nil, fmt.Errorf("cni socket %s: %w", addr, err)
	}
	if !strings.HasPrefix(addr, "@") {
		if err := os.Chmod(addr, 0o600); err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("cni socket %s: %w", addr, err)
		}
	}
	return ln, nil
}

// Serve answers calls on ln until ctx ends, then closes ln and waits for the calls under way;
// ctx's end cancels them (margay-cni reports code 11, try again later).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	// ADD's copy of the IPAM blocks, followed while the server serves (see ipam.Blocks).
	fctx, unfollow := context.WithCancel(ctx)
	defer unfollow()
	wg.Go(func() {
		if err := s.plugin.Blocks.Follow(fctx, s.plugin.Datastore); err != nil && fctx.Err() == nil {
			s.plugin.Log.Warn("cni: the copy of the ipam blocks stopped; ADD lists them from etcd", "err", err)
		}
	})
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("cni socket: accept: %w", err)
		}
		wg.Go(func() {
			defer conn.Close()
			s.serve(ctx, conn)
		})
	}
}

// serve answers the one call on conn.
func (s *Server) serve(ctx context.Context, conn net.Conn) {
	log := s.plugin.Log
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req wire.Request
	if err := json.NewDecoder(io.LimitReader(conn, wire.MaxMessage)).Decode(&req); err != nil {
		s.requests.WithLabelValues("", "error").Inc()
		log.Warn("cni socket: unreadable request", "err", err)
		_ = json.NewEncoder(conn).Encode(wire.Response{Error: wire.Errorf(types.ErrIOFailure, err.Error(), "the agent could not read the call")})
		return
	}
	// Checked after the read, so that the caller gets the answer rather than a closed socket.
	if err := rootPeer(conn); err != nil {
		s.requests.WithLabelValues(req.Command, "denied").Inc()
		log.Warn("cni socket: refused a caller", "err", err)
		_ = json.NewEncoder(conn).Encode(wire.Response{Error: wire.Errorf(types.ErrInternal, "", "the agent serves CNI calls to root only: %v", err)})
		return
	}
	select {
	case s.slots <- struct{}{}:
		defer func() { <-s.slots }()
	case <-ctx.Done():
		_ = json.NewEncoder(conn).Encode(wire.Response{Error: wire.Errorf(types.ErrTryAgainLater, "", "margay-agent is stopping")})
		return
	}
	start := time.Now()
	resp := s.answer(ctx, &req)
	outcome := "ok"
	switch {
	case resp.NotMine != "":
		outcome = "not_mine"
	case resp.Error != nil:
		outcome = "error"
	}
	s.requests.WithLabelValues(req.Command, outcome).Inc()
	s.seconds.WithLabelValues(req.Command).Observe(time.Since(start).Seconds())
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := json.NewEncoder(conn).Encode(resp); err != nil {
		// margay-cni is gone (the runtime's timeout): the runtime calls again, ADD or DEL.
		log.Warn("cni socket: answer not delivered", "command", req.Command, "container", req.ContainerID, "err", err)
	}
}

// answer runs the call, or declines it (NotMine) when margay-cni-direct should run it (see
// Server).
func (s *Server) answer(ctx context.Context, req *wire.Request) wire.Response {
	switch req.Command {
	case "ADD", "DEL", "CHECK", "GC", "STATUS":
	default:
		return wire.Response{Error: wire.Errorf(types.ErrInvalidEnvironmentVariables, "", "unknown CNI_COMMAND %q", req.Command)}
	}
	conf, err := parseConf(req.StdinData, os.Hostname)
	if err != nil {
		// margay-cni-direct decides, in the runtime's view of the host: a file the config names
		// (datastoreConfig, TLS files) may be missing only from the agent's container.
		return wire.Response{NotMine: "the agent cannot use the network config: " + asCNIError(err).Msg}
	}
	if conf.Kubernetes != nil {
		if _, err := os.Stat(conf.Kubernetes.Kubeconfig); err != nil {
			return wire.Response{NotMine: fmt.Sprintf("the agent cannot read kubernetes.kubeconfig: %v", err)}
		}
	}
	if req.Netns != "" {
		// A path under /proc of a host process, or a /var/run/netns the agent's container does
		// not mount, is visible to the runtime only.
		if _, err := os.Stat(req.Netns); err != nil {
			return wire.Response{NotMine: fmt.Sprintf("the agent cannot see the container's network namespace: %v", err)}
		}
	}
	if conf.NodeName != s.node {
		return wire.Response{NotMine: fmt.Sprintf("the network config names node %s, this agent is node %s's", conf.NodeName, s.node)}
	}
	if !conf.ds.SameStore(s.store) {
		return wire.Response{NotMine: fmt.Sprintf("the network config's datastore (%s) is not this agent's (%s)", where(conf.ds), where(s.store))}
	}
	// margay-cni's start, unless its clock says something impossible.
	started := time.Now()
	if d := started.Sub(req.Started); d > 0 && d < opTimeout {
		started = req.Started
	}
	out, err := s.plugin.run(ctx, req.Command, req.CmdArgs(), started)
	if err != nil {
		return wire.Response{Error: asCNIError(err)}
	}
	return wire.Response{Output: out}
}

// where names a datastore as SameStore compares them.
func where(c datastore.Config) string {
	s := strings.Join(c.EndpointsOrDefault(), ",") + ", prefix " + c.PrefixOrDefault()
	if c.Username != "" {
		s += ", user " + c.Username
	}
	return s
}

func asCNIError(err error) *types.Error {
	if te, ok := errors.AsType[*types.Error](err); ok {
		return te
	}
	return types.NewError(types.ErrInternal, "margay-cni: "+err.Error(), "")
}

// rootPeer checks that the process at the other end of conn runs as root.
func rootPeer(conn net.Conn) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("not a Unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if credErr != nil {
		return fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	if cred.Uid != 0 {
		return fmt.Errorf("caller pid %d runs as uid %d", cred.Pid, cred.Uid)
	}
	return nil
}
