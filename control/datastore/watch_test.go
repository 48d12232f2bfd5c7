package datastore_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/datastore/etcdembed"
)

const eventTimeout = 10 * time.Second

// watcher runs Store.Watch in the background and hands its events over a channel.
type watcher[T any] struct {
	events chan datastore.Event[T]
	done   chan error
}

func startWatch[T any](t *testing.T, ctx context.Context, watch func(context.Context, func(datastore.Event[T])) error, hook func(datastore.Event[T])) *watcher[T] {
	t.Helper()
	w := &watcher[T]{events: make(chan datastore.Event[T], 100), done: make(chan error, 1)}
	go func() {
		w.done <- watch(ctx, func(ev datastore.Event[T]) {
			w.events <- ev
			if hook != nil {
				hook(ev)
			}
		})
	}()
	return w
}

func (w *watcher[T]) next(t *testing.T) datastore.Event[T] {
	t.Helper()
	select {
	case ev := <-w.events:
		return ev
	case err := <-w.done:
		t.Fatalf("watch ended: %v", err)
	case <-time.After(eventTimeout):
		t.Fatalf("no event within %s", eventTimeout)
	}
	panic("unreachable")
}

func names[T any](items []datastore.Item[T]) []string {
	var out []string
	for _, it := range items {
		out = append(out, it.Name)
	}
	return out
}

func TestWatchSnapshotThenEvents(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := prometheus.NewRegistry()
	c := datastoretest.New(t, datastore.WithRegisterer(reg))
	pools := c.Pools()
	for _, n := range []string{"a", "b"} {
		if _, err := pools.Create(ctx, n, testPool(n, "198.19.0.0/16")); err != nil {
			t.Fatal(err)
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	w := startWatch(t, wctx, pools.Watch, nil)

	snap := w.next(t)
	if snap.Type != datastore.EventSnapshot || !slices.Equal(names(snap.Items), []string{"a", "b"}) {
		t.Fatalf("first event = %+v, want a snapshot of a and b", snap)
	}
	rc, _ := pools.Create(ctx, "c", testPool("c", "198.19.0.0/17"))
	it, _ := pools.Get(ctx, "a")
	upd := it.Value
	upd.Disabled = true
	ra, _ := pools.Update(ctx, "a", upd, it.ModRevision)
	if err := pools.Delete(ctx, "b", 0); err != nil {
		t.Fatal(err)
	}
	// A malformed put arrives as a delete, so consumers drop what they held.
	if _, err := c.Raw().Put(ctx, pools.Key("c"), `{"version":1,"cidr":"bogus"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Raw().Put(ctx, pools.Key("x/y"), `{}`); err != nil { // no valid name: skipped
		t.Fatal(err)
	}
	if _, err := pools.Put(ctx, "d", testPool("d", "198.19.0.0/18")); err != nil {
		t.Fatal(err)
	}

	type step struct {
		typ  datastore.EventType
		name string
	}
	want := []step{{datastore.EventPut, "c"}, {datastore.EventPut, "a"}, {datastore.EventDelete, "b"}, {datastore.EventDelete, "c"}, {datastore.EventPut, "d"}}
	last := snap.Revision
	for i, s := range want {
		ev := w.next(t)
		if ev.Type != s.typ || ev.Name != s.name || ev.Revision <= last {
			t.Fatalf("event %d = %v %q at %d, want %v %q after revision %d", i, ev.Type, ev.Name, ev.Revision, s.typ, s.name, last)
		}
		last = ev.Revision
		switch s.name {
		case "c":
			if s.typ == datastore.EventPut && (ev.Item.ModRevision != rc || ev.Item.Value.CIDR != pfx("198.19.0.0/17")) {
				t.Fatalf("put c = %+v, want the created pool at %d", ev.Item, rc)
			}
		case "a":
			if !ev.Item.Value.Disabled || ev.Item.ModRevision != ra {
				t.Fatalf("put a = %+v, want the disabled pool at %d", ev.Item, ra)
			}
		}
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP margay_datastore_malformed_values_total Stored values skipped because they do not decode, have another version or fail validation; each value (key and revision) counts once.
# TYPE margay_datastore_malformed_values_total counter
margay_datastore_malformed_values_total{kind="bgpconfig"} 0
margay_datastore_malformed_values_total{kind="bgppeer"} 0
margay_datastore_malformed_values_total{kind="block"} 0
margay_datastore_malformed_values_total{kind="handle"} 0
margay_datastore_malformed_values_total{kind="node"} 0
margay_datastore_malformed_values_total{kind="policy"} 0
margay_datastore_malformed_values_total{kind="pool"} 2
margay_datastore_malformed_values_total{kind="profile"} 0
margay_datastore_malformed_values_total{kind="tier"} 0
margay_datastore_malformed_values_total{kind="workload"} 0
`), "margay_datastore_malformed_values_total"); err != nil {
		t.Fatal(err)
	}

	cancel()
	select {
	case err := <-w.done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Watch returned %v after cancel, want context.Canceled", err)
		}
	case <-time.After(eventTimeout):
		t.Fatal("Watch did not return after cancel")
	}
}

