package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

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
	err = datastore.Retry(ctx, func() error {
		h, err := i.ds.Handles().Get(ctx, handle)
		if err != nil {
			return err
		}
		return i.ds.Handles().Delete(ctx, handle, h.ModRevision)
	})
	if err != nil && !errors.Is(err, datastore.ErrNotFound) {
		return released, fmt.Errorf("release handle %s: %w", handle, err)
	}
	if len(released) > 0 {
		i.log.Debug("released", "handle", handle, "ips", released)
	}
	return released, nil
}

// releaseHandleAt frees a handle as it was read: its delete is a compare-and-swap on h's
// ModRevision, made before its allocations are removed, so a handle that changed meanwhile (keyed
// to its workload) keeps its addresses; it returns nothing then. Allocations left by a failure
// after the delete have no handle, which the next collection frees.
func (i *IPAM) releaseHandleAt(ctx context.Context, h datastore.Item[datastore.Handle]) ([]netip.Addr, error) {
	err := i.ds.Handles().Delete(ctx, h.Name, h.ModRevision)
	if errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("release handle %s: %w", h.Name, err)
	}
	released, err := i.removeAllocations(ctx, func(a datastore.Allocation) bool { return a.Handle == h.Name })
	if err != nil {
		return released, fmt.Errorf("release handle %s: %w", h.Name, err)
	}
	return released, nil
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
	err = datastore.Retry(ctx, func() error {
		h, err := i.ds.Handles().Get(ctx, holder)
		if err != nil {
			return err
		}
		nh := h.Value
		nh.IPs = slices.DeleteFunc(slices.Clone(nh.IPs), func(a netip.Addr) bool { return a == ip })
		if len(nh.IPs) == 0 {
			return i.ds.Handles().Delete(ctx, holder, h.ModRevision)
		}
		_, err = i.ds.Handles().Update(ctx, holder, nh, h.ModRevision)
		return err
	})
	if err != nil && !errors.Is(err, datastore.ErrNotFound) {
		return holder, fmt.Errorf("release %s: %w", ip, err)
	}
	return holder, nil
}

// removeAllocations drops the matching allocations from every block, each block by
// compare-and-swap, and returns the addresses freed.
func (i *IPAM) removeAllocations(ctx context.Context, match func(datastore.Allocation) bool) ([]netip.Addr, error) {
	var released []netip.Addr
	err := datastore.Retry(ctx, func() error {
		blocks, _, err := i.ds.Blocks().List(ctx)
		if err != nil {
			return fmt.Errorf("list blocks: %w", err)
		}
		var lost error
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
				lost = fmt.Errorf("update block %s: %w", nb.CIDR, datastore.ErrConflict) // read again
				continue
			}
			if err != nil {
				return fmt.Errorf("update block %s: %w", nb.CIDR, err)
			}
			released = append(released, freed...)
		}
		return lost
	})
	return released, err
}

