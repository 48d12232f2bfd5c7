// Package kubeproxy writes the nat table that kube-proxy's iptables mode programs for a set of
// Services, so that tests and benchmarks translate traffic with the same chains, jumps, marks
// and masquerade rules a Kubernetes node has.
package kubeproxy
