package policybench_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/benchrules"
	"github.com/margaynet/margay/tests/netns"
)

// The two ways a host enforces the rules: iptables rules in its FORWARD chain on the kernel's
// forwarding path, or Margay's programs on the workload veths with the rules compiled into maps.
const (
	modeIptables = "iptables"
	modeMargay   = "margay"
)

const (
	gateway       = "169.254.1.1" // what workloads route through, as in Calico
	trafficRounds = 7
	measureFor    = time.Second
	dialTimeout   = 2 * time.Second
)

// topology is a host namespace with two workloads, the client and the server, each in its own
// namespace behind a cali* veth, set up as Calico's CNI plugin does: a /32 on eth0, a default
// route through 169.254.1.1, proxy ARP on the host side. The server listens on the port the last
// of n rules allows and on deniedPort, which no rule allows.
type topology struct {
	mode                 string
	n                    int
	host, client, server *netns.NS
	ifindex              map[string]uint32
	margay               *margayHost // mode margay only
	allowed, denied      *net.TCPListener
	rrConn               *net.TCPConn // an open connection for request/response, from the client
}

func newTopology(tb testing.TB, mode string, n int) *topology {
	tb.Helper()
	t := &topology{mode: mode, n: n, ifindex: map[string]uint32{},
		host:   netns.New(tb, "mgpbhost"),
		client: netns.New(tb, "mgpbcli"),
		server: netns.New(tb, "mgpbsrv"),
	}
	t.host.MustSysctl(tb, "ipv4/ip_forward", "1")
	macs := map[string]net.HardwareAddr{}
	for _, w := range []struct {
		ns   *netns.NS
		cali string
		ip   netip.Addr
	}{{t.client, wepA, clientIP}, {t.server, wepB, serverIP}} {
		netns.Veth(tb, t.host, w.cali, w.ns, "eth0")
		w.ns.AddAddr(tb, "eth0", netip.PrefixFrom(w.ip, 32).String())
		w.ns.RouteDev(tb, gateway+"/32", "eth0")
		w.ns.RouteVia(tb, "default", gateway, "eth0")
		w.ns.PermanentNeigh(tb, "eth0", gateway, hostVethMAC.String())
		macs[w.cali] = w.ns.Link(tb, "eth0").Attrs().HardwareAddr

		t.host.SetMAC(tb, w.cali, hostVethMAC.String())
		t.host.MustSysctl(tb, "ipv4/conf/"+w.cali+"/proxy_arp", "1")
		t.host.MustSysctl(tb, "ipv4/conf/"+w.cali+"/forwarding", "1")
		t.host.RouteDev(tb, netip.PrefixFrom(w.ip, 32).String(), w.cali)
		// The host holds no address to ARP from: its neighbours are fixed, as ARP is no part of
		// what is measured.
		t.host.PermanentNeigh(tb, w.cali, w.ip.String(), macs[w.cali].String())
		t.ifindex[w.cali] = uint32(t.host.Link(tb, w.cali).Attrs().Index)
	}

	switch mode {
	case modeIptables:
		t.host.IPTablesRestore(tb, benchRules(n).IPTables())
	case modeMargay:
		// FORWARD drops everything: traffic that does not take the eBPF path does not arrive.
		t.host.IPTablesRestore(tb, benchrules.ForwardDrop)
		t.margay = loadMargay(tb, t.host)
		t.margay.install(tb, layout{rules: n},
			maps.Endpoint{Ifindex: t.ifindex[wepA], IPv4: clientIP, MAC: macs[wepA]},
			maps.Endpoint{Ifindex: t.ifindex[wepB], IPv4: serverIP, MAC: macs[wepB]})
		err := t.host.Do(func() error {
			for _, ifname := range []string{wepA, wepB} {
				if err := t.margay.dp.AttachWorkload(ifname); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	default:
		tb.Fatalf("mode %q", mode)
	}

	t.allowed = t.listen(tb, allowedPort(n))
	t.denied = t.listen(tb, deniedPort)
	return t
}

func (t *topology) String() string { return fmt.Sprintf("%s/rules=%d", t.mode, t.n) }

// listen starts a server on the server's address and port. Each connection answers every byte
// with itself; after a 'c' it closes, so that the server closes first and the client, whose ports
// a connection rate uses up, keeps no TIME_WAIT.
func (t *topology) listen(tb testing.TB, port uint16) *net.TCPListener {
	tb.Helper()
	var ln *net.TCPListener
	if err := t.server.Do(func() (err error) {
		ln, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(serverIP, port)))
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	netns.ServeByteEcho(tb, ln)
	return ln
}

func (t *topology) dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(clientIP, 0))}
}