// ReleaseEmptyBlocks gives up the node's blocks that hold no address, keeping the first keep of
// them in enabled pools (in address order) so the next workload does not have to claim again;
// empty blocks outside every enabled pool always go. It returns the released blocks.
func (i *IPAM) ReleaseEmptyBlocks(ctx context.Context, node string, keep int) ([]netip.Prefix, error) {
	var (
		poolItems []datastore.Item[datastore.Pool]
		blocks    []datastore.Item[datastore.Block]
	)
	if _, err := i.ds.Fetch(ctx, i.ds.Pools().ListRead(&poolItems), i.ds.Blocks().ListRead(&blocks)); err != nil {
		return nil, fmt.Errorf("release empty blocks: %w", err)
	}
	affinity := datastore.AffinityForNode(node)
	pools, _ := enabled(poolItems) // none enabled: no block is worth keeping
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

// Collector is IPAM's garbage collection, for the agent (its node's workloads, at every
// collection) and margayctl ipam gc (every node's, twice, a grace apart). It frees the addresses
// of workloads whose record is gone and allocations without a handle. CNI ADD writes the handle
// before the workload's record, so a workload counts as gone only when its record was missing at
// the Collector's previous Run too: the time between two Runs is the grace an ADD in flight gets.
//
// A handle without a workload key is an address given out before its workload exists (Docker's
// RequestAddress, which CreateEndpoint keys to the endpoint's record a moment later). One that
// stayed unchanged and unkeyed from one Run to the next, its addresses used by no record, was
// left by a failure between the two (a plugin crash, an endpoint dockerd never created): it is
// freed then. A docker run in flight changes it (the key) long before the next Run.
type Collector struct {
	ipam     *IPAM
	prefix   string           // "<node>/" of the workloads collected; "" for every node's
	suspects map[string]bool  // workloads whose record was missing at the last Run
	unkeyed  map[string]int64 // handles without a workload key at the last Run: their ModRevision
}

// Collector returns a Collector of node's workloads, or of every node's for "".
func (i *IPAM) Collector(node string) *Collector {
	c := &Collector{ipam: i, suspects: map[string]bool{}, unkeyed: map[string]int64{}}
	if node != "" {
		c.prefix = node + "/"
	}
	return c
}

// Suspects is how many workloads the last Run found without a record, and handles without a
// workload key, to free at the next one if they are still so.
func (c *Collector) Suspects() int { return len(c.suspects) + len(c.unkeyed) }

// Run looks once, given every workload record by "<node>/<id>" (handles name them so): it frees
// the handles of the workloads missing now and at the last Run, and the allocations whose handle
// is gone unless a record uses the address (freeing it would hand it out twice), and the handles
// without a workload key that were so, unchanged, at the last Run too (see Collector). It returns
// the addresses freed.
func (c *Collector) Run(ctx context.Context, records map[string]datastore.Workload) ([]netip.Addr, error) {
	i := c.ipam
	handles, _, err := i.ds.Handles().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("ipam gc: %w", err)
	}
	inUse := make(map[netip.Addr]bool, len(records))
	for _, w := range records {
		if a, ok := w.Addr(); ok {
			inUse[a] = true
		}
	}
	var released []netip.Addr
	known := map[string]bool{}
	suspects := map[string]bool{}
	unkeyed := map[string]int64{}
	for _, h := range handles {
		known[h.Name] = true
		w := h.Value.Workload
		if w == "" && (c.prefix == "" || h.Value.Node+"/" == c.prefix) && !slices.ContainsFunc(h.Value.IPs, func(a netip.Addr) bool { return inUse[a] }) {
			if rev, seen := c.unkeyed[h.Name]; !seen || rev != h.ModRevision {
				unkeyed[h.Name] = h.ModRevision
				continue
			}
			ips, err := i.releaseHandleAt(ctx, h)
			if err != nil {
				c.suspects, c.unkeyed = suspects, unkeyed
				return released, fmt.Errorf("ipam gc: %w", err)
			}
			if len(ips) > 0 {
				i.log.Info("garbage-collected addresses given out for a workload that never came (a handle without a workload key, unchanged since the last collection)",
					"handle", h.Name, "node", h.Value.Node, "ips", ips)
			}
			released = append(released, ips...)
			continue
		}
		if _, live := records[w]; w == "" || live || !strings.HasPrefix(w, c.prefix) {
			continue
		}
		if !c.suspects[w] {
			suspects[w] = true // gone at the first look: an ADD may be writing it
			continue
		}
		ips, err := i.ReleaseHandle(ctx, h.Name)
		if err != nil {
			c.suspects, c.unkeyed = suspects, unkeyed
			return released, fmt.Errorf("ipam gc: %w", err)
		}
		i.log.Info("garbage-collected addresses of a workload that is gone", "handle", h.Name, "workload", w, "ips", ips)
		released = append(released, ips...)
	}
	c.suspects, c.unkeyed = suspects, unkeyed
	// The handle is written with its first allocation, in one transaction, so an allocation
	// without a handle is a leftover of a hand edit or of a handle deleted out of band.
	orphans, err := i.removeAllocations(ctx, func(a datastore.Allocation) bool {
		return !known[a.Handle] && !inUse[a.IP] && !i.handleExists(ctx, a.Handle)
	})
	if err != nil {
		return released, fmt.Errorf("ipam gc: %w", err)
	}
	return append(released, orphans...), nil
}

