// Package agent is margay-agent's core: it registers the node, claims its block, loads the
// dataplane and keeps it equal to what etcd says about workloads, blocks, nodes and pools.
package agent
