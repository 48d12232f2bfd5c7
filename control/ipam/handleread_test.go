package ipam

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
)

// readHandle reads the handle as the CNI ADD does, in a Fetch.
func readHandle(t *testing.T, ds *datastore.Client, name string) *HandleRead {
	t.Helper()
	var r HandleRead
	if _, err := ds.Fetch(context.Background(), ds.Handles().GetRead(name, &r.Item, &r.Err)); err != nil {
		t.Fatal(err)
	}
	return &r
}

// allocationsOf returns the addresses the blocks give to handle.
func allocationsOf(t *testing.T, ds *datastore.Client, handle string) []netip.Addr {
	t.Helper()
	blocks, _, err := ds.Blocks().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ips []netip.Addr
	for _, b := range blocks {
		for _, a := range b.Value.Allocations {
			if a.Handle == handle {
				ips = append(ips, a.IP)
			}
		}
	}
	return ips
}

// Given the handle as read, Assign does not read it from etcd again; without it, it does.
func TestAssignTakesHandleRead(t *testing.T) {
	i, ds := newIPAM(t, pool("test", "198.19.0.0/16", 26))
	reads := datastoretest.WatchReads(t, ds)
	ctx := context.Background()
	req := func(handle string, r *HandleRead) Request {
		return Request{Handle: handle, Node: "vm100", Workload: "vm100/" + handle, HandleRead: r}
	}
	// vm100's block, with room: the first address of a node claims its block, and the pass after
	// the claim reads the handle again whatever the caller gave.
	assign(t, i, "h0", "vm100")

	// None yet, as read.
	r := readHandle(t, ds, "h1")
	if !errors.Is(r.Err, datastore.ErrNotFound) {
		t.Fatalf("handle h1 before any Assign: %+v", r)
	}
	reads.Reset()
	a1, err := i.Assign(ctx, req("h1", r))
	if err != nil || a1.IP != netip.MustParseAddr("198.19.0.1") {
		t.Fatalf("Assign of h1 = %+v, %v", a1, err)
	}
	if n := reads.Gets(ds.Handles().Key("h1")); n != 0 {
		t.Errorf("Assign given the handle read it %d times, want 0", n)
	}

	// Present, holding its address, as read (a repeated ADD): the same address, not read again.
	r = readHandle(t, ds, "h1")
	reads.Reset()
	if again, err := i.Assign(ctx, req("h1", r)); err != nil || again != a1 {
		t.Errorf("Assign of h1 again = %+v, %v; want %+v", again, err, a1)
	}
	if n := reads.Gets(ds.Handles().Key("h1")); n != 0 {
		t.Errorf("Assign given the handle read it %d times, want 0", n)
	}

	// Without it Assign reads it itself, once: what the counting sees.
	reads.Reset()
	if a2, err := i.Assign(ctx, req("h2", nil)); err != nil || a2.IP != netip.MustParseAddr("198.19.0.2") {
		t.Errorf("Assign of h2 = %+v, %v", a2, err)
	}
	if n := reads.Gets(ds.Handles().Key("h2")); n != 1 {
		t.Errorf("Assign not given the handle read it %d times, want 1", n)
	}

	// A read of another handle is refused, not taken for this one's.
	if _, err := i.Assign(ctx, req("h3", readHandle(t, ds, "h1"))); err == nil {
		t.Error("Assign of h3 given the read of h1: no error")
	}
	if _, err := ds.Handles().Get(ctx, "h3"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("handle h3 after a refused Assign: %v, want not found", err)
	}
	noProblems(t, i)
}

