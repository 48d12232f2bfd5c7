package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/margaynet/margay/control/datastore"
)

// ReleaseHandle frees every address the handle holds and deletes the handle. Releasing a handle
// that holds nothing, or does not exist, is not an error: CNI DEL is idempotent.
func (i *IPAM) ReleaseHandle(ctx context.Context, handle string) ([]netip.Addr, error) {
	if err := datastore.ValidateName(handle); err != nil {
		return nil, fmt.Errorf("release handle: %w", err)
	}
	released, err := i.removeAllocations(ctx, func(a datastore.Allocation) bool { return a.Handle == handle })
	if err != nil {
		return released, fmt.Errorf("release handle %s: %w", handle, err)
	}
	for range maxAttempts {
		h, err := i.ds.Handles().Get(ctx, handle)
		if errors.Is(err, datastore.ErrNotFound) {
			return released, nil
		}
		if err != nil {
			return released, fmt.Errorf("release handle %s: %w", handle, err)
		}
		err = i.ds.Handles().Delete(ctx, handle, h.ModRevision)
		if errors.Is(err, datastore.ErrConflict) {
			continue
		}
		if err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return released, fmt.Errorf("release handle %s: %w", handle, err)
		}
		if len(released) > 0 {
			i.log.Debug("released", "handle", handle, "ips", released)
		}
		return released, nil
	}
	return released, fmt.Errorf("release handle %s: %w", handle, ErrContention)
}

// ReleaseIP frees one address whoever holds it, and drops it from its handle.
func (i *IPAM) ReleaseIP(ctx context.Context, ip netip.Addr) (string, error) {
	var holder string
	released, err := i.removeAllocations(ctx, func(a datastore.Allocation) bool {
		if a.IP == ip {
			holder = a.Handle
			return true
		}
		return false
	})
	if err != nil {
		return "", fmt.Errorf("release %s: %w", ip, err)
	}
	if len(released) == 0 {
		return "", fmt.Errorf("release %s: %w", ip, datastore.ErrNotFound)
	}
	for range maxAttempts {
		h, err := i.ds.Handles().Get(ctx, holder)
		if errors.Is(err, datastore.ErrNotFound) {
			return holder, nil
		}
		if err != nil {
			return holder, fmt.Errorf("release %s: %w", ip, err)
		}
		nh := h.Value
		nh.IPs = slices.DeleteFunc(slices.Clone(nh.IPs), func(a netip.Addr) bool { return a == ip })
		if len(nh.IPs) == 0 {
			err = i.ds.Handles().Delete(ctx, holder, h.ModRevision)
		} else {
			_, err = i.ds.Handles().Update(ctx, holder, nh, h.ModRevision)
		}
		if errors.Is(err, datastore.ErrConflict) {
			continue
		}
		if err != nil {
			return holder, fmt.Errorf("release %s: %w", ip, err)
		}
		return holder, nil
	}
	return holder, fmt.Errorf("release %s: %w", ip, ErrContention)
}

// removeAllocations drops the matching allocations from every block, each block by
// compare-and-swap, and returns the addresses freed.
func (i *IPAM) removeAllocations(ctx context.Context, match func(datastore.Allocation) bool) ([]netip.Addr, error) {
	var released []netip.Addr
	for range maxAttempts {
		blocks, _, err := i.ds.Blocks().List(ctx)
		if err != nil {
			return released, fmt.Errorf("list blocks: %w", err)
		}
		retry := false
		for _, b := range blocks {
			if !slices.ContainsFunc(b.Value.Allocations, match) {
				continue
			}
			nb := b.Value
			var freed []netip.Addr
			nb.Allocations = nil
			for _, a := range b.Value.Allocations {
				if match(a) {
					freed = append(freed, a.IP)
				} else {
					nb.Allocations = append(nb.Allocations, a)
				}
			}
			nb.Seq++
			_, err := i.ds.Blocks().Update(ctx, b.Name, nb, b.ModRevision)
			if errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrNotFound) {
				retry = true
				continue
			}
			if err != nil {
				return released, fmt.Errorf("update block %s: %w", nb.CIDR, err)
			}
			released = append(released, freed...)
		}
		if !retry {
			return released, nil
		}
	}
	return released, ErrContention
}

