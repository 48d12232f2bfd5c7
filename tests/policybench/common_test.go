package policybench_test

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/benchrules"
	"github.com/margaynet/margay/tests/netns"
)

// Rule set sizes measured, and the one the setup test builds.
var ruleCounts = []int{1, 100, 1000}

const setupRules = 10

// Addresses, all in 198.18.0.0/15: the client and the server are workloads in the host's block.
// Rule i of n (i < n-1) allows tcp from 198.18.0.0/28 + 16·i (198.18.0.0/16 holds 4096 such
// /28s, none holding the client) to port basePort+i; the last rule allows the client's /28 to
// port basePort+n-1, so the benchmark's flow matches the last rule: the worst case for a linear
// walk. deniedPort matches no rule: a flow to it walks every rule to the default deny.
var (
	hostBlock = netip.MustParsePrefix("198.19.0.0/26")
	clientIP  = netip.MustParseAddr("198.19.0.1")
	serverIP  = netip.MustParseAddr("198.19.0.2")
	clientNet = netip.MustParsePrefix("198.19.0.0/28")
	ruleBase  = netip.MustParseAddr("198.18.0.0")
)

const (
	basePort   = 1000
	deniedPort = 999
	clientPort = 40000 // the source port of the BPF benchmark's packets
)

// Interfaces of a Margay host: the host-side veths of the client (a) and the server (b).
const (
	wepA = "cali0000000000a"
	wepB = "cali0000000000b"
)

var hostVethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee} // as Calico's cali*

// allowedPort is the port of the last of n rules: the one the measured flow matches.
func allowedPort(n int) uint16 { return uint16(basePort + n - 1) }

// benchRules is the rule set of n rules; the last allows the client's /28 to allowedPort(n).
func benchRules(n int) benchrules.Rules {
	return benchrules.Rules{N: n, Base: ruleBase, BasePort: basePort, LastNet: clientNet, LastLo: allowedPort(n), LastHi: allowedPort(n)}
}

// layout is the policy of a dataplane: none (rules 0), the n rules of benchRules in one policy
// (tiers 0; with egress, and benchrules.AllowEgress beside it), or the same n rules spread over
// tiers and then profiles (benchrules.Tiered).
type layout struct {
	rules, tiers, profiles int
	egress                 bool
}

func (l layout) String() string {
	switch {
	case l.rules == 0:
		return "none"
	case l.tiers == 0 && l.egress:
		return fmt.Sprintf("rules=%d,egress", l.rules)
	case l.tiers == 0:
		return fmt.Sprintf("rules=%d", l.rules)
	}
	return fmt.Sprintf("rules=%d,tiers=%d,profiles=%d", l.rules, l.tiers, l.profiles)
}

// flatEgress is benchRules with benchrules.AllowEgress.
type flatEgress struct{ benchrules.Rules }

func (r flatEgress) Install(set *maps.Set, all, local []policy.Endpoint) (*policy.Compiler, *policy.Result, error) {
	return benchrules.Install(set, policy.Input{Policies: []datastore.Policy{r.Policy(), benchrules.AllowEgress()}}, all, local)
}

func (r flatEgress) LastEgress() (policy.RuleRef, bool) {
	return policy.RuleRef{Policy: benchrules.AllowEgress().Key(), Direction: policy.Egress}, true
}

// ruleSet is a rule set as a dataplane installs it.
type ruleSet interface {
	Install(set *maps.Set, all, local []policy.Endpoint) (*policy.Compiler, *policy.Result, error)
	// Last is the rule that allows the measured flow.
	Last() policy.RuleRef
}

// egressRuleSet is a rule set that also governs the client's egress.
type egressRuleSet interface {
	LastEgress() (policy.RuleRef, bool)
}

func (l layout) ruleSet() ruleSet {
	switch {
	case l.tiers == 0 && l.egress:
		return flatEgress{benchRules(l.rules)}
	case l.tiers == 0:
		return benchRules(l.rules)
	}
	return benchrules.Tiered{Rules: benchRules(l.rules), Tiers: l.tiers, Profiles: l.profiles}
}

// margayHost is a loaded dataplane with the client and the server as its workloads.
type margayHost struct {
	ns   *netns.NS
	dp   *loader.Dataplane
	set  *maps.Set
	root string
	// lastRule is the rule id of the last rule (0 without policy): the one the flow matches.
	// lastEgress is that of the rule that allows the client's egress (0: no policy governs it).
	lastRule, lastEgress uint32
	server               maps.Endpoint
	client               maps.Endpoint
}

// loadMargay loads a dataplane into a private bpffs. Its cleanup also removes any link pinned
// by attaching, inside ns.
func loadMargay(tb testing.TB, ns *netns.NS) *margayHost {
	tb.Helper()
	root := netns.BPFFS(tb)
	log := slog.New(slog.DiscardHandler)
	dp, err := loader.Load(loader.WithRoot(root), loader.WithLogger(log))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		dp.Close()
		if err := ns.Do(func() error { return loader.Cleanup(root, log) }); err != nil {
			tb.Errorf("dataplane cleanup: %v", err)
		}
	})
	return &margayHost{ns: ns, dp: dp, set: maps.FromDataplane(dp), root: root}
}

