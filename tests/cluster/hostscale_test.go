package cluster_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/benchrules"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// BenchmarkHostWorkloads is issue 18's busy host: one agent with BENCH_HOST_WORKLOADS (default
// 1,000) workloads, made by the real CNI plugin and labelled as benchrules.ScaleLabels says, and
// as many policies (benchrules.ScalePolicies). It reports, under that load:
//   - full-pass: one full reconcile pass, ms (the mean of the passes of a 30 s idle window, in
//     which every pass is the periodic full one), and policy compile time per pass, ms;
//   - idle CPU (% of one core) and RSS (MiB) over that window;
//   - event-to-map: a workload record written to etcd until its endpoints map entry exists
//     (add) and until it is gone (delete), p50 and p99 of 50 each;
//   - CNI ADD: the plugin process from start to exit, p50 and p99 of 50 each, without waiting
//     for the agent (policySetupTimeout 0) and with the wait (20s: it returns once the agent
//     attached the workload's programs).
func BenchmarkHostWorkloads(b *testing.B) {
	n := 1000
	if s := os.Getenv("BENCH_HOST_WORKLOADS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 || n > 5000 {
			b.Fatalf("BENCH_HOST_WORKLOADS=%q", s)
		}
	}
	for range b.N {
		b.StopTimer()
		hostWorkloads(b, n)
		b.StartTimer()
	}
}

func hostWorkloads(b *testing.B, n int) {
	ctx := context.Background()
	c := cluster.New(b)
	h := c.AddHost("vm100", "198.18.0.100/24", "--pprof", "--reconcile-interval", "10s")
	set := h.Maps(b)

	// The workloads, eight ADDs at a time, each with its labels written to its record after.
	for i := 0; i < n; i += 8 {
		var waits []func() *cluster.Workload
		for j := i; j < min(n, i+8); j++ {
			waits = append(waits, c.StartWorkloadTimeout(h, fmt.Sprintf("s%d", j), "0"))
		}
		for k, wait := range waits {
			w := wait()
			it, err := c.DS.Workloads(h.Name).Get(ctx, w.ID())
			if err != nil {
				b.Fatal(err)
			}
			it.Value.Labels = benchrules.ScaleLabels(i + k)
			if _, err := c.DS.Workloads(h.Name).Update(ctx, w.ID(), it.Value, it.ModRevision); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, p := range benchrules.ScalePolicies(n) {
		if _, err := c.DS.Policies().Create(ctx, p.Name, p); err != nil {
			b.Fatal(err)
		}
	}
	poll.Until(b, "every workload programmed and every policy compiled", 5*time.Minute, func() error {
		eps, err := set.Endpoints.List()
		if err != nil {
			return err
		}
		m := scrape(b, h)
		if len(eps) != n || m["margay_policy_policies"] != float64(n) {
			return fmt.Errorf("%d endpoints, %v policies", len(eps), m["margay_policy_policies"])
		}
		return nil
	})

	// The idle window: nothing changes, so every pass is a periodic full one.
	const window = 30 * time.Second
	before := scrape(b, h)
	idleProf := profile(b, h, fmt.Sprintf("host-%d-idle", n))
	time.Sleep(window) // a measurement interval, not a wait for a condition
	after := scrape(b, h)
	d := func(name string) float64 { return after[name] - before[name] }
	passes := d("margay_agent_reconcile_duration_seconds_count")
	if passes < 1 {
		b.Fatalf("no pass in %v of idling", window)
	}
	b.ReportMetric(1000*d("margay_agent_reconcile_duration_seconds_sum")/passes, "ms-full-pass")
	if k := d("margay_policy_compile_seconds_count"); k > 0 {
		b.ReportMetric(1000*d("margay_policy_compile_seconds_sum")/k, "ms-compile")
	}
	b.ReportMetric(100*d("process_cpu_seconds_total")/window.Seconds(), "%CPU-idle")
	b.ReportMetric(after["process_resident_memory_bytes"]/(1<<20), "MiB-RSS")

	<-idleProf
	evProf := profile(b, h, fmt.Sprintf("host-%d-events", n))
	addP50, addP99, delP50, delP99 := eventToMap(b, c, h, set, 50)
	<-evProf
	b.ReportMetric(addP50, "ms-event-add-p50")
	b.ReportMetric(addP99, "ms-event-add-p99")
	b.ReportMetric(delP50, "ms-event-del-p50")
	b.ReportMetric(delP99, "ms-event-del-p99")

	for _, tc := range []struct{ timeout, unit string }{{"0", "nowait"}, {"20s", "wait"}} {
		before := scrape(b, h)
		prof := profile(b, h, fmt.Sprintf("host-%d-cni-%s", n, tc.unit))
		lat := cniAdds(b, c, h, tc.timeout, 50)
		<-prof
		after := scrape(b, h)
		b.ReportMetric(pctMs(lat, 0.50), "ms-cni-"+tc.unit+"-p50")
		b.ReportMetric(pctMs(lat, 0.99), "ms-cni-"+tc.unit+"-p99")
		if tc.unit == "nowait" {
			// The plugin's own figure (margay_cni_add_duration_seconds: from cmdAdd's start, etcd
			// connection included, to its record written): the rest of the process's time is its
			// start (exec, the Go runtime, package initialization) and exit.
			if k := after["margay_cni_add_duration_seconds_count"] - before["margay_cni_add_duration_seconds_count"]; k > 0 {
				b.ReportMetric(1000*(after["margay_cni_add_duration_seconds_sum"]-before["margay_cni_add_duration_seconds_sum"])/k, "ms-cni-inplugin-mean")
			}
			var sum time.Duration
			for _, l := range lat {
				sum += l
			}
			b.ReportMetric(float64(sum.Microseconds())/1000/float64(len(lat)), "ms-cni-nowait-mean")
		}
	}
}

func pctMs(lat []time.Duration, p float64) float64 {
	slices.Sort(lat)
	return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000
}

// scrape reads the agent's metrics without labels (and histogram sums and counts).
func scrape(tb testing.TB, h *cluster.Host) map[string]float64 {
	code, body, err := h.GetWithin("/metrics", 30*time.Second)
	if err != nil || code != 200 {
		tb.Fatalf("metrics: %d %v", code, err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		name, v, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") || strings.Contains(name, "{") {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
			out[name] = f
		}
	}
	return out
}

// eventToMap writes k workload records for veths made by hand (no CNI, no IPAM: the addresses
// are outside every block the host holds) one at a time, and measures until the endpoint is in
// the map; then deletes them one at a time, until it is gone.
func eventToMap(b *testing.B, c *cluster.Cluster, h *cluster.Host, set *maps.Set, k int) (addP50, addP99, delP50, delP99 float64) {
	ctx := context.Background()
	type wl struct {
		rec   datastore.Workload
		index uint32
	}
	var wls []wl
	for i := range k {
		w := netns.New(b, "mgyev-")
		cali := fmt.Sprintf("calie%010x", i)
		_, eth0 := netns.Veth(b, h.NS, cali, w, "eth0")
		wls = append(wls, wl{rec: datastore.Workload{Version: 1, ID: fmt.Sprintf("ev%d", i), Name: fmt.Sprintf("ev%d", i),
			Node: h.Name, IfName: cali, MAC: eth0.Attrs().HardwareAddr.String(), Labels: benchrules.ScaleLabels(i),
			IPv4: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 250, byte(i + 1)}), 32)}},
			index: uint32(h.NS.Link(b, cali).Attrs().Index)})
	}
	// wait returns the time from start until done, polled at a 100 µs grain (the latency measured
	// is of the order of a millisecond), and fails a minute after start.
	wait := func(what string, start time.Time, done func() bool) time.Duration {
		if err := poll.Every(100*time.Microsecond, time.Until(start.Add(time.Minute)), func() error {
			if !done() {
				return errors.New("not yet")
			}
			return nil
		}); err != nil {
			b.Fatalf("%s: not within a minute", what)
		}
		return time.Since(start)
	}
	var adds, dels []time.Duration
	for _, w := range wls {
		start := time.Now()
		if _, err := c.DS.Workloads(h.Name).Put(ctx, w.rec.ID, w.rec); err != nil {
			b.Fatal(err)
		}
		adds = append(adds, wait(w.rec.ID+" in the map", start, func() bool { _, err := set.Endpoints.Get(w.index); return err == nil }))
		// The agent finishes the workload (programs attached) before the next event.
		poll.Until(b, w.rec.ID+" attached", time.Minute, func() error {
			_, err := os.Stat(filepath.Join(h.Root, "links", w.rec.IfName+"_to_wep"))
			return err
		})
	}
	for _, w := range wls {
		start := time.Now()
		if err := c.DS.Workloads(h.Name).Delete(ctx, w.rec.ID, 0); err != nil {
			b.Fatal(err)
		}
		dels = append(dels, wait(w.rec.ID+" out of the map", start, func() bool { _, err := set.Endpoints.Get(w.index); return err != nil }))
		poll.Until(b, w.rec.ID+" detached", time.Minute, func() error {
			if _, err := os.Stat(filepath.Join(h.Root, "links", w.rec.IfName+"_to_wep")); err == nil {
				return fmt.Errorf("still attached")
			}
			return nil
		})
	}
	return pctMs(adds, 0.5), pctMs(adds, 0.99), pctMs(dels, 0.5), pctMs(dels, 0.99)
}

