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

// The operations on IPAM that an operator runs (margayctl is their adapter of flags and output):
// releasing a node, deleting and enabling pools, releasing an address, collecting garbage.

// NodeRelease is what ReleaseNode removed.
type NodeRelease struct {
	Record    bool     // the node record existed and was deleted
	Workloads []string // "<node>/<id>" of the workload records deleted
	Handles   []string
	Released  []netip.Addr
	Deleted   []netip.Prefix // the node's empty blocks, deleted
	// Orphaned lost their affinity but stay: they hold addresses other nodes borrowed.
	Orphaned []netip.Prefix
}

// ErrNodeNotFound: ReleaseNode found neither the node's record nor anything it holds.
var ErrNodeNotFound = errors.New("node not found")

// ReleaseNode removes what belongs to node, as calicoctl delete node does: its workload records,
// the handles they and it hold and their addresses, its blocks (an empty one is deleted, one
// holding addresses other nodes borrowed loses its affinity and stays until they are released),
// and last its record, so that running it again after a failure finds the node and finishes.
// The node's agent must be stopped first, or it registers the node again.
func (i *IPAM) ReleaseNode(ctx context.Context, node string) (NodeRelease, error) {
	var out NodeRelease
	if err := datastore.ValidateName(node); err != nil {
		return out, fmt.Errorf("release node: name: %w", err)
	}
	fail := func(err error) (NodeRelease, error) {
		return out, fmt.Errorf("release node %s: %w (run it again to finish)", node, err)
	}
	var (
		rec       datastore.Item[datastore.Node]
		recErr    error
		workloads []datastore.Item[datastore.Workload]
		handles   []datastore.Item[datastore.Handle]
		blocks    []datastore.Item[datastore.Block]
	)
	if _, err := i.ds.Fetch(ctx, i.ds.Nodes().GetRead(node, &rec, &recErr), i.ds.Workloads(node).ListRead(&workloads),
		i.ds.Handles().ListRead(&handles), i.ds.Blocks().ListRead(&blocks)); err != nil {
		return out, fmt.Errorf("release node %s: %w", node, err)
	}
	switch {
	case recErr == nil:
		out.Record = true
	case !errors.Is(recErr, datastore.ErrNotFound):
		return out, fmt.Errorf("release node %s: %w", node, recErr)
	}
	var own []string
	for _, h := range handles {
		if h.Value.Node == node || strings.HasPrefix(h.Value.Workload, node+"/") {
			own = append(own, h.Name)
		}
	}
	affinity := datastore.AffinityForNode(node)
	hasBlocks := slices.ContainsFunc(blocks, func(b datastore.Item[datastore.Block]) bool { return b.Value.Affinity == affinity })
	if !out.Record && len(workloads) == 0 && len(own) == 0 && !hasBlocks {
		return out, fmt.Errorf("release node %s: %w", node, ErrNodeNotFound)
	}

	for _, w := range workloads {
		if err := i.ds.Workloads(node).Delete(ctx, w.Name, 0); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return fail(err)
		}
		out.Workloads = append(out.Workloads, node+"/"+w.Name)
	}
	for _, h := range own {
		released, err := i.ReleaseHandle(ctx, h)
		if err != nil {
			return fail(err)
		}
		out.Handles = append(out.Handles, h)
		out.Released = append(out.Released, released...)
	}
	if err := i.releaseBlocks(ctx, affinity, &out); err != nil {
		return fail(err)
	}
	if out.Record {
		if err := i.ds.Nodes().Delete(ctx, node, rec.ModRevision); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			if errors.Is(err, datastore.ErrConflict) {
				return fail(errors.New("the node record changed meanwhile: is its agent still running?"))
			}
			return fail(err)
		}
	}
	return out, nil
}

// releaseBlocks deletes the empty blocks with the given affinity and takes the affinity off the
// others, each by compare-and-swap.
func (i *IPAM) releaseBlocks(ctx context.Context, affinity string, out *NodeRelease) error {
	return datastore.Retry(ctx, func() error {
		blocks, _, err := i.ds.Blocks().List(ctx)
		if err != nil {
			return err
		}
		var lost error
		for _, b := range blocks {
			if b.Value.Affinity != affinity {
				continue
			}
			if len(b.Value.Allocations) == 0 {
				err = i.ds.Blocks().Delete(ctx, b.Name, b.ModRevision)
			} else {
				nb := b.Value
				nb.Affinity = ""
				nb.Seq++
				_, err = i.ds.Blocks().Update(ctx, b.Name, nb, b.ModRevision)
			}
			switch {
			case errors.Is(err, datastore.ErrConflict):
				lost = err // read again
			case errors.Is(err, datastore.ErrNotFound):
			case err != nil:
				return err
			case len(b.Value.Allocations) == 0:
				out.Deleted = append(out.Deleted, b.Value.CIDR)
			default:
				out.Orphaned = append(out.Orphaned, b.Value.CIDR)
			}
		}
		return lost
	})
}

