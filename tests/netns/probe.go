package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/margaynet/margay/tests/poll"
)

// Probe sends a numbered UDP datagram from one namespace to an echo server in another at a fixed
// interval and records which came back: a ping flood whose losses can be counted exactly, since
// the prober, not a timeout, decides when the window ends.
type Probe struct {
	interval time.Duration
	conn     *net.UDPConn
	srv      *net.UDPConn
	stop     chan struct{}
	sent     atomic.Uint64
	mu       sync.Mutex
	got      map[uint64]time.Time
	sentAt   []time.Time
	done     chan struct{}
	served   <-chan struct{}
	stopped  bool
}

// ProbeResult is what a probe counted.
type ProbeResult struct {
	Sent, Received int
	// Lost lists the sequence numbers that never came back.
	Lost []uint64
	// Gap is the longest stretch of time covered by consecutive lost probes (0 without loss).
	Gap time.Duration
}

func (r ProbeResult) String() string {
	return fmt.Sprintf("%d sent, %d received, %d lost, longest gap %v", r.Sent, r.Received, len(r.Lost), r.Gap)
}

// StartProbe starts probing dstIP (in dst) from srcIP (in src) every interval until Stop, which
// also runs at cleanup.
func StartProbe(tb testing.TB, src *NS, srcIP netip.Addr, dst *NS, dstIP netip.Addr, interval time.Duration) *Probe {
	tb.Helper()
	p := &Probe{interval: interval, stop: make(chan struct{}), got: map[uint64]time.Time{}, done: make(chan struct{})}
	if err := dst.Do(func() (err error) {
		p.srv, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(dstIP, 0)))
		return err
	}); err != nil {
		tb.Fatalf("probe: listen in %s: %v", dst.Name, err)
	}
	p.served = ServeUDPEcho(p.srv)
	if err := src.Do(func() (err error) {
		p.conn, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(srcIP, 0)),
			net.UDPAddrFromAddrPort(p.srv.LocalAddr().(*net.UDPAddr).AddrPort()))
		return err
	}); err != nil {
		p.srv.Close()
		tb.Fatalf("probe %s → %s: %v", src.Name, dst.Name, err)
	}
	go p.receive()
	go p.send()
	tb.Cleanup(func() { p.Stop() })
	return p
}

func (p *Probe) send() {
	defer close(p.done)
	tick := time.NewTicker(p.interval)
	defer tick.Stop()
	var msg [8]byte
	for seq := uint64(0); ; seq++ {
		binary.BigEndian.PutUint64(msg[:], seq)
		p.mu.Lock()
		p.sentAt = append(p.sentAt, time.Now())
		p.mu.Unlock()
		p.sent.Add(1)
		// A send error (an ICMP error reported on the socket while there is no path) is a lost
		// probe like any other: it shows as a missing echo.
		_, _ = p.conn.Write(msg[:])
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
	}
}

func (p *Probe) receive() {
	buf := make([]byte, 64)
	for {
		n, err := p.conn.Read(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil || n != 8 {
			continue // ICMP errors surface as read errors on a connected UDP socket
		}
		seq := binary.BigEndian.Uint64(buf[:8])
		p.mu.Lock()
		p.got[seq] = time.Now()
		p.mu.Unlock()
	}
}

// Sent is how many probes went out so far.
func (p *Probe) Sent() int { return int(p.sent.Load()) }

// Received is how many distinct probes came back so far.
func (p *Probe) Received() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.got)
}

// Stop ends sending, waits (at most 2 s) for the echoes still in flight and returns the count.
func (p *Probe) Stop() ProbeResult {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return p.result()
	}
	p.stopped = true
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	// The echoes still in flight, for at most 2 s: those that do not come by then are lost.
	_ = poll.Every(10*time.Millisecond, 2*time.Second, func() error {
		if received, sent := p.Received(), p.Sent(); received < sent {
			return fmt.Errorf("%d of %d probes back", received, sent)
		}
		return nil
	})
	p.conn.Close()
	p.srv.Close()
	<-p.served
	return p.result()
}

