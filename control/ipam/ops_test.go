package ipam

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/margaynet/margay/control/datastore"
)

// HolderOf says who holds a handle, and Release frees as an operator asks: an address must be
// allocated, a handle must exist or hold addresses, and a workload whose record exists keeps its
// addresses unless forced.
func TestHolderOfAndRelease(t *testing.T) {
	i, ds := newIPAM(t, pool("test", "198.19.0.0/16", 26))
	ctx := context.Background()
	live := assign(t, i, "live", "vm100")
	gone := assign(t, i, "gone", "vm100")
	if _, err := ds.Workloads("vm100").Create(ctx, "live", datastore.Workload{Version: datastore.CurrentVersion, ID: "live",
		Name: "web-0", Namespace: "shop", Node: "vm100", IfName: "cali0123456789a", MAC: "ee:ee:ee:ee:ee:ee"}); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		handle string
		want   Holder
	}{
		{"live", Holder{Handle: "live", Node: "vm100", Workload: "vm100/live", Name: "web-0", Namespace: "shop"}},
		{"gone", Holder{Handle: "gone", Node: "vm100", Workload: "vm100/gone", RecordGone: true}},
		{"none", Holder{Handle: "none", HandleMissing: true}},
	} {
		got, err := i.HolderOf(ctx, tc.handle)
		if err != nil || got != tc.want {
			t.Errorf("HolderOf(%s) = %+v, %v; want %+v", tc.handle, got, err, tc.want)
		}
		if got.Live() != (tc.handle == "live") {
			t.Errorf("HolderOf(%s).Live() = %v", tc.handle, got.Live())
		}
	}

	var le *LiveError
	if _, err := i.Release(ctx, ReleaseRequest{IP: live.IP}); !errors.As(err, &le) || le.Workload != "vm100/live" {
		t.Errorf("release a live workload's address: %v; want a LiveError naming vm100/live", err)
	}
	if _, err := i.Release(ctx, ReleaseRequest{Handle: "live"}); !errors.As(err, &le) {
		t.Errorf("release a live workload's handle: %v; want a LiveError", err)
	}
	if got, _ := i.HolderOf(ctx, "live"); got.HandleMissing {
		t.Fatal("a refused release deleted the handle")
	}
	if _, err := i.Release(ctx, ReleaseRequest{IP: netip.MustParseAddr("198.19.9.9")}); !errors.Is(err, ErrNotAllocated) {
		t.Errorf("release a free address: %v; want ErrNotAllocated", err)
	}
	if _, err := i.Release(ctx, ReleaseRequest{Handle: "none"}); !errors.Is(err, ErrNoHandle) {
		t.Errorf("release a handle that does not exist: %v; want ErrNoHandle", err)
	}
	for _, req := range []ReleaseRequest{{}, {IP: live.IP, Handle: "live"}} {
		if _, err := i.Release(ctx, req); !errors.Is(err, datastore.ErrInvalid) {
			t.Errorf("Release(%+v): %v; want ErrInvalid", req, err)
		}
	}

	// The workload whose record is gone: its address goes without force, and it leaves the handle.
	rel, err := i.Release(ctx, ReleaseRequest{IP: gone.IP})
	if err != nil || rel.Handle != "gone" || !slices.Equal(rel.IPs, []netip.Addr{gone.IP}) {
		t.Errorf("release %s: %+v, %v", gone.IP, rel, err)
	}
	if loc, err := i.Locate(ctx, gone.IP); err != nil || loc.Handle != "" {
		t.Errorf("after its release %s is at %+v, %v", gone.IP, loc, err)
	}
	// Forced, the live workload's handle goes with its address.
	rel, err = i.Release(ctx, ReleaseRequest{Handle: "live", Force: true})
	if err != nil || rel.Handle != "live" || !slices.Equal(rel.IPs, []netip.Addr{live.IP}) {
		t.Errorf("forced release of handle live: %+v, %v", rel, err)
	}
	if got, _ := i.HolderOf(ctx, "live"); !got.HandleMissing {
		t.Errorf("handle live still there after its release: %+v", got)
	}
	noProblems(t, i)
}
