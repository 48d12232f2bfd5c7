package benchsuite_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/margaynet/margay/tests/benchsuite"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

const dialTimeout = 2 * time.Second

// server is what runs in the server's namespace for the whole run: iperf3 -s, and a Go server
// that answers every byte with itself and closes after a 'c'.
type server struct {
	iperf *exec.Cmd
	ln    *net.TCPListener
	udp   *net.UDPConn // echoes every datagram on rrPort: the new-flow test
}

func startServer(tb testing.TB, ns *netns.NS) *server {
	tb.Helper()
	s := &server{}
	if err := ns.Do(func() (err error) {
		s.ln, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(serverIP, rrPort)))
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	netns.ServeByteEcho(tb, s.ln)
	if err := ns.Do(func() (err error) {
		s.udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(serverIP, rrPort)))
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	done := netns.ServeUDPEcho(s.udp)
	tb.Cleanup(func() { s.udp.Close(); <-done })

	if _, err := exec.LookPath("iperf3"); err != nil {
		tb.Fatal("iperf3 is missing: apt-get install -y iperf3")
	}
	s.iperf = ns.Command("iperf3", "-s", "-B", serverIP.String(), "-p", strconv.Itoa(iperfPort))
	s.iperf.Stdout, s.iperf.Stderr = io.Discard, io.Discard
	s.iperf.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.iperf.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.iperf.Process.Kill(); _ = s.iperf.Wait() })
	poll.Until(tb, "iperf3 -s in "+ns.Name+" listens", 5*time.Second, func() error {
		return ns.Do(func() error {
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(serverIP, iperfPort).String(), 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
	})
	return s
}

// cpuBusy is the machine's busy and total jiffies so far (/proc/stat, all CPUs).
func cpuBusy() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, s := range f[1:] {
		v, _ := strconv.ParseUint(s, 10, 64)
		if i >= 8 { // guest time is already in user
			break
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

const userHZ = 100 // USER_HZ: /proc/stat counts in 1/100 s

// cpuWindow measures busy CPU seconds across fn.
func cpuWindow(fn func() error) (float64, error) {
	b0, _ := cpuBusy()
	err := fn()
	b1, _ := cpuBusy()
	return float64(b1-b0) / userHZ, err
}

type iperfResult struct {
	End struct {
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
		SumSent struct {
			Retransmits float64 `json:"retransmits"`
		} `json:"sum_sent"`
	} `json:"end"`
	Error string `json:"error"`
}

// stream runs iperf3 from the client for secs seconds and fills the stream figures.
func (t *topo) stream(secs int, s *benchsuite.Sample) error {
	var out []byte
	cpu, err := cpuWindow(func() error {
		var err error
		out, err = t.client.Command("iperf3", "-c", t.dst.String(), "-B", clientIP.String(),
			"-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs), "-J").Output()
		return err
	})
	var r iperfResult
	if jerr := json.Unmarshal(out, &r); jerr != nil || r.Error != "" || err != nil {
		return fmt.Errorf("%v: iperf3: %v %v %s", t, err, jerr, r.Error)
	}
	gbit := r.End.SumReceived.Bytes * 8 / 1e9
	if gbit == 0 {
		return fmt.Errorf("%v: iperf3 carried nothing", t)
	}
	s.StreamGbps = r.End.SumReceived.BitsPerSecond / 1e9
	s.StreamCPUPerGbit = cpu / gbit
	s.StreamRetrans = r.End.SumSent.Retransmits
	return nil
}

// dialer connects from the client's only address; leaving the source to routing lets the
// kernel pick the port at connect time, as netperf's CRR does, not at bind time.
func (t *topo) dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout}
}

// rr sends one byte and reads the answer on one connection, back to back, for d.
func (t *topo) rr(d time.Duration, s *benchsuite.Sample) error {
	var conn net.Conn
	if err := t.client.Do(func() (err error) {
		conn, err = t.dialer(dialTimeout).Dial("tcp4", netip.AddrPortFrom(t.dst, rrPort).String())
		return err
	}); err != nil {
		return fmt.Errorf("%v: rr: %w", t, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(d + dialTimeout))
	buf := []byte{'r'}
	// One warm-up transaction, so the connection's first round trip is not counted.
	if _, err := conn.Write(buf); err != nil {
		return err
	}
	if _, err := io.ReadFull(conn, buf); err != nil {
		return err
	}
	lat := make([]time.Duration, 0, 1<<18)
	var n int
	start := time.Now()
	busy, err := cpuWindow(func() error {
		prev := start
		for prev.Sub(start) < d {
			if _, err := conn.Write(buf); err != nil {
				return fmt.Errorf("%v: rr transaction %d: %w", t, n, err)
			}
			if _, err := io.ReadFull(conn, buf); err != nil {
				return fmt.Errorf("%v: rr transaction %d: %w", t, n, err)
			}
			now := time.Now()
			lat = append(lat, now.Sub(prev))
			prev = now
			n++
		}
		return nil
	})
	if err != nil {
		return err
	}
	el := time.Since(start)
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) / 1e3 }
	s.RR = float64(n) / el.Seconds()
	s.RRP50, s.RRP90, s.RRP99 = pct(0.50), pct(0.90), pct(0.99)
	s.RRCPU = busy / float64(n) * 1e6
	return nil
}

// crr opens connections one after the other for d: connect, one byte each way, the server
// closes, the client closes.
func (t *topo) crr(d time.Duration, s *benchsuite.Sample) error {
	var n int
	var elapsed time.Duration
	addr := netip.AddrPortFrom(t.dst, rrPort).String()
	busy, err := cpuWindow(func() error {
		return t.client.Do(func() (err error) {
			n, elapsed, err = netns.ByteEchoCRR(t.dialer(dialTimeout), addr, d, dialTimeout)
			if err != nil {
				return fmt.Errorf("%v: crr %w", t, err)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	s.CRR = float64(n) / elapsed.Seconds()
	s.CRRCPU = busy / float64(n) * 1e6
	return nil
}

// exchange proves TCP works end to end: a few bytes to the RR server and back.
// newFlows sends one datagram from a new socket (a new source port: a new flow) at a time and
// waits for its echo, for d: every request is its flow's first packet, every reply its second.
// It returns the flows done.
func (t *topo) newFlows(d time.Duration) (int, error) {
	n := 0
	buf := []byte{'n'}
	for start := time.Now(); time.Since(start) < d; n++ {
		var c net.Conn
		if err := t.client.Do(func() (err error) {
			c, err = net.Dial("udp4", netip.AddrPortFrom(t.dst, rrPort).String())
			return err
		}); err != nil {
			return n, fmt.Errorf("%v: new flow %d: %w", t, n, err)
		}
		_ = c.SetDeadline(time.Now().Add(dialTimeout))
		_, err := c.Write(buf)
		if err == nil {
			_, err = c.Read(buf)
		}
		c.Close()
		if err != nil {
			return n, fmt.Errorf("%v: new flow %d: %w", t, n, err)
		}
	}
	return n, nil
}

func (t *topo) exchange() error {
	return t.client.Do(func() error {
		c, err := t.dialer(dialTimeout).Dial("tcp4", netip.AddrPortFrom(t.dst, rrPort).String())
		if err != nil {
			return fmt.Errorf("%v: %w", t, err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(dialTimeout))
		for _, b := range []byte("margay") {
			buf := []byte{b}
			if _, err := c.Write(buf); err != nil {
				return err
			}
			if _, err := io.ReadFull(c, buf); err != nil || buf[0] != b {
				return fmt.Errorf("%v: echoed %q, %v", t, buf, err)
			}
		}
		return nil
	})
}

// denied requires that a connection to a port no rule allows times out: dropped by the filter,
// not refused by the server's kernel.
func (t *topo) denied() error {
	return t.client.Do(func() error {
		c, err := t.dialer(300*time.Millisecond).Dial("tcp4", netip.AddrPortFrom(t.dst, deniedPort).String())
		if err == nil {
			c.Close()
			return fmt.Errorf("%v: port %d connected", t, deniedPort)
		}
		if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
			return fmt.Errorf("%v: port %d: %w, want a timeout (a silent drop)", t, deniedPort, err)
		}
		return nil
	})
}

// forwarded is the IPv4 datagrams the host's kernel forwarded (Ip: ForwDatagrams).
func forwarded(tb testing.TB, ns *netns.NS) uint64 {
	tb.Helper()
	v, err := ns.NetStat("snmp", "Ip", "ForwDatagrams")
	if err != nil {
		tb.Fatal(err)
	}
	return v
}
