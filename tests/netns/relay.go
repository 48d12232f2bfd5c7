package netns

import (
	"io"
	"net"
	"sync"
	"testing"
)

// Relay listens on 127.0.0.1 inside the namespace and forwards every connection to target, an
// address reachable from the test process's own namespace (an embedded etcd on the root
// namespace's loopback, say). It returns the address to use inside the namespace and stops at
// cleanup.
func (n *NS) Relay(tb testing.TB, target string) string {
	tb.Helper()
	var l net.Listener
	if err := n.Do(func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	// Dialled from a goroutine, so from the test process's namespace.
	return relay(tb, l, func() (net.Conn, error) { return net.Dial("tcp", target) })
}

// RelayInto is Relay the other way: it listens on 127.0.0.1 in the test process's namespace and
// forwards every connection to target inside the namespace (an agent's HTTP server on the
// namespace's loopback, say).
func (n *NS) RelayInto(tb testing.TB, target string) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return relay(tb, l, func() (c net.Conn, err error) {
		err = n.Do(func() error { c, err = net.Dial("tcp", target); return err })
		return c, err
	})
}

// relay accepts on l and copies both ways between each connection and one that dial makes,
// until cleanup closes everything.
func relay(tb testing.TB, l net.Listener, dial func() (net.Conn, error)) string {
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			track(c)
			wg.Go(func() {
				d, err := dial()
				if err != nil {
					_ = c.Close()
					return
				}
				track(d)
				go func() { _, _ = io.Copy(d, c); _ = d.Close() }()
				_, _ = io.Copy(c, d)
				_ = c.Close()
			})
		}
	})
	tb.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String()
}