// ReleaseEmptyBlocks gives up the node's blocks that hold no address, keeping the first keep of
// them in enabled pools (in address order) so the next workload does not have to claim again;
// empty blocks outside every enabled pool always go. It returns the released blocks.
func (i *IPAM) ReleaseEmptyBlocks(ctx context.Context, node string, keep int) ([]netip.Prefix, error) {
	blocks, _, err := i.ds.Blocks().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("release empty blocks: %w", err)
	}
	affinity := datastore.AffinityForNode(node)
	pools, err := i.enabledPools(ctx)
	if err != nil && !errors.Is(err, ErrNoPool) {
		return nil, fmt.Errorf("release empty blocks: %w", err)
	}
	var own []datastore.Item[datastore.Block]
	for _, b := range blocks {
		if b.Value.Affinity == affinity {
			own = append(own, b)
		}
	}
	slices.SortFunc(own, func(a, b datastore.Item[datastore.Block]) int {
		return a.Value.CIDR.Addr().Compare(b.Value.CIDR.Addr())
	})
	var released []netip.Prefix
	kept := 0
	for _, b := range own {
		if len(b.Value.Allocations) > 0 {
			continue
		}
		// Only a block IPAM can still allocate from is worth keeping.
		if kept < keep && inPools(pools, b.Value.CIDR) {
			kept++
			continue
		}
		// A compare-and-swap delete: an allocation that just landed keeps the block.
		err := i.ds.Blocks().Delete(ctx, b.Name, b.ModRevision)
		if errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrNotFound) {
			continue
		}
		if err != nil {
			return released, fmt.Errorf("release block %s: %w", b.Value.CIDR, err)
		}
		i.log.Info("released empty block", "block", b.Value.CIDR, "node", node)
		released = append(released, b.Value.CIDR)
	}
	return released, nil
}

// GC releases the handles whose workload is gone (live reports whether a "<node>/<id>" workload
// still exists) and the allocations whose handle is gone unless a workload still uses the address
// (inUse), which would hand it out twice. Handles without a workload key are left alone: only
// their owner knows them.
func (i *IPAM) GC(ctx context.Context, live func(workload string) bool, inUse func(netip.Addr) bool) ([]netip.Addr, error) {
	handles, _, err := i.ds.Handles().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipam gc: %w", err)
	}
	var released []netip.Addr
	known := map[string]bool{}
	for _, h := range handles {
		known[h.Name] = true
		if h.Value.Workload == "" || live(h.Value.Workload) {
			continue
		}
		ips, err := i.ReleaseHandle(ctx, h.Name)
		if err != nil {
			return released, fmt.Errorf("ipam gc: %w", err)
		}
		i.log.Info("garbage-collected addresses of a workload that is gone", "handle", h.Name, "workload", h.Value.Workload, "ips", ips)
		released = append(released, ips...)
	}
	// The handle is written before its first allocation, so an allocation without a handle is a
	// leftover of a hand edit or of a handle deleted out of band.
	orphans, err := i.removeAllocations(ctx, func(a datastore.Allocation) bool {
		return !known[a.Handle] && !inUse(a.IP) && !i.handleExists(ctx, a.Handle)
	})
	if err != nil {
		return released, fmt.Errorf("ipam gc: %w", err)
	}
	return append(released, orphans...), nil
}

func (i *IPAM) handleExists(ctx context.Context, id string) bool {
	_, err := i.ds.Handles().Get(ctx, id)
	return !errors.Is(err, datastore.ErrNotFound)
}

// BlockUsage is one block's occupancy.
type BlockUsage struct {
	CIDR     netip.Prefix
	Node     string
	Capacity int
	Used     int
}

// Usage lists every block with its occupancy, in address order.
func (i *IPAM) Usage(ctx context.Context) ([]BlockUsage, error) {
	blocks, _, err := i.ds.Blocks().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipam usage: %w", err)
	}
	var out []BlockUsage
	for _, b := range blocks {
		out = append(out, BlockUsage{CIDR: b.Value.CIDR, Node: b.Value.Node(),
			Capacity: 1 << (32 - b.Value.CIDR.Bits()), Used: len(b.Value.Allocations)})
	}
	slices.SortFunc(out, func(a, b BlockUsage) int { return a.CIDR.Addr().Compare(b.CIDR.Addr()) })
	return out, nil
}

// Problem is an inconsistency Check found.
type Problem struct {
	What string
}