// DeleteStaleBlocks deletes the empty blocks that nothing else ever deletes: those without
// affinity, those affine to a node that is not registered (no agent runs there to give them up)
// and those outside every pool. The delete is a compare-and-swap, so an address borrowed from the
// block meanwhile keeps it. It returns the blocks deleted.
func (i *IPAM) DeleteStaleBlocks(ctx context.Context) ([]netip.Prefix, error) {
	var (
		pools  []datastore.Item[datastore.Pool]
		nodes  []datastore.Item[datastore.Node]
		blocks []datastore.Item[datastore.Block]
	)
	if _, err := i.ds.Fetch(ctx, i.ds.Pools().ListRead(&pools), i.ds.Nodes().ListRead(&nodes), i.ds.Blocks().ListRead(&blocks)); err != nil {
		return nil, fmt.Errorf("delete stale blocks: %w", err)
	}
	registered := map[string]bool{}
	for _, n := range nodes {
		registered[n.Name] = true
	}
	var deleted []netip.Prefix
	for _, b := range blocks {
		if len(b.Value.Allocations) > 0 {
			continue
		}
		covered := slices.ContainsFunc(pools, func(p datastore.Item[datastore.Pool]) bool { return InPool(p.Value.CIDR, b.Value.CIDR) })
		if b.Value.Affinity != "" && registered[b.Value.Node()] && covered {
			continue
		}
		err := i.ds.Blocks().Delete(ctx, b.Name, b.ModRevision)
		if errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrNotFound) {
			continue
		}
		if err != nil {
			return deleted, fmt.Errorf("delete stale block %s: %w", b.Value.CIDR, err)
		}
		deleted = append(deleted, b.Value.CIDR)
	}
	return deleted, nil
}

func (i *IPAM) handleExists(ctx context.Context, id string) bool {
	_, err := i.ds.Handles().Get(ctx, id)
	return !errors.Is(err, datastore.ErrNotFound)
}

// BlockUsage is one block's occupancy.
type BlockUsage struct {
	CIDR     netip.Prefix
	Node     string
	Capacity int // the addresses of the block (Capacity)
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
			Capacity: int(Capacity(b.Value.CIDR)), Used: len(b.Value.Allocations)})
	}
	slices.SortFunc(out, func(a, b BlockUsage) int { return a.CIDR.Addr().Compare(b.CIDR.Addr()) })
	return out, nil
}

// Problem is an inconsistency Check found.
type Problem struct {
	What string
	// Records: between IPAM and the workload records (a handle whose workload is gone, an
	// address a workload uses that IPAM does not give it), rather than within IPAM.
	Records bool
}

