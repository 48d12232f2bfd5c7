package forwarding_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// ioTimeout bounds every wait for traffic; generous, because the 2-core CI machine is noisy and
// a healthy path answers within milliseconds.
const ioTimeout = 10 * time.Second

// pingCount is how many echo replies a working path must return.
const pingCount = 3

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// runPing pings dst from the address from in src's namespace, every 0.2 s until pingCount replies
// came back or the deadline passed, and returns the requests sent and replies received. ping's
// -w bounds the whole run, so a lost packet costs a retry, not the test.
func runPing(tb testing.TB, src *workload, from, dst netip.Addr, deadline time.Duration) (sent, received int, err error) {
	tb.Helper()
	out, err := src.ns.Run("ping", "-n", "-c", strconv.Itoa(pingCount), "-i", "0.2",
		"-w", strconv.Itoa(int(deadline/time.Second)), "-I", from.String(), dst.String())
	m := pingStats.FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("ping %s (%v) → %v: no statistics in the output (%v):\n%s", src.name, from, dst, err, out)
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received, err
}

// ping requires pingCount replies from dst to src's own address.
func ping(tb testing.TB, src *workload, dst netip.Addr) {
	tb.Helper()
	_, received, err := runPing(tb, src, src.ip, dst, ioTimeout)
	if err != nil || received < pingCount {
		tb.Fatalf("ping %s → %v: %d of %d replies within %v: %v", src.name, dst, received, pingCount, ioTimeout, err)
	}
}

// pingFails pings dst from the address from in src's namespace and requires that not a single
// reply comes back, and that ping says so with exit status 1: anything else (a missing binary, a
// bad address) would make a negative test pass for the wrong reason. It returns the requests sent.
func pingFails(tb testing.TB, src *workload, from, dst netip.Addr) (sent int) {
	tb.Helper()
	sent, received, err := runPing(tb, src, from, dst, 2*time.Second)
	var exit *exec.ExitError
	switch {
	case received != 0:
		tb.Fatalf("ping %s (%v) → %v: %d replies, want none", src.name, from, dst, received)
	case !errors.As(err, &exit) || exit.ExitCode() != 1:
		tb.Fatalf("ping %s (%v) → %v: want exit status 1 (no reply), got %v", src.name, from, dst, err)
	}
	return sent
}

// tcpEcho and udpEcho carry traffic between two workloads (tests/netns has the mechanics).
func tcpEcho(tb testing.TB, src, dst *workload, size int) {
	tb.Helper()
	netns.TCPEcho(tb, src.ns, src.ip, dst.ns, dst.ip, size, ioTimeout)
}

func udpEcho(tb testing.TB, src, dst *workload, size int) {
	tb.Helper()
	netns.UDPEcho(tb, src.ns, src.ip, dst.ns, dst.ip, size, ioTimeout)
}

// counterKey names one counter on one host.
type counterKey struct {
	host    string
	ifindex uint32
	hook    maps.Hook
	reason  maps.Reason
}

// hop is a counter that must grow when traffic takes a path.
type hop struct {
	host    *host
	iface   string
	ifindex uint32
	hook    maps.Hook
	reason  string
}

func (h hop) String() string {
	return fmt.Sprintf("%s %s %s %s", h.host.name, h.iface, h.hook, h.reason)
}

func reasonByName(tb testing.TB, name string) maps.Reason {
	tb.Helper()
	for _, r := range maps.Reasons() {
		if r.String() == name {
			return r
		}
	}
	tb.Fatalf("no reason %q in the dataplane", name)
	return 0
}

func (h hop) key(tb testing.TB) counterKey {
	tb.Helper()
	return counterKey{host: h.host.name, ifindex: h.ifindex, hook: h.hook, reason: reasonByName(tb, h.reason)}
}

