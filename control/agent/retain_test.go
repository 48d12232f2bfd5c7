package agent

import (
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/margaynet/margay/control/bgp"
	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
)

// A restarted agent keeps the remote routes it found until BGP has every peer's table: BGP's
// route wins for a prefix it delivers, a retained route of the node's own block never comes
// back, and after release only BGP's routes remain.
func TestRetainedRoutes(t *testing.T) {
	v := newView("vm100", true)
	v.nodes["vm100"] = datastore.Node{Name: "vm100", AddressV4: netip.MustParsePrefix("198.18.0.100/24")}
	v.blocks["own"] = datastore.Block{CIDR: netip.MustParsePrefix("198.19.0.0/26"), Affinity: "host:vm100"}
	v.pools["pool"] = datastore.Pool{CIDR: netip.MustParsePrefix("198.19.0.0/16")} // the import policy takes what lies in it
	v.retained = []dataplane.RemoteRoute{
		{Prefix: netip.MustParsePrefix("198.19.0.0/26"), NextHop: netip.MustParseAddr("198.18.0.103")},  // now ours
		{Prefix: netip.MustParsePrefix("198.19.0.64/26"), NextHop: netip.MustParseAddr("198.18.0.101")}, // BGP has it elsewhere
		{Prefix: netip.MustParsePrefix("198.19.0.128/26"), NextHop: netip.MustParseAddr("198.18.0.102")},
	}
	v.learned = []bgp.Route{{Prefix: netip.MustParsePrefix("198.19.0.64/26"), NextHop: netip.MustParseAddr("198.18.0.104")}}
	remote := func() map[netip.Prefix]netip.Addr {
		out := map[netip.Prefix]netip.Addr{}
		for _, r := range v.state("ens32", true).Remote {
			out[r.Prefix] = r.NextHop
		}
		return out
	}
	got := remote()
	want := map[netip.Prefix]netip.Addr{
		netip.MustParsePrefix("198.19.0.64/26"):  netip.MustParseAddr("198.18.0.104"),
		netip.MustParsePrefix("198.19.0.128/26"): netip.MustParseAddr("198.18.0.102"),
	}
	if len(got) != len(want) {
		t.Fatalf("remote routes while retained: %v, want %v", got, want)
	}
	for p, nh := range want {
		if got[p] != nh {
			t.Errorf("remote route %v via %v, want via %v", p, got[p], nh)
		}
	}

	a := &Agent{log: slog.New(slog.DiscardHandler)}
	a.bgp.retained.Store(3)
	a.release(v, "test")
	if got := remote(); len(got) != 1 || got[netip.MustParsePrefix("198.19.0.64/26")] != netip.MustParseAddr("198.18.0.104") {
		t.Errorf("remote routes after release: %v, want only BGP's", got)
	}
	if n := a.bgp.retained.Load(); n != 0 {
		t.Errorf("retained gauge %d after release", n)
	}
}

// A restarted route reflector advertises the retained routes with their next hops until
// release, so that its clients keep them whatever order they come back in; its own block stays
// its own. Other nodes advertise only their own prefixes.
func TestReflectorAdvertisesRetained(t *testing.T) {
	own := netip.MustParsePrefix("198.19.0.0/26")
	for _, rr := range []bool{true, false} {
		v := newView("vm100", true)
		node := datastore.Node{Name: "vm100", AddressV4: netip.MustParsePrefix("198.18.0.100/24")}
		if rr {
			node.RouteReflectorClusterID = "198.18.0.100"
		}
		v.nodes["vm100"] = node
		v.blocks["own"] = datastore.Block{CIDR: own, Affinity: "host:vm100"}
		v.retained = []dataplane.RemoteRoute{
			{Prefix: own, NextHop: netip.MustParseAddr("198.18.0.103")}, // now ours
			{Prefix: netip.MustParsePrefix("198.19.0.128/26"), NextHop: netip.MustParseAddr("198.18.0.102")},
			{Prefix: netip.MustParsePrefix("198.19.0.64/26"), NextHop: netip.MustParseAddr("198.18.0.101")},
		}
		want := []bgp.Advertisement{{Prefix: own}}
		if rr {
			want = append(want, bgp.Advertisement{Prefix: netip.MustParsePrefix("198.19.0.64/26"), NextHop: netip.MustParseAddr("198.18.0.101")},
				bgp.Advertisement{Prefix: netip.MustParsePrefix("198.19.0.128/26"), NextHop: netip.MustParseAddr("198.18.0.102")})
		}
		if got := v.advertisements(); !slices.Equal(got, want) {
			t.Errorf("reflector %v: advertisements while retained %v, want %v", rr, got, want)
		}
		(&Agent{log: slog.New(slog.DiscardHandler)}).release(v, "test")
		if got := v.advertisements(); !slices.Equal(got, []bgp.Advertisement{{Prefix: own}}) {
			t.Errorf("reflector %v: advertisements after release %v, want the own block only", rr, got)
		}
	}
}
