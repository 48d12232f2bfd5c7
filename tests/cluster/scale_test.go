package cluster_test

import (
	"cmp"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/poll"
)

// Issue 18: BGP route programming at scale. BIRD runs as the route reflector of a simulated
// cluster of 500 nodes: each owns one /26 block, and the remaining routes are /32s borrowed by
// workloads (a borrowed address is advertised as a /32 by the node that borrowed it). The nodes
// themselves are not simulated as BGP speakers: BIRD originates their routes from a static
// protocol, each route with its node's address as next hop, and reflects them to the one real
// agent (its route reflector client), so the agent receives what a reflector of such a cluster
// sends it.

const (
	simNodes = 500
	// Sizes in between so that the growth is visible; 100k runs with BENCH_BGP_100K=1.
	scaleSizesDefault = "1000,10000,30000"
)

// simNodeAddr is the address of simulated node i: the lab segment is a /24, so 500 nodes share
// the 100 addresses 198.18.0.150–249 as next hops (the agent does not care who sits behind one).
func simNodeAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(150 + i%100)}) }

// simBlock is the /26 of simulated node i, in 198.19.4.0 and up: the real node claims its block
// in 198.19.0.0/22, which stays out of the simulated space.
func simBlock(i int) netip.Prefix {
	base := 198<<24 | 19<<16 | 4<<8 + uint32(i)*64
	return netip.PrefixFrom(u32addr(base), 26)
}

func u32addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// simPools are the pools the borrowed /32s come from besides the lab's 198.19.0.0/16, in
// 198.18.0.0/15 away from the hosts' segment. The real node claims the lowest free block,
// 198.18.64.0/26, which the simulated routes leave out.
var simPools = []netip.Prefix{netip.MustParsePrefix("198.18.128.0/17"), netip.MustParsePrefix("198.18.64.0/18")}

// simRanges hold the borrowed /32s, in order: the lab pool from 198.19.4.0 up (inside the
// simulated blocks first: a borrowed address lies in another node's block), then the extra pools
// without 198.18.64.0/24. 113,408 addresses.
var simRanges = []struct {
	first netip.Addr
	size  int
}{
	{netip.MustParseAddr("198.19.4.0"), 65536 - 4*256},
	{netip.MustParseAddr("198.18.128.0"), 1 << 15},
	{netip.MustParseAddr("198.18.65.0"), 1<<14 - 256},
}

// simRealBlocks is where the real node's blocks may lie: outside every simulated route.
var simRealBlocks = []netip.Prefix{netip.MustParsePrefix("198.19.0.0/22"), netip.MustParsePrefix("198.18.64.0/24")}

func simWorkload(i int) netip.Addr {
	for _, r := range simRanges {
		if i < r.size {
			a := r.first.As4()
			return u32addr(uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) + uint32(i))
		}
		i -= r.size
	}
	panic("simWorkload: out of addresses")
}

// simRoutes are the n routes of the simulated cluster: 500 blocks, n-500 borrowed /32s, each
// with the next hop of a node.
func simRoutes(n int) []maps.Route {
	out := make([]maps.Route, 0, n)
	for i := range min(n, simNodes) {
		out = append(out, maps.Route{Prefix: simBlock(i), NextHop: simNodeAddr(i)})
	}
	for i := range n - len(out) {
		out = append(out, maps.Route{Prefix: netip.PrefixFrom(simWorkload(i), 32), NextHop: simNodeAddr(i)})
	}
	return out
}

