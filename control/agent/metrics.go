package agent

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	reconciles        *prometheus.CounterVec
	reconcileDuration prometheus.Histogram
	changes           prometheus.Counter
	endpoints         prometheus.Gauge
	pending           prometheus.Gauge
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
	}
	reg.MustRegister(m.reconciles, m.reconcileDuration, m.changes, m.endpoints, m.pending)
	return m
}
