package ipam

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
)

func newIPAM(t *testing.T, pools ...datastore.Pool) (*IPAM, *datastore.Client) {
	t.Helper()
	ds := datastoretest.New(t)
	// The nodes the tests use; IPAM serves registered nodes only (TestUnregisteredNode).
	datastoretest.RegisterNodes(t, ds, "vm100", "vm101", "vm102", "vm103", "n")
	for _, p := range pools {
		if _, err := ds.Pools().Create(context.Background(), p.Name, p); err != nil {
			t.Fatal(err)
		}
	}
	return New(ds, WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))), ds
}

func pool(name, cidr string, blockSize int) datastore.Pool {
	return datastore.Pool{Version: datastore.CurrentVersion, Name: name, CIDR: netip.MustParsePrefix(cidr), BlockSize: blockSize}
}

func assign(t *testing.T, i *IPAM, handle, node string) Assignment {
	t.Helper()
	a, err := i.Assign(context.Background(), Request{Handle: handle, Node: node, Workload: node + "/" + handle})
	if err != nil {
		t.Fatalf("assign %s on %s: %v", handle, node, err)
	}
	return a
}

// noProblems checks IPAM's own consistency: these tests write handles without workload records.
func noProblems(t *testing.T, i *IPAM) {
	t.Helper()
	ps, err := i.Check(context.Background())
	ps = slices.DeleteFunc(ps, func(p Problem) bool { return p.Records })
	if err != nil || len(ps) != 0 {
		t.Errorf("check: %v %+v", err, ps)
	}
}

func TestAssignAndRelease(t *testing.T) {
	i, ds := newIPAM(t, pool("test", "198.19.0.0/16", 26))
	ctx := context.Background()

	a1 := assign(t, i, "h1", "vm100")
	a2 := assign(t, i, "h2", "vm100")
	b1 := assign(t, i, "h3", "vm101")
	for _, tc := range []struct {
		got       Assignment
		ip, block string
	}{
		{a1, "198.19.0.0", "198.19.0.0/26"},
		{a2, "198.19.0.1", "198.19.0.0/26"},
		{b1, "198.19.0.64", "198.19.0.64/26"},
	} {
		if tc.got.IP != netip.MustParseAddr(tc.ip) || tc.got.Block != netip.MustParsePrefix(tc.block) || tc.got.Borrowed {
			t.Errorf("got %+v, want %s in %s", tc.got, tc.ip, tc.block)
		}
	}
	blk, err := ds.Blocks().Get(ctx, datastore.BlockKeyName(netip.MustParsePrefix("198.19.0.64/26")))
	if err != nil || blk.Value.Affinity != "host:vm101" {
		t.Errorf("block of vm101: %+v, %v", blk, err)
	}

	// A retried ADD gets the same address.
	if again := assign(t, i, "h1", "vm100"); again.IP != a1.IP {
		t.Errorf("same handle again: %v, want %v", again.IP, a1.IP)
	}
	h, err := ds.Handles().Get(ctx, "h1")
	if err != nil || len(h.Value.IPs) != 1 || h.Value.IPs[0] != a1.IP || h.Value.Workload != "vm100/h1" {
		t.Errorf("handle h1: %+v, %v", h, err)
	}
	noProblems(t, i)

	ips, err := i.ReleaseHandle(ctx, "h1")
	if err != nil || len(ips) != 1 || ips[0] != a1.IP {
		t.Fatalf("release h1: %v, %v", ips, err)
	}
	if _, err := ds.Handles().Get(ctx, "h1"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("handle h1 survived its release: %v", err)
	}
	// Idempotent, also for handles never seen.
	if ips, err := i.ReleaseHandle(ctx, "h1"); err != nil || len(ips) != 0 {
		t.Errorf("second release: %v, %v", ips, err)
	}
	if _, err := i.ReleaseHandle(ctx, "never"); err != nil {
		t.Errorf("release of an unknown handle: %v", err)
	}
	// The lowest free address is handed out next.
	if a := assign(t, i, "h4", "vm100"); a.IP != a1.IP {
		t.Errorf("after release got %v, want %v again", a.IP, a1.IP)
	}
	noProblems(t, i)

	holder, err := i.ReleaseIP(ctx, a2.IP)
	if err != nil || holder != "h2" {
		t.Errorf("release ip: %q, %v", holder, err)
	}
	if _, err := i.ReleaseIP(ctx, a2.IP); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("releasing a free address: %v, want ErrNotFound", err)
	}
	noProblems(t, i)

	// The same handle from another node must not get vm100's address.
	if _, err := i.Assign(ctx, Request{Handle: "h4", Node: "vm101", Workload: "vm101/h4"}); !errors.Is(err, ErrHandleInUse) {
		t.Errorf("assign of vm100's handle on vm101: %v, want ErrHandleInUse", err)
	}
	if _, err := i.Assign(ctx, Request{Handle: "bad/handle", Node: "vm100"}); err == nil {
		t.Error("assign accepted a handle with a slash")
	}
}

