package cluster_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/poll"
)

func pingOK(from, to *cluster.Workload) func() error {
	return func() error {
		out, err := from.NS.Run("ping", "-c", "1", "-W", "2", to.IP.String())
		if err != nil {
			return fmt.Errorf("%s → %s: %v\n%s", from.Name, to.Name, err, out)
		}
		return nil
	}
}

// A host and a workload added to a running cluster converge everywhere; a workload deleted
// through CNI DEL leaves no map entry, kernel route, IPAM handle or endpoint record.
func TestGrowAndShrink(t *testing.T) {
	c := cluster.New(t)
	h1 := c.AddHost("vm100", "198.18.0.100/24", "--bgp")
	h2 := c.AddHost("vm101", "198.18.0.101/24", "--bgp")
	h3 := c.AddHost("vm102", "198.18.0.102/24", "--bgp")
	a, b := c.AddWorkload(h1, "a"), c.AddWorkload(h2, "b")
	poll.Until(t, "a ↔ b", 30*time.Second, pingOK(a, b))

	// A workload on vm102 and then a fourth host, with a workload of its own, join later.
	e := c.AddWorkload(h3, "e")
	h4 := c.AddHost("vm103", "198.18.0.103/24", "--bgp")
	d := c.AddWorkload(h4, "d")
	all := []*cluster.Workload{a, b, d, e}
	for _, from := range all {
		for _, to := range all {
			if from != to {
				poll.Until(t, "after vm103 joined", 60*time.Second, pingOK(from, to))
			}
		}
	}

	// Delete b through the plugin: nothing of it stays.
	set := h2.Maps(t)
	ip := netip.PrefixFrom(b.IP, 32)
	rt, err := set.Routes.Get(ip)
	if err != nil {
		t.Fatalf("b's route before DEL: %v", err)
	}
	if err := b.Del(); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "b gone from vm101's dataplane", 30*time.Second, func() error {
		if _, err := set.Routes.Get(ip); !errors.Is(err, maps.ErrNotFound) {
			return fmt.Errorf("routes map still has %v: %v", ip, err)
		}
		if _, err := set.Endpoints.Get(rt.Ifindex); !errors.Is(err, maps.ErrNotFound) {
			return fmt.Errorf("endpoint %d still there: %v", rt.Ifindex, err)
		}
		out, err := h2.NS.Run("ip", "-N", "-4", "route", "show", b.IP.String())
		if err != nil || strings.TrimSpace(out) != "" {
			return fmt.Errorf("kernel route %q, %v", out, err)
		}
		return nil
	})
	if _, err := c.DS.Handles().Get(t.Context(), "ctr-b"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("IPAM handle of b: %v", err)
	}
	ws, _, err := c.DS.AllWorkloads().List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		if w.Value.ContainerID == "ctr-b" {
			t.Errorf("endpoint record of b still there: %s", w.Name)
		}
	}
	if err := pingOK(a, d)(); err != nil {
		t.Errorf("the others lost traffic: %v", err)
	}
	// Each host's agent served its plugin's calls (margay-cni forwards them to the agent of
	// its network namespace): no call ran in margay-cni-direct.
	for h, want := range map[*cluster.Host]map[string]float64{h1: {"ADD": 1}, h2: {"ADD": 1, "DEL": 1}, h4: {"ADD": 1}} {
		_, body, err := h.Get("/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for cmd, n := range want {
			if v, _ := metricValue(body, `margay_cni_requests_total{command="`+cmd+`",outcome="ok"}`); v != n {
				t.Errorf("%s's agent served %v %s calls, want %v", h.Name, v, cmd, n)
			}
		}
		if v, ok := metricValue(body, `margay_cni_requests_total{command="ADD",outcome="not_mine"}`); ok {
			t.Errorf("%s's agent declined %v ADD calls", h.Name, v)
		}
		// Each ADD's address is counted once, from the agent's copy of the blocks or from etcd.
		fromCopy, _ := metricValue(body, `margay_ipam_assignments_total{source="copy"}`)
		fromEtcd, _ := metricValue(body, `margay_ipam_assignments_total{source="etcd"}`)
		if fromCopy+fromEtcd != want["ADD"] {
			t.Errorf("%s's agent counted %v addresses from its copy and %v from etcd, want %v in all", h.Name, fromCopy, fromEtcd, want["ADD"])
		}
	}
}

// A packet as big as the uplink's MTU crosses hosts unfragmented; a bigger one with DF set gets
// ICMP "fragmentation needed" back: the eBPF path hands it to the kernel, which answers.
func TestMTU(t *testing.T) {
	c := cluster.New(t)
	h1 := c.AddHost("vm100", "198.18.0.100/24", "--bgp")
	h2 := c.AddHost("vm101", "198.18.0.101/24", "--bgp")
	// Workloads keep 1500; the uplinks (and their bridge ports) drop to 1400.
	for _, h := range []*cluster.Host{h1, h2} {
		h.NS.MustRun(t, "ip", "link", "set", "ens32", "mtu", "1400")
	}
	c.SetSegmentMTU(t, 1400)
	a, b := c.AddWorkload(h1, "a"), c.AddWorkload(h2, "b")
	poll.Until(t, "a → b", 30*time.Second, pingOK(a, b))

	// 1372 bytes of ICMP data + 8 + 20 = 1400: exactly the uplink MTU, DF set.
	if out, err := a.NS.Run("ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1372", b.IP.String()); err != nil {
		t.Errorf("full-size packet: %v\n%s", err, out)
	}
	out, err := a.NS.Run("ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1373", b.IP.String())
	if err == nil || !strings.Contains(out, "mtu = 1400") {
		t.Errorf("oversize packet with DF: want ICMP fragmentation needed (mtu = 1400), got %v\n%s", err, out)
	}
	set := h1.Maps(t)
	cs, err := set.Counters.List()
	if err != nil {
		t.Fatal(err)
	}
	mtu := uint64(0)
	for _, ct := range cs {
		if ct.Reason.String() == "PASS_MTU" {
			mtu += ct.Packets
		}
	}
	if mtu == 0 {
		t.Error("no PASS_MTU counted: the oversize packet did not take the eBPF path to the kernel")
	}
}
