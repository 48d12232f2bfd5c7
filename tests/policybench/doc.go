// Package policybench measures what network policy costs: per packet in the eBPF programs
// (BPF_PROG_TEST_RUN), established flows against first packets with 1, 100 and 1,000 rules and
// with the 1,000 rules spread over tiers and profiles, and end to end against the same rule sets as iptables rules on the kernel's forwarding path, as
// the classic Calico dataplane has them. Every figure is a ratio against a baseline measured in
// the same run, in interleaved rounds; timings are reported, never asserted.
package policybench
