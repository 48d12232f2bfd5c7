package datastore_test

import (
	"context"
	"errors"
	"fmt"
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

// Fetch answers each of its reads as Get and List would, in one transaction: found, missing and
// malformed values side by side, lists with their malformed values skipped; an invalid name
// fails the whole Fetch before anything is sent.
func TestFetch(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := datastoretest.New(t)
	for _, p := range []datastore.Pool{{Name: "a", CIDR: pfx("198.19.0.0/20")}, {Name: "b", CIDR: pfx("198.19.16.0/20"), Disabled: true}} {
		if _, err := c.Pools().Create(ctx, p.Name, p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Raw().Put(ctx, c.Pools().Key("c"), `{"version":1,"cidr":"bogus"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Handles().Create(ctx, "w1", datastore.Handle{ID: "w1", Node: "h1", IPs: []netip.Addr{addr("198.19.0.1")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Raw().Put(ctx, c.Handles().Key("w3"), `{"version":1,`); err != nil {
		t.Fatal(err)
	}

	var (
		w1, w2, w3          datastore.Item[datastore.Handle]
		w1Err, w2Err, w3Err error
		pools               []datastore.Item[datastore.Pool]
	)
	rev, err := c.Fetch(ctx, c.Handles().GetRead("w1", &w1, &w1Err), c.Pools().ListRead(&pools),
		c.Handles().GetRead("w2", &w2, &w2Err), c.Handles().GetRead("w3", &w3, &w3Err))
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	for _, tc := range []struct {
		name string
		got  datastore.Item[datastore.Handle]
		err  error
	}{{"w1", w1, w1Err}, {"w2", w2, w2Err}, {"w3", w3, w3Err}} {
		want, wantErr := c.Handles().Get(ctx, tc.name)
		if fmt.Sprint(tc.got) != fmt.Sprint(want) || fmt.Sprint(tc.err) != fmt.Sprint(wantErr) {
			t.Errorf("%s: fetched %+v, %v; Get gives %+v, %v", tc.name, tc.got, tc.err, want, wantErr)
		}
	}
	if w1Err != nil || w1.Value.Node != "h1" || !errors.Is(w2Err, datastore.ErrNotFound) || !errors.Is(w3Err, datastore.ErrMalformed) || w3.ModRevision == 0 {
		t.Errorf("fetched w1 %+v %v, w2 %v, w3 %+v %v", w1, w1Err, w2Err, w3, w3Err)
	}
	wantPools, listRev, err := c.Pools().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(pools) != fmt.Sprint(wantPools) || len(pools) != 2 {
		t.Errorf("fetched pools %+v, List gives %+v", pools, wantPools)
	}
	if rev != listRev {
		t.Errorf("fetch at revision %d, nothing written since, list at %d", rev, listRev)
	}

	// An invalid name or store fails the Fetch and leaves the other reads' targets alone.
	var x datastore.Item[datastore.Handle]
	var xErr error
	pools = nil
	if _, err := c.Fetch(ctx, c.Pools().ListRead(&pools), c.Handles().GetRead("Bad Name", &x, &xErr)); !errors.Is(err, datastore.ErrInvalid) {
		t.Errorf("fetch of an invalid name: %v, want ErrInvalid", err)
	}
	var wls []datastore.Item[datastore.Workload]
	if _, err := c.Fetch(ctx, c.Workloads("Bad Node").ListRead(&wls)); !errors.Is(err, datastore.ErrInvalid) {
		t.Errorf("fetch from an invalid store: %v, want ErrInvalid", err)
	}
	if pools != nil || wls != nil {
		t.Errorf("a failed fetch filled its targets: %v %v", pools, wls)
	}
}

// Retry runs an attempt again while it loses its compare-and-swap, and no more: a result other
// than ErrConflict ends it, MaxAttempts conflicts give ErrContention, a done context stops it.
func TestRetry(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	for _, tc := range []struct {
		name      string
		conflicts int // attempts that lose before the last result
		last      error
		want      error
		attempts  int
	}{
		{"first wins", 0, nil, nil, 1},
		{"wins after losing", 3, nil, nil, 4},
		{"other error", 2, datastore.ErrNotFound, datastore.ErrNotFound, 3},
		{"always loses", datastore.MaxAttempts, nil, datastore.ErrContention, datastore.MaxAttempts},
	} {
		n := 0
		err := datastore.Retry(ctx, func() error {
			n++
			if n <= tc.conflicts {
				return fmt.Errorf("attempt %d: %w", n, datastore.ErrConflict)
			}
			return tc.last
		})
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) || n != tc.attempts ||
			errors.Is(tc.want, datastore.ErrContention) && errors.Is(err, datastore.ErrConflict) {
			t.Errorf("%s: %v after %d attempts, want %v after %d", tc.name, err, n, tc.want, tc.attempts)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	n := 0
	err := datastore.Retry(cctx, func() error {
		n++
		cancel()
		return datastore.ErrConflict
	})
	if !errors.Is(err, context.Canceled) || n != 1 {
		t.Errorf("cancelled: %v after %d attempts, want context.Canceled after 1", err, n)
	}
}

// DeleteWrite deletes at a revision; UnchangedSince holds while no value of its store was created
// or changed after a Fetch's revision, deletions aside: the guard of "delete the profile that no
// workload names any more".
func TestCommitDeleteUnchangedSince(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := datastoretest.New(t)
	prof := datastore.Profile{Version: datastore.CurrentVersion, Name: "net1"}
	w := datastore.Workload{Version: datastore.CurrentVersion, ID: "w1", Name: "w1", Node: "h1", IfName: "cali0123456789a", MAC: "02:42:c6:13:00:02"}
	if _, err := c.Profiles().Create(ctx, "net1", prof); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Workloads("h1").Create(ctx, "w1", w); err != nil {
		t.Fatal(err)
	}
	read := func() (int64, datastore.Item[datastore.Profile]) {
		t.Helper()
		var ws []datastore.Item[datastore.Workload]
		var p datastore.Item[datastore.Profile]
		var perr error
		rev, err := c.Fetch(ctx, c.AllWorkloads().ListRead(&ws), c.Profiles().GetRead("net1", &p, &perr))
		if err != nil || perr != nil {
			t.Fatal(err, perr)
		}
		return rev, p
	}
	rev, p := read()
	// A workload written since (on another node): the delete does not happen.
	w2 := w
	w2.ID, w2.Node = "w2", "h2"
	if _, err := c.Workloads("h2").Create(ctx, "w2", w2); err != nil {
		t.Fatal(err)
	}
	_, err := c.Commit(ctx, c.Profiles().DeleteWrite("net1", p.ModRevision), c.AllWorkloads().UnchangedSince(rev))
	if !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("delete after a workload was written: %v, want ErrConflict", err)
	}
	if _, err := c.Profiles().Get(ctx, "net1"); err != nil {
		t.Fatalf("profile deleted by a failed commit: %v", err)
	}
	// Deletions since the read do not count; a stale profile revision does.
	rev, p = read()
	if err := c.Workloads("h2").Delete(ctx, "w2", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Commit(ctx, c.Profiles().DeleteWrite("net1", p.ModRevision-1), c.AllWorkloads().UnchangedSince(rev)); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("delete at a stale revision: %v, want ErrConflict", err)
	}
	if _, err := c.Commit(ctx, c.Profiles().DeleteWrite("net1", p.ModRevision), c.AllWorkloads().UnchangedSince(rev)); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := c.Profiles().Get(ctx, "net1"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("profile after the delete: %v", err)
	}
	if _, err := c.Commit(ctx, c.Profiles().DeleteWrite("net1", 0)); !errors.Is(err, datastore.ErrInvalid) {
		t.Errorf("delete at revision 0: %v, want ErrInvalid", err)
	}
}
