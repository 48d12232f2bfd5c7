package ipam

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/margaynet/margay/control/datastore"
)

var (
	// ErrPoolExhausted: every enabled pool is full.
	ErrPoolExhausted = errors.New("ip pools exhausted")
	// ErrNoPool: there is no enabled pool to allocate from.
	ErrNoPool = errors.New("no enabled ip pool")
	// ErrHandleInUse: the handle is held by another node or workload.
	ErrHandleInUse = errors.New("handle in use")
	// ErrContention: compare-and-swap kept losing; the caller may retry.
	ErrContention = datastore.ErrContention
	// ErrNodeNotRegistered: the node has no record at nodes/<node>. IPAM gives such a node
	// neither blocks nor addresses: nothing would route them, and the block would leak.
	ErrNodeNotRegistered = errors.New("node not registered")
	// ErrPoolOverlapsUplink: the pool overlaps a registered node's uplink subnet.
	ErrPoolOverlapsUplink = errors.New("pool overlaps a node's uplink subnet")
	// ErrPoolOverlap: the pool overlaps another pool.
	ErrPoolOverlap = errors.New("pool overlaps another pool")
)

// checkNode returns ErrNodeNotRegistered, with what to check, unless node is registered.
func (i *IPAM) checkNode(ctx context.Context, node string) error {
	_, err := i.ds.Nodes().Get(ctx, node)
	return nodeError(node, err)
}

// nodeError is checkNode's answer from what reading node's record returned.
func nodeError(node string, err error) error {
	switch {
	case errors.Is(err, datastore.ErrNotFound):
		return fmt.Errorf("node %q is not registered (no nodes/%s in the datastore; margay-agent registers its node when it starts): "+
			"check that margay-agent runs on that host and that the node name is the agent's (--node-name of the agent, "+
			"\"nodeName\" of the CNI config, --node of margayctl; margayctl node list shows the registered nodes): %w", node, node, ErrNodeNotRegistered)
	case err != nil && !errors.Is(err, datastore.ErrMalformed): // a malformed record still names a node
		return fmt.Errorf("read node %s: %w", node, err)
	}
	return nil
}

// IPAM allocates and releases workload addresses. It keeps no state of its own: etcd is the truth
// (a Blocks copy, when given, only spares Assign a list of every block; see WithBlocks).
type IPAM struct {
	ds     *datastore.Client
	log    *slog.Logger
	blocks *Blocks // nil: every Assign lists the blocks from etcd
}

// Option configures an IPAM.
type Option func(*IPAM)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(i *IPAM) { i.log = l } }

// New returns an IPAM working on ds.
func New(ds *datastore.Client, opts ...Option) *IPAM {
	i := &IPAM{ds: ds, log: slog.Default()}
	for _, o := range opts {
		o(i)
	}
	return i
}

// Request asks for one address.
type Request struct {
	Handle   string // who holds the address: freed by ReleaseHandle(Handle)
	Node     string // the host the workload runs on
	Workload string // "<node>/<id>" of the workload, for garbage collection
	// Within, when valid, restricts the address to this IPv4 prefix (Docker's --subnet; a /32
	// asks for that one address, Docker's --ip): only blocks overlapping it are used, claimed or
	// borrowed from, and ErrPoolExhausted means no address of it is free. The zero Prefix
	// allows any address of the enabled pools.
	Within netip.Prefix
	// HandleRead, when set, is the handle as the caller has just read it, so that Assign does
	// not read it again (the CNI ADD reads it with the workload's record). nil: Assign reads it.
	HandleRead *HandleRead
}

// HandleRead is a handle as a read returned it: Item and Err as Handles().GetRead leaves them
// (Err datastore.ErrNotFound: there is none). Assign decides from it as from its own read, and
// its writes hold only while the handle is still as read (its ModRevision; none when absent):
// a handle another writer changed since fails the write, and Assign reads it again and retries.
type HandleRead struct {
	Item datastore.Item[datastore.Handle]
	Err  error
}

// Assignment is an allocated address.
type Assignment struct {
	IP    netip.Addr
	Block netip.Prefix
	// Borrowed: the block belongs to another host because the pools had no free block; the
	// address must be routed as a /32 of its own.
	Borrowed bool
}

