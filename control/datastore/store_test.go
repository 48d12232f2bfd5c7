package datastore_test

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func testPool(name, cidr string) datastore.Pool {
	return datastore.Pool{Name: name, CIDR: pfx(cidr)}
}

func testWorkload(node, id string, ip string) datastore.Workload {
	return datastore.Workload{
		ID: id, Name: "web-" + id, Namespace: "default", Node: node,
		IfName: "cali0b7f49da20a", MAC: "02:42:c6:13:00:01", IPv4: []netip.Prefix{pfx(ip + "/32")},
	}
}

func TestPoolCRUD(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := datastoretest.New(t)
	pools := c.Pools()

	if _, err := pools.Get(ctx, "p1"); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("Get of a missing pool = %v, want ErrNotFound", err)
	}
	rev1, err := pools.Create(ctx, "p1", testPool("", "198.19.0.0/16"))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := pools.Create(ctx, "p1", testPool("p1", "198.19.0.0/16")); !errors.Is(err, datastore.ErrExists) {
		t.Fatalf("second Create = %v, want ErrExists", err)
	}
	got, err := pools.Get(ctx, "p1")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	want := datastore.Pool{Version: 1, Name: "p1", CIDR: pfx("198.19.0.0/16"), BlockSize: 26}
	if got.Value != want || got.ModRevision != rev1 || got.Name != "p1" {
		t.Fatalf("Get = %+v, want %+v at revision %d (defaults and name filled in)", got, want, rev1)
	}

	// Compare-and-swap: the first update wins, the second, from the same read, conflicts.
	upd := got.Value
	upd.Disabled = true
	rev2, err := pools.Update(ctx, "p1", upd, got.ModRevision)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	if rev2 <= rev1 {
		t.Fatalf("Update returned revision %d, not after %d", rev2, rev1)
	}
	if _, err := pools.Update(ctx, "p1", upd, got.ModRevision); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("stale Update = %v, want ErrConflict", err)
	}
	if err := pools.Delete(ctx, "p1", got.ModRevision); !errors.Is(err, datastore.ErrConflict) {
		t.Fatalf("stale Delete = %v, want ErrConflict", err)
	}
	if _, err := pools.Update(ctx, "p1", upd, 0); !errors.Is(err, datastore.ErrInvalid) {
		t.Fatalf("Update with revision 0 = %v, want ErrInvalid", err)
	}

	if _, err := pools.Put(ctx, "p2", testPool("p2", "198.19.0.0/17")); err != nil {
		t.Fatalf("Put: %v", err)
	}
	items, rev, err := pools.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(items) != 2 || items[0].Name != "p1" || !items[0].Value.Disabled || items[1].Name != "p2" || rev < rev2 {
		t.Fatalf("List = %+v at %d, want p1 (disabled) and p2", items, rev)
	}

	if err := pools.Delete(ctx, "p1", rev2); err != nil {
		t.Fatalf("Delete at current revision: %v", err)
	}
	if _, err := pools.Update(ctx, "p1", upd, rev2); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("Update of a deleted pool = %v, want ErrNotFound", err)
	}
	if err := pools.Delete(ctx, "p2", 0); err != nil {
		t.Fatalf("unconditional Delete: %v", err)
	}
	if err := pools.Delete(ctx, "p2", 0); !errors.Is(err, datastore.ErrNotFound) {
		t.Fatalf("Delete of a missing pool = %v, want ErrNotFound", err)
	}
}

