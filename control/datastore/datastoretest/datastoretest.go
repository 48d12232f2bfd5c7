package datastoretest

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/etcdembed"
)

// Start starts an embedded etcd on a free loopback port with its data in tb.TempDir() and stops
// it on cleanup. Every call gets its own etcd, so tests and packages can run in parallel.
func Start(tb testing.TB, opts ...etcdembed.Option) *etcdembed.Etcd {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts = append([]etcdembed.Option{
		etcdembed.WithClientURL("http://127.0.0.1:0"),
		etcdembed.WithUnsafeNoFsync(),
	}, opts...)
	e, err := etcdembed.Start(ctx, tb.TempDir(), opts...)
	if err != nil {
		tb.Fatalf("start embedded etcd: %v", err)
	}
	tb.Cleanup(e.Close)
	return e
}

// New starts an embedded etcd (see Start) and returns a Client connected to it that logs to tb.
// Both are closed on cleanup. opts go to datastore.New after the test logger, so they may
// replace it.
func New(tb testing.TB, opts ...datastore.Option) *datastore.Client {
	tb.Helper()
	e := Start(tb)
	return Connect(tb, datastore.Config{Endpoints: e.Endpoints()}, opts...)
}

// Connect returns a Client for cfg that logs to tb and is closed on cleanup.
func Connect(tb testing.TB, cfg datastore.Config, opts ...datastore.Option) *datastore.Client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts = append([]datastore.Option{datastore.WithLogger(Logger(tb))}, opts...)
	c, err := datastore.New(ctx, cfg, opts...)
	if err != nil {
		tb.Fatalf("connect to embedded etcd: %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Logger returns a logger that writes to tb.Log and goes quiet once the test's cleanup has
// started, so that goroutines still running then cannot log after the test ended.
func Logger(tb testing.TB) *slog.Logger {
	w := &tbWriter{tb: tb}
	tb.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct {
	mu      sync.Mutex
	tb      testing.TB
	stopped bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tbWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}

// RegisterNodes registers each node as its agent would (nodes/<name>, addressV4 198.18.0.1/24,
// uplink eth0), unless it is registered already: IPAM gives unregistered nodes no address.
func RegisterNodes(tb testing.TB, c *datastore.Client, names ...string) {
	tb.Helper()
	for _, name := range names {
		n := datastore.Node{Version: datastore.CurrentVersion, Name: name,
			AddressV4: netip.MustParsePrefix("198.18.0.1/24"), Uplink: "eth0"}
		if _, err := c.Nodes().Create(context.Background(), name, n); err != nil && !errors.Is(err, datastore.ErrExists) {
			tb.Fatalf("register node %s: %v", name, err)
		}
	}
}