// install writes what the agent would for the two workloads: their routes and endpoints and,
// with rules, the layout's policy compiled as the agent compiles it.
func (h *margayHost) install(tb testing.TB, l layout, client, server maps.Endpoint) {
	tb.Helper()
	routes := []maps.Route{
		{Prefix: hostBlock, Flags: maps.LocalBlock | maps.InPool},
		{Prefix: netip.PrefixFrom(client.IPv4, 32), Flags: maps.LocalWorkload | maps.InPool, Ifindex: client.Ifindex},
		{Prefix: netip.PrefixFrom(server.IPv4, 32), Flags: maps.LocalWorkload | maps.InPool, Ifindex: server.Ifindex},
	}
	for _, r := range routes {
		if err := h.set.Routes.Put(r); err != nil {
			tb.Fatal(err)
		}
	}
	if l.rules > 0 {
		eps := []policy.Endpoint{
			{Key: "bench/client", Node: "bench", Addr: client.IPv4, Labels: map[string]string{}},
			{Key: "bench/server", Node: "bench", Addr: server.IPv4, Labels: map[string]string{}},
		}
		rs := l.ruleSet()
		c, res, err := rs.Install(h.set, eps, eps)
		if err != nil {
			tb.Fatal(err)
		}
		client.IngressProgram, client.EgressProgram = res.Endpoints[client.IPv4].Ingress, res.Endpoints[client.IPv4].Egress
		server.IngressProgram, server.EgressProgram = res.Endpoints[server.IPv4].Ingress, res.Endpoints[server.IPv4].Egress
		if server.IngressProgram == 0 {
			tb.Fatalf("%v: the server has no ingress program", l)
		}
		egress, hasEgress := policy.RuleRef{}, false
		if e, ok := rs.(egressRuleSet); ok {
			egress, hasEgress = e.LastEgress()
		}
		if hasEgress != (client.EgressProgram != 0) {
			tb.Fatalf("%v: the client's egress program is %d, want one: %v", l, client.EgressProgram, hasEgress)
		}
		for id, ref := range c.Rules() {
			switch ref {
			case rs.Last():
				h.lastRule = id
			case egress:
				if hasEgress {
					h.lastEgress = id
				}
			}
		}
		if h.lastRule == 0 {
			tb.Fatalf("%v: no rule id for the last rule", l)
		}
		if hasEgress && h.lastEgress == 0 {
			tb.Fatalf("%v: no rule id for the egress rule", l)
		}
	}
	for _, ep := range []maps.Endpoint{client, server} {
		if err := h.set.Endpoints.Put(ep); err != nil {
			tb.Fatal(err)
		}
	}
	h.client, h.server = client, server
}

// counter is the packets from_wep counted on ifindex under reason.
func (h *margayHost) counter(tb testing.TB, ifindex uint32, reason loader.MargayReason) uint64 {
	tb.Helper()
	c, err := h.set.Counters.Get(ifindex, maps.HookFromWep, maps.Reason(reason))
	if err != nil {
		tb.Fatal(err)
	}
	return c.Packets
}

// ctKey is the conntrack key of a TCP flow, as ct_key_of in bpf/include/policy.h builds it.
func ctKey(src netip.Addr, sport uint16, dst netip.Addr, dport uint16) loader.MargayCtKey {
	be16 := func(p uint16) uint16 { return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, p)) }
	s, d := binary.BigEndian.Uint32(src.AsSlice()), binary.BigEndian.Uint32(dst.AsSlice())
	k := loader.MargayCtKey{Protocol: 6}
	if s < d || (s == d && sport <= dport) {
		k.AddrA, k.AddrB, k.PortA, k.PortB = binary.NativeEndian.Uint32(src.AsSlice()), binary.NativeEndian.Uint32(dst.AsSlice()), be16(sport), be16(dport)
	} else {
		k.AddrA, k.AddrB, k.PortA, k.PortB = binary.NativeEndian.Uint32(dst.AsSlice()), binary.NativeEndian.Uint32(src.AsSlice()), be16(dport), be16(sport)
	}
	return k
}

// stats are the median, min and max of a measurement over the rounds.
type stats struct{ med, min, max float64 }

func summarize(v []float64) stats {
	v = slices.Sorted(slices.Values(v))
	s := stats{min: v[0], max: v[len(v)-1], med: v[len(v)/2]}
	if len(v)%2 == 0 {
		s.med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return s
}

// report makes a sub-benchmark that only reports metrics measured before: the rounds ran
// interleaved in the parent, which a sub-benchmark of its own could not do.
func report(b *testing.B, name string, metrics map[string]float64) {
	b.Run(name, func(b *testing.B) {
		b.ReportMetric(0, "ns/op") // the loop measures nothing
		for unit, v := range metrics {
			b.ReportMetric(v, unit)
		}
	})
}