// TestStores runs one write and read through every store and checks the key it lands on.
func TestStores(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := datastoretest.New(t)
	p := c.Prefix()
	mesh := false

	check := func(t *testing.T, key string) {
		t.Helper()
		resp, err := c.Raw().Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("raw Get(%q) = %v, %v; want one key", key, resp, err)
		}
		if !strings.Contains(string(resp.Kvs[0].Value), `"version":1`) {
			t.Fatalf("value at %q = %s, want a version field", key, resp.Kvs[0].Value)
		}
	}
	t.Run("bgpconfig", func(t *testing.T) {
		s := c.BGPConfig()
		if _, err := s.Put(ctx, datastore.BGPConfig{NodeToNodeMesh: &mesh}); err != nil {
			t.Fatal(err)
		}
		check(t, p+"config/bgp")
		got, err := s.Get(ctx)
		if err != nil || got.Value.ASN != datastore.DefaultASN || got.Value.MeshEnabled() || got.Name != "bgp" {
			t.Fatalf("Get = %+v, %v; want ASN %d and mesh off", got, err, datastore.DefaultASN)
		}
	})
	t.Run("bgppeer", func(t *testing.T) {
		if _, err := c.BGPPeers().Create(ctx, "gw", datastore.BGPPeer{PeerIP: addr("198.18.0.254"), ASN: 64513}); err != nil {
			t.Fatal(err)
		}
		check(t, p+"bgp/peers/gw")
	})
	t.Run("node", func(t *testing.T) {
		if _, err := c.Nodes().Create(ctx, "host1", datastore.Node{AddressV4: pfx("198.18.0.1/24"), Uplink: "ens32"}); err != nil {
			t.Fatal(err)
		}
		check(t, p+"nodes/host1")
	})
	t.Run("block", func(t *testing.T) {
		cidr := pfx("198.19.0.0/26")
		b := datastore.Block{CIDR: cidr, Affinity: datastore.AffinityForNode("host1"),
			Allocations: []datastore.Allocation{{IP: addr("198.19.0.1"), Handle: "h1"}}}
		if _, err := c.Blocks().Create(ctx, datastore.BlockKeyName(cidr), b); err != nil {
			t.Fatal(err)
		}
		check(t, p+"ipam/blocks/198.19.0.0-26")
		if _, err := c.Blocks().Create(ctx, "198.19.0.64-26", b); !errors.Is(err, datastore.ErrInvalid) {
			t.Fatalf("Create of a block under another CIDR's name = %v, want ErrInvalid", err)
		}
	})
	t.Run("handle", func(t *testing.T) {
		if _, err := c.Handles().Create(ctx, "h1", datastore.Handle{Node: "host1", IPs: []netip.Addr{addr("198.19.0.1")}}); err != nil {
			t.Fatal(err)
		}
		check(t, p+"ipam/handles/h1")
	})
	t.Run("workloads", func(t *testing.T) {
		if _, err := c.Workloads("host1").Create(ctx, "w1", testWorkload("", "", "198.19.0.1")); err != nil {
			t.Fatal(err)
		}
		check(t, p+"workloads/host1/w1")
		if _, err := c.AllWorkloads().Create(ctx, "host2/w2", testWorkload("host2", "w2", "198.19.0.65")); err != nil {
			t.Fatal(err)
		}
		check(t, p+"workloads/host2/w2")
		if _, err := c.Workloads("host1").Create(ctx, "w3", testWorkload("host2", "w3", "198.19.0.2")); !errors.Is(err, datastore.ErrInvalid) {
			t.Fatalf("Create of another node's workload = %v, want ErrInvalid", err)
		}
		all, _, err := c.AllWorkloads().List(ctx)
		if err != nil || len(all) != 2 || all[0].Name != "host1/w1" || all[1].Name != "host2/w2" {
			t.Fatalf("AllWorkloads().List = %+v, %v; want host1/w1 and host2/w2", all, err)
		}
		one, _, err := c.Workloads("host2").List(ctx)
		if err != nil || len(one) != 1 || one[0].Name != "w2" || one[0].Value.Node != "host2" {
			t.Fatalf("Workloads(host2).List = %+v, %v; want w2", one, err)
		}
		if _, _, err := c.Workloads("a/b").List(ctx); !errors.Is(err, datastore.ErrInvalid) {
			t.Fatalf("Workloads(\"a/b\").List = %v, want ErrInvalid", err)
		}
	})
	t.Run("dockernetworks", func(t *testing.T) {
		s := c.DockerNetworks("host1")
		if _, err := s.Create(ctx, "5a6f2f4e0d7c", datastore.DockerNetwork{Name: "net1"}); err != nil {
			t.Fatal(err)
		}
		check(t, p+"docker/networks/host1/5a6f2f4e0d7c")
		got, err := s.Get(ctx, "5a6f2f4e0d7c")
		if err != nil || got.Value != (datastore.DockerNetwork{Version: 1, Node: "host1", ID: "5a6f2f4e0d7c", Name: "net1"}) {
			t.Fatalf("Get = %+v, %v; want net1 of host1", got, err)
		}
		for _, bad := range []datastore.DockerNetwork{{Name: ""}, {Name: "a/b"}, {Node: "host2", Name: "net1"}} {
			if _, err := s.Put(ctx, "5a6f2f4e0d7d", bad); !errors.Is(err, datastore.ErrInvalid) {
				t.Errorf("Put %+v = %v, want ErrInvalid", bad, err)
			}
		}
		if _, _, err := c.DockerNetworks("a/b").List(ctx); !errors.Is(err, datastore.ErrInvalid) {
			t.Fatalf("DockerNetworks(\"a/b\").List = %v, want ErrInvalid", err)
		}
	})
}

