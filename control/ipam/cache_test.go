package ipam

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/tests/poll"
)

// assigned returns how many assignments the copy counted from source.
func assigned(b *Blocks, source string) int {
	return int(testutil.ToFloat64(b.assigns.WithLabelValues(source)))
}

// stale returns a copy that holds the blocks as etcd has them now, and is never updated.
func stale(t *testing.T, ds *datastore.Client) *Blocks {
	t.Helper()
	items, rev, err := ds.Blocks().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b := NewBlocks()
	b.apply(datastore.Event[datastore.Block]{Type: datastore.EventSnapshot, Revision: rev, Items: items})
	return b
}

func TestBlocksCopy(t *testing.T) {
	i, ds := newIPAM(t, pool("test", "198.19.0.0/16", 30)) // blocks of 4 addresses
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	live := NewBlocks()
	followed := make(chan error, 1)
	go func() { followed <- live.Follow(ctx, ds) }()
	withCopy := New(ds, WithLogger(quiet), WithBlocks(live))
	// The copy shows what etcd holds once its watch delivered it.
	caughtUp := func(block string, allocations int) {
		t.Helper()
		poll.Until(t, fmt.Sprintf("the copy shows %s with %d allocations", block, allocations), 10*time.Second, func() error {
			own, synced := live.affine(datastore.AffinityForNode("vm100"))
			for _, b := range own {
				if synced && b.Value.CIDR.String() == block && len(b.Value.Allocations) == allocations {
					return nil
				}
			}
			return fmt.Errorf("it shows %+v (synced %v)", own, synced)
		})
	}

	// No block yet: the first address claims one, from etcd.
	if a := assign(t, withCopy, "h1", "vm100"); a.IP != netip.MustParseAddr("198.19.0.0") {
		t.Errorf("h1: %v", a.IP)
	}
	if got := assigned(live, "etcd"); got != 1 {
		t.Errorf("etcd assignments %d, want 1", got)
	}
	caughtUp("198.19.0.0/30", 1)

	// The node's block has room: the next address comes from the copy, in one transaction.
	if a := assign(t, withCopy, "h2", "vm100"); a.IP != netip.MustParseAddr("198.19.0.1") {
		t.Errorf("h2: %v", a.IP)
	}
	if got := assigned(live, "copy"); got != 1 {
		t.Errorf("copy assignments %d, want 1", got)
	}

	// A copy that is behind etcd loses its transaction and the address comes from etcd: never
	// one that another ADD took in the meantime.
	old := stale(t, ds)
	assign(t, i, "h3", "vm100") // 198.19.0.2, written past the stale copy
	withStale := New(ds, WithLogger(quiet), WithBlocks(old))
	if a := assign(t, withStale, "h4", "vm100"); a.IP != netip.MustParseAddr("198.19.0.3") {
		t.Errorf("h4 with a stale copy: %v, want 198.19.0.3", a.IP)
	}
	if c, e := assigned(old, "copy"), assigned(old, "etcd"); c != 0 || e != 1 {
		t.Errorf("stale copy: %d from the copy, %d from etcd; want 0 and 1", c, e)
	}

	// The block is full now (4 addresses): the copy has nothing to offer and etcd claims the next
	// block, also when the stale copy still shows room.
	if a := assign(t, withStale, "h5", "vm100"); a.Block != netip.MustParsePrefix("198.19.0.4/30") {
		t.Errorf("h5: %+v, want a new block", a)
	}
	caughtUp("198.19.0.0/30", 4)
	if a := assign(t, withCopy, "h6", "vm100"); a.IP != netip.MustParseAddr("198.19.0.5") {
		t.Errorf("h6: %v, want 198.19.0.5 (h5 took .4)", a.IP)
	}

	// A block released behind the copy's back: its stale entry loses, etcd decides.
	for _, h := range []string{"h1", "h2", "h3", "h4"} {
		if _, err := i.ReleaseHandle(context.Background(), h); err != nil {
			t.Fatal(err)
		}
	}
	gone := stale(t, ds)
	if _, err := i.ReleaseEmptyBlocks(context.Background(), "vm100", 0); err != nil {
		t.Fatal(err)
	}
	if a := assign(t, New(ds, WithLogger(quiet), WithBlocks(gone)), "h7", "vm100"); a.IP != netip.MustParseAddr("198.19.0.6") {
		t.Errorf("h7: %+v, want 198.19.0.6 (the released block's addresses are gone with it)", a)
	}
	if c, e := assigned(gone, "copy"), assigned(gone, "etcd"); c != 0 || e != 1 {
		t.Errorf("copy with a released block: %d from the copy, %d from etcd; want 0 and 1", c, e)
	}

	// A copy that was never synced is not used.
	unsynced := NewBlocks()
	assign(t, New(ds, WithLogger(quiet), WithBlocks(unsynced)), "h8", "vm100")
	if c, e := assigned(unsynced, "copy"), assigned(unsynced, "etcd"); c != 0 || e != 1 {
		t.Errorf("unsynced copy: %d from the copy, %d from etcd; want 0 and 1", c, e)
	}
	noProblems(t, i)

	cancel()
	if err := <-followed; err != context.Canceled {
		t.Errorf("Follow returned %v, want context.Canceled", err)
	}
	if _, synced := live.affine(datastore.AffinityForNode("vm100")); synced {
		t.Error("a copy no longer followed still claims to be synced")
	}
}
