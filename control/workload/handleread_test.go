package workload_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/ipam"
)

// The ADD reads the workload's IPAM handle once, with its record, and hands it to Assign.
func TestAddReadsHandleOnce(t *testing.T) {
	e := newEnv(t, "198.19.0.0/16", 26)
	path, _ := workloadNS(t)
	s := spec("once", path)
	// A block of the node's already: the first address of a node claims the block, and the pass
	// after the claim reads the handle again.
	if _, err := e.ipam.EnsureBlock(t.Context(), node); err != nil {
		t.Fatal(err)
	}
	reads := datastoretest.WatchReads(t, e.ds)
	key := e.ds.Handles().Key(s.ID)
	for _, what := range []string{"first ADD", "repeated ADD"} {
		reads.Reset()
		if _, err := e.add(s); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if n := reads.Gets(key); n != 1 {
			t.Errorf("%s read the handle %d times, want 1", what, n)
		}
	}
	if err := e.check(s); err != nil {
		t.Error(err)
	}
}

// Another writer that changes the handle between the ADD's read and Assign's write is caught by
// the write: the ADD reads the handle again and takes what it holds now.
func TestAddHandleChangedAfterRead(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name  string
		other string // the node the other writer assigns for
		want  func(t *testing.T, e *env, res netip.Prefix, err error, theirs ipam.Assignment)
	}{{
		// A runtime's retry of the same ADD, served at once.
		name: "another ADD of the workload", other: node,
		want: func(t *testing.T, e *env, res netip.Prefix, err error, theirs ipam.Assignment) {
			if err != nil || res.Addr() != theirs.IP {
				t.Errorf("ADD got %s, %v; want the other ADD's %s", res, err, theirs.IP)
			}
		},
	}, {
		// Another host's workload of the same ID: refused, and the rollback of the failed ADD
		// leaves that workload's handle and address alone.
		name: "a workload of another node", other: "node-2",
		want: func(t *testing.T, e *env, res netip.Prefix, err error, theirs ipam.Assignment) {
			if !errors.Is(err, ipam.ErrHandleInUse) {
				t.Errorf("ADD got %s, %v; want ErrHandleInUse", res, err)
			}
			e.host.AssertLinkGone(t, spec("raced", "").HostVeth())
			if _, err := e.ds.Workloads(node).Get(t.Context(), "raced"); !errors.Is(err, datastore.ErrNotFound) {
				t.Errorf("record after the failed ADD: %v, want none", err)
			}
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, "198.19.0.0/16", 26)
			path, _ := workloadNS(t)
			s := spec("raced", path)
			other := ipam.New(datastoretest.Connect(t, datastore.Config{Endpoints: e.ds.Raw().Endpoints()}, datastore.WithLogger(quiet)),
				ipam.WithLogger(quiet))
			reads := datastoretest.WatchReads(t, e.ds)
			key := e.ds.Handles().Key(s.ID)
			var (
				theirs ipam.Assignment
				ran    bool
			)
			reads.OnceAfter(key, func() {
				ran = true
				var err error
				theirs, err = other.Assign(context.Background(), ipam.Request{Handle: s.ID, Node: tc.other, Workload: tc.other + "/" + s.ID})
				if err != nil {
					t.Errorf("the other writer: %v", err)
				}
			})

			res, err := e.add(s)
			if !ran {
				t.Fatal("the other writer never ran: the ADD did not read the handle")
			}
			// Read twice: with the record, and after the write that lost to the other writer.
			if n := reads.Gets(key); n != 2 {
				t.Errorf("the ADD read the handle %d times, want 2", n)
			}
			tc.want(t, e, res.IPv4, err, theirs)

			// The other writer's handle and address are intact, and given once.
			h, herr := e.ds.Handles().Get(t.Context(), s.ID)
			if herr != nil || h.Value.Node != tc.other || len(h.Value.IPs) != 1 || h.Value.IPs[0] != theirs.IP {
				t.Errorf("handle after the race: %+v, %v; want %s's, holding %s", h.Value, herr, tc.other, theirs.IP)
			}
			blocks, _, berr := e.ds.Blocks().List(t.Context())
			if berr != nil {
				t.Fatal(berr)
			}
			var held []netip.Addr
			for _, b := range blocks {
				for _, a := range b.Value.Allocations {
					if a.Handle == s.ID {
						held = append(held, a.IP)
					}
				}
			}
			if len(held) != 1 || held[0] != theirs.IP {
				t.Errorf("the blocks give the handle %v, want %s only", held, theirs.IP)
			}
		})
	}
}
