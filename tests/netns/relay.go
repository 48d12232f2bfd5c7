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
				// Dialled from a goroutine, so from the test process's namespace.
				d, err := net.Dial("tcp", target)
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