// A handle another writer changes between the caller's read and Assign's write fails that write:
// Assign reads the handle again and decides from what it holds now, so there is neither a second
// address for one workload nor a handle overwritten. The blocks are current every time (the copy
// is taken after the other writer), so the handle's compare is the only one that can fail.
func TestAssignHandleChangedAfterRead(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name string
		// before writes what the handle is when the caller reads it, on vm100, which holds one
		// address (h0) already; between is the other writer, after the read.
		before, between func(t *testing.T, other *IPAM, ds *datastore.Client)
		// want checks what ours got and what is left of the handle.
		want func(t *testing.T, a Assignment, err error, h datastore.Handle, held []netip.Addr)
	}{{
		name:    "created by another ADD of the workload",
		between: func(t *testing.T, other *IPAM, _ *datastore.Client) { assign(t, other, "h1", "vm100") },
		want: func(t *testing.T, a Assignment, err error, h datastore.Handle, held []netip.Addr) {
			want := []netip.Addr{netip.MustParseAddr("198.19.0.1")}
			if err != nil || a.IP != want[0] || !slices.Equal(h.IPs, want) || !slices.Equal(held, want) {
				t.Errorf("got %+v, %v; handle holds %v, blocks give it %v; want the other ADD's %v everywhere", a, err, h.IPs, held, want)
			}
		},
	}, {
		name:    "created for a workload of another node",
		between: func(t *testing.T, other *IPAM, _ *datastore.Client) { assign(t, other, "h1", "vm101") },
		want: func(t *testing.T, a Assignment, err error, h datastore.Handle, held []netip.Addr) {
			want := []netip.Addr{netip.MustParseAddr("198.19.0.64")}
			if !errors.Is(err, ErrHandleInUse) || h.Node != "vm101" || !slices.Equal(h.IPs, want) || !slices.Equal(held, want) {
				t.Errorf("got %+v, %v; handle %+v, blocks give it %v; want ErrHandleInUse and vm101's %v left alone", a, err, h, held, want)
			}
		},
	}, {
		name: "given its address by another ADD",
		before: func(t *testing.T, _ *IPAM, ds *datastore.Client) {
			if _, err := ds.Handles().Create(context.Background(), "h1", datastore.Handle{Version: datastore.CurrentVersion,
				ID: "h1", Node: "vm100", Workload: "vm100/h1"}); err != nil {
				t.Fatal(err)
			}
		},
		between: func(t *testing.T, other *IPAM, _ *datastore.Client) { assign(t, other, "h1", "vm100") },
		want: func(t *testing.T, a Assignment, err error, h datastore.Handle, held []netip.Addr) {
			want := []netip.Addr{netip.MustParseAddr("198.19.0.1")}
			if err != nil || a.IP != want[0] || !slices.Equal(h.IPs, want) || !slices.Equal(held, want) {
				t.Errorf("got %+v, %v; handle holds %v, blocks give it %v; want the other ADD's %v everywhere", a, err, h.IPs, held, want)
			}
		},
	}, {
		name: "deleted",
		before: func(t *testing.T, _ *IPAM, ds *datastore.Client) {
			if _, err := ds.Handles().Create(context.Background(), "h1", datastore.Handle{Version: datastore.CurrentVersion,
				ID: "h1", Node: "vm100", Workload: "vm100/h1"}); err != nil {
				t.Fatal(err)
			}
		},
		between: func(t *testing.T, _ *IPAM, ds *datastore.Client) {
			if err := ds.Handles().Delete(context.Background(), "h1", 0); err != nil {
				t.Fatal(err)
			}
		},
		want: func(t *testing.T, a Assignment, err error, h datastore.Handle, held []netip.Addr) {
			want := []netip.Addr{netip.MustParseAddr("198.19.0.1")}
			if err != nil || a.IP != want[0] || !slices.Equal(h.IPs, want) || h.Workload != "vm100/h1" || !slices.Equal(held, want) {
				t.Errorf("got %+v, %v; handle %+v, blocks give it %v; want %v, created again", a, err, h, held, want)
			}
		},
	}} {
		for _, withCopy := range []bool{false, true} {
			name := tc.name
			if withCopy {
				name += ", with a copy of the blocks"
			}
			t.Run(name, func(t *testing.T) {
				i, ds := newIPAM(t, pool("test", "198.19.0.0/16", 26))
				other := New(datastoretest.Connect(t, datastore.Config{Endpoints: ds.Raw().Endpoints()}, datastore.WithLogger(quiet)),
					WithLogger(quiet))
				assign(t, i, "h0", "vm100") // vm100's block, with room
				if tc.before != nil {
					tc.before(t, other, ds)
				}
				r := readHandle(t, ds, "h1")
				tc.between(t, other, ds)
				if withCopy {
					i = New(ds, WithLogger(quiet), WithBlocks(stale(t, ds)))
				}
				reads := datastoretest.WatchReads(t, ds)

				a, err := i.Assign(context.Background(), Request{Handle: "h1", Node: "vm100", Workload: "vm100/h1", HandleRead: r})
				// The handle is read again once, after the write it failed.
				if n := reads.Gets(ds.Handles().Key("h1")); n != 1 {
					t.Errorf("Assign read the handle %d times, want 1 (after its write failed)", n)
				}
				h, herr := ds.Handles().Get(context.Background(), "h1")
				if herr != nil {
					t.Fatalf("handle h1: %v", herr)
				}
				tc.want(t, a, err, h.Value, allocationsOf(t, ds, "h1"))
				if withCopy && assigned(i.blocks, "copy") != 0 {
					t.Errorf("the copy assigned %d addresses, want 0: its write must fail", assigned(i.blocks, "copy"))
				}
				noProblems(t, i)
			})
		}
	}
}
