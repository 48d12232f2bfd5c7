// Package bpfbench measures the per-packet cost of the dataplane programs through
// BPF_PROG_TEST_RUN, next to two baselines: an empty TC program and a bare LPM lookup.
package bpfbench
