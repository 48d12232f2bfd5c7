// Package observability checks the Grafana dashboard in deploy/grafana against a lab's agents
// through a real Prometheus: every query of every panel must return series.
package observability
