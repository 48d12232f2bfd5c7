package datastore_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
)

// Commit writes all of its writes or none: a write that no longer holds (a key created or
// changed since it was read) fails the whole commit with ErrConflict and leaves every key as it
// was; an invalid value fails before anything is sent.
func TestCommit(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := datastoretest.New(t)
	cidr := pfx("198.19.0.0/26")
	name := datastore.BlockKeyName(cidr)
	rev, err := c.Blocks().Create(ctx, name, datastore.Block{CIDR: cidr, Affinity: "host:h1"})
	if err != nil {
		t.Fatal(err)
	}
	ip := addr("198.19.0.0")
	alloc := datastore.Block{CIDR: cidr, Affinity: "host:h1", Seq: 1, Allocations: []datastore.Allocation{{IP: ip, Handle: "w1"}}}
	handle := datastore.Handle{ID: "w1", Node: "h1", IPs: []netip.Addr{ip}}

	if _, err := c.Commit(ctx, c.Blocks().UpdateWrite(name, alloc, rev), c.Handles().CreateWrite("w1", handle)); err != nil {
		t.Fatalf("commit: %v", err)
	}
	b, err := c.Blocks().Get(ctx, name)
	if err != nil || len(b.Value.Allocations) != 1 {
		t.Fatalf("block after commit: %+v, %v", b.Value, err)
	}
	h, err := c.Handles().Get(ctx, "w1")
	if err != nil || len(h.Value.IPs) != 1 || h.Value.IPs[0] != ip {
		t.Fatalf("handle after commit: %+v, %v", h.Value, err)
	}

	// A stale block revision: nothing of the commit is written, the new handle included.
	stale := alloc
	stale.Allocations = append(stale.Allocations, datastore.Allocation{IP: addr("198.19.0.1"), Handle: "w2"})
	_, err = c.Commit(ctx, c.Blocks().UpdateWrite(name, stale, rev), c.Handles().CreateWrite("w2", datastore.Handle{ID: "w2", Node: "h1"}))
	if !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("commit on a stale block: %v, want ErrConflict", err)
	}
	if _, err := c.Handles().Get(ctx, "w2"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("handle w2 written by a failed commit: %v", err)
	}
	// A create of a key that exists: the block update is not made either.
	_, err = c.Commit(ctx, c.Blocks().UpdateWrite(name, stale, b.ModRevision), c.Handles().CreateWrite("w1", handle))
	if !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("commit creating an existing key: %v, want ErrConflict", err)
	}
	if b2, _ := c.Blocks().Get(ctx, name); b2.ModRevision != b.ModRevision {
		t.Errorf("block written by a failed commit")
	}
	// Invalid values and revisions fail before anything is sent.
	if _, err := c.Commit(ctx, c.Blocks().UpdateWrite(name, stale, 0)); !errors.Is(err, datastore.ErrInvalid) {
		t.Errorf("update with revision 0: %v, want ErrInvalid", err)
	}
	if _, err := c.Commit(ctx, c.Handles().CreateWrite("Bad Name", handle)); err == nil {
		t.Error("create with an invalid name: no error")
	}
}