// Assign allocates one address for req.Handle on req.Node: from a block the node owns, else from a
// block it claims, else — only when no pool has a free block — borrowed from another host's block.
// The node must be registered (ErrNodeNotRegistered).
// Asking again for a handle that holds an address returns that address.
func (i *IPAM) Assign(ctx context.Context, req Request) (Assignment, error) {
	if err := datastore.ValidateName(req.Handle); err != nil {
		return Assignment{}, fmt.Errorf("assign address: handle: %w", err)
	}
	if err := datastore.ValidateName(req.Node); err != nil {
		return Assignment{}, fmt.Errorf("assign address: node: %w", err)
	}
	if req.Within.IsValid() && (!req.Within.Addr().Is4() || req.Within.Masked() != req.Within) {
		return Assignment{}, fmt.Errorf("assign address: within %s: want a masked IPv4 prefix", req.Within)
	}
	// The node, the handle (unless the caller read it) and the pools in one round trip: this is
	// every ADD's path.
	var (
		node          datastore.Item[datastore.Node]
		h             datastore.Item[datastore.Handle]
		nodeErr, hErr error
		poolItems     []datastore.Item[datastore.Pool]
	)
	reads := []datastore.Read{i.ds.Nodes().GetRead(req.Node, &node, &nodeErr), i.ds.Pools().ListRead(&poolItems)}
	if r := req.HandleRead; r != nil {
		if r.Err == nil && r.Item.Name != req.Handle {
			return Assignment{}, fmt.Errorf("assign address: handle %s: HandleRead is of handle %q", req.Handle, r.Item.Name)
		}
		h, hErr = r.Item, r.Err
	} else {
		reads = append(reads, i.ds.Handles().GetRead(req.Handle, &h, &hErr))
	}
	if _, err := i.ds.Fetch(ctx, reads...); err != nil {
		return Assignment{}, fmt.Errorf("assign address: %w", err)
	}
	if err := nodeError(req.Node, nodeErr); err != nil {
		return Assignment{}, fmt.Errorf("assign address: %w", err)
	}
	// The handle and the allocation that names it are written in one transaction, so a crash
	// never leaves an allocation that nothing can release, nor a handle without its address.
	switch err := hErr; {
	case err == nil && (h.Value.Node != req.Node || h.Value.Workload != req.Workload):
		// Handing this handle's address to someone else would put it on two hosts at once.
		return Assignment{}, fmt.Errorf("assign address: handle %s belongs to workload %q on node %s: %w",
			req.Handle, h.Value.Workload, h.Value.Node, ErrHandleInUse)
	case err == nil && len(h.Value.IPs) > 0:
		return i.existing(ctx, h.Value)
	case errors.Is(err, datastore.ErrNotFound):
		h = datastore.Item[datastore.Handle]{} // created with the allocation
	case err != nil:
		return Assignment{}, fmt.Errorf("assign address: read handle: %w", err)
	}
	pools, err := enabled(poolItems)
	if err != nil {
		return Assignment{}, err
	}
	if pools = req.pools(pools); len(pools) == 0 {
		return Assignment{}, fmt.Errorf("assign address for %s: no enabled pool overlaps %s: %w", req.Handle, req.Within, ErrPoolExhausted)
	}

	a, done, err := i.fromCopy(ctx, req, h, pools)
	if !done && err == nil {
		a, err = i.allocate(ctx, req, h)
	}
	if err != nil {
		return Assignment{}, err
	}
	i.log.Debug("assigned", "ip", a.IP, "block", a.Block, "handle", req.Handle, "node", req.Node, "borrowed", a.Borrowed)
	return a, nil
}

func (i *IPAM) existing(ctx context.Context, h datastore.Handle) (Assignment, error) {
	ip := h.IPs[0]
	blocks, _, err := i.ds.Blocks().List(ctx)
	if err != nil {
		return Assignment{}, fmt.Errorf("assign address: list blocks: %w", err)
	}
	for _, b := range blocks {
		if b.Value.CIDR.Contains(ip) {
			return Assignment{IP: ip, Block: b.Value.CIDR, Borrowed: b.Value.Node() != h.Node}, nil
		}
	}
	return Assignment{}, fmt.Errorf("assign address: handle %s holds %s, which no block contains", h.ID, ip)
}