// PoolUse is where a pool's addresses are in use.
type PoolUse struct {
	Addresses int
	Blocks    []datastore.Block // the blocks holding them
}

// ErrPoolInUse: DeletePool without force found addresses in use in the pool.
var ErrPoolInUse = errors.New("pool in use")

// PoolDeletion is what DeletePool did.
type PoolDeletion struct {
	Pool    datastore.Pool
	Deleted []netip.Prefix // the pool's empty blocks
	Kept    []netip.Prefix // its blocks still holding addresses (force)
}

// DeletePool deletes pool name and its empty blocks. A pool whose blocks hold addresses is kept
// (ErrPoolInUse, with the use) unless force: then the pool goes and the blocks in use stay until
// their workloads release the addresses. Each block is deleted by compare-and-swap, so an address
// allocated meanwhile keeps its block.
func (i *IPAM) DeletePool(ctx context.Context, name string, force bool) (PoolDeletion, PoolUse, error) {
	var out PoolDeletion
	var use PoolUse
	var (
		pool    datastore.Item[datastore.Pool]
		poolErr error
		blocks  []datastore.Item[datastore.Block]
	)
	if _, err := i.ds.Fetch(ctx, i.ds.Pools().GetRead(name, &pool, &poolErr), i.ds.Blocks().ListRead(&blocks)); err != nil {
		return out, use, fmt.Errorf("delete pool %s: %w", name, err)
	}
	if poolErr != nil {
		return out, use, fmt.Errorf("delete pool %s: %w", name, poolErr)
	}
	out.Pool = pool.Value
	for _, b := range blocks {
		if n := len(b.Value.Allocations); n > 0 && InPool(pool.Value.CIDR, b.Value.CIDR) {
			use.Addresses += n
			use.Blocks = append(use.Blocks, b.Value)
		}
	}
	if use.Addresses > 0 && !force {
		return out, use, fmt.Errorf("delete pool %s: %w", name, ErrPoolInUse)
	}
	if err := i.ds.Pools().Delete(ctx, name, pool.ModRevision); err != nil {
		if errors.Is(err, datastore.ErrConflict) {
			return out, use, fmt.Errorf("delete pool %s: the pool changed while deleting it; try again: %w", name, err)
		}
		return out, use, fmt.Errorf("delete pool %s: %w", name, err)
	}
	// Read the blocks again: one may have been claimed or filled since.
	blocks, _, err := i.ds.Blocks().List(ctx)
	if err != nil {
		return out, use, fmt.Errorf("pool %s deleted, but listing its blocks failed: %w", name, err)
	}
	for _, b := range blocks {
		if !InPool(pool.Value.CIDR, b.Value.CIDR) {
			continue
		}
		if len(b.Value.Allocations) > 0 {
			out.Kept = append(out.Kept, b.Value.CIDR)
			continue
		}
		err := i.ds.Blocks().Delete(ctx, b.Name, b.ModRevision)
		switch {
		case err == nil:
			out.Deleted = append(out.Deleted, b.Value.CIDR)
		case errors.Is(err, datastore.ErrConflict):
			out.Kept = append(out.Kept, b.Value.CIDR)
		case errors.Is(err, datastore.ErrNotFound):
		default:
			return out, use, fmt.Errorf("pool %s deleted, but deleting block %s failed: %w", name, b.Value.CIDR, err)
		}
	}
	return out, use, nil
}

// SetPoolDisabled disables pool name (IPAM assigns no new address from it, and claims no block
// in it; addresses in use stay) or enables it again, and returns the pool.
func (i *IPAM) SetPoolDisabled(ctx context.Context, name string, disabled bool) (datastore.Pool, error) {
	var p datastore.Pool
	err := datastore.Retry(ctx, func() error {
		pool, err := i.ds.Pools().Get(ctx, name)
		if err != nil {
			return err
		}
		p = pool.Value
		if p.Disabled == disabled {
			return nil
		}
		p.Disabled = disabled
		_, err = i.ds.Pools().Update(ctx, name, p, pool.ModRevision)
		return err
	})
	return p, err
}

// InPool says whether block lies inside pool's CIDR.
func InPool(pool, block netip.Prefix) bool {
	return pool.Bits() <= block.Bits() && pool.Contains(block.Addr())
}

// Location is where an address lies in IPAM.
type Location struct {
	Pool   string          // the pool that contains it, "" for none
	Block  datastore.Block // the block that contains it; a zero CIDR for none
	Handle string          // the handle it is allocated to, "" while it is free
}

// Locate tells where ip lies: its pool, its block and the handle that holds it, from the pools
// and blocks read in one round trip.
func (i *IPAM) Locate(ctx context.Context, ip netip.Addr) (Location, error) {
	var (
		loc    Location
		pools  []datastore.Item[datastore.Pool]
		blocks []datastore.Item[datastore.Block]
	)
	if _, err := i.ds.Fetch(ctx, i.ds.Pools().ListRead(&pools), i.ds.Blocks().ListRead(&blocks)); err != nil {
		return loc, fmt.Errorf("locate %s: %w", ip, err)
	}
	for _, p := range pools {
		if p.Value.CIDR.Contains(ip) {
			loc.Pool = p.Name
		}
	}
	for _, b := range blocks {
		if !b.Value.CIDR.Contains(ip) {
			continue
		}
		loc.Block = b.Value
		for _, a := range b.Value.Allocations {
			if a.IP == ip {
				loc.Handle = a.Handle
			}
		}
	}
	return loc, nil
}