// Check looks for inconsistencies between blocks and handles: an address in two blocks, an
// allocation without a handle, a handle listing an address no block gives it, overlapping blocks;
// and in the IPAM configuration: blocks affine to a node that is not registered, pools that overlap
// a registered node's uplink subnet.
func (i *IPAM) Check(ctx context.Context) ([]Problem, error) {
	blocks, _, err := i.ds.Blocks().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipam check: %w", err)
	}
	handles, _, err := i.ds.Handles().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipam check: %w", err)
	}
	nodes, _, err := i.ds.Nodes().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipam check: %w", err)
	}
	pools, _, err := i.ds.Pools().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipam check: %w", err)
	}
	var problems []Problem
	registered := map[string]bool{}
	for _, n := range nodes {
		registered[n.Name] = true
		for _, p := range pools {
			if p.Value.CIDR.Overlaps(n.Value.AddressV4.Masked()) {
				problems = append(problems, Problem{fmt.Sprintf("pool %s (%s) overlaps the uplink subnet %s of node %s",
					p.Name, p.Value.CIDR, n.Value.AddressV4.Masked(), n.Name)})
			}
		}
	}
	for _, b := range blocks {
		if node := b.Value.Node(); b.Value.Affinity != "" && !registered[node] {
			problems = append(problems, Problem{fmt.Sprintf("block %s is affine to node %s, which is not registered (%d of its addresses allocated)",
				b.Value.CIDR, node, len(b.Value.Allocations))})
		}
	}
	holder := map[netip.Addr]string{}
	for x, b := range blocks {
		for _, o := range blocks[x+1:] {
			if b.Value.CIDR.Overlaps(o.Value.CIDR) {
				problems = append(problems, Problem{fmt.Sprintf("blocks %s and %s overlap", b.Value.CIDR, o.Value.CIDR)})
			}
		}
		for _, a := range b.Value.Allocations {
			if prev, dup := holder[a.IP]; dup {
				problems = append(problems, Problem{fmt.Sprintf("%s is allocated twice (%s, %s)", a.IP, prev, a.Handle)})
			}
			holder[a.IP] = a.Handle
		}
	}
	byHandle := map[string]datastore.Handle{}
	for _, h := range handles {
		byHandle[h.Name] = h.Value
		for _, ip := range h.Value.IPs {
			if holder[ip] != h.Name {
				problems = append(problems, Problem{fmt.Sprintf("handle %s lists %s, which blocks give to %q", h.Name, ip, holder[ip])})
			}
		}
	}
	for ip, h := range holder {
		if _, ok := byHandle[h]; !ok {
			problems = append(problems, Problem{fmt.Sprintf("%s is allocated to handle %s, which does not exist", ip, h)})
		}
	}
	slices.SortFunc(problems, func(a, b Problem) int {
		if a.What < b.What {
			return -1
		}
		if a.What > b.What {
			return 1
		}
		return 0
	})
	return problems, nil
}

// EnsureDefaultPool creates pool when no pool exists at all, as a fresh Calico cluster gets
// 192.168.0.0/16. It reports whether it created it. It refuses (ErrPoolOverlapsUplink) a pool
// that overlaps a registered node's uplink subnet, as margayctl pool add does: the default
// 192.168.0.0/16 on hosts in 192.168.26.0/24, say, would hand out the hosts' own addresses.
func (i *IPAM) EnsureDefaultPool(ctx context.Context, pool datastore.Pool) (bool, error) {
	items, _, err := i.ds.Pools().List(ctx)
	if err != nil {
		return false, fmt.Errorf("ensure default pool: %w", err)
	}
	if len(items) > 0 {
		return false, nil
	}
	nodes, _, err := i.ds.Nodes().List(ctx)
	if err != nil {
		return false, fmt.Errorf("ensure default pool: %w", err)
	}
	for _, n := range nodes {
		if sub := n.Value.AddressV4.Masked(); sub.IsValid() && sub.Overlaps(pool.CIDR) {
			return false, fmt.Errorf("ensure default pool: %s overlaps the uplink subnet %s of node %s (address %s): workload "+
				"addresses there would collide with the hosts' own; set the default pool (margay-agent --default-pool) to a CIDR "+
				"outside every node's subnet, or add a pool first (margayctl pool add): %w",
				pool.CIDR, sub, n.Name, n.Value.AddressV4, ErrPoolOverlapsUplink)
		}
	}
	_, err = i.ds.Pools().Create(ctx, pool.Name, pool)
	if errors.Is(err, datastore.ErrExists) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("ensure default pool: %w", err)
	}
	return true, nil
}