// TestWriteRefusesInvalid checks that nothing is written for an invalid name or value.
func TestWriteRefusesInvalid(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := datastoretest.New(t)
	pools := c.Pools()
	tests := []struct {
		name string
		key  string
		v    datastore.Pool
		want string
	}{
		{"empty name", "", testPool("", "198.19.0.0/16"), "name: empty"},
		{"slash", "a/b", testPool("", "198.19.0.0/16"), "not allowed"},
		{"dotdot", "..", testPool("", "198.19.0.0/16"), `".."`},
		{"name mismatch", "p1", testPool("p2", "198.19.0.0/16"), `name "p2" does not match key name "p1"`},
		{"block size", "p1", datastore.Pool{CIDR: pfx("198.19.0.0/16"), BlockSize: 40}, "blockSize 40 outside 20..32"},
		{"version", "p1", datastore.Pool{Version: 7, CIDR: pfx("198.19.0.0/16")}, "version 7, want 1"},
		{"no cidr", "p1", datastore.Pool{}, "cidr is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for op, write := range map[string]func() error{
				"create": func() error { _, err := pools.Create(ctx, tt.key, tt.v); return err },
				"put":    func() error { _, err := pools.Put(ctx, tt.key, tt.v); return err },
				"update": func() error { _, err := pools.Update(ctx, tt.key, tt.v, 1); return err },
			} {
				err := write()
				if !errors.Is(err, datastore.ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("%s: %v, want ErrInvalid mentioning %q", op, err, tt.want)
				}
			}
		})
	}
	resp, err := c.Raw().Get(ctx, c.Prefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("keys under the prefix after refused writes: %v, %v; want none", resp, err)
	}
}

// TestBlockCAS has many goroutines allocate from one block, each by read, modify and
// compare-and-swap, and checks that no address is handed out twice.
func TestBlockCAS(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := datastoretest.New(t)
	blocks := c.Blocks()
	cidr := pfx("198.19.0.0/26")
	name := datastore.BlockKeyName(cidr)
	if _, err := blocks.Create(ctx, name, datastore.Block{CIDR: cidr, Affinity: "host:host1"}); err != nil {
		t.Fatal(err)
	}

	const workers, each = 8, 5
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		got       = map[netip.Addr]string{}
		conflicts int
	)
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				handle := fmt.Sprintf("w%d-%d", w, i)
				for {
					it, err := blocks.Get(ctx, name)
					if err != nil {
						t.Error(err)
						return
					}
					b := it.Value
					ip := cidr.Addr().Next() // skip the network address
					for used := usedIPs(b); used[ip]; ip = ip.Next() {
					}
					b.Allocations = append(b.Allocations, datastore.Allocation{IP: ip, Handle: handle})
					b.Seq++
					_, err = blocks.Update(ctx, name, b, it.ModRevision)
					if errors.Is(err, datastore.ErrConflict) {
						mu.Lock()
						conflicts++
						mu.Unlock()
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					if prev, dup := got[ip]; dup {
						t.Errorf("%s handed out to %s and %s", ip, prev, handle)
					}
					got[ip] = handle
					mu.Unlock()
					break
				}
			}
		})
	}
	wg.Wait()
	final, err := blocks.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if len(final.Value.Allocations) != workers*each || len(got) != workers*each || final.Value.Seq != workers*each {
		t.Fatalf("block has %d allocations (seq %d), workers got %d; want %d", len(final.Value.Allocations), final.Value.Seq, len(got), workers*each)
	}
	t.Logf("%d allocations, %d compare-and-swap conflicts retried", len(got), conflicts)
}

func usedIPs(b datastore.Block) map[netip.Addr]bool {
	m := make(map[netip.Addr]bool, len(b.Allocations))
	for _, a := range b.Allocations {
		m[a.IP] = true
	}
	return m
}

