package agent

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reconciles        *prometheus.CounterVec
	reconcileDuration prometheus.Histogram
	changes           prometheus.Counter
	endpoints         prometheus.Gauge
	pending           prometheus.Gauge
	routeProgramming  prometheus.Histogram
	orphansRemoved    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "margay", Subsystem: "agent", Name: "reconciles_total",
			Help: "Reconcile passes of the dataplane, by kind (full, update) and result (ok, error).",
		}, []string{"kind", "result"}),
		reconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "margay", Subsystem: "agent", Name: "reconcile_duration_seconds",
			Help:    "Time of one reconcile pass.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "margay", Subsystem: "agent", Name: "dataplane_changes_total",
			Help: "Routes, map entries, settings and attachments created, repaired or removed.",
		}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "margay", Subsystem: "agent", Name: "endpoints",
			Help: "Workloads of this node in the datastore.",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "margay", Subsystem: "agent", Name: "endpoints_pending",
			Help: "Workloads of this node whose interface does not exist yet.",
		}),
		routeProgramming: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "margay", Subsystem: "bgp", Name: "route_programming_seconds",
			Help:    "From a change of the BGP-learned routes to the routes map and kernel table holding it.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		orphansRemoved: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "margay", Subsystem: "agent", Name: "orphaned_workloads_removed_total",
			Help: "Workload records removed because their veth and netns were gone without a CNI DEL.",
		}),
	}
	reg.MustRegister(m.reconciles, m.reconcileDuration, m.changes, m.endpoints, m.pending, m.routeProgramming, m.orphansRemoved)
	return m
}

// bgpCollector reads the speaker at scrape time: sessions by state, routes learned and advertised.
type bgpCollector struct {
	a          *Agent
	peers      *prometheus.Desc
	learned    *prometheus.Desc
	advertised *prometheus.Desc
	retained   *prometheus.Desc
}

func newBGPCollector(a *Agent) *bgpCollector {
	return &bgpCollector{
		a: a,
		peers: prometheus.NewDesc("margay_bgp_peers", "BGP peers of this node by session state and peer type.",
			[]string{"state", "type"}, nil),
		learned: prometheus.NewDesc("margay_bgp_routes_learned", "Best paths learned from peers that the import policy takes.", nil, nil),
		advertised: prometheus.NewDesc("margay_bgp_routes_advertised",
			"Prefixes this node originates: its blocks and borrowed /32s.", nil, nil),
		retained: prometheus.NewDesc("margay_bgp_routes_retained",
			"Remote routes kept from before the agent started until every peer sent its End-of-RIB; 0 once BGP alone decides.", nil, nil),
	}
}

func (c *bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.peers
	ch <- c.learned
	ch <- c.advertised
	ch <- c.retained
}

func (c *bgpCollector) Collect(ch chan<- prometheus.Metric) {
	sp := c.a.bgp.speaker.Load()
	if sp == nil {
		return
	}
	if peers, err := (*sp).Peers(context.Background()); err == nil {
		type key struct{ state, typ string }
		counts := map[key]int{}
		for _, p := range peers {
			counts[key{p.State.String(), p.Type.String()}]++
		}
		for k, n := range counts {
			ch <- prometheus.MustNewConstMetric(c.peers, prometheus.GaugeValue, float64(n), k.state, k.typ)
		}
	}
	ch <- prometheus.MustNewConstMetric(c.learned, prometheus.GaugeValue, float64(c.a.bgp.learned.Load()))
	ch <- prometheus.MustNewConstMetric(c.advertised, prometheus.GaugeValue, float64(c.a.bgp.advertised.Load()))
	ch <- prometheus.MustNewConstMetric(c.retained, prometheus.GaugeValue, float64(c.a.bgp.retained.Load()))
}
