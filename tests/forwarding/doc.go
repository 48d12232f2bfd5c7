// Package forwarding proves end to end, in network namespaces and without a control plane, that
// the eBPF programs forward workload traffic on one host and between two hosts.
package forwarding