// reflectorConf is BIRD as route reflector for the agent at client, originating routes. Each
// static route is a blackhole carrying its node's next hop as attribute: static routes "via" a
// next hop on the segment made BIRD send a few of them (2 and 14 of 10k) again 400-650 ms after
// the rest (ss showed BIRD's socket idle, then 587 more bytes), which measured BIRD, not the
// agent.
func reflectorConf(routes []maps.Route, client netip.Addr) string {
	var conf strings.Builder
	conf.WriteString("router id 198.18.0.1;\nprotocol device {}\nprotocol static sim {\n\tipv4;\n")
	for _, r := range routes {
		fmt.Fprintf(&conf, "\troute %s blackhole { bgp_next_hop = %s; };\n", r.Prefix, r.NextHop)
	}
	fmt.Fprintf(&conf, "}\nprotocol bgp vm100 { local 198.18.0.1 as 64512; neighbor %s as 64512; direct;"+
		" rr client; rr cluster id 198.18.0.1; connect delay time 0; connect retry time 1; ipv4 { import none; export all; next hop keep; }; }\n", client)
	return conf.String()
}

func scaleSizes(tb testing.TB) []int {
	s := os.Getenv("BENCH_BGP_SIZES")
	if s == "" {
		s = scaleSizesDefault
		if os.Getenv("BENCH_BGP_100K") == "1" {
			s += ",100000"
		}
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > simNodes+65536-1024+1<<15+1<<14-256 {
			tb.Fatalf("BENCH_BGP_SIZES: %q", f)
		}
		out = append(out, n)
	}
	return out
}

// BenchmarkBGPScale measures, for each size, the time from BIRD's start (the agent already
// configured it as peer) until every route is in the agent's routes map and kernel table, the
// rate, and the agent's resident memory afterwards. Sizes: BENCH_BGP_SIZES (default
// 1000,10000,30000; BENCH_BGP_100K=1 adds 100000).
func BenchmarkBGPScale(b *testing.B) {
	for _, n := range scaleSizes(b) {
		b.Run(fmt.Sprintf("routes=%d", n), func(b *testing.B) {
			routes := simRoutes(n)
			conf := reflectorConf(routes, netip.MustParseAddr("198.18.0.100"))
			for range b.N {
				b.StopTimer()
				cv := bgpConverge(b, routes, conf)
				b.StartTimer()
				b.ReportMetric(cv.programming.Seconds(), "s")
				b.ReportMetric(cv.total.Seconds(), "s-from-start")
				b.ReportMetric(float64(n)/cv.programming.Seconds(), "routes/s")
				b.ReportMetric(cv.rss/(1<<20), "MiB-RSS")
			}
		})
	}
}

type convergence struct {
	total       time.Duration // from BIRD's start
	programming time.Duration // from the session's establishment
	rss         float64       // the agent's resident memory afterwards, bytes
}