// fromCopy allocates in one of the node's own blocks as the Blocks copy shows them, when there
// is a synced copy (see Blocks). done is false when it did not allocate, for whatever reason: a
// stale block lost its transaction, the blocks are full, there is none; allocate then decides
// from etcd.
func (i *IPAM) fromCopy(ctx context.Context, req Request, h datastore.Item[datastore.Handle], pools []datastore.Pool) (Assignment, bool, error) {
	if i.blocks == nil {
		return Assignment{}, false, nil
	}
	own, synced := i.blocks.affine(datastore.AffinityForNode(req.Node))
	if !synced || !anyFree(own, req.span()) {
		return Assignment{}, false, nil
	}
	own = slices.DeleteFunc(own, func(b datastore.Item[datastore.Block]) bool { return !inPools(pools, b.Value.CIDR) })
	a, done, err := i.tryBlocks(ctx, own, req, h, false)
	if done {
		i.blocks.counted("copy")
	}
	return a, done, err
}

// allocate assigns an address to the handle h read before (ModRevision 0: there is none yet).
func (i *IPAM) allocate(ctx context.Context, req Request, h datastore.Item[datastore.Handle]) (Assignment, error) {
	var (
		a       Assignment
		attempt int
	)
	err := datastore.Retry(ctx, func() error {
		if attempt++; attempt > 1 {
			// A lost transaction may have lost on the handle: read it again too.
			var err error
			if h, err = i.ds.Handles().Get(ctx, req.Handle); errors.Is(err, datastore.ErrNotFound) {
				h = datastore.Item[datastore.Handle]{}
			} else if err != nil {
				return fmt.Errorf("assign address: read handle: %w", err)
			} else if h.Value.Node != req.Node || h.Value.Workload != req.Workload || len(h.Value.IPs) > 0 {
				// Another ADD of the same workload raced us and won: its address is ours. (Or
				// another workload took the handle: ErrHandleInUse.) Decided from the read above.
				again := req
				again.HandleRead = &HandleRead{Item: h}
				a, err = i.Assign(ctx, again)
				return err
			}
		}
		var (
			poolItems []datastore.Item[datastore.Pool]
			blocks    []datastore.Item[datastore.Block]
		)
		if _, err := i.ds.Fetch(ctx, i.ds.Pools().ListRead(&poolItems), i.ds.Blocks().ListRead(&blocks)); err != nil {
			return fmt.Errorf("assign address: list pools and blocks: %w", err)
		}
		pools, err := enabled(poolItems)
		if err != nil {
			return err
		}
		pools = req.pools(pools)
		affinity := datastore.AffinityForNode(req.Node)

		// 1. A block of our own with room.
		var own []datastore.Item[datastore.Block]
		for _, b := range blocks {
			if b.Value.Affinity == affinity && inPools(pools, b.Value.CIDR) {
				own = append(own, b)
			}
		}
		var done bool
		if a, done, err = i.tryBlocks(ctx, own, req, h, false); done || err != nil {
			if done {
				i.blocks.counted("etcd")
			}
			return err
		}
		if anyFree(own, req.span()) {
			return datastore.ErrConflict // lost a race for one of our addresses: read again
		}

		// 2. Claim a free block.
		claimed, stale, err := i.claim(ctx, pools, blocks, req.Node, req.span())
		if err != nil {
			return err
		}
		if claimed || stale {
			return datastore.ErrConflict // allocate from it, or from what another host claimed, on the next pass
		}

		// 3. Borrow from any block with room.
		var others []datastore.Item[datastore.Block]
		for _, b := range blocks {
			if b.Value.Affinity != affinity && inPools(pools, b.Value.CIDR) {
				others = append(others, b)
			}
		}
		if a, done, err = i.tryBlocks(ctx, others, req, h, true); done || err != nil {
			if done {
				i.blocks.counted("etcd")
			}
			return err
		}
		if !anyFree(others, req.span()) {
			return fmt.Errorf("assign address for %s: %w", req.Handle, ErrPoolExhausted)
		}
		return datastore.ErrConflict // lost every race for the addresses we saw: look again
	})
	if errors.Is(err, datastore.ErrContention) {
		return Assignment{}, fmt.Errorf("assign address for %s: %w", req.Handle, err)
	}
	return a, err
}

