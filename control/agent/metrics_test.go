package agent

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

// sample is one line of the text exposition format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var labelRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// parseMetrics reads the samples of a /metrics body.
func parseMetrics(t *testing.T, body string) []sample {
	t.Helper()
	var out []sample
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("metrics line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		s := sample{name: line[:i], labels: map[string]string{}, value: v}
		if j := strings.IndexByte(line[:i], '{'); j >= 0 {
			s.name = line[:j]
			for _, m := range labelRE.FindAllStringSubmatch(line[j:i], -1) {
				s.labels[m[1]] = m[2]
			}
		}
		out = append(out, s)
	}
	return out
}

// find returns the samples of name whose labels include want.
func find(samples []sample, name string, want map[string]string) []sample {
	var out []sample
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range want {
			ok = ok && s.labels[k] == v
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

// one returns the value of the only sample of name with labels want.
func one(samples []sample, name string, want map[string]string) (float64, error) {
	got := find(samples, name, want)
	if len(got) != 1 {
		return 0, fmt.Errorf("%s%v: %d samples, want 1", name, want, len(got))
	}
	return got[0].value, nil
}

func (h *agentHost) metrics(t *testing.T) []sample {
	t.Helper()
	code, body, err := h.get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	return parseMetrics(t, body)
}

// /metrics carries the dataplane's maps read at scrape time (counters by interface, hook and
// reason; routes by kind; endpoints), IPAM use of the node's blocks and the CNI plugin's ADD
// durations from the workload records, each observed once.
func TestMetrics(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	ds := datastoretest.New(t, datastore.WithRegisterer(reg))
	h, set := startAgent(t, reg, ds)
	eventually(t, "ready", func() error {
		if !h.agent.Ready() {
			return fmt.Errorf("not ready")
		}
		return nil
	})

	// A workload through the CNI plugin's code path, which records how long its ADD took.
	wns := netns.New(t, "mgyagm-")
	spec := workload.Spec{ID: "web", Name: "web", Node: "vm100", Netns: wns.Path, Started: time.Now()}
	ipm := ipam.New(ds)
	var res workload.Result
	if err := h.ns.Do(func() (err error) { res, err = workload.Add(ctx, ds, ipm, spec); return err }); err != nil {
		t.Fatal(err)
	}
	rec, err := ds.Workloads("vm100").Get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if d := rec.Value.AddDurationSeconds; d <= 0 || d > 60 {
		t.Fatalf("record's addDurationSeconds %v, want the ADD's duration", d)
	}
	idx := uint32(h.ns.Link(t, res.HostVeth).Attrs().Index)
	eventually(t, "workload programmed", func() error {
		_, err := set.Endpoints.Get(idx)
		return err
	})

	// Traffic from the workload: the host veth's from_wep program counts it.
	_, _ = wns.Run("ping", "-c", "2", "-i", "0.2", "-W", "1", "198.18.0.100")

	eventually(t, "metrics match the maps", func() error {
		s := h.metrics(t)
		routes, err := set.Routes.List()
		if err != nil {
			return err
		}
		want := map[string]int{}
		for _, r := range routes {
			want[routeKindLabel(r.Kind())]++
		}
		for _, k := range []string{"local_wep", "remote_block", "remote_wep", "local_block", "host"} {
			got, err := one(s, "margay_routes", map[string]string{"kind": k})
			if err != nil {
				return err
			}
			if int(got) != want[k] {
				return fmt.Errorf("margay_routes{kind=%q} %v, routes map has %d", k, got, want[k])
			}
		}
		if want["local_wep"] != 1 || want["local_block"] != 1 || want["host"] == 0 {
			return fmt.Errorf("routes map by kind %v", want)
		}
		if got, err := one(s, "margay_endpoints", nil); err != nil || got != 1 {
			return fmt.Errorf("margay_endpoints %v, %v; want 1", got, err)
		}
		// vm100 holds 198.19.0.64/26 with the workload's address.
		if got, err := one(s, "margay_ipam_blocks", nil); err != nil || got != 1 {
			return fmt.Errorf("margay_ipam_blocks %v, %v; want 1", got, err)
		}
		if got, err := one(s, "margay_ipam_addresses", map[string]string{"state": "used"}); err != nil || got != 1 {
			return fmt.Errorf("margay_ipam_addresses{state=used} %v, %v; want 1", got, err)
		}
		if got, err := one(s, "margay_ipam_addresses", map[string]string{"state": "free"}); err != nil || got != 63 {
			return fmt.Errorf("margay_ipam_addresses{state=free} %v, %v; want 63", got, err)
		}
		var packets, bytes float64
		for _, c := range find(s, "margay_dataplane_packets_total", map[string]string{"interface": res.HostVeth, "hook": "from_wep"}) {
			packets += c.value
		}
		for _, c := range find(s, "margay_dataplane_bytes_total", map[string]string{"interface": res.HostVeth, "hook": "from_wep"}) {
			bytes += c.value
		}
		if packets == 0 || bytes < packets*28 {
			return fmt.Errorf("from_wep on %s: %v packets, %v bytes", res.HostVeth, packets, bytes)
		}
		// Every counter of the map is exported under its interface's name, summed over CPUs.
		counters, err := set.Counters.List()
		if err != nil {
			return err
		}
		for _, c := range counters {
			if c.Ifindex != idx || c.Hook != maps.HookFromWep {
				continue
			}
			got, err := one(s, "margay_dataplane_packets_total",
				map[string]string{"interface": res.HostVeth, "hook": "from_wep", "reason": c.Reason.String()})
			if err != nil || got < float64(c.Packets) {
				return fmt.Errorf("%s %v: %v, %v", res.HostVeth, c.Reason, got, err)
			}
		}
		if got, err := one(s, "margay_cni_add_duration_seconds_count", nil); err != nil || got != 1 {
			return fmt.Errorf("margay_cni_add_duration_seconds_count %v, %v; want 1", got, err)
		}
		if got, err := one(s, "margay_cni_add_duration_seconds_sum", nil); err != nil || got != rec.Value.AddDurationSeconds {
			return fmt.Errorf("margay_cni_add_duration_seconds_sum %v, %v; want %v", got, err, rec.Value.AddDurationSeconds)
		}
		return nil
	})

	// A record seen again (every pass) is not observed again; a record of another node is not
	// observed at all; a new local record is.
	if _, err := ds.Workloads("vm101").Create(ctx, "b1", datastore.Workload{Version: 1, ID: "b1", Name: "b1", Node: "vm101",
		IfName: "cali0000000000b", MAC: "0a:58:00:00:00:01", AddDurationSeconds: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Workloads("vm100").Create(ctx, "w2", datastore.Workload{Version: 1, ID: "w2", Name: "w2", Node: "vm100",
		IfName: "cali0000000000c", MAC: "0a:58:00:00:00:02", AddDurationSeconds: 0.25}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // a few passes (every 300 ms)
	eventually(t, "second ADD observed once", func() error {
		s := h.metrics(t)
		if got, err := one(s, "margay_cni_add_duration_seconds_count", nil); err != nil || got != 2 {
			return fmt.Errorf("margay_cni_add_duration_seconds_count %v, %v; want 2", got, err)
		}
		want := rec.Value.AddDurationSeconds + 0.25
		if got, err := one(s, "margay_cni_add_duration_seconds_sum", nil); err != nil || got < want-1e-9 || got > want+1e-9 {
			return fmt.Errorf("margay_cni_add_duration_seconds_sum %v, %v; want %v", got, err, want)
		}
		return nil
	})

	// After Run ends the collector reads nothing (its maps and netlink handle are gone).
	h.cancel()
	if err := <-h.done; err != nil {
		t.Fatal(err)
	}
	h.done <- nil // for startAgent's cleanup
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "margay_dataplane_") || mf.GetName() == "margay_routes" || mf.GetName() == "margay_endpoints" {
			t.Errorf("%s gathered after Run ended", mf.GetName())
		}
	}
}
