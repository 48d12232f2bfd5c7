// Package benchsuite is issue 8's benchmark suite: topologies built from network namespaces (a
// single veth pair, the classic Calico kernel path with and without the classic iptables filter,
// and Margay across two hosts with and without 1,000 policy rules) measured interleaved with the
// same traffic, then BENCHMARKS.md and PNG plots written from the results. The measuring code is
// in the _test files (run `go test -bench Suite`); this package holds the statistics, the report
// template and the plots.
package benchsuite