// tryBlocks allocates in the first block with room, writing the block and the handle h (read
// before; ModRevision 0: none yet) with the address in one transaction. done is true when it
// allocated; a lost transaction returns done false so the caller re-reads.
func (i *IPAM) tryBlocks(ctx context.Context, blocks []datastore.Item[datastore.Block], req Request, h datastore.Item[datastore.Handle], borrowed bool) (Assignment, bool, error) {
	slices.SortFunc(blocks, func(a, b datastore.Item[datastore.Block]) int {
		return a.Value.CIDR.Addr().Compare(b.Value.CIDR.Addr())
	})
	for _, b := range blocks {
		ip, ok := firstFree(b.Value, req.span())
		if !ok {
			continue
		}
		nb := b.Value
		nb.Allocations = append(slices.Clone(nb.Allocations), datastore.Allocation{IP: ip, Handle: req.Handle})
		nb.Seq++
		var hw datastore.Write
		if h.ModRevision == 0 {
			hw = i.ds.Handles().CreateWrite(req.Handle, datastore.Handle{Version: datastore.CurrentVersion,
				ID: req.Handle, Node: req.Node, Workload: req.Workload, IPs: []netip.Addr{ip}})
		} else {
			nh := h.Value
			nh.IPs = append(slices.Clone(nh.IPs), ip)
			hw = i.ds.Handles().UpdateWrite(req.Handle, nh, h.ModRevision)
		}
		_, err := i.ds.Commit(ctx, i.ds.Blocks().UpdateWrite(b.Name, nb, b.ModRevision), hw)
		if errors.Is(err, datastore.ErrConflict) {
			return Assignment{}, false, nil
		}
		if err != nil {
			return Assignment{}, false, fmt.Errorf("assign address: update block %s and handle %s: %w", b.Value.CIDR, req.Handle, err)
		}
		return Assignment{IP: ip, Block: nb.CIDR, Borrowed: borrowed}, true, nil
	}
	return Assignment{}, false, nil
}

// claim creates the first block of an enabled pool that does not exist yet, with node affinity.
// stale reports that another host claimed a block our list did not show: the list is out of date,
// so the pools may not be as full as it says.
func (i *IPAM) claim(ctx context.Context, pools []datastore.Pool, blocks []datastore.Item[datastore.Block], node string, span netip.Prefix) (claimed, stale bool, err error) {
	exists := make(map[netip.Prefix]bool, len(blocks))
	for _, b := range blocks {
		exists[b.Value.CIDR] = true
	}
	for _, p := range pools {
		for cidr := range blocksOf(p) {
			if exists[cidr] || !cidr.Overlaps(span) || overlapsAny(blocks, cidr) {
				continue
			}
			_, err := i.ds.Blocks().Create(ctx, datastore.BlockKeyName(cidr), datastore.Block{
				Version: datastore.CurrentVersion, CIDR: cidr, Affinity: datastore.AffinityForNode(node)})
			if errors.Is(err, datastore.ErrExists) {
				exists[cidr] = true // another host was faster: try the next
				stale = true
				continue
			}
			if err != nil {
				return false, stale, fmt.Errorf("claim block %s: %w", cidr, err)
			}
			i.log.Info("claimed block", "block", cidr, "node", node, "pool", p.Name)
			return true, stale, nil
		}
	}
	return false, stale, nil
}

// enabled returns the pools that are not disabled, in address order, or ErrNoPool.
func enabled(items []datastore.Item[datastore.Pool]) ([]datastore.Pool, error) {
	var pools []datastore.Pool
	for _, it := range items {
		if !it.Value.Disabled {
			pools = append(pools, it.Value)
		}
	}
	if len(pools) == 0 {
		return nil, ErrNoPool
	}
	slices.SortFunc(pools, func(a, b datastore.Pool) int { return a.CIDR.Addr().Compare(b.CIDR.Addr()) })
	return pools, nil
}

func inPools(pools []datastore.Pool, block netip.Prefix) bool {
	return slices.ContainsFunc(pools, func(p datastore.Pool) bool { return InPool(p.CIDR, block) })
}

