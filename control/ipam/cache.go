package ipam

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/margaynet/margay/control/datastore"
)

// Blocks is a watch-fed copy of the datastore's IPAM blocks, indexed by affinity, for a
// long-lived process that assigns addresses often (the agent serving CNI calls). With it
// (WithBlocks), Assign first tries the node's own blocks as the copy shows them, without listing
// every block of the cluster from etcd, which costs in proportion to the cluster's size on every
// ADD. The copy may be behind etcd; that is safe, because an allocation is a compare-and-swap on
// the block's ModRevision: a stale block loses the transaction. Anything but a committed
// allocation (a conflict, a full block, no own block) goes on from etcd exactly as without the
// copy, so no decision that needs the whole truth (claiming, borrowing, "exhausted") is taken
// from it.
type Blocks struct {
	mu      sync.Mutex
	synced  bool
	items   map[string]datastore.Item[datastore.Block]
	byAff   map[string]map[string]struct{} // affinity → block names
	assigns *prometheus.CounterVec
}

// NewBlocks returns an empty copy; Follow fills it.
func NewBlocks() *Blocks {
	return &Blocks{
		items: map[string]datastore.Item[datastore.Block]{},
		byAff: map[string]map[string]struct{}{},
		assigns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "margay_ipam_assignments_total",
			Help: "New addresses this process assigned, by where the block came from: copy (the watch-fed copy of the blocks, one etcd transaction) or etcd (every block listed first: the copy was stale, not synced, or the node's blocks were full).",
		}, []string{"source"}),
	}
}

// Collectors returns the copy's metrics.
func (b *Blocks) Collectors() []prometheus.Collector { return []prometheus.Collector{b.assigns} }

// counted records an assignment made from source ("copy" or "etcd").
func (b *Blocks) counted(source string) {
	if b != nil {
		b.assigns.WithLabelValues(source).Inc()
	}
}

// Follow keeps the copy up to date with ds until ctx ends (datastore's Watch: a snapshot, then
// every change, a fresh snapshot after a lost watch). It returns Watch's error.
func (b *Blocks) Follow(ctx context.Context, ds *datastore.Client) error {
	err := ds.Blocks().Watch(ctx, b.apply)
	b.mu.Lock()
	b.synced = false // no longer followed: Assign goes to etcd
	b.mu.Unlock()
	return err
}

func (b *Blocks) apply(ev datastore.Event[datastore.Block]) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev.Type {
	case datastore.EventSnapshot:
		clear(b.items)
		clear(b.byAff)
		for _, it := range ev.Items {
			b.put(it)
		}
		b.synced = true
	case datastore.EventPut:
		b.remove(ev.Item.Name)
		b.put(ev.Item)
	case datastore.EventDelete:
		b.remove(ev.Name)
	}
}

func (b *Blocks) put(it datastore.Item[datastore.Block]) {
	b.items[it.Name] = it
	names := b.byAff[it.Value.Affinity]
	if names == nil {
		names = map[string]struct{}{}
		b.byAff[it.Value.Affinity] = names
	}
	names[it.Name] = struct{}{}
}

func (b *Blocks) remove(name string) {
	old, ok := b.items[name]
	if !ok {
		return
	}
	delete(b.items, name)
	if names := b.byAff[old.Value.Affinity]; names != nil {
		delete(names, name)
		if len(names) == 0 {
			delete(b.byAff, old.Value.Affinity)
		}
	}
}

// affine returns the blocks with the given affinity, and whether the copy is synced (before the
// first snapshot, and after Follow ended, it knows nothing).
func (b *Blocks) affine(affinity string) ([]datastore.Item[datastore.Block], bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.synced {
		return nil, false
	}
	names := b.byAff[affinity]
	out := make([]datastore.Item[datastore.Block], 0, len(names))
	for name := range names {
		out = append(out, b.items[name])
	}
	return out, true
}

// WithBlocks makes Assign try the node's own blocks from the copy first (see Blocks).
func WithBlocks(b *Blocks) Option { return func(i *IPAM) { i.blocks = b } }