// counters reads every counter of both hosts.
func (l *lab) counters(tb testing.TB) map[counterKey]uint64 {
	tb.Helper()
	out := map[counterKey]uint64{}
	for _, h := range []*host{l.h1, l.h2} {
		all, err := h.maps.Counters.List()
		if err != nil {
			tb.Fatalf("%s: %v", h.name, err)
		}
		for _, c := range all {
			out[counterKey{host: h.name, ifindex: c.Ifindex, hook: c.Hook, reason: c.Reason}] = c.Packets
		}
	}
	return out
}

// path lists the counters that a packet from src to dst passes on the eBPF path: from_wep hands
// it straight to the destination on the same host, or out of the uplink, where the other host's
// XDP prefilter passes it and from_net delivers it.
func (l *lab) path(src, dst *workload) []hop {
	if src.host == dst.host {
		return []hop{{src.host, src.cali, src.caliIndex, maps.HookFromWep, "FWD_LOCAL"}}
	}
	return []hop{
		{src.host, src.cali, src.caliIndex, maps.HookFromWep, "FWD_REMOTE"},
		{dst.host, uplink, dst.host.uplinkIndex, maps.HookXDPFromNet, "PASS_PREFILTER"},
		{dst.host, uplink, dst.host.uplinkIndex, maps.HookFromNet, "FWD_LOCAL"},
	}
}

// expectGrowth waits until every hop's packet counter is at least want above before. The
// programs count before they redirect, so this is normally true at once; the deadline only
// absorbs a slow reader.
func (l *lab) expectGrowth(tb testing.TB, before map[counterKey]uint64, hops []hop, want uint64) {
	tb.Helper()
	poll.Until(tb, "counters grew", 2*time.Second, func() error {
		now := l.counters(tb)
		var short []string
		for _, h := range hops {
			k := h.key(tb)
			if got := now[k] - before[k]; got < want {
				short = append(short, fmt.Sprintf("%v grew by %d, want ≥ %d", h, got, want))
			}
		}
		if len(short) > 0 {
			return errors.New("\n  " + strings.Join(short, "\n  "))
		}
		return nil
	})
}

// expectSame fails unless the hops' counters are where they were.
func (l *lab) expectSame(tb testing.TB, before map[counterKey]uint64, hops []hop) {
	tb.Helper()
	now := l.counters(tb)
	for _, h := range hops {
		k := h.key(tb)
		if now[k] != before[k] {
			tb.Errorf("%v grew by %d, want unchanged", h, now[k]-before[k])
		}
	}
}

// changed lists the counters that differ between two readings.
func changed(before, after map[counterKey]uint64) []string {
	var out []string
	for k, v := range after {
		if v != before[k] {
			out = append(out, fmt.Sprintf("%s ifindex %d %s %s: %d → %d", k.host, k.ifindex, k.hook, k.reason, before[k], v))
		}
	}
	sort.Strings(out)
	return out
}

var forwardPolicy = regexp.MustCompile(`Chain FORWARD \(policy (\w+) (\d+) packets`)

// forwardPolicyDrops returns the FORWARD chain's policy and the packets it applied to: with
// policy DROP, every IPv4 packet the kernel tried to forward.
func forwardPolicyDrops(tb testing.TB, h *host) (policy string, packets uint64) {
	tb.Helper()
	out := h.ns.MustRun(tb, "iptables", "-w", "-n", "-v", "-x", "-L", "FORWARD")
	m := forwardPolicy.FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("%s: no FORWARD policy in iptables output:\n%s", h.name, out)
	}
	packets, _ = strconv.ParseUint(m[2], 10, 64)
	return m[1], packets
}

// icmpInEchos reads how many echo requests the workload's kernel received.
func icmpInEchos(tb testing.TB, w *workload) uint64 {
	tb.Helper()
	v, err := w.ns.NetStat("snmp", "Icmp", "InEchos")
	if err != nil {
		tb.Fatalf("%s: %v", w.name, err)
	}
	return v
}

// requirePing fails early with the fix when ping is missing, instead of in every subtest.
func requirePing(tb testing.TB) {
	tb.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		tb.Fatal("ping is missing: install iputils-ping (make deps)")
	}
}