func overlapsAny(blocks []datastore.Item[datastore.Block], cidr netip.Prefix) bool {
	for _, b := range blocks {
		if b.Value.CIDR.Overlaps(cidr) {
			return true
		}
	}
	return false
}

// blocksOf yields the pool's blocks in address order.
func blocksOf(p datastore.Pool) func(func(netip.Prefix) bool) {
	return func(yield func(netip.Prefix) bool) {
		size := p.BlockSize
		if size == 0 {
			size = datastore.DefaultBlockSize
		}
		step := uint32(1) << (32 - size)
		start := u32(p.CIDR.Masked().Addr())
		count := uint64(1) << (size - p.CIDR.Bits())
		for n := range count {
			if !yield(netip.PrefixFrom(addr(start+uint32(n)*step), size)) {
				return
			}
		}
	}
}

// anySpan is the span of a request without Within.
var anySpan = netip.PrefixFrom(netip.IPv4Unspecified(), 0)

// span is the prefix the request's address must lie in: Within, or every IPv4 address.
func (r Request) span() netip.Prefix {
	if r.Within.IsValid() {
		return r.Within
	}
	return anySpan
}

// pools keeps the pools that overlap the request's span.
func (r Request) pools(pools []datastore.Pool) []datastore.Pool {
	span := r.span()
	return slices.DeleteFunc(pools, func(p datastore.Pool) bool { return !p.CIDR.Overlaps(span) })
}

// firstFree is the lowest address of the block, inside span, that nobody holds. Calico routes
// /32s, so the block's first and last addresses are as usable as any other.
func firstFree(b datastore.Block, span netip.Prefix) (netip.Addr, bool) {
	cidr := b.CIDR
	switch {
	case !cidr.Overlaps(span):
		return netip.Addr{}, false
	case span.Bits() > cidr.Bits():
		cidr = span // prefixes nest: the overlap is the longer one
	}
	used := make(map[netip.Addr]bool, len(b.Allocations))
	for _, a := range b.Allocations {
		if cidr.Contains(a.IP) {
			used[a.IP] = true
		}
	}
	size := uint64(1) << (32 - cidr.Bits())
	if uint64(len(used)) >= size {
		return netip.Addr{}, false
	}
	base := u32(cidr.Addr())
	for n := range size {
		ip := addr(base + uint32(n))
		if !used[ip] {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func anyFree(blocks []datastore.Item[datastore.Block], span netip.Prefix) bool {
	for _, b := range blocks {
		if _, ok := firstFree(b.Value, span); ok {
			return true
		}
	}
	return false
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// EnsureBlock claims a block for node when it owns none yet, so the host can advertise and route
// its block before its first workload starts. It returns the node's blocks.
func (i *IPAM) EnsureBlock(ctx context.Context, node string) ([]netip.Prefix, error) {
	if err := i.checkNode(ctx, node); err != nil {
		return nil, fmt.Errorf("ensure block: %w", err)
	}
	var own []netip.Prefix
	err := datastore.Retry(ctx, func() error {
		var (
			poolItems []datastore.Item[datastore.Pool]
			blocks    []datastore.Item[datastore.Block]
		)
		if _, err := i.ds.Fetch(ctx, i.ds.Pools().ListRead(&poolItems), i.ds.Blocks().ListRead(&blocks)); err != nil {
			return fmt.Errorf("ensure block: list pools and blocks: %w", err)
		}
		for _, b := range blocks {
			if b.Value.Node() == node {
				own = append(own, b.Value.CIDR)
			}
		}
		if len(own) > 0 {
			slices.SortFunc(own, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
			return nil
		}
		pools, err := enabled(poolItems)
		if err != nil {
			return fmt.Errorf("ensure block: %w", err)
		}
		claimed, stale, err := i.claim(ctx, pools, blocks, node, anySpan)
		if err != nil {
			return fmt.Errorf("ensure block: %w", err)
		}
		if !claimed && !stale {
			return fmt.Errorf("ensure block for %s: no free block: %w", node, ErrPoolExhausted)
		}
		return datastore.ErrConflict // list again: the block claimed, or another host's
	})
	if errors.Is(err, datastore.ErrContention) {
		return nil, fmt.Errorf("ensure block for %s: %w", node, err)
	}
	return own, err
}
