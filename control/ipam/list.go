package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/margaynet/margay/control/datastore"
)

// The summaries an operator lists (margayctl node list, pool list), each read in one round trip.

// Capacity is how many addresses prefix (IPv4) holds: a block's or a pool's capacity, the one
// computation of it (Usage, Pools).
func Capacity(prefix netip.Prefix) uint64 {
	return 1 << (32 - prefix.Bits())
}

// NodeSummary is a node with the AS number it speaks BGP with, its blocks and its workloads.
type NodeSummary struct {
	Node datastore.Node
	ASN  uint32 // datastore.EffectiveASN: the node's own, else the cluster's
	// ASNInherited: the node sets no AS number of its own and uses the cluster's.
	ASNInherited bool
	Blocks       []netip.Prefix // the blocks affine to the node, in the order of their keys
	Workloads    int            // the workload records under the node
}

// Nodes lists the registered nodes, in the order of their names, with their AS number, blocks and
// workload count, read with the BGP configuration in one transaction.
func (i *IPAM) Nodes(ctx context.Context) ([]NodeSummary, error) {
	var (
		nodes     []datastore.Item[datastore.Node]
		cfg       datastore.Item[datastore.BGPConfig]
		cfgErr    error
		blocks    []datastore.Item[datastore.Block]
		workloads []datastore.Item[datastore.Workload]
	)
	bgp := i.ds.BGPConfig()
	if _, err := i.ds.Fetch(ctx, i.ds.Nodes().ListRead(&nodes), bgp.Store().GetRead(bgp.Name(), &cfg, &cfgErr),
		i.ds.Blocks().ListRead(&blocks), i.ds.AllWorkloads().ListRead(&workloads)); err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	// Without config/bgp the zero configuration stands for the defaults.
	if cfgErr != nil && !errors.Is(cfgErr, datastore.ErrNotFound) {
		return nil, fmt.Errorf("list nodes: %w", cfgErr)
	}
	byNode := map[string][]netip.Prefix{}
	for _, b := range blocks {
		if n := b.Value.Node(); n != "" {
			byNode[n] = append(byNode[n], b.Value.CIDR)
		}
	}
	counts := map[string]int{}
	for _, w := range workloads {
		if node, _, ok := strings.Cut(w.Name, "/"); ok {
			counts[node]++
		}
	}
	out := make([]NodeSummary, 0, len(nodes))
	for _, it := range nodes {
		n := it.Value
		out = append(out, NodeSummary{Node: n, ASN: datastore.EffectiveASN(n, cfg.Value), ASNInherited: n.ASN == 0,
			Blocks: byNode[n.Name], Workloads: counts[n.Name]})
	}
	return out, nil
}

// PoolSummary is a pool with its occupancy.
type PoolSummary struct {
	Pool     datastore.Pool
	Blocks   int    // the blocks inside the pool
	Used     int    // the addresses allocated in them
	Capacity uint64 // the addresses of the pool's CIDR
}

// Pools lists the pools, in the order of their names, with their occupancy, read with the blocks
// in one transaction.
func (i *IPAM) Pools(ctx context.Context) ([]PoolSummary, error) {
	var (
		pools  []datastore.Item[datastore.Pool]
		blocks []datastore.Item[datastore.Block]
	)
	if _, err := i.ds.Fetch(ctx, i.ds.Pools().ListRead(&pools), i.ds.Blocks().ListRead(&blocks)); err != nil {
		return nil, fmt.Errorf("list pools: %w", err)
	}
	out := make([]PoolSummary, 0, len(pools))
	for _, p := range pools {
		s := PoolSummary{Pool: p.Value, Capacity: Capacity(p.Value.CIDR)}
		for _, b := range blocks {
			if InPool(p.Value.CIDR, b.Value.CIDR) {
				s.Blocks++
				s.Used += len(b.Value.Allocations)
			}
		}
		out = append(out, s)
	}
	return out, nil
}
