package etcdembed

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/margaynet/margay/control/datastore"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Etcd is a single-member etcd running in this process, for the lab and for tests.
type Etcd struct {
	etcd      *embed.Etcd
	endpoints []string
	closing   *atomic.Bool // silences etcd's log while it shuts down: it reports every closed listener as an error
	closeOnce sync.Once
}

// Option configures Start.
type Option func(*options)

type options struct {
	clientURL    string
	peerURL      string
	certFile     string
	keyFile      string
	clientCAFile string
	readyTimeout time.Duration
	noFsync      bool
	logger       *zap.Logger
}

// WithClientURL sets the URL etcd serves clients on (default http://127.0.0.1:2379). Port 0
// picks a free port; Endpoints then tells which. An https URL needs WithServerTLS.
func WithClientURL(u string) Option { return func(o *options) { o.clientURL = u } }

// WithPeerURL sets the URL for raft peers (default http://127.0.0.1:0, a free port: a
// single-member cluster has no peers).
func WithPeerURL(u string) Option { return func(o *options) { o.peerURL = u } }

// WithServerTLS serves clients over TLS with the given PEM certificate and key. If clientCAFile is
// set, clients must present a certificate signed by it.
func WithServerTLS(certFile, keyFile, clientCAFile string) Option {
	return func(o *options) { o.certFile, o.keyFile, o.clientCAFile = certFile, keyFile, clientCAFile }
}

// WithReadyTimeout bounds the wait for etcd to serve (default 30s).
func WithReadyTimeout(d time.Duration) Option {
	return func(o *options) { o.readyTimeout = d }
}

// WithUnsafeNoFsync turns off fsync: much faster, and loses data on a crash. For tests only.
func WithUnsafeNoFsync() Option { return func(o *options) { o.noFsync = true } }

// WithEtcdLogger sets etcd's own logger; the default logs errors to stderr.
func WithEtcdLogger(l *zap.Logger) Option { return func(o *options) { o.logger = l } }

// Start starts etcd with its data in dir and waits until it serves, bounded by ctx and the
// ready timeout. Restarting on the same dir keeps the data.
func Start(ctx context.Context, dir string, opts ...Option) (*Etcd, error) {
	o := options{
		clientURL:    datastore.DefaultEndpoint,
		peerURL:      "http://127.0.0.1:0",
		readyTimeout: 30 * time.Second,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = quietZap()
	}
	closing := new(atomic.Bool)
	logger := o.logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return mutableCore{c, closing} }))
	cu, err := url.Parse(o.clientURL)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: start etcd: client URL: %w", err)
	}
	pu, err := url.Parse(o.peerURL)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: start etcd: peer URL: %w", err)
	}
	if cu.Scheme == "https" && o.certFile == "" {
		return nil, fmt.Errorf("etcdembed: start etcd: client URL %s is https but no certificate is given", o.clientURL)
	}

	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Name = "margay"
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.InitialClusterToken = "margay"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(logger)
	// The gateway dials the listen address, which is wrong for port 0; Margay does not use it.
	cfg.EnableGRPCGateway = false
	cfg.UnsafeNoFsync = o.noFsync
	if o.certFile != "" {
		cfg.ClientTLSInfo.CertFile = o.certFile
		cfg.ClientTLSInfo.KeyFile = o.keyFile
		cfg.ClientTLSInfo.TrustedCAFile = o.clientCAFile
		cfg.ClientTLSInfo.ClientCertAuth = o.clientCAFile != ""
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcdembed: start etcd in %s: %w", dir, err)
	}
	timer := time.NewTimer(o.readyTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("etcdembed: start etcd in %s: %w", dir, err)
	case <-timer.C:
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("etcdembed: start etcd in %s: not ready after %s", dir, o.readyTimeout)
	case <-ctx.Done():
		closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("etcdembed: start etcd in %s: %w", dir, ctx.Err())
	}
	em := &Etcd{etcd: e, closing: closing}
	for _, l := range e.Clients {
		em.endpoints = append(em.endpoints, cu.Scheme+"://"+l.Addr().String())
	}
	if len(em.endpoints) == 0 {
		em.Close()
		return nil, errors.New("etcdembed: start etcd: no client listener")
	}
	return em, nil
}

// Endpoints returns the client URLs with the ports actually bound.
func (e *Etcd) Endpoints() []string { return append([]string(nil), e.endpoints...) }

// Close stops etcd and waits until it has stopped. It is safe to call more than once.
func (e *Etcd) Close() {
	e.closeOnce.Do(func() {
		e.closing.Store(true)
		e.etcd.Close()
		<-e.etcd.Server.StopNotify()
	})
}

// mutableCore drops every entry once muted is set.
type mutableCore struct {
	zapcore.Core
	muted *atomic.Bool
}

func (c mutableCore) With(fields []zapcore.Field) zapcore.Core {
	return mutableCore{c.Core.With(fields), c.muted}
}

func (c mutableCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.muted.Load() {
		return ce
	}
	return c.Core.Check(e, ce)
}

// quietZap is the logger handed to etcd: errors only, on stderr.
func quietZap() *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), zap.ErrorLevel))
}
