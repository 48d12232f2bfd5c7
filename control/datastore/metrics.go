package datastore

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	malformed *prometheus.CounterVec // by kind
	resyncs   *prometheus.CounterVec // by kind, reason
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		malformed: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "margay",
			Subsystem: "datastore",
			Name:      "malformed_values_total",
			Help:      "Stored values skipped because they do not decode, have another version or fail validation; each value (key and revision) counts once.",
		}, []string{"kind"})),
		resyncs: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "margay",
			Subsystem: "datastore",
			Name:      "watch_resyncs_total",
			Help:      "Watches that had to list again and deliver a fresh snapshot, by reason (compacted, canceled, error).",
		}, []string{"kind", "reason"})),
	}
	// Every kind has a series from the start, so that rate() and alerts see the first increment.
	for _, k := range kindNames {
		m.malformed.WithLabelValues(k)
	}
	return m
}

// register registers c, or returns the collector already registered under the same description,
// so that several Clients can share one Registerer.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err) // a programming error: a clashing metric name
	}
	return c
}
