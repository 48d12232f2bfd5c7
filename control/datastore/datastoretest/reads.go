package datastoretest

import (
	"context"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/margaynet/margay/control/datastore"
)

// Reads watches the reads a Client sends to etcd: it counts the reads of single keys (a Get,
// a GetRead of a Fetch; not the Lists) and can put another writer right after one. It sees
// what reaches etcd, whichever function of the datastore sent it.
type Reads struct {
	mu    sync.Mutex
	gets  map[string]int
	hooks map[string]func() // run once, after the first request that read the key
}

// WatchReads makes c's reads go through a Reads, until cleanup. It replaces c's KV: call it while
// nothing else uses c.
func WatchReads(tb testing.TB, c *datastore.Client) *Reads {
	tb.Helper()
	r := &Reads{gets: map[string]int{}, hooks: map[string]func(){}}
	cli := c.Raw()
	kv := cli.KV
	cli.KV = &readsKV{KV: kv, r: r}
	tb.Cleanup(func() { cli.KV = kv })
	return r
}

// Gets returns how many times etcd answered a read of key (the full key: Store.Key) alone.
func (r *Reads) Gets(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets[key]
}

// Reset forgets the reads counted so far.
func (r *Reads) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.gets)
}

// OnceAfter runs fn once, after etcd answered the first request from now on that read key alone
// and before that answer returns to the caller: where a test puts another writer between a read
// and the write that depends on it. fn runs on the reader's goroutine; its own reads through the
// Client count, and do not run it again.
func (r *Reads) OnceAfter(key string, fn func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hooks[key] = fn
}

// answered counts the single-key reads of ops, which etcd answered, and runs the hooks they are
// due.
func (r *Reads) answered(ops []clientv3.Op) {
	var due []func()
	r.mu.Lock()
	for _, op := range ops {
		if !op.IsGet() || len(op.RangeBytes()) > 0 {
			continue
		}
		key := string(op.KeyBytes())
		r.gets[key]++
		if fn, ok := r.hooks[key]; ok {
			delete(r.hooks, key)
			due = append(due, fn)
		}
	}
	r.mu.Unlock()
	for _, fn := range due {
		fn()
	}
}

type readsKV struct {
	clientv3.KV
	r *Reads
}

func (kv *readsKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	resp, err := kv.KV.Get(ctx, key, opts...)
	if err == nil {
		kv.r.answered([]clientv3.Op{clientv3.OpGet(key, opts...)})
	}
	return resp, err
}

func (kv *readsKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	resp, err := kv.KV.Do(ctx, op)
	if err == nil {
		kv.r.answered([]clientv3.Op{op})
	}
	return resp, err
}

func (kv *readsKV) Txn(ctx context.Context) clientv3.Txn {
	return &readsTxn{Txn: kv.KV.Txn(ctx), r: kv.r}
}

// readsTxn is a transaction whose reads count once etcd answered them: those of the branch that
// ran (Then when the comparisons held, else Else).
type readsTxn struct {
	clientv3.Txn
	r               *Reads
	then, otherwise []clientv3.Op
}

func (t *readsTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }

func (t *readsTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.Txn, t.then = t.Txn.Then(ops...), append(t.then, ops...)
	return t
}

func (t *readsTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn, t.otherwise = t.Txn.Else(ops...), append(t.otherwise, ops...)
	return t
}

func (t *readsTxn) Commit() (*clientv3.TxnResponse, error) {
	resp, err := t.Txn.Commit()
	switch {
	case err != nil:
	case resp.Succeeded:
		t.r.answered(t.then)
	default:
		t.r.answered(t.otherwise)
	}
	return resp, err
}
