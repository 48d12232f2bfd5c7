package cluster_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/poll"
)

// BenchmarkBGP10kRoutes measures how long 10,000 prefixes announced by one peer (BIRD) take to
// land in a node's routes map and kernel table, from the moment BIRD starts.
func BenchmarkBGP10kRoutes(b *testing.B) {
	const n = 10000
	for range b.N {
		b.StopTimer()
		c := cluster.New(b)
		h := c.AddHost("vm100", "198.18.0.100/24", "--bgp")
		set := h.Maps(b)
		var conf strings.Builder
		conf.WriteString("router id 198.18.0.1;\nprotocol device {}\nprotocol static {\n\tipv4;\n")
		for i := range n {
			// /32s in the pool's upper half, away from the blocks the node claims.
			a := netip.AddrFrom4([4]byte{198, 19, byte(128 + i/256), byte(i % 256)})
			fmt.Fprintf(&conf, "\troute %s/32 blackhole;\n", a)
		}
		conf.WriteString("}\nprotocol bgp vm100 { local 198.18.0.1 as 64512; neighbor 198.18.0.100 as 64512; direct;" +
			" connect retry time 1; ipv4 { import none; export all; next hop self; }; }\n")
		addGatewayPeer(b, c, h)
		b.StartTimer()
		start := time.Now()
		startGateway(b, c, conf.String())
		poll.Until(b, "10k routes programmed", 5*time.Minute, func() error {
			rs, err := set.Routes.List()
			if err != nil {
				return err
			}
			got := 0
			for _, r := range rs {
				if r.Prefix.Bits() == 32 && r.Prefix.Addr().As4()[2] >= 128 {
					got++
				}
			}
			if got < n {
				return fmt.Errorf("%d of %d in the map", got, n)
			}
			out, err := h.NS.Run("ip", "-4", "route", "show", "proto", "77")
			if err != nil {
				return err
			}
			if k := strings.Count(out, "via 198.18.0.1"); k < n {
				return fmt.Errorf("%d of %d in the kernel", k, n)
			}
			return nil
		})
		took := time.Since(start)
		b.ReportMetric(took.Seconds(), "s/10k")
		b.ReportMetric(float64(n)/took.Seconds(), "routes/s")
	}
}

// addGatewayPeer writes the global BGP peer gw (198.18.0.1, BIRD) and waits until h has
// configured it: BIRD's first connection, coming before that, would be refused, and a benchmark
// would measure the race.
func addGatewayPeer(tb testing.TB, c *cluster.Cluster, h *cluster.Host) {
	tb.Helper()
	if _, err := c.DS.BGPPeers().Create(tb.Context(), "gw", bgpPeer("198.18.0.1")); err != nil {
		tb.Fatal(err)
	}
	poll.Until(tb, h.Name+" configured the peer", 30*time.Second, func() error {
		code, body, err := h.Get("/bgp/peers")
		if err != nil || code != 200 || !strings.Contains(body, "198.18.0.1") {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return nil
	})
}