// A host borrows from another host's block only when no pool has a free block left, and the pool
// running dry is a clear error.
func TestBorrowAndExhaustion(t *testing.T) {
	// Two blocks of four addresses.
	i, _ := newIPAM(t, pool("tiny", "198.19.0.0/29", 30))
	a := assign(t, i, "a1", "vm100")
	b := assign(t, i, "b1", "vm101")
	if a.Block == b.Block || a.Borrowed || b.Borrowed {
		t.Fatalf("two hosts share a block: %+v %+v", a, b)
	}
	c := assign(t, i, "c1", "vm102")
	if !c.Borrowed || c.Block != a.Block {
		t.Fatalf("third host: %+v, want an address borrowed from %v", c, a.Block)
	}
	// Use up the remaining five addresses.
	for n := range 5 {
		assign(t, i, fmt.Sprintf("x%d", n), "vm100")
	}
	_, err := i.Assign(context.Background(), Request{Handle: "late", Node: "vm103"})
	if !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("assign from a full pool: %v, want ErrPoolExhausted", err)
	}
	// The failed ADD leaves no handle behind.
	if _, err := i.ds.Handles().Get(context.Background(), "late"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("failed assign left its handle: %v", err)
	}
	noProblems(t, i)
}

func TestPoolsDisabledAndMissing(t *testing.T) {
	p := pool("off", "198.19.0.0/24", 26)
	p.Disabled = true
	i, ds := newIPAM(t, p)
	if _, err := i.Assign(context.Background(), Request{Handle: "h", Node: "n"}); !errors.Is(err, ErrNoPool) {
		t.Fatalf("assign with only a disabled pool: %v, want ErrNoPool", err)
	}
	if _, err := ds.Pools().Put(context.Background(), "on", pool("on", "198.19.1.0/24", 26)); err != nil {
		t.Fatal(err)
	}
	if a := assign(t, i, "h", "n"); a.Block != netip.MustParsePrefix("198.19.1.0/26") {
		t.Errorf("got %+v, want the enabled pool", a)
	}
}

// A malformed block in etcd is skipped, never fatal: allocation goes on around it.
func TestMalformedBlockIsSkipped(t *testing.T) {
	i, ds := newIPAM(t, pool("test", "198.19.0.0/24", 26))
	ctx := context.Background()
	if _, err := ds.Raw().Put(ctx, ds.Blocks().Key("198.19.0.0-26"), `{"version":1,"cidr":"not a cidr"`); err != nil {
		t.Fatal(err)
	}
	a := assign(t, i, "h", "vm100")
	if a.Block != netip.MustParsePrefix("198.19.0.64/26") {
		t.Errorf("got %+v, want the block after the malformed one", a)
	}
}

// sharedEtcd starts an etcd for several clients (as several hosts are) with pool p and the
// nodes registered; it returns the clients' config and a client for the test's own reads.
func sharedEtcd(t *testing.T, p datastore.Pool, nodes ...string) (datastore.Config, *datastore.Client) {
	t.Helper()
	cfg := datastore.Config{Endpoints: datastoretest.Start(t).Endpoints()}
	setup := datastoretest.Connect(t, cfg)
	if _, err := setup.Pools().Create(context.Background(), p.Name, p); err != nil {
		t.Fatal(err)
	}
	datastoretest.RegisterNodes(t, setup, nodes...)
	return cfg, setup
}

