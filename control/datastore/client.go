package datastore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Client is a connection to the datastore. It is safe for concurrent use.
type Client struct {
	cli     *clientv3.Client
	prefix  string
	log     *slog.Logger
	metrics *metrics

	// done is closed by Close, so that Watch loops end with the Client.
	done      chan struct{}
	closeOnce sync.Once

	mu        sync.Mutex
	malformed map[string]int64 // key -> ModRevision already logged and counted
}

// Option configures New.
type Option func(*options)

type options struct {
	log *slog.Logger
	reg prometheus.Registerer
}

// WithLogger sets the logger; the default discards.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithRegisterer registers the package's metrics with reg; the default is a private registry,
// so pass prometheus.DefaultRegisterer (or the process's registry) to export them.
func WithRegisterer(reg prometheus.Registerer) Option { return func(o *options) { o.reg = reg } }

// New connects to etcd and waits, bounded by ctx, until the cluster answers a linearizable read.
// Give ctx a deadline: without one New waits as long as etcd stays unreachable.
func New(ctx context.Context, cfg Config, opts ...Option) (*Client, error) {
	o := options{log: slog.New(slog.DiscardHandler), reg: prometheus.NewRegistry()}
	for _, opt := range opts {
		opt(&o)
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tlsConf, err := cfg.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("datastore: %w", err)
	}
	cli, err := connect(ctx, cfg, tlsConf)
	if err != nil {
		return nil, err
	}
	return &Client{
		cli:       cli,
		prefix:    cfg.Prefix,
		log:       o.log,
		metrics:   newMetrics(o.reg),
		done:      make(chan struct{}),
		malformed: make(map[string]int64),
	}, nil
}

// Dial connects as a command does (margayctl, margay-cni): it waits for etcd at most
// cfg.CommandDialTimeout() in all, where New waits as long as ctx lets it, so that an unreachable
// etcd fails the command fast, naming the endpoints, instead of hanging it.
func Dial(ctx context.Context, cfg Config, opts ...Option) (*Client, error) {
	cfg.DialTimeout = cfg.CommandDialTimeout()
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	return New(ctx, cfg, opts...)
}

// connect creates the etcd client and reads one key until etcd answers, bounded by ctx. When an
// attempt fails it probes the endpoints itself (TCP, then TLS), because the client library
// reports only the deadline; the error then says what went wrong: connection refused, an
// untrusted certificate, and so on. Wrong credentials fail at once.
func connect(ctx context.Context, cfg Config, tlsConf *tls.Config) (*clientv3.Client, error) {
	cc := clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsConf,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               quietZap(),
		DialOptions:          []grpc.DialOption{grpc.WithConnectParams(reconnectParams(cfg.DialTimeout))},
	}
	fail := func(err error) error {
		return fmt.Errorf("datastore: connect to etcd at %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	var (
		cli  *clientv3.Client
		last error
	)
	for {
		var err error
		if cli == nil {
			// With credentials, clientv3.New authenticates before it returns.
			cli, err = newEtcdClient(ctx, cc)
		}
		if cli != nil {
			actx, cancel := context.WithTimeout(ctx, attemptTimeout(ctx, cfg.DialTimeout))
			_, err = cli.Get(actx, cfg.Prefix, clientv3.WithCountOnly())
			cancel()
			if err == nil {
				return cli, nil
			}
		}
		if isAuthError(err) {
			if cli != nil {
				_ = cli.Close()
			}
			return nil, fail(err)
		}
		last = err
		if perr := probeEndpoints(ctx, cfg, tlsConf); perr != nil {
			last = perr
		} else if ctx.Err() == nil {
			last = fmt.Errorf("etcd accepts connections but does not answer: %w", err)
		}
		select {
		case <-ctx.Done():
			if cli != nil {
				_ = cli.Close()
			}
			return nil, fail(fmt.Errorf("%w (last error: %v)", ctx.Err(), last))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ReconnectBackoffMax caps the wait between attempts to reconnect to etcd. gRPC's default grows to
// two minutes, so after an outage of a minute a client could stay away from a recovered etcd for
// half a minute more; capped, the agents' watches resume within about a second of etcd's return.
const ReconnectBackoffMax = time.Second

// reconnectParams is how the etcd client's connection retries: from 100 ms, growing by 1.6 with
// 20% jitter (gRPC's defaults) up to ReconnectBackoffMax, each attempt given the dial timeout.
func reconnectParams(dial time.Duration) grpc.ConnectParams {
	return grpc.ConnectParams{
		Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2,
			MaxDelay: ReconnectBackoffMax},
		MinConnectTimeout: dial,
	}
}

// newEtcdClient runs clientv3.New, which may block for DialTimeout, within ctx.
func newEtcdClient(ctx context.Context, cc clientv3.Config) (*clientv3.Client, error) {
	type result struct {
		cli *clientv3.Client
		err error
	}
	ch := make(chan result, 1)
	go func() {
		cli, err := clientv3.New(cc)
		ch <- result{cli, err}
	}()
	select {
	case r := <-ch:
		return r.cli, r.err
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.cli != nil {
				_ = r.cli.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

func isAuthError(err error) bool {
	return errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrPermissionDenied) ||
		errors.Is(err, rpctypes.ErrUserEmpty) || errors.Is(err, rpctypes.ErrAuthNotEnabled) ||
		errors.Is(err, rpctypes.ErrInvalidAuthToken)
}

// attemptTimeout leaves a quarter of ctx's remaining time for probing after a failed attempt.
func attemptTimeout(ctx context.Context, dial time.Duration) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if rem := time.Until(dl) * 3 / 4; rem < dial {
			return max(rem, time.Millisecond)
		}
	}
	return dial
}

// probeEndpoints connects to each endpoint and returns nil if one of them completes TCP and, for
// https, a TLS handshake that the server accepts; otherwise the errors of all.
func probeEndpoints(ctx context.Context, cfg Config, tlsConf *tls.Config) error {
	var errs []error
	for _, ep := range cfg.Endpoints {
		err := probeEndpoint(ctx, ep, tlsConf, cfg.DialTimeout)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", ep, err))
	}
	return errors.Join(errs...)
}

func probeEndpoint(ctx context.Context, ep string, tlsConf *tls.Config, timeout time.Duration) error {
	u, err := url.Parse(ep)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return err
	}
	defer conn.Close()
	if u.Scheme != "https" {
		return nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if tlsConf != nil {
		conf = tlsConf.Clone()
	}
	if conf.ServerName == "" {
		conf.ServerName = u.Hostname()
	}
	conf.NextProtos = []string{"h2"}
	tc := tls.Client(conn, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls handshake: %w", err)
	}
	// With TLS 1.3 the server judges the client certificate after the handshake; its verdict is
	// the first thing to read. An HTTP/2 server that accepted us sends its SETTINGS instead.
	readBy := time.Now().Add(500 * time.Millisecond)
	if dl, ok := ctx.Deadline(); ok && dl.Before(readBy) {
		readBy = dl
	}
	_ = tc.SetReadDeadline(readBy)
	if _, err := tc.Read(make([]byte, 1)); err != nil {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return nil
		}
		return fmt.Errorf("tls: server refused the connection: %w", err)
	}
	return nil
}

// Close ends every Watch of this Client and closes the connection.
func (c *Client) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.done)
		err = c.cli.Close()
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("datastore: close: %w", err)
	}
	return nil
}