func (p *Probe) result() ProbeResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := ProbeResult{Sent: len(p.sentAt), Received: len(p.got)}
	var gapStart time.Time
	for seq := range uint64(len(p.sentAt)) {
		if _, ok := p.got[seq]; ok {
			if !gapStart.IsZero() {
				r.Gap = max(r.Gap, p.sentAt[seq].Sub(gapStart))
				gapStart = time.Time{}
			}
			continue
		}
		r.Lost = append(r.Lost, seq)
		if gapStart.IsZero() {
			gapStart = p.sentAt[seq]
		}
	}
	if !gapStart.IsZero() {
		r.Gap = max(r.Gap, p.sentAt[len(p.sentAt)-1].Sub(gapStart)+p.interval)
	}
	return r
}

// Stream is a TCP connection from one namespace to a sink in another that the sender keeps busy
// at a bounded rate, counting the bytes the sink received: it shows whether a connection survives
// (no reset) and keeps making progress through an event.
type Stream struct {
	conn     *net.TCPConn
	ln       *net.TCPListener
	received atomic.Int64
	sent     atomic.Int64
	stop     chan struct{}
	sendErr  chan error
	recvErr  chan error
	stopOnce sync.Once
	result   error
}

// StartStream connects srcIP (in src) to a sink at dstIP (in dst) and sends chunk bytes every
// interval until Stop (also run at cleanup).
func StartStream(tb testing.TB, src *NS, srcIP netip.Addr, dst *NS, dstIP netip.Addr, chunk int, interval time.Duration) *Stream {
	tb.Helper()
	s := &Stream{stop: make(chan struct{}), sendErr: make(chan error, 1), recvErr: make(chan error, 1)}
	if err := dst.Do(func() (err error) {
		s.ln, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(dstIP, 0)))
		return err
	}); err != nil {
		tb.Fatalf("stream: listen in %s: %v", dst.Name, err)
	}
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, err := s.ln.AcceptTCP()
		if err != nil {
			s.recvErr <- fmt.Errorf("accept: %w", err)
			close(accepted)
			return
		}
		accepted <- c
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			s.received.Add(int64(n))
			if err == io.EOF {
				s.recvErr <- nil
				return
			}
			if err != nil {
				s.recvErr <- fmt.Errorf("receive: %w", err)
				return
			}
		}
	}()
	if err := src.Do(func() (err error) {
		d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(srcIP, 0))}
		c, err := d.Dial("tcp4", s.ln.Addr().String())
		if err == nil {
			s.conn = c.(*net.TCPConn)
		}
		return err
	}); err != nil {
		s.ln.Close()
		tb.Fatalf("stream %s → %s: %v", src.Name, dst.Name, err)
	}
	if <-accepted == nil {
		tb.Fatalf("stream %s → %s: %v", src.Name, dst.Name, <-s.recvErr)
	}
	go func() {
		buf := make([]byte, chunk)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				s.sendErr <- s.conn.CloseWrite()
				return
			case <-tick.C:
			}
			n, err := s.conn.Write(buf)
			s.sent.Add(int64(n))
			if err != nil {
				s.sendErr <- fmt.Errorf("send: %w", err)
				return
			}
		}
	}()
	tb.Cleanup(func() { _ = s.Stop(5 * time.Second) })
	return s
}

// Received is the number of bytes the sink has read so far.
func (s *Stream) Received() int64 { return s.received.Load() }

// Sent is the number of bytes the sender has written so far.
func (s *Stream) Sent() int64 { return s.sent.Load() }

// Stop ends the stream with a FIN and waits (at most timeout) for the sink to read everything:
// an error means the connection broke (reset, timeout) or bytes went missing.
func (s *Stream) Stop(timeout time.Duration) error {
	s.stopOnce.Do(func() {
		close(s.stop)
		end := time.Now().Add(timeout)
		var errs []error
		select {
		case err := <-s.sendErr:
			errs = append(errs, err)
		case <-time.After(time.Until(end)):
			errs = append(errs, errors.New("sender did not stop"))
		}
		select {
		case err := <-s.recvErr:
			errs = append(errs, err)
		case <-time.After(time.Until(end)):
			errs = append(errs, errors.New("sink did not see the end of the stream"))
		}
		if err := errors.Join(errs...); err != nil {
			s.result = err
		} else if s.Received() != s.Sent() {
			s.result = fmt.Errorf("sent %d bytes, the sink read %d", s.Sent(), s.Received())
		}
		s.conn.Close()
		s.ln.Close()
	})
	return s.result
}
