package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

// BenchmarkEventToMap measures how long a workload record written to etcd takes to become an
// entry of the endpoints map (watch, owner loop, incremental reconcile), for workloads whose veth
// exists, one workload at a time; and how long its deletion takes to remove the entry (ms-del).
func BenchmarkEventToMap(b *testing.B) {
	reg := prometheus.NewRegistry()
	ds := datastoretest.New(b, datastore.WithRegisterer(reg))
	// The production intervals: full passes and garbage collection stay out of the measurement
	// as they would between most events on a real host.
	h, set := startAgent(b, reg, ds, func(c *Config) { c.ReconcileInterval, c.GCInterval = 10*time.Second, time.Minute })
	ctx := context.Background()
	const n = 50
	type wl struct {
		rec   datastore.Workload
		index uint32
	}
	var wls []wl
	for i := range n {
		w := netns.New(b, "mgybw-")
		cali := fmt.Sprintf("cali%011x", i+1)
		_, eth0 := netns.Veth(b, h.ns, cali, w, "eth0")
		wls = append(wls, wl{
			rec: datastore.Workload{Version: 1, ID: fmt.Sprintf("w%d", i), Name: fmt.Sprintf("w%d", i), Node: "vm100",
				IfName: cali, MAC: eth0.Attrs().HardwareAddr.String(),
				IPv4: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 0, byte(64 + i)}), 32)}},
			index: uint32(h.ns.Link(b, cali).Attrs().Index),
		})
	}
	var lat, dels []time.Duration
	b.ResetTimer()
	for range b.N {
		for _, w := range wls {
			start := time.Now()
			if _, err := ds.Workloads("vm100").Put(ctx, w.rec.ID, w.rec); err != nil {
				b.Fatal(err)
			}
			for {
				if _, err := set.Endpoints.Get(w.index); err == nil {
					break
				}
				if time.Since(start) > 10*time.Second {
					b.Fatalf("endpoint of %s not in the map after 10s", w.rec.ID)
				}
				time.Sleep(50 * time.Microsecond)
			}
			lat = append(lat, time.Since(start))
			// Let the agent finish this workload (attach its programs, whose tcx swaps wait for
			// RCU grace periods) before the next event: one ADD at a time, as a runtime sends them.
			eventually(b, "programs attached", func() error {
				for _, hook := range []string{"from_wep", "to_wep"} {
					if _, err := os.Stat(filepath.Join(h.root, "links", w.rec.IfName+"_"+hook)); err != nil {
						return err
					}
				}
				return nil
			})
		}
		// The deletions, one at a time likewise: the record deleted until the entry is gone.
		for _, w := range wls {
			start := time.Now()
			if err := ds.Workloads("vm100").Delete(ctx, w.rec.ID, 0); err != nil {
				b.Fatal(err)
			}
			for {
				if _, err := set.Endpoints.Get(w.index); errors.Is(err, maps.ErrNotFound) {
					break
				}
				if time.Since(start) > 10*time.Second {
					b.Fatalf("endpoint of %s still in the map after 10s", w.rec.ID)
				}
				time.Sleep(50 * time.Microsecond)
			}
			dels = append(dels, time.Since(start))
		}
		b.StopTimer()
		eventually(b, "endpoints removed", func() error {
			if eps, _ := set.Endpoints.List(); len(eps) != 0 {
				return fmt.Errorf("%d endpoints left", len(eps))
			}
			return nil
		})
		b.StartTimer()
	}
	pct := func(l []time.Duration, p int) float64 {
		slices.Sort(l)
		return float64(l[len(l)*p/100].Microseconds()) / 1000
	}
	b.ReportMetric(pct(lat, 50), "ms-p50")
	b.ReportMetric(pct(lat, 99), "ms-p99")
	b.ReportMetric(pct(dels, 50), "ms-del-p50")
	b.ReportMetric(pct(dels, 99), "ms-del-p99")
}
