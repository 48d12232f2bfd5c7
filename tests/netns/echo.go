package netns

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/margaynet/margay/tests/poll"
)

// TCPEcho connects from src to an echo server in dst, sends size random bytes and requires them
// back unchanged. Sockets belong to the namespace they are created in, so the listener is made in
// dst and the dialer in src.
func TCPEcho(tb testing.TB, src *NS, srcIP netip.Addr, dst *NS, dstIP netip.Addr, size int, timeout time.Duration) {
	tb.Helper()
	var ln *net.TCPListener
	if err := dst.Do(func() (err error) {
		ln, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(dstIP, 0)))
		return err
	}); err != nil {
		tb.Fatalf("listen in %s: %v", dst.Name, err)
	}
	defer ln.Close()
	deadline := time.Now().Add(timeout)
	_ = ln.SetDeadline(deadline)

	served := make(chan error, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err != nil {
			served <- fmt.Errorf("accept: %w", err)
			return
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		if _, err := io.Copy(c, c); err != nil {
			served <- fmt.Errorf("echo: %w", err)
			return
		}
		served <- c.CloseWrite()
	}()

	var c *net.TCPConn
	if err := src.Do(func() (err error) {
		d := net.Dialer{Deadline: deadline, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(srcIP, 0))}
		conn, err := d.Dial("tcp4", ln.Addr().String())
		if err == nil {
			c = conn.(*net.TCPConn)
		}
		return err
	}); err != nil {
		tb.Fatalf("tcp %s → %s: %v", src.Name, dst.Name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)

	payload := randomBytes(tb, size)
	// Write while reading: the echo would stall once both socket buffers are full.
	written := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite()
		}
		written <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := errors.Join(rerr, <-written, <-served); err != nil {
		tb.Fatalf("tcp %s → %s: %v", src.Name, dst.Name, err)
	}
	if !bytes.Equal(got, payload) {
		tb.Fatalf("tcp %s → %s: echoed %d bytes that differ from the %d sent", src.Name, dst.Name, len(got), size)
	}
}

// UDPEcho sends a few datagrams from src to an echo server in dst and requires each back. A
// datagram may be lost while a neighbour entry resolves, so each is retried until the deadline.
func UDPEcho(tb testing.TB, src *NS, srcIP netip.Addr, dst *NS, dstIP netip.Addr, size int, timeout time.Duration) {
	tb.Helper()
	var srv *net.UDPConn
	if err := dst.Do(func() (err error) {
		srv, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(dstIP, 0)))
		return err
	}); err != nil {
		tb.Fatalf("listen in %s: %v", dst.Name, err)
	}
	served := make(chan struct{})
	defer func() {
		srv.Close()
		<-served // the server goroutine has stopped
	}()
	go func() {
		defer close(served)
		buf := make([]byte, 65536)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return // closed
			}
			_, _ = srv.WriteToUDPAddrPort(buf[:n], from)
		}
	}()

	var c *net.UDPConn
	if err := src.Do(func() (err error) {
		c, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(srcIP, 0)),
			net.UDPAddrFromAddrPort(srv.LocalAddr().(*net.UDPAddr).AddrPort()))
		return err
	}); err != nil {
		tb.Fatalf("udp %s → %s: %v", src.Name, dst.Name, err)
	}
	defer c.Close()

	// Three datagrams, each sent again until echoed, all within timeout. Each try waits for its
	// echo itself (300 ms): no pause between tries.
	buf := make([]byte, 65536)
	echo := func(msg []byte) error {
		if _, err := c.Write(msg); err != nil {
			tb.Fatalf("udp %s → %s: %v", src.Name, dst.Name, err)
		}
		// Read until the echo of this datagram or a short timeout; late echoes of earlier
		// retries are skipped.
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, err := c.Read(buf)
			if err != nil {
				return err // timeout (or an ICMP error while the path is not ready): send again
			}
			if bytes.Equal(buf[:n], msg) {
				return nil
			}
		}
	}
	echoed := 0
	var msg []byte
	if err := poll.Every(0, timeout, func() error {
		for ; echoed < 3; echoed, msg = echoed+1, nil {
			if msg == nil {
				msg = randomBytes(tb, size)
			}
			if err := echo(msg); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		tb.Fatalf("udp %s → %s: datagram %d not echoed within %v: %v", src.Name, dst.Name, echoed, timeout, err)
	}
}

func randomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// ServeByteEcho serves request/response benchmarks on ln until cleanup: each connection answers
// every byte with itself, and after a 'c' it closes, so that the server closes first and the
// client, whose ports a connection rate uses up, keeps no TIME_WAIT.
func ServeByteEcho(tb testing.TB, ln net.Listener) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Go(func() {
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				buf := make([]byte, 1)
				for {
					if _, err := io.ReadFull(c, buf); err != nil {
						return
					}
					if _, err := c.Write(buf); err != nil || buf[0] == 'c' {
						return
					}
				}
			})
		}
	})
	// Cleanups run last in first out: registered after the namespaces', this runs before they go.
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// ByteEchoCRR is the client of ServeByteEcho's connection-rate test, from the calling goroutine's
// namespace: for d it opens connections one after the other with dl, sends a 'c', reads the
// answer and the server's close, and closes. It returns the connections completed and the time
// they took; timeout bounds each connection's exchange.
func ByteEchoCRR(dl *net.Dialer, addr string, d, timeout time.Duration) (n int, elapsed time.Duration, err error) {
	buf := make([]byte, 2)
	start := time.Now()
	for {
		elapsed = time.Since(start)
		if elapsed >= d {
			return n, elapsed, nil
		}
		c, err := dl.Dial("tcp4", addr)
		if err != nil {
			return n, elapsed, fmt.Errorf("connection %d: %w", n, err)
		}
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err = c.Write([]byte{'c'}); err == nil {
			_, err = io.ReadFull(c, buf[:1])
		}
		if err == nil {
			if _, rerr := c.Read(buf); rerr != io.EOF {
				err = fmt.Errorf("read after the answer: %v, want EOF", rerr)
			}
		}
		c.Close()
		if err != nil {
			return n, elapsed, fmt.Errorf("connection %d: %w", n, err)
		}
		n++
	}
}

// ServeUDPEcho answers every datagram on conn with itself, until conn is closed; the returned
// channel closes when the server has stopped.
func ServeUDPEcho(conn *net.UDPConn) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return done
}