func bgpConverge(b *testing.B, routes []maps.Route, conf string) convergence {
	c := cluster.New(b)
	for i, p := range simPools {
		name := fmt.Sprintf("sim%d", i)
		if _, err := c.DS.Pools().Create(b.Context(), name, datastore.Pool{Version: 1, Name: name, CIDR: p, BlockSize: 26}); err != nil {
			b.Fatal(err)
		}
	}
	// The agent's default full-pass interval (the lab's 2 s would put a full pass, a read of
	// the whole map and kernel table, in every measurement).
	h := c.AddHost("vm100", "198.18.0.100/24", "--bgp", "--pprof", "--reconcile-interval", "10s")
	set := h.Maps(b)
	addGatewayPeer(b, c, h)
	own := blockOf(b, c, h.Name)
	if !slices.ContainsFunc(simRealBlocks, func(p netip.Prefix) bool { return p.Overlaps(own) }) {
		b.Fatalf("vm100 claimed %v, inside the simulated routes", own)
	}
	want := map[netip.Prefix]netip.Addr{}
	for _, r := range routes {
		want[r.Prefix] = r.NextHop
	}
	profiled := profile(b, h, fmt.Sprintf("bgp-%d", len(routes)))
	start := time.Now()
	startGateway(b, c, conf)
	// The session's start, seen from the agent at a 5 ms grain: what comes before it is BIRD's
	// start and the TCP and OPEN exchange, not route programming.
	var established time.Time
	poll.UntilEvery(b, "a session with BIRD", 5*time.Millisecond, time.Minute, func() error {
		code, body, err := h.Get("/bgp/peers")
		if err != nil || code != 200 || !strings.Contains(body, `"Established"`) {
			return fmt.Errorf("/bgp/peers: %d %v %.300s", code, err, body)
		}
		established = time.Now()
		return nil
	})
	// The map first (the agent writes it before the kernel in each pass): 200 routes spread over
	// the table, looked up one by one, until all are there; then the whole map read in batches;
	// then the kernel, entry by entry. Polling the whole table every 50 ms would take a core of
	// this 2-core machine from the agent at 100k routes.
	step := max(1, len(routes)/200)
	poll.Until(b, "a sample of the routes in the map", 10*time.Minute, func() error {
		for i := 0; i < len(routes); i += step {
			r := routes[i]
			got, err := set.Routes.Longest(r.Prefix)
			if err != nil || got.NextHop != r.NextHop || got.Kind() == maps.LocalBlock {
				return fmt.Errorf("%v: %+v %v", r.Prefix, got, err)
			}
		}
		return nil
	})
	poll.Until(b, "routes in the map", 10*time.Minute, func() error {
		rs, err := set.Routes.All()
		if err != nil {
			return err
		}
		got := 0
		for _, r := range rs {
			if nh, ok := want[r.Prefix]; ok && r.NextHop == nh && r.Kind() != maps.LocalBlock {
				got++
			}
		}
		if got < len(want) {
			return fmt.Errorf("%d of %d in the map", got, len(want))
		}
		return nil
	})
	inMap := time.Now()
	poll.Until(b, "routes in the kernel", 10*time.Minute, func() error {
		out, err := h.NS.Run("ip", "-4", "route", "show", "proto", "77")
		if err != nil {
			return err
		}
		got := 0
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || f[1] != "via" {
				continue
			}
			p, err := netip.ParsePrefix(f[0])
			if err != nil {
				if a, err2 := netip.ParseAddr(f[0]); err2 == nil {
					p = netip.PrefixFrom(a, 32)
				}
			}
			if nh, ok := want[p]; ok && nh.String() == f[2] {
				got++
			}
		}
		if got < len(want) {
			return fmt.Errorf("%d of %d in the kernel", got, len(want))
		}
		return nil
	})
	done := time.Now()
	b.Logf("%d routes: session at %v (UTC %s), all in the map at %v, in the kernel at %v after BIRD's start",
		len(routes), established.Sub(start), established.UTC().Format("15:04:05.000"), inMap.Sub(start), done.Sub(start))
	<-profiled
	return convergence{total: done.Sub(start), programming: done.Sub(established), rss: agentRSS(b, h)}
}

// profile takes a CPU profile of the agent for BENCH_PROFILE_SECONDS (default 10) into
// $BENCH_PROFILE_DIR/<name>.pprof when that variable is set; the channel closes when done.
func profile(tb testing.TB, h *cluster.Host, name string) <-chan struct{} {
	done := make(chan struct{})
	dir := os.Getenv("BENCH_PROFILE_DIR")
	if dir == "" {
		close(done)
		return done
	}
	secs := cmp.Or(os.Getenv("BENCH_PROFILE_SECONDS"), "10")
	go func() {
		defer close(done)
		code, body, err := h.GetWithin("/debug/pprof/profile?seconds="+secs, time.Minute)
		if err != nil || code != 200 {
			tb.Logf("profile: %d %v", code, err)
			return
		}
		if err := os.WriteFile(filepath.Join(dir, name+".pprof"), []byte(body), 0o644); err != nil {
			tb.Log(err)
		}
	}()
	return done
}

// agentRSS reads the agent's resident memory from its metrics (the process collector).
func agentRSS(tb testing.TB, h *cluster.Host) float64 {
	code, body, err := h.Get("/metrics")
	if err != nil || code != 200 {
		tb.Fatalf("metrics: %d %v", code, err)
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, "process_resident_memory_bytes "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				tb.Fatal(err)
			}
			return f
		}
	}
	tb.Fatal("no process_resident_memory_bytes in the metrics")
	return 0
}