// TestMalformed writes broken values behind the store's back and checks that List skips and
// counts them, Get reports them, and a fix through the store works.
func TestMalformed(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := prometheus.NewRegistry()
	c := datastoretest.New(t, datastore.WithRegisterer(reg))
	p := c.Prefix()
	raw := func(key, value string) {
		t.Helper()
		if _, err := c.Raw().Put(ctx, p+key, value); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Pools().Create(ctx, "good", testPool("good", "198.19.0.0/16")); err != nil {
		t.Fatal(err)
	}
	raw("config/pools/badjson", `{"version":1,"cidr":`)
	raw("config/pools/notjson", "\x00\xff")
	raw("config/pools/v2", `{"version":2,"name":"v2","cidr":"198.19.0.0/16"}`)
	raw("config/pools/noversion", `{"name":"noversion","cidr":"198.19.0.0/16"}`)
	raw("config/pools/invalid", `{"version":1,"name":"invalid","cidr":"198.19.0.0/16","blockSize":99}`)
	raw("config/pools/mismatch", `{"version":1,"name":"other","cidr":"198.19.0.0/16"}`)
	raw("config/pools/a/b", `{"version":1,"name":"b","cidr":"198.19.0.0/16"}`)
	raw("config/pools/..", `{"version":1,"cidr":"198.19.0.0/16"}`)
	raw("config/pools/", `{"version":1,"cidr":"198.19.0.0/16"}`)
	raw("ipam/blocks/198.19.0.1-26", `{"version":1,"cidr":"198.19.0.0/26"}`)
	raw("ipam/blocks/198.19.0.0-26", `{"version":1,"cidr":"198.19.0.0/26","allocations":[{"ip":"198.19.1.1","handle":"h"}]}`)
	raw("workloads/host1/w1", `{"version":1,"name":"x","ifName":"eth0","mac":"02:00:00:00:00:01"}`)
	raw("workloads/host1", `{"version":1}`)

	items, _, err := c.Pools().List(ctx)
	if err != nil || len(items) != 1 || items[0].Name != "good" {
		t.Fatalf("Pools().List = %+v, %v; want only the good pool", items, err)
	}
	if blocks, _, err := c.Blocks().List(ctx); err != nil || len(blocks) != 0 {
		t.Fatalf("Blocks().List = %+v, %v; want none", blocks, err)
	}
	if wls, _, err := c.AllWorkloads().List(ctx); err != nil || len(wls) != 0 {
		t.Fatalf("AllWorkloads().List = %+v, %v; want none", wls, err)
	}
	// Listing again does not count the same values twice.
	if _, _, err := c.Pools().List(ctx); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP margay_datastore_malformed_values_total Stored values skipped because they do not decode, have another version or fail validation; each value (key and revision) counts once.
# TYPE margay_datastore_malformed_values_total counter
margay_datastore_malformed_values_total{kind="bgpconfig"} 0
margay_datastore_malformed_values_total{kind="bgppeer"} 0
margay_datastore_malformed_values_total{kind="block"} 2
margay_datastore_malformed_values_total{kind="handle"} 0
margay_datastore_malformed_values_total{kind="node"} 0
margay_datastore_malformed_values_total{kind="policy"} 0
margay_datastore_malformed_values_total{kind="pool"} 9
margay_datastore_malformed_values_total{kind="profile"} 0
margay_datastore_malformed_values_total{kind="tier"} 0
margay_datastore_malformed_values_total{kind="workload"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "margay_datastore_malformed_values_total"); err != nil {
		t.Fatal(err)
	}

	// Get names the problem and still gives the revision, so the value can be repaired by CAS.
	it, err := c.Pools().Get(ctx, "invalid")
	if !errors.Is(err, datastore.ErrMalformed) || !strings.Contains(err.Error(), "blockSize 99") || it.ModRevision == 0 {
		t.Fatalf("Get of a malformed pool = %+v, %v; want ErrMalformed about blockSize and a revision", it, err)
	}
	if _, err := c.Pools().Update(ctx, "invalid", testPool("invalid", "198.19.0.0/16"), it.ModRevision); err != nil {
		t.Fatalf("repair by Update: %v", err)
	}
	if items, _, _ := c.Pools().List(ctx); len(items) != 2 {
		t.Fatalf("after repair List = %+v, want 2 pools", items)
	}
}