// Raw returns the underlying etcd client for the rare caller that needs it. Keys written through
// it bypass validation; Prefix tells where Margay's keys live.
func (c *Client) Raw() *clientv3.Client { return c.cli }

// Prefix returns the key prefix of all of Margay's keys, e.g. "/margay/v1/".
func (c *Client) Prefix() string { return c.prefix }

// Pools stores IP pools at config/pools/<name>.
func (c *Client) Pools() Store[Pool] { return newStore(c, poolKind, "config/pools/", "") }

// BGPConfig stores the cluster's BGP settings at config/bgp.
func (c *Client) BGPConfig() Singleton[BGPConfig] {
	return Singleton[BGPConfig]{s: newStore(c, bgpConfigKind, "config/", bgpConfigName)}
}

// BGPPeers stores explicit BGP peers at bgp/peers/<name>.
func (c *Client) BGPPeers() Store[BGPPeer] { return newStore(c, bgpPeerKind, "bgp/peers/", "") }

// Policies stores the network policies at policies/<name>, a namespaced one at
// policies/<namespace>/<name> (names are Policy.Key).
func (c *Client) Policies() Store[Policy] { return newStore(c, policyKind, "policies/", "") }

// Tiers stores the policy tiers at tiers/<name>.
func (c *Client) Tiers() Store[Tier] { return newStore(c, tierKind, "tiers/", "") }

// Profiles stores the profiles at profiles/<name>.
func (c *Client) Profiles() Store[Profile] { return newStore(c, profileKind, "profiles/", "") }

// Nodes stores nodes at nodes/<name>.
func (c *Client) Nodes() Store[Node] { return newStore(c, nodeKind, "nodes/", "") }

// Blocks stores IPAM blocks at ipam/blocks/<BlockKeyName(cidr)>.
func (c *Client) Blocks() Store[Block] { return newStore(c, blockKind, "ipam/blocks/", "") }

// Handles stores IPAM handles at ipam/handles/<id>.
func (c *Client) Handles() Store[Handle] { return newStore(c, handleKind, "ipam/handles/", "") }

// Workloads stores the workloads of one node at workloads/<node>/<id>; names are IDs. node must
// be a valid name; if it is not, every operation of the store fails.
func (c *Client) Workloads(node string) Store[Workload] {
	s := newStore(c, nodeWorkloadsKind(node), "workloads/"+node+"/", "")
	if err := ValidateName(node); err != nil {
		s.err = fmt.Errorf("node: %w", err)
	}
	return s
}

// AllWorkloads stores the workloads of every node; names are "<node>/<id>".
func (c *Client) AllWorkloads() Store[Workload] {
	return newStore(c, allWorkloadsKind, "workloads/", "")
}

// skipMalformed logs and counts a malformed value once per key and ModRevision.
func (c *Client) skipMalformed(kind, key string, modRev int64, reason error) {
	c.mu.Lock()
	seen, ok := c.malformed[key]
	if ok && seen == modRev {
		c.mu.Unlock()
		return
	}
	if len(c.malformed) >= 4096 {
		clear(c.malformed) // bounded memory; a value may then be logged and counted again
	}
	c.malformed[key] = modRev
	c.mu.Unlock()
	c.metrics.malformed.WithLabelValues(kind).Inc()
	c.log.Warn("skipping malformed value", "kind", kind, "key", key, "modRevision", modRev, "reason", reason)
}

// tlsConfig builds the client TLS configuration from the files, or nil for plain http.
func (c Config) tlsConfig() (*tls.Config, error) {
	if c.CAFile == "" && c.CertFile == "" && !c.anyHTTPS() {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read etcd CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read etcd CA %s: no PEM certificate in it", c.CAFile)
		}
		conf.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load etcd client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// quietZap is the logger handed to the etcd libraries: errors only, on stderr.
func quietZap() *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), zap.ErrorLevel))
}