// TestWatchCompaction holds the watcher in its snapshot handler while the store moves on and
// the history is compacted; the watch must then start from a compacted revision, and Watch must
// deliver a fresh snapshot with the current contents instead of the lost events.
func TestWatchCompaction(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	reg := prometheus.NewRegistry()
	c := datastoretest.New(t, datastore.WithRegisterer(reg))
	pools := c.Pools()
	for _, n := range []string{"a", "b"} {
		if _, err := pools.Create(ctx, n, testPool(n, "198.19.0.0/16")); err != nil {
			t.Fatal(err)
		}
	}
	release := make(chan struct{})
	first := true
	w := startWatch(t, ctx, pools.Watch, func(datastore.Event[datastore.Pool]) {
		if first {
			first = false
			<-release
		}
	})
	snap := w.next(t)
	if snap.Type != datastore.EventSnapshot || len(snap.Items) != 2 {
		t.Fatalf("first event = %+v, want a snapshot of 2 pools", snap)
	}

	if err := pools.Delete(ctx, "a", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := pools.Create(ctx, "c", testPool("c", "198.19.0.0/16")); err != nil {
		t.Fatal(err)
	}
	rev, err := pools.Put(ctx, "b", testPool("b", "198.19.128.0/17"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Raw().Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	close(release)

	resync := w.next(t)
	if resync.Type != datastore.EventSnapshot || resync.Revision < rev || !slices.Equal(names(resync.Items), []string{"b", "c"}) {
		t.Fatalf("after compaction got %v %v at %d, want a snapshot of b and c at or after %d", resync.Type, names(resync.Items), resync.Revision, rev)
	}
	if resync.Items[0].Value.CIDR != pfx("198.19.128.0/17") {
		t.Fatalf("snapshot has b = %+v, want the updated pool", resync.Items[0])
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP margay_datastore_watch_resyncs_total Watches that had to list again and deliver a fresh snapshot, by reason (compacted, canceled, error).
# TYPE margay_datastore_watch_resyncs_total counter
margay_datastore_watch_resyncs_total{kind="pool",reason="compacted"} 1
`), "margay_datastore_watch_resyncs_total"); err != nil {
		t.Fatal(err)
	}
	// And the watch goes on from the new snapshot.
	if _, err := pools.Create(ctx, "d", testPool("d", "198.19.0.0/16")); err != nil {
		t.Fatal(err)
	}
	if ev := w.next(t); ev.Type != datastore.EventPut || ev.Name != "d" {
		t.Fatalf("event after resync = %v %q, want put d", ev.Type, ev.Name)
	}
}

// TestWatchWorkloads checks the two workload stores and the single-key BGP configuration.
func TestWatchWorkloads(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := datastoretest.New(t)
	if _, err := c.AllWorkloads().Create(ctx, "host1/w1", testWorkload("host1", "w1", "198.19.0.1")); err != nil {
		t.Fatal(err)
	}
	all := startWatch(t, ctx, c.AllWorkloads().Watch, nil)
	mine := startWatch(t, ctx, c.Workloads("host2").Watch, nil)
	bgp := startWatch(t, ctx, c.BGPConfig().Watch, nil)

	if ev := all.next(t); ev.Type != datastore.EventSnapshot || !slices.Equal(names(ev.Items), []string{"host1/w1"}) {
		t.Fatalf("all workloads snapshot = %+v", ev)
	}
	if ev := mine.next(t); ev.Type != datastore.EventSnapshot || len(ev.Items) != 0 {
		t.Fatalf("host2 workloads snapshot = %+v, want empty", ev)
	}
	if ev := bgp.next(t); ev.Type != datastore.EventSnapshot || len(ev.Items) != 0 {
		t.Fatalf("bgp snapshot = %+v, want empty", ev)
	}
	if _, err := c.Workloads("host2").Create(ctx, "w2", testWorkload("host2", "w2", "198.19.0.65")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.BGPConfig().Create(ctx, datastore.BGPConfig{ASN: 64600}); err != nil {
		t.Fatal(err)
	}
	if ev := all.next(t); ev.Type != datastore.EventPut || ev.Name != "host2/w2" {
		t.Fatalf("all workloads event = %v %q, want put host2/w2", ev.Type, ev.Name)
	}
	if ev := mine.next(t); ev.Type != datastore.EventPut || ev.Name != "w2" || ev.Item.Value.Node != "host2" {
		t.Fatalf("host2 workloads event = %v %q, want put w2", ev.Type, ev.Name)
	}
	if ev := bgp.next(t); ev.Type != datastore.EventPut || ev.Name != "bgp" || ev.Item.Value.ASN != 64600 {
		t.Fatalf("bgp event = %+v, want put of ASN 64600", ev)
	}

	// Closing the client ends every watch.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for _, done := range []chan error{all.done, mine.done, bgp.done} {
		select {
		case err := <-done:
			if !errors.Is(err, datastore.ErrClosed) {
				t.Fatalf("Watch returned %v after Close, want ErrClosed", err)
			}
		case <-time.After(eventTimeout):
			t.Fatal("Watch did not return after Close")
		}
	}
}

// TestWatchSurvivesRestart stops etcd under a live watch and starts it again on the same port
// and data; the consumer's state must converge to the store's.
func TestWatchSurvivesRestart(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	e, err := etcdembed.Start(ctx, dir, etcdembed.WithClientURL("http://127.0.0.1:0"), etcdembed.WithUnsafeNoFsync())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	c := datastoretest.Connect(t, datastore.Config{Endpoints: e.Endpoints()})
	pools := c.Pools()
	if _, err := pools.Create(ctx, "before", testPool("before", "198.19.0.0/16")); err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, ctx, pools.Watch, nil)
	state := map[string]datastore.Pool{}
	apply := func(ev datastore.Event[datastore.Pool]) {
		switch ev.Type {
		case datastore.EventSnapshot:
			clear(state)
			for _, it := range ev.Items {
				state[it.Name] = it.Value
			}
		case datastore.EventPut:
			state[ev.Name] = ev.Item.Value
		case datastore.EventDelete:
			delete(state, ev.Name)
		}
	}
	apply(w.next(t))

	e.Close()
	e2, err := etcdembed.Start(ctx, dir, etcdembed.WithClientURL(e.Endpoints()[0]), etcdembed.WithUnsafeNoFsync())
	if err != nil {
		t.Fatalf("restart etcd on %s: %v", e.Endpoints()[0], err)
	}
	t.Cleanup(e2.Close)

	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for {
		if _, err := pools.Put(wctx, "after", testPool("after", "198.19.0.0/16")); err == nil {
			break
		} else if wctx.Err() != nil {
			t.Fatalf("write after restart: %v", err)
		}
	}
	for want := []string{"after", "before"}; !slices.Equal(slices.Sorted(maps.Keys(state)), want); {
		apply(w.next(t))
	}
}