// Holder is who holds a handle: its record's node and workload, and the workload record's name
// and namespace.
type Holder struct {
	Handle   string
	Node     string // "" when the handle has no record (HandleMissing)
	Workload string // "<node>/<id>", "" when the handle names none
	// Name and Namespace are the workload record's (a pod's, say).
	Name, Namespace string
	// HandleMissing: the handle has no record (its addresses do not say who took them);
	// RecordGone: the handle names a workload whose record is gone (a candidate for collection).
	HandleMissing, RecordGone bool
}

// Live says whether the holder's workload record still exists: freeing its addresses would hand
// them to the next workload while the first still uses them.
func (h Holder) Live() bool { return h.Workload != "" && !h.RecordGone }

// HolderOf reads who holds handle: its record, then the workload record it names.
func (i *IPAM) HolderOf(ctx context.Context, handle string) (Holder, error) {
	out := Holder{Handle: handle}
	h, err := i.ds.Handles().Get(ctx, handle)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		out.HandleMissing = true
		return out, nil
	case err != nil:
		return out, fmt.Errorf("holder of %s: %w", handle, err)
	}
	out.Node, out.Workload = h.Value.Node, h.Value.Workload
	if out.Workload == "" {
		return out, nil
	}
	w, err := i.ds.AllWorkloads().Get(ctx, out.Workload)
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		out.RecordGone = true
	case err != nil:
		return out, fmt.Errorf("holder of %s: %w", handle, err)
	default:
		out.Name, out.Namespace = w.Value.Name, w.Value.Namespace
	}
	return out, nil
}

// Errors of Release.
var (
	// ErrNotAllocated: the address to release is held by no handle.
	ErrNotAllocated = errors.New("address not allocated")
	// ErrNoHandle: the handle to release has no record and holds no address.
	ErrNoHandle = errors.New("handle does not exist and holds no address")
)

// LiveError says that the handle to release belongs to a workload whose record still exists
// (see Holder.Live), so Release refused without Force.
type LiveError struct{ Handle, Workload string }

func (e *LiveError) Error() string {
	return fmt.Sprintf("handle %s belongs to workload %s, which still exists", e.Handle, e.Workload)
}

// ReleaseRequest says what Release frees: one address (IP), or every address of a handle
// (Handle); Force frees them also when the workload holding them still exists.
type ReleaseRequest struct {
	IP     netip.Addr
	Handle string
	Force  bool
}

// Released is what Release freed, and from which handle.
type Released struct {
	Handle string
	IPs    []netip.Addr
}

// Release frees what req names, as an operator asks it: an address must be allocated
// (ErrNotAllocated), a handle must exist or hold addresses (ErrNoHandle), and a workload whose
// record still exists keeps its addresses unless req.Force (*LiveError). Releasing a handle
// deletes it; releasing an address drops it from its handle.
func (i *IPAM) Release(ctx context.Context, req ReleaseRequest) (Released, error) {
	if req.IP.IsValid() == (req.Handle != "") {
		return Released{}, fmt.Errorf("release: give an address or a handle: %w", datastore.ErrInvalid)
	}
	handle := req.Handle
	if req.IP.IsValid() {
		loc, err := i.Locate(ctx, req.IP)
		if err != nil {
			return Released{}, err
		}
		if handle = loc.Handle; handle == "" {
			return Released{}, fmt.Errorf("release %s: %w", req.IP, ErrNotAllocated)
		}
	} else if err := datastore.ValidateName(handle); err != nil {
		return Released{}, fmt.Errorf("release: handle: %w", err)
	}
	h, err := i.HolderOf(ctx, handle)
	if err != nil {
		return Released{}, err
	}
	if !req.Force && h.Live() {
		return Released{}, &LiveError{Handle: handle, Workload: h.Workload}
	}
	if req.IP.IsValid() {
		holder, err := i.ReleaseIP(ctx, req.IP)
		if errors.Is(err, datastore.ErrNotFound) {
			return Released{}, fmt.Errorf("release %s: %w", req.IP, ErrNotAllocated) // freed meanwhile
		}
		if err != nil {
			return Released{}, err
		}
		return Released{Handle: holder, IPs: []netip.Addr{req.IP}}, nil
	}
	ips, err := i.ReleaseHandle(ctx, handle)
	if err != nil {
		return Released{Handle: handle, IPs: ips}, err
	}
	if len(ips) == 0 && h.HandleMissing {
		return Released{Handle: handle}, fmt.Errorf("release handle %s: %w", handle, ErrNoHandle)
	}
	return Released{Handle: handle, IPs: ips}, nil
}