// crr opens connections one after the other for d, each sending one byte, reading the answer and
// the server's close, and returns connections per second.
func (t *topology) crr(d time.Duration) (float64, error) {
	var n int
	var elapsed time.Duration
	addr := t.allowed.Addr().String()
	err := t.client.Do(func() (err error) {
		n, elapsed, err = netns.ByteEchoCRR(t.dialer(dialTimeout), addr, d, dialTimeout)
		if err != nil {
			return fmt.Errorf("%v: %w", t, err)
		}
		return nil
	})
	return float64(n) / elapsed.Seconds(), err
}

// rr sends one byte and reads the answer on one open connection, for d, and returns
// transactions per second.
func (t *topology) rr(tb testing.TB, d time.Duration) (float64, error) {
	if t.rrConn == nil {
		if err := t.client.Do(func() error {
			c, err := t.dialer(dialTimeout).Dial("tcp4", t.allowed.Addr().String())
			if err == nil {
				t.rrConn = c.(*net.TCPConn)
			}
			return err
		}); err != nil {
			return 0, fmt.Errorf("%v: %w", t, err)
		}
		tb.Cleanup(func() { t.rrConn.Close() })
	}
	_ = t.rrConn.SetDeadline(time.Now().Add(d + dialTimeout))
	buf := []byte{'r'}
	var n int
	start := time.Now()
	for time.Since(start) < d {
		if _, err := t.rrConn.Write(buf); err != nil {
			return 0, fmt.Errorf("%v: transaction %d: %w", t, n, err)
		}
		if _, err := io.ReadFull(t.rrConn, buf); err != nil {
			return 0, fmt.Errorf("%v: transaction %d: %w", t, n, err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// check proves the path is the intended one before anything is timed: a connection to the
// allowed port carries data, and the enforcing side counted it where it should (the last rule's
// iptables counter; Margay's FWD_LOCAL with the flow's conntrack entry naming the last rule); a
// connection to deniedPort times out, dropped and counted as a drop (iptables' final DROP;
// Margay's DROP_POLICY_INGRESS), not refused.
func (t *topology) check(tb testing.TB) {
	tb.Helper()
	var accept, drop uint64
	var fwd, denied uint64
	if t.mode == modeIptables {
		accept, drop = t.iptablesCounters(tb)
	} else {
		fwd = t.margay.counter(tb, t.ifindex[wepA], loader.MargayReasonREASON_FWD_LOCAL)
		denied = t.margay.counter(tb, t.ifindex[wepA], loader.MargayReasonREASON_DROP_POLICY_INGRESS)
	}

	var local netip.AddrPort
	err := t.client.Do(func() error {
		c, err := t.dialer(dialTimeout).Dial("tcp4", t.allowed.Addr().String())
		if err != nil {
			return fmt.Errorf("allowed port %d: %w", allowedPort(t.n), err)
		}
		defer c.Close()
		local = c.LocalAddr().(*net.TCPAddr).AddrPort()
		_ = c.SetDeadline(time.Now().Add(dialTimeout))
		buf := []byte{'r'}
		if _, err := c.Write(buf); err != nil {
			return err
		}
		_, err = io.ReadFull(c, buf)
		return err
	})
	if err != nil {
		tb.Fatalf("%v: %v", t, err)
	}

	err = t.client.Do(func() error {
		c, err := t.dialer(300*time.Millisecond).Dial("tcp4", t.denied.Addr().String())
		if err == nil {
			c.Close()
			return fmt.Errorf("denied port %d: connected", deniedPort)
		}
		if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
			return fmt.Errorf("denied port %d: %w, want a timeout (a silent drop)", deniedPort, err)
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("%v: %v", t, err)
	}

	if t.mode == modeIptables {
		a, d := t.iptablesCounters(tb)
		if a == accept || d == drop {
			tb.Fatalf("%v: the last rule accepted %d packets and the final DROP dropped %d, want both > 0", t, a-accept, d-drop)
		}
		return
	}
	f := t.margay.counter(tb, t.ifindex[wepA], loader.MargayReasonREASON_FWD_LOCAL)
	d := t.margay.counter(tb, t.ifindex[wepA], loader.MargayReasonREASON_DROP_POLICY_INGRESS)
	if f == fwd || d == denied {
		tb.Fatalf("%v: from_wep forwarded %d and dropped %d packets by ingress policy, want both > 0", t, f-fwd, d-denied)
	}
	k := ctKey(local.Addr(), local.Port(), serverIP, allowedPort(t.n))
	var v loader.MargayCtValue
	if err := t.margay.dp.Maps().Conntrack.Lookup(&k, &v); err != nil {
		tb.Fatalf("%v: no conntrack entry for %v: %v", t, local, err)
	}
	if v.RuleIngress != t.margay.lastRule {
		tb.Fatalf("%v: the flow was allowed by rule %d, want %d (the last)", t, v.RuleIngress, t.margay.lastRule)
	}
}

// tcpTrouble is the TCP segments retransmitted and retransmission timeouts of the client and
// the server so far: a low round with none was the machine, not packet loss.
func (t *topology) tcpTrouble(tb testing.TB) (retrans, timeouts uint64) {
	tb.Helper()
	for _, ns := range []*netns.NS{t.client, t.server} {
		r, err := ns.NetStat("snmp", "Tcp", "RetransSegs")
		if err != nil {
			tb.Fatal(err)
		}
		to, err := ns.NetStat("netstat", "TcpExt", "TCPTimeouts")
		retrans, timeouts = retrans+r, timeouts+to
		if err != nil {
			tb.Fatal(err)
		}
	}
	return retrans, timeouts
}

var counterLine = regexp.MustCompile(`^\[(\d+):\d+\] -A FORWARD (.*)$`)

// iptablesCounters returns the packets the last rule accepted and the final DROP dropped.
func (t *topology) iptablesCounters(tb testing.TB) (accept, drop uint64) {
	tb.Helper()
	out := t.host.MustRun(tb, "iptables-save", "-c", "-t", "filter")
	last := fmt.Sprintf("-s %s/28 -p tcp -m tcp --dport %d -j ACCEPT", clientNet.Addr(), allowedPort(t.n))
	found := 0
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		m := counterLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseUint(m[1], 10, 64)
		if err != nil {
			tb.Fatal(err)
		}
		switch m[2] {
		case last:
			accept, found = v, found+1
		case "-j DROP":
			drop, found = v, found+1
		}
	}
	if found != 2 {
		tb.Fatalf("%v: iptables-save lacks the last rule or the DROP:\n%s", t, out)
	}
	return accept, drop
}

// TestPolicyBenchSetup builds what the benchmarks measure at a small size and proves every path
// is the intended one: both topologies carry the allowed flow and silently drop the denied one,
// each enforcing side counting both, and the BPF cases take their intended paths.
func TestPolicyBenchSetup(t *testing.T) {
	for _, mode := range []string{modeIptables, modeMargay} {
		t.Run(mode, func(t *testing.T) {
			top := newTopology(t, mode, setupRules)
			top.check(t)
			if _, err := top.crr(20 * time.Millisecond); err != nil {
				t.Fatal(err)
			}
			if _, err := top.rr(t, 20*time.Millisecond); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("bpf", func(t *testing.T) {
		f := newBPFFixture(t, flat([]int{setupRules}))
		cs := f.cases(flat([]int{setupRules}))
		for _, c := range cs {
			f.check(t, c)
		}
		if r := f.round(t, cs, 0, 1000); len(r) != len(cs) {
			t.Fatalf("round measured %d cases, want %d", len(r), len(cs))
		}
	})
	t.Run("bpf-tiers", func(t *testing.T) {
		layouts := tiered(setupRules, []int{1, 3}, []int{0, 2})
		f := newBPFFixture(t, layouts)
		f.slices = tierSlices
		cs := f.cases(layouts)
		for _, c := range cs {
			f.check(t, c)
		}
		if r := f.round(t, cs, 0, 1000); len(r) != len(cs) {
			t.Fatalf("round measured %d cases, want %d", len(r), len(cs))
		}
	})
}

// BenchmarkPolicyIptables: connection rate (CRR: connect, one byte each way, close) and
// request/response rate on one connection (RR) between two workloads of one host, the rules
// enforced by iptables on the kernel's forwarding path or by Margay's programs, at 1, 100 and
// 1,000 rules. Every round measures every topology and test once for measureFor, in an order
// that rotates by round.
func BenchmarkPolicyIptables(b *testing.B) {
	var tops []*topology
	for _, n := range ruleCounts {
		for _, mode := range []string{modeIptables, modeMargay} {
			t := newTopology(b, mode, n)
			t.check(b)
			tops = append(tops, t)
		}
	}
	type test struct {
		name string
		run  func(*topology, time.Duration) (float64, error)
	}
	tests := []test{
		{"crr", func(t *topology, d time.Duration) (float64, error) { return t.crr(d) }},
		{"rr", func(t *topology, d time.Duration) (float64, error) { return t.rr(b, d) }},
	}
	type key struct {
		test string
		top  *topology
	}
	var order []key
	for _, ts := range tests {
		for _, t := range tops {
			order = append(order, key{ts.name, t})
		}
	}
	run := map[string]func(*topology, time.Duration) (float64, error){}
	for _, ts := range tests {
		run[ts.name] = ts.run
	}
	// Warm up every path (neighbours, caches, the first TIME_WAITs) before the first round.
	for _, k := range order {
		if _, err := run[k.test](k.top, measureFor/10); err != nil {
			b.Fatal(err)
		}
	}
	rates := map[key][]float64{}
	retrans0, timeouts0 := map[*topology]uint64{}, map[*topology]uint64{}
	for _, t := range tops {
		retrans0[t], timeouts0[t] = t.tcpTrouble(b)
	}
	for r := range trafficRounds {
		for i := range order {
			k := order[(r*5+i)%len(order)]
			v, err := run[k.test](k.top, measureFor)
			if err != nil {
				b.Fatal(err)
			}
			rates[k] = append(rates[k], v)
		}
	}

	find := func(test, mode string, n int) stats {
		for k, v := range rates {
			if k.test == test && k.top.mode == mode && k.top.n == n {
				return summarize(v)
			}
		}
		panic("no such measurement")
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%-4s %-6s %-9s %10s %10s %10s %12s %14s\n", "test", "rules", "mode", "rate/s", "min", "max",
		"margay/ipt", "cost vs N=1")
	first := ruleCounts[0]
	for _, ts := range tests {
		unit := "conn/s"
		if ts.name == "rr" {
			unit = "trans/s"
		}
		for _, n := range ruleCounts {
			for _, mode := range []string{modeIptables, modeMargay} {
				s := find(ts.name, mode, n)
				m := map[string]float64{unit: s.med, "min_" + unit: s.min, "max_" + unit: s.max}
				ratio := s.med / find(ts.name, modeIptables, n).med
				if mode == modeMargay {
					m["x_iptables"] = ratio
				}
				// Cost per transaction relative to the smallest rule set: > 1 is slower.
				growth := find(ts.name, mode, first).med / s.med
				if n != first {
					m["x_cost_vs_rules1"] = growth
				}
				fmt.Fprintf(&table, "%-4s %-6d %-9s %10.0f %10.0f %10.0f %12.2f %14.2f\n", ts.name, n, mode, s.med, s.min, s.max, ratio, growth)
				report(b, fmt.Sprintf("%s/rules=%d/%s", ts.name, n, mode), m)
			}
		}
	}
	fmt.Fprintln(&table, "TCP retransmissions (timeouts) of client and server during the rounds:")
	for _, t := range tops {
		r, to := t.tcpTrouble(b)
		fmt.Fprintf(&table, "  %-20v %d (%d)\n", t, r-retrans0[t], to-timeouts0[t])
	}
	fmt.Fprintf(os.Stdout, "Policy end to end, medians of %d rounds of %v each:\n%s", trafficRounds, measureFor, table.String())
}