// cniAdds runs k CNI ADDs one after the other with the given policySetupTimeout, timing the
// plugin process alone (forked from a thread inside the host's namespace, no nsenter), and DELs
// them afterwards.
func cniAdds(b *testing.B, c *cluster.Cluster, h *cluster.Host, timeout string, k int) []time.Duration {
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"margay","type":"margay-cni","nodeName":%q,"mtu":1500,`+
		`"policySetupTimeout":%q,"bpffsRoot":%q,"datastore":{"endpoints":[%q]}}`, h.Name, timeout, h.Root, c.Endpoint(h))
	bin := cluster.Binaries(b)
	cni := func(command, id string, ns *netns.NS) ([]byte, error) {
		var out []byte
		err := h.NS.Do(func() error {
			cmd := exec.Command(filepath.Join(bin, "margay-cni"))
			cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+id, "CNI_NETNS="+ns.Path,
				"CNI_IFNAME=eth0", "CNI_PATH="+bin)
			cmd.Stdin = strings.NewReader(conf)
			var err error
			out, err = cmd.Output()
			return err
		})
		return out, err
	}
	var lat []time.Duration
	type added struct {
		id string
		ns *netns.NS
	}
	var all []added
	b.Cleanup(func() {
		for _, a := range all {
			_, _ = cni("DEL", a.id, a.ns)
		}
	})
	for i := range k {
		ns := netns.New(b, "mgycni-")
		id := fmt.Sprintf("cni-%s-%d", cmp.Or(strings.TrimSuffix(timeout, "s"), "0"), i)
		start := time.Now()
		out, err := cni("ADD", id, ns)
		lat = append(lat, time.Since(start))
		all = append(all, added{id, ns})
		if err != nil {
			b.Fatalf("ADD %s: %v\n%s", id, err, out)
		}
	}
	for _, a := range all {
		if out, err := cni("DEL", a.id, a.ns); err != nil {
			b.Fatalf("DEL %s: %v\n%s", a.id, err, out)
		}
	}
	all = nil
	return lat
}
