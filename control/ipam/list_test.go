package ipam

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/margaynet/margay/control/datastore"
)

func TestCapacity(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		want   uint64
	}{{"198.19.0.0/26", 64}, {"198.19.0.5/32", 1}, {"198.19.0.0/16", 65536}, {"0.0.0.0/0", 1 << 32}} {
		if got := Capacity(netip.MustParsePrefix(tc.prefix)); got != tc.want {
			t.Errorf("Capacity(%s) = %d, want %d", tc.prefix, got, tc.want)
		}
	}
}

func TestNodes(t *testing.T) {
	i, ds := newIPAM(t, pool("test", "198.19.0.0/16", 26))
	ctx := context.Background()
	own, err := ds.Nodes().Get(ctx, "vm101")
	if err != nil {
		t.Fatal(err)
	}
	n := own.Value
	n.ASN = 65001
	if _, err := ds.Nodes().Update(ctx, n.Name, n, own.ModRevision); err != nil {
		t.Fatal(err)
	}
	assign(t, i, "h1", "vm100")
	assign(t, i, "h2", "vm101")
	// vm100 gets a second, empty block.
	if _, err := ds.Blocks().Create(ctx, "198.19.1.0-26", datastore.Block{Version: datastore.CurrentVersion,
		CIDR: netip.MustParsePrefix("198.19.1.0/26"), Affinity: datastore.AffinityForNode("vm100")}); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct{ node, id string }{{"vm100", "w1"}, {"vm100", "w2"}, {"vm101", "w3"}} {
		if _, err := ds.Workloads(w.node).Create(ctx, w.id, datastore.Workload{Version: datastore.CurrentVersion, ID: w.id, Name: "ctr-" + w.id,
			Node: w.node, IfName: "cali0123456789a", MAC: "ee:ee:ee:ee:ee:ee"}); err != nil {
			t.Fatal(err)
		}
	}

	check := func(clusterASN uint32) {
		t.Helper()
		got, err := i.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]NodeSummary{}
		var names []string
		for _, s := range got {
			byName[s.Node.Name] = s
			names = append(names, s.Node.Name)
		}
		if !slices.IsSorted(names) || len(names) != 5 {
			t.Fatalf("Nodes listed %v; want the five registered, by name", names)
		}
		pfx := netip.MustParsePrefix
		for name, want := range map[string]NodeSummary{
			"vm100": {ASN: clusterASN, ASNInherited: true, Blocks: []netip.Prefix{pfx("198.19.0.0/26"), pfx("198.19.1.0/26")}, Workloads: 2},
			"vm101": {ASN: 65001, Blocks: []netip.Prefix{pfx("198.19.0.64/26")}, Workloads: 1},
			"vm102": {ASN: clusterASN, ASNInherited: true},
		} {
			s := byName[name]
			if s.ASN != want.ASN || s.ASNInherited != want.ASNInherited || !slices.Equal(s.Blocks, want.Blocks) || s.Workloads != want.Workloads {
				t.Errorf("%s = %+v; want %+v", name, s, want)
			}
		}
	}
	check(datastore.DefaultASN) // no config/bgp
	if _, err := ds.BGPConfig().Put(ctx, datastore.BGPConfig{Version: datastore.CurrentVersion, ASN: 64600}); err != nil {
		t.Fatal(err)
	}
	check(64600)
}

func TestPools(t *testing.T) {
	i, ds := newIPAM(t, pool("test", "198.19.0.0/16", 26), pool("small", "198.20.0.0/24", 28))
	ctx := context.Background()
	assign(t, i, "h1", "vm100")
	assign(t, i, "h2", "vm100")
	assign(t, i, "h3", "vm101")
	// A block outside every pool (left by pool delete --force) counts for none.
	if _, err := ds.Blocks().Create(ctx, "10.0.0.0-26", datastore.Block{Version: datastore.CurrentVersion,
		CIDR: netip.MustParsePrefix("10.0.0.0/26"), Affinity: datastore.AffinityForNode("vm100"),
		Allocations: []datastore.Allocation{{IP: netip.MustParseAddr("10.0.0.1"), Handle: "x"}}}); err != nil {
		t.Fatal(err)
	}
	got, err := i.Pools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("Pools = %+v; want two", got)
	}
	// By name: small, then test.
	if s := got[0]; s.Pool.Name != "small" || s.Blocks != 0 || s.Used != 0 || s.Capacity != 256 {
		t.Errorf("small = %+v", s)
	}
	if s := got[1]; s.Pool.Name != "test" || s.Blocks != 2 || s.Used != 3 || s.Capacity != 65536 {
		t.Errorf("test = %+v", s)
	}
}