// Check looks for inconsistencies between blocks, handles and workloads: an address in two
// blocks, an allocation without a handle, a handle listing an address no block gives it,
// overlapping blocks, a handle whose workload's record is gone, a handle without a workload key
// whose addresses no record uses (see Collector), a workload using an address IPAM does not give
// it (which it may hand to someone else); and in the IPAM configuration: blocks
// affine to a node that is not registered, pools that overlap a registered node's uplink subnet.
// It reads everything at one revision, so a change under way is no inconsistency.
func (i *IPAM) Check(ctx context.Context) ([]Problem, error) {
	var (
		blocks    []datastore.Item[datastore.Block]
		handles   []datastore.Item[datastore.Handle]
		nodes     []datastore.Item[datastore.Node]
		pools     []datastore.Item[datastore.Pool]
		workloads []datastore.Item[datastore.Workload]
	)
	if _, err := i.ds.Fetch(ctx, i.ds.Blocks().ListRead(&blocks), i.ds.Handles().ListRead(&handles), i.ds.Nodes().ListRead(&nodes),
		i.ds.Pools().ListRead(&pools), i.ds.AllWorkloads().ListRead(&workloads)); err != nil {
		return nil, fmt.Errorf("ipam check: %w", err)
	}
	var problems []Problem
	registered := map[string]bool{}
	for _, n := range nodes {
		registered[n.Name] = true
		for _, p := range pools {
			if p.Value.CIDR.Overlaps(n.Value.AddressV4.Masked()) {
				problems = append(problems, Problem{What: fmt.Sprintf("pool %s (%s) overlaps the uplink subnet %s of node %s",
					p.Name, p.Value.CIDR, n.Value.AddressV4.Masked(), n.Name)})
			}
		}
	}
	for _, b := range blocks {
		if node := b.Value.Node(); b.Value.Affinity != "" && !registered[node] {
			problems = append(problems, Problem{What: fmt.Sprintf("block %s is affine to node %s, which is not registered (%d of its addresses allocated)",
				b.Value.CIDR, node, len(b.Value.Allocations))})
		}
	}
	holder := map[netip.Addr]string{}
	for x, b := range blocks {
		for _, o := range blocks[x+1:] {
			if b.Value.CIDR.Overlaps(o.Value.CIDR) {
				problems = append(problems, Problem{What: fmt.Sprintf("blocks %s and %s overlap", b.Value.CIDR, o.Value.CIDR)})
			}
		}
		for _, a := range b.Value.Allocations {
			if prev, dup := holder[a.IP]; dup {
				problems = append(problems, Problem{What: fmt.Sprintf("%s is allocated twice (%s, %s)", a.IP, prev, a.Handle)})
			}
			holder[a.IP] = a.Handle
		}
	}
	byHandle := map[string]datastore.Handle{}
	for _, h := range handles {
		byHandle[h.Name] = h.Value
		for _, ip := range h.Value.IPs {
			if holder[ip] != h.Name {
				problems = append(problems, Problem{What: fmt.Sprintf("handle %s lists %s, which blocks give to %q", h.Name, ip, holder[ip])})
			}
		}
	}
	for ip, h := range holder {
		if _, ok := byHandle[h]; !ok {
			problems = append(problems, Problem{What: fmt.Sprintf("%s is allocated to handle %s, which does not exist", ip, h)})
		}
	}
	records := make(map[string]bool, len(workloads))
	used := make(map[netip.Addr]bool, len(workloads))
	for _, w := range workloads {
		records[w.Name] = true
		if ip, ok := w.Value.Addr(); ok {
			used[ip] = true
		}
	}
	for _, h := range handles {
		if w := h.Value.Workload; w != "" && !records[w] {
			problems = append(problems, Problem{What: fmt.Sprintf("handle %s holds %s for workload %s, whose record is gone", h.Name, AddrList(h.Value.IPs), w), Records: true})
		}
		if h.Value.Workload == "" && !slices.ContainsFunc(h.Value.IPs, func(a netip.Addr) bool { return used[a] }) {
			problems = append(problems, Problem{What: fmt.Sprintf("handle %s holds %s on node %s for no workload: given out before its workload existed "+
				"(Docker's RequestAddress) and never claimed, unless a docker run is under way", h.Name, AddrList(h.Value.IPs), h.Value.Node), Records: true})
		}
	}
	for _, w := range workloads {
		ip, ok := w.Value.Addr()
		if !ok {
			continue
		}
		h, allocated := holder[ip]
		switch owner := byHandle[h].Workload; {
		case !allocated:
			problems = append(problems, Problem{What: fmt.Sprintf("workload %s uses %s, which is not allocated: IPAM may hand it out again", w.Name, ip), Records: true})
		case owner != "" && owner != w.Name:
			problems = append(problems, Problem{What: fmt.Sprintf("workload %s uses %s, which is allocated to handle %s of workload %s", w.Name, ip, h, owner), Records: true})
		}
	}
	slices.SortFunc(problems, func(a, b Problem) int { return strings.Compare(a.What, b.What) })
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
	if err := PoolConflict(pool, nil, nodes); err != nil {
		return false, fmt.Errorf("ensure default pool: %w; set the default pool (margay-agent --default-pool) to a CIDR "+
			"outside every node's subnet, or add a pool first (margayctl pool add)", err)
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

// PoolConflict says why pool cannot join pools and nodes: it overlaps another of the pools
// (ErrPoolOverlap) or a node's uplink subnet (ErrPoolOverlapsUplink: workload addresses there
// would collide with the hosts' own); nil when it can. A pool of pool's name among pools is the
// one it replaces.
func PoolConflict(pool datastore.Pool, pools []datastore.Item[datastore.Pool], nodes []datastore.Item[datastore.Node]) error {
	for _, p := range pools {
		if p.Name != pool.Name && p.Value.CIDR.Overlaps(pool.CIDR) {
			return fmt.Errorf("%s overlaps pool %s (%s): %w", pool.CIDR, p.Name, p.Value.CIDR, ErrPoolOverlap)
		}
	}
	for _, n := range nodes {
		if sub := n.Value.AddressV4.Masked(); sub.IsValid() && sub.Overlaps(pool.CIDR) {
			return fmt.Errorf("%s overlaps the uplink subnet %s of node %s (address %s): workload addresses there would collide "+
				"with the hosts' own: %w", pool.CIDR, sub, n.Name, n.Value.AddressV4, ErrPoolOverlapsUplink)
		}
	}
	return nil
}

// AddrList writes addresses for people: "198.19.0.1, 198.19.0.2", or "no address".
func AddrList(ips []netip.Addr) string {
	if len(ips) == 0 {
		return "no address"
	}
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ", ")
}
