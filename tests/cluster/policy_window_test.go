package cluster_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/poll"
)

// TestPolicyChangesOpenNoWindow rewrites, forty times, policies that all mean the same for two
// flows — one allowed (a → b), one denied (c → b) — in shapes that move identities and programs
// (selector rules, CIDR rules, extra policies and orders). Traffic that runs throughout must see
// no loss on the allowed flow and no packet of the denied one.
func TestPolicyChangesOpenNoWindow(t *testing.T) {
	c := cluster.New(t)
	h1 := c.AddHost("vm100", "198.18.0.100/24", "--bgp")
	h2 := c.AddHost("vm101", "198.18.0.101/24", "--bgp")
	hosts := []*cluster.Host{h1, h2}
	a, cc, b := c.AddWorkload(h1, "a"), c.AddWorkload(h1, "c"), c.AddWorkload(h2, "b")
	for _, w := range []*cluster.Workload{a, cc, b} {
		w.WaitProgrammed(t)
	}
	setWorkloadLabels(t, c.DS, a, "", map[string]string{"app": "client"})
	setWorkloadLabels(t, c.DS, cc, "", map[string]string{"app": "other"})
	setWorkloadLabels(t, c.DS, b, "", map[string]string{"app": "server"})
	poll.Until(t, "a reaches b over BGP routes", 30*time.Second, func() error {
		_, err := a.NS.Run("ping", "-c", "1", "-W", "1", b.IP.String())
		return err
	})

	tcp, icmp := datastore.Protocol(6), datastore.Protocol(1)
	port := []datastore.PortRange{{Lo: 8080, Hi: 8080}}
	aNet := []netip.Prefix{netip.PrefixFrom(a.IP, 32)}
	cNet := []netip.Prefix{netip.PrefixFrom(cc.IP, 32)}
	order := func(f float64) *float64 { return &f }
	// Each shape allows a → b on TCP 8080 and ICMP, and nothing from c.
	shapes := [][]datastore.Policy{
		{{Name: "server", Selector: `app == "server"`, Ingress: []datastore.Rule{
			{Action: "allow", Protocol: &tcp, Source: datastore.EntityRule{Selector: `app == "client"`}, Destination: datastore.EntityRule{Ports: port}},
			{Action: "allow", Protocol: &icmp, Source: datastore.EntityRule{Selector: `app == "client"`}}}}},
		{{Name: "server", Order: order(10), Selector: `has(app) && app == "server"`, Ingress: []datastore.Rule{
			{Action: "deny", Source: datastore.EntityRule{Nets: cNet}},
			{Action: "allow", Source: datastore.EntityRule{Nets: aNet}}}}},
		{{Name: "server", Selector: `app in {"server"}`, Ingress: []datastore.Rule{
			{Action: "allow", Source: datastore.EntityRule{NotSelector: `app != "client"`}}}},
			{Name: "client-out", Selector: `app == "client"`, Types: []datastore.PolicyType{datastore.PolicyEgress},
				Egress: []datastore.Rule{{Action: "allow", Destination: datastore.EntityRule{Nets: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16")}}},
					{Action: "allow"}}}},
	}

	// The allowed flow: a TCP request/response loop and a fast ping; the denied one: c's probes.
	srvLn := listen(t, b, 8080)
	go serveEcho(srvLn)
	var denied, probes, rounds atomic.Int64
	stop := make(chan struct{})
	done := make(chan error, 1)
	probeDone := make(chan struct{})
	startTraffic := func() {
		go func() { done <- requestLoop(a, b.IP, 8080, stop, &rounds) }()
		go func() {
			defer close(probeDone)
			for {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := cc.DialTCP(b.IP, 8080, 200*time.Millisecond)
				if err == nil {
					conn.Close()
					denied.Add(1)
				}
				probes.Add(1)
			}
		}()
	}
	// progress waits until both flows were exercised under the policies now in force.
	progress := func() {
		r, p := rounds.Load(), probes.Load()
		poll.Until(t, "traffic under the new policies", 30*time.Second, func() error {
			if rounds.Load() < r+3 || probes.Load() < p+1 {
				return fmt.Errorf("%d rounds, %d probes since the change", rounds.Load()-r, probes.Load()-p)
			}
			return nil
		})
	}

	var written []string
	apply := func(set []datastore.Policy) map[string]int64 {
		revs := putPolicies(t, c.DS, written, set)
		written = written[:0]
		for _, p := range set {
			written = append(written, p.Name)
		}
		return revs
	}
	waitEnforced(t, hosts, apply(shapes[0]), 30*time.Second)
	startTraffic()
	// Pings run across all the changes: every one must be answered.
	var pingOut bytes.Buffer
	ping := a.NS.Command("ping", "-i", "0.02", "-w", "600", b.IP.String())
	ping.Stdout, ping.Stderr = &pingOut, &pingOut
	if err := ping.Start(); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		waitEnforced(t, hosts, apply(shapes[(i+1)%len(shapes)]), 30*time.Second)
		progress()
	}
	close(stop)
	if err := <-done; err != nil {
		t.Errorf("the allowed TCP flow broke: %v", err)
	}
	<-probeDone
	if err := ping.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	_ = ping.Wait()
	out := pingOut.String()
	sent, recv := pingCounts(t, out)
	if sent < 40 || recv != sent {
		t.Errorf("pings a → b across 40 policy changes: %d sent, %d answered\n%s", sent, recv, out)
	}
	if denied.Load() != 0 {
		t.Errorf("c reached b in %d of %d attempts while every policy denied it", denied.Load(), probes.Load())
	}
	t.Logf("40 policy changes: %d pings all answered, %d TCP rounds, %d connection attempts from c all denied",
		sent, rounds.Load(), probes.Load())
}

func listen(t *testing.T, w *cluster.Workload, port int) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := w.NS.Do(func() (err error) {
		ln, err = net.Listen("tcp", fmt.Sprintf("%s:%d", w.IP, port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func serveEcho(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			r := bufio.NewReader(conn)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if _, err := conn.Write([]byte(line)); err != nil {
					return
				}
			}
		}()
	}
}

// requestLoop sends a line and waits for its echo on one connection until stop, each within a
// second: a policy window that drops the flow shows up as an error here.
func requestLoop(from *cluster.Workload, to netip.Addr, port int, stop <-chan struct{}, rounds *atomic.Int64) error {
	conn, err := from.DialTCP(to, port, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		case <-time.After(10 * time.Millisecond):
		}
		conn.SetDeadline(time.Now().Add(time.Second))
		msg := fmt.Sprintf("request %d\n", i)
		if _, err := conn.Write([]byte(msg)); err != nil {
			return fmt.Errorf("round %d: %w", i, err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != msg {
			return fmt.Errorf("round %d: %q, %v", i, got, err)
		}
		rounds.Add(1)
	}
}

// pingCounts reads "N packets transmitted, M received" from ping's summary.
func pingCounts(t *testing.T, out string) (sent, recv int) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "packets transmitted") {
			if _, err := fmt.Sscanf(strings.TrimSpace(line), "%d packets transmitted, %d received", &sent, &recv); err == nil {
				return sent, recv
			}
		}
	}
	t.Fatalf("no ping summary in:\n%s", out)
	return 0, 0
}