// Many hosts allocating at once against one etcd never get the same address.
func TestConcurrentAssignUnique(t *testing.T) {
	// 16 blocks of 16: 256 addresses for 256 requests.
	cfg, setup := sharedEtcd(t, pool("test", "198.19.0.0/24", 28), "vm100", "vm101", "vm102", "vm103")
	const hosts, workers, perWorker = 4, 4, 16
	var (
		mu   sync.Mutex
		seen = map[netip.Addr]string{}
		wg   sync.WaitGroup
		errs = make(chan error, hosts*workers)
	)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for h := range hosts {
		node := fmt.Sprintf("vm%d", 100+h)
		hds := datastoretest.Connect(t, cfg, datastore.WithLogger(quiet))
		i := New(hds, WithLogger(quiet))
		if h%2 == 0 {
			// Half the hosts assign from a watch-fed copy of the blocks, as an agent does.
			blocks := NewBlocks()
			go func() { _ = blocks.Follow(t.Context(), hds) }()
			i = New(hds, WithLogger(quiet), WithBlocks(blocks))
		}
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := range perWorker {
					handle := fmt.Sprintf("%s-w%d-%d", node, w, n)
					a, err := i.Assign(context.Background(), Request{Handle: handle, Node: node})
					if err != nil {
						errs <- fmt.Errorf("%s: %w", handle, err)
						return
					}
					mu.Lock()
					if prev, dup := seen[a.IP]; dup {
						errs <- fmt.Errorf("%v handed to %s and %s", a.IP, prev, handle)
					}
					seen[a.IP] = handle
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(seen) != hosts*workers*perWorker {
		t.Errorf("%d distinct addresses, want %d", len(seen), hosts*workers*perWorker)
	}
	i := New(setup, WithLogger(quiet))
	if _, err := i.Assign(context.Background(), Request{Handle: "one-more", Node: "vm100"}); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("257th address: %v, want ErrPoolExhausted", err)
	}
	noProblems(t, i)
}

// Concurrent ADDs of one workload (a runtime's retry racing the first try) get one address: the
// allocation and the handle are written in one transaction, so the loser finds the winner's
// address instead of allocating a second one.
func TestConcurrentAssignSameHandle(t *testing.T) {
	cfg, setup := sharedEtcd(t, pool("test", "198.19.0.0/24", 26), "vm100")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for round := range 20 {
		handle := fmt.Sprint("w", round)
		const racers = 6
		got := make([]netip.Addr, racers)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for r := range racers {
			i := New(datastoretest.Connect(t, cfg, datastore.WithLogger(quiet)), WithLogger(quiet))
			wg.Go(func() {
				<-start
				a, err := i.Assign(context.Background(), Request{Handle: handle, Node: "vm100", Workload: "vm100/" + handle})
				if err != nil {
					t.Errorf("%s: %v", handle, err)
				}
				got[r] = a.IP
			})
		}
		close(start)
		wg.Wait()
		for _, ip := range got[1:] {
			if ip != got[0] {
				t.Fatalf("round %d: one workload got %v", round, got)
			}
		}
		h, err := setup.Handles().Get(context.Background(), handle)
		if err != nil || len(h.Value.IPs) != 1 {
			t.Fatalf("round %d: handle %+v, %v; want one address", round, h.Value, err)
		}
	}
	blocks, _, err := setup.Blocks().List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, b := range blocks {
		n += len(b.Value.Allocations)
	}
	if n != 20 {
		t.Errorf("%d allocations for 20 workloads", n)
	}
	noProblems(t, New(setup, WithLogger(quiet)))
}

func TestReleaseEmptyBlocksAndGC(t *testing.T) {
	i, ds := newIPAM(t, pool("test", "198.19.0.0/24", 30))
	ctx := context.Background()
	var handles []string
	for n := range 9 { // three blocks of four
		handles = append(handles, fmt.Sprintf("h%d", n))
		assign(t, i, handles[n], "vm100")
	}
	for _, h := range handles {
		if _, err := i.ReleaseHandle(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	released, err := i.ReleaseEmptyBlocks(ctx, "vm100", 1)
	if err != nil || len(released) != 2 {
		t.Fatalf("released %v, %v; want two of three empty blocks", released, err)
	}
	usage, _ := i.Usage(ctx)
	if len(usage) != 1 || usage[0].CIDR != netip.MustParsePrefix("198.19.0.0/30") || usage[0].Capacity != 4 {
		t.Errorf("usage after release: %+v", usage)
	}

	live := assign(t, i, "live", "vm100")
	dead := assign(t, i, "dead", "vm100")
	// An allocation whose handle vanished out of band.
	orphan := assign(t, i, "orphan", "vm100")
	if err := ds.Handles().Delete(ctx, "orphan", 0); err != nil {
		t.Fatal(err)
	}
	// An allocation without handle that a workload record still lists stays.
	kept := assign(t, i, "kept", "vm100")
	if err := ds.Handles().Delete(ctx, "kept", 0); err != nil {
		t.Fatal(err)
	}
	// A workload whose record is not written yet at the first look (an ADD in flight), and one
	// of another node, which vm100's collector leaves to that node's.
	late := assign(t, i, "late", "vm100")
	other := assign(t, i, "other", "vm101")
	rec := func(ip netip.Addr) datastore.Workload {
		return datastore.Workload{IPv4: []netip.Prefix{netip.PrefixFrom(ip, 32)}}
	}
	records := map[string]datastore.Workload{"vm100/live": rec(live.IP), "vm100/keeper": rec(kept.IP)}
	col := i.Collector("vm100")
	freed, err := col.Run(ctx, records)
	if err != nil {
		t.Fatal(err)
	}
	// The first look frees the allocation without a handle; dead and late are suspects.
	if len(freed) != 1 || freed[0] != orphan.IP || col.Suspects() != 2 {
		t.Errorf("first look freed %v with %d suspects, want %v and 2 (dead, late)", freed, col.Suspects(), orphan.IP)
	}
	records["vm100/late"] = rec(late.IP)
	if freed, err = col.Run(ctx, records); err != nil {
		t.Fatal(err)
	}
	if len(freed) != 1 || freed[0] != dead.IP || col.Suspects() != 0 {
		t.Errorf("second look freed %v with %d suspects, want %v and none", freed, col.Suspects(), dead.IP)
	}
	// Every node's collector takes vm101's workload too, at its second look.
	all := i.Collector("")
	for look, want := range [][]netip.Addr{nil, {other.IP}} {
		freed, err := all.Run(ctx, records)
		if err != nil || !slices.Equal(freed, want) {
			t.Errorf("every node's collector, look %d: freed %v, %v; want %v", look, freed, err, want)
		}
	}
	if again := assign(t, i, "live", "vm100"); again.IP != live.IP {
		t.Errorf("gc touched the live workload: %v", again)
	}
	// The allocation kept for the workload that lost its handle is still there, now freed by hand.
	if holder, err := i.ReleaseIP(ctx, kept.IP); err != nil || holder != "kept" {
		t.Errorf("allocation of %v: holder %q, %v; want it kept for handle kept", kept.IP, holder, err)
	}
	noProblems(t, i)
}

// A handle without a workload key (Docker's RequestAddress, before CreateEndpoint keys it) is
// freed when it stayed so, unchanged, from one collection to the next and no record uses its
// address; one keyed meanwhile, one a record uses and another node's (for a node's collector)
// are kept.
func TestCollectUnkeyed(t *testing.T) {
	i, ds := newIPAM(t, pool("test", "198.19.0.0/24", 28))
	ctx := context.Background()
	unkeyed := func(handle, node string) Assignment {
		t.Helper()
		a, err := i.Assign(ctx, Request{Handle: handle, Node: node})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	leaked, used, other, keyed := unkeyed("docker-a", "vm100"), unkeyed("docker-b", "vm100"), unkeyed("docker-c", "vm101"), unkeyed("docker-d", "vm100")
	records := map[string]datastore.Workload{"vm100/crashed": {IPv4: []netip.Prefix{netip.PrefixFrom(used.IP, 32)}}}
	col := i.Collector("vm100")
	if freed, err := col.Run(ctx, records); err != nil || len(freed) != 0 || col.Suspects() != 2 {
		t.Fatalf("first look freed %v, %v with %d suspects; want nothing, and docker-a and docker-d suspected", freed, err, col.Suspects())
	}
	h, err := ds.Handles().Get(ctx, "docker-d")
	if err != nil {
		t.Fatal(err)
	}
	h.Value.Workload = "vm100/d"
	if _, err := ds.Handles().Update(ctx, "docker-d", h.Value, h.ModRevision); err != nil {
		t.Fatal(err)
	}
	records["vm100/d"] = datastore.Workload{IPv4: []netip.Prefix{netip.PrefixFrom(keyed.IP, 32)}}
	if freed, err := col.Run(ctx, records); err != nil || !slices.Equal(freed, []netip.Addr{leaked.IP}) {
		t.Fatalf("second look freed %v, %v; want %v", freed, err, leaked.IP)
	}
	for _, a := range []Assignment{used, other, keyed} {
		if loc, err := i.Locate(ctx, a.IP); err != nil || loc.Handle == "" {
			t.Errorf("%v freed: %+v, %v", a.IP, loc, err)
		}
	}
	if _, err := ds.Handles().Get(ctx, "docker-a"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("handle docker-a after its collection: %v", err)
	}
	// A handle that changed after it was read keeps its addresses.
	stale, err := ds.Handles().Get(ctx, "docker-c")
	if err != nil {
		t.Fatal(err)
	}
	stale.ModRevision--
	if freed, err := i.releaseHandleAt(ctx, stale); err != nil || len(freed) != 0 {
		t.Errorf("release at a stale revision freed %v, %v", freed, err)
	}
	// Every node's collector takes vm101's at its second look.
	all := i.Collector("")
	for look, want := range [][]netip.Addr{nil, {other.IP}} {
		if freed, err := all.Run(ctx, records); err != nil || !slices.Equal(freed, want) {
			t.Errorf("every node's collector, look %d: freed %v, %v; want %v", look, freed, err, want)
		}
	}
}

func TestEnsureDefaultPool(t *testing.T) {
	i, ds := newIPAM(t)
	created, err := i.EnsureDefaultPool(context.Background(), datastore.DefaultPool())
	if err != nil || !created {
		t.Fatalf("first ensure: %v %v", created, err)
	}
	if created, _ := i.EnsureDefaultPool(context.Background(), datastore.DefaultPool()); created {
		t.Error("second ensure created again")
	}
	ps, _, _ := ds.Pools().List(context.Background())
	if len(ps) != 1 || ps[0].Value.CIDR != netip.MustParsePrefix("192.168.0.0/16") {
		t.Errorf("pools: %+v", ps)
	}
}

// The default pool is not created over a registered node's uplink subnet (192.168.0.0/16, the
// default, on a host at 192.168.26.100/24): the agent fails naming the node instead.
func TestEnsureDefaultPoolOverUplink(t *testing.T) {
	i, ds := newIPAM(t)
	ctx := context.Background()
	if _, err := ds.Nodes().Create(ctx, "vm9", datastore.Node{Version: datastore.CurrentVersion, Name: "vm9",
		AddressV4: netip.MustParsePrefix("192.168.26.100/24"), Uplink: "ens32"}); err != nil {
		t.Fatal(err)
	}
	created, err := i.EnsureDefaultPool(ctx, datastore.DefaultPool())
	if created || !errors.Is(err, ErrPoolOverlapsUplink) ||
		!strings.Contains(err.Error(), "192.168.0.0/16 overlaps the uplink subnet 192.168.26.0/24 of node vm9 (address 192.168.26.100/24)") {
		t.Errorf("default pool over vm9's subnet: created %v, %v; want ErrPoolOverlapsUplink naming vm9", created, err)
	}
	if ps, _, err := ds.Pools().List(ctx); err != nil || len(ps) != 0 {
		t.Errorf("pools after the refusal: %+v, %v; want none", ps, err)
	}
	p := datastore.DefaultPool()
	p.CIDR = netip.MustParsePrefix("198.19.0.0/16")
	if created, err := i.EnsureDefaultPool(ctx, p); err != nil || !created {
		t.Errorf("default pool outside every node's subnet: %v %v", created, err)
	}
}

func TestEnsureBlock(t *testing.T) {
	i, _ := newIPAM(t, pool("test", "198.19.0.0/25", 26))
	ctx := context.Background()
	for _, tc := range []struct {
		node, want string
	}{{"vm100", "198.19.0.0/26"}, {"vm100", "198.19.0.0/26"}, {"vm101", "198.19.0.64/26"}} {
		got, err := i.EnsureBlock(ctx, tc.node)
		if err != nil || len(got) != 1 || got[0] != netip.MustParsePrefix(tc.want) {
			t.Errorf("EnsureBlock(%s) = %v, %v; want [%s]", tc.node, got, err, tc.want)
		}
	}
	if _, err := i.EnsureBlock(ctx, "vm102"); !errors.Is(err, ErrPoolExhausted) {
		t.Errorf("EnsureBlock with every block taken: %v, want ErrPoolExhausted", err)
	}
}

// IPAM gives a node that is not registered neither a block nor an address, and says which node;
// Check reports blocks affine to unregistered nodes and pools over a node's uplink subnet.
func TestUnregisteredNode(t *testing.T) {
	i, ds := newIPAM(t, pool("test", "198.19.0.0/16", 26))
	ctx := context.Background()
	if _, err := i.Assign(ctx, Request{Handle: "h", Node: "nosuchnode", Workload: "nosuchnode/h"}); !errors.Is(err, ErrNodeNotRegistered) ||
		!strings.Contains(err.Error(), `node "nosuchnode" is not registered`) {
		t.Errorf("assign on an unregistered node: %v, want ErrNodeNotRegistered naming it", err)
	}
	if _, err := i.EnsureBlock(ctx, "nosuchnode"); !errors.Is(err, ErrNodeNotRegistered) {
		t.Errorf("ensure block of an unregistered node: %v, want ErrNodeNotRegistered", err)
	}
	blocks, _, err := ds.Blocks().List(ctx)
	if err != nil || len(blocks) != 0 {
		t.Errorf("blocks after refusals: %+v, %v; want none", blocks, err)
	}
	if _, err := ds.Handles().Get(ctx, "h"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("handle after a refused assign: %v, want not found", err)
	}
	noProblems(t, i)

	// What an earlier version left: a block of a node nobody registered; and a pool over the
	// hosts' own subnet (198.18.0.0/24 of the registered nodes).
	leaked := netip.MustParsePrefix("198.19.1.0/26")
	if _, err := ds.Blocks().Create(ctx, datastore.BlockKeyName(leaked), datastore.Block{Version: datastore.CurrentVersion,
		CIDR: leaked, Affinity: datastore.AffinityForNode("nosuchnode")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Pools().Create(ctx, "uplinks", pool("uplinks", "198.18.0.0/16", 26)); err != nil {
		t.Fatal(err)
	}
	ps, err := i.Check(ctx)
	var got []string
	for _, p := range ps {
		got = append(got, p.What)
	}
	want := []string{"block 198.19.1.0/26 is affine to node nosuchnode, which is not registered (0 of its addresses allocated)"}
	for _, n := range []string{"n", "vm100", "vm101", "vm102", "vm103"} {
		want = append(want, "pool uplinks (198.18.0.0/16) overlaps the uplink subnet 198.18.0.0/24 of node "+n)
	}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("check = %q, %v\nwant %q", got, err, want)
	}
}
