package agent

import (
	"fmt"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/maps"
)

// routeKinds are the kinds of the routes map, in the label form margay_routes uses.
var routeKinds = []maps.RouteFlags{maps.LocalWorkload, maps.RemoteBlock, maps.RemoteWorkload, maps.LocalBlock, maps.Host}

// dataplaneCollector reads the dataplane's maps at scrape time: the per-CPU counters summed over
// CPUs by interface, hook and reason; the routes map by kind; the endpoints map. Interface names
// come from a netlink handle opened in the host's namespace by attach (scrapes run on HTTP
// goroutines, in whatever namespace their thread is in).
type dataplaneCollector struct {
	mu  sync.Mutex
	set *maps.Set       // nil while Run is not running
	nl  *netlink.Handle // bound to the host's namespace

	packets, bytes, routes, endpoints *prometheus.Desc
}

func newDataplaneCollector() *dataplaneCollector {
	labels := []string{"interface", "hook", "reason"}
	return &dataplaneCollector{
		packets: prometheus.NewDesc("margay_dataplane_packets_total",
			"Packets the BPF programs handled, by interface, hook and reason (FWD_*, PASS_*, DROP_*).", labels, nil),
		bytes: prometheus.NewDesc("margay_dataplane_bytes_total",
			"Bytes the BPF programs handled, by interface, hook and reason (FWD_*, PASS_*, DROP_*).", labels, nil),
		routes: prometheus.NewDesc("margay_routes", "Entries of the BPF routes map by kind.", []string{"kind"}, nil),
		endpoints: prometheus.NewDesc("margay_endpoints",
			"Entries of the BPF endpoints map: local workload interfaces the dataplane serves.", nil, nil),
	}
}

// attach points the collector at a running dataplane. It must be called on the thread that is in
// the host's network namespace; the returned function detaches it.
func (c *dataplaneCollector) attach(set *maps.Set) (detach func(), err error) {
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("agent: open netlink for metrics: %w", err)
	}
	c.mu.Lock()
	c.set, c.nl = set, nl
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.nl.Close()
		c.set, c.nl = nil, nil
	}, nil
}

func (c *dataplaneCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.packets
	ch <- c.bytes
	ch <- c.routes
	ch <- c.endpoints
}

func (c *dataplaneCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.set == nil {
		return
	}
	if counters, err := c.set.Counters.List(); err == nil {
		names := map[uint32]string{}
		for _, ct := range counters {
			name, ok := names[ct.Ifindex]
			if !ok {
				name = fmt.Sprintf("ifindex%d", ct.Ifindex) // gone since: its counters go with it
				if l, err := c.nl.LinkByIndex(int(ct.Ifindex)); err == nil {
					name = l.Attrs().Name
				}
				names[ct.Ifindex] = name
			}
			lv := []string{name, ct.Hook.String(), ct.Reason.String()}
			ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(ct.Packets), lv...)
			ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(ct.Bytes), lv...)
		}
	}
	if routes, err := c.set.Routes.List(); err == nil {
		counts := map[maps.RouteFlags]int{}
		for _, r := range routes {
			counts[r.Kind()]++
		}
		for _, k := range routeKinds { // every kind, zero too: a panel shows none as 0, not as no data
			ch <- prometheus.MustNewConstMetric(c.routes, prometheus.GaugeValue, float64(counts[k]), routeKindLabel(k))
		}
	}
	if eps, err := c.set.Endpoints.List(); err == nil {
		ch <- prometheus.MustNewConstMetric(c.endpoints, prometheus.GaugeValue, float64(len(eps)))
	}
}

// routeKindLabel is the kind as margay_routes labels it: "local_wep", "remote_block", ….
func routeKindLabel(k maps.RouteFlags) string { return strings.ToLower(k.String()) }

// passMetrics are what the owner loop records after each pass from its view: IPAM use of this
// node's blocks and the CNI plugin's ADD durations carried by the workload records.
type passMetrics struct {
	blocks    prometheus.Gauge
	addresses *prometheus.GaugeVec
	cniAdd    prometheus.Histogram
	cniSeen   map[string]float64 // workload key -> the duration observed for it; owned by the loop
}

func newPassMetrics(reg prometheus.Registerer) *passMetrics {
	m := &passMetrics{
		blocks: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "margay", Subsystem: "ipam", Name: "blocks",
			Help: "IPAM blocks affine to this node."}),
		addresses: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "margay", Subsystem: "ipam", Name: "addresses",
			Help: "Addresses of the blocks affine to this node, by state (used, free)."}, []string{"state"}),
		cniAdd: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "margay", Subsystem: "cni", Name: "add_duration_seconds",
			Help:    "Time the CNI plugin's ADD took for this node's workloads, from the plugin's start to the record's write; observed once per record.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		cniSeen: map[string]float64{},
	}
	reg.MustRegister(m.blocks, m.addresses, m.cniAdd)
	return m
}

// afterPass updates the IPAM gauges and observes the ADD duration of every local workload
// record (of those the pass looked at) not seen with that duration before. Called by the owner
// loop.
func (m *passMetrics) afterPass(v *view) {
	blocks, used, size := 0, 0, 0
	for _, b := range v.blocks {
		if b.Node() != v.node {
			continue
		}
		blocks++
		used += len(b.Allocations)
		size += int(ipam.Capacity(b.CIDR))
	}
	m.blocks.Set(float64(blocks))
	m.addresses.WithLabelValues("used").Set(float64(used))
	m.addresses.WithLabelValues("free").Set(float64(size - used))

	seen := func(key string) {
		w, ok := v.workloads[key]
		if !ok {
			delete(m.cniSeen, key)
			return
		}
		if w.Node != v.node || w.AddDurationSeconds <= 0 || m.cniSeen[key] == w.AddDurationSeconds {
			return
		}
		m.cniSeen[key] = w.AddDurationSeconds
		m.cniAdd.Observe(w.AddDurationSeconds)
	}
	if !v.passAll {
		for _, key := range v.passKeys {
			seen(key)
		}
		return
	}
	for key := range v.workloads {
		seen(key)
	}
	for key := range m.cniSeen {
		if _, ok := v.workloads[key]; !ok {
			delete(m.cniSeen, key)
		}
	}
}
