package datastore

import (
	"context"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Item is one stored value with its name and the ModRevision to pass to Update and Delete.
type Item[T any] struct {
	Name        string
	Value       T
	ModRevision int64
}

// Store reads and writes the values of one kind under one key directory. Every write validates
// first and writes nothing when the value is invalid. A Store is a small value; copy it freely.
type Store[T any] struct {
	c     *Client
	kind  *kind[T]
	base  string // full key prefix, e.g. "/margay/v1/config/pools/"
	exact string // for a single-key store: its only name
	err   error  // set when the store cannot work (e.g. an invalid node name)
}

func newStore[T any](c *Client, k *kind[T], dir, exact string) Store[T] {
	return Store[T]{c: c, kind: k, base: c.prefix + dir, exact: exact}
}

// Kind returns the kind of value stored, as used in metric labels: "pool", "block", ….
func (s Store[T]) Kind() string { return s.kind.name }

// Key returns the etcd key of name.
func (s Store[T]) Key(name string) string { return s.base + name }

// nameOf returns the name of a key in this store, or an error for a key that is no valid name.
func (s Store[T]) nameOf(key string) (string, error) {
	name, ok := strings.CutPrefix(key, s.base)
	if !ok {
		return "", fmt.Errorf("key %q outside %q", key, s.base)
	}
	if err := s.kind.checkName(name); err != nil {
		return "", fmt.Errorf("key name: %w", err)
	}
	return name, nil
}

func (s Store[T]) errorf(op, name string, err error) error {
	return fmt.Errorf("datastore: %s %s %q: %w", op, s.kind.name, name, err)
}

func (s Store[T]) checkName(op, name string) error {
	if s.err != nil {
		return s.errorf(op, name, fmt.Errorf("%w: %w", ErrInvalid, s.err))
	}
	if err := s.kind.checkName(name); err != nil {
		return s.errorf(op, name, fmt.Errorf("%w name: %w", ErrInvalid, err))
	}
	return nil
}

func (s Store[T]) encode(op, name string, v T) ([]byte, error) {
	if err := s.checkName(op, name); err != nil {
		return nil, err
	}
	data, err := s.kind.encode(name, v)
	if err != nil {
		return nil, s.errorf(op, name, fmt.Errorf("%w value: %w", ErrInvalid, err))
	}
	return data, nil
}

// Get returns the value stored under name, ErrNotFound, or ErrMalformed; for a malformed value
// the returned Item still carries Name and ModRevision, so the caller can overwrite or delete it.
func (s Store[T]) Get(ctx context.Context, name string) (Item[T], error) {
	if err := s.checkName("get", name); err != nil {
		return Item[T]{}, err
	}
	resp, err := s.c.cli.Get(ctx, s.Key(name))
	if err != nil {
		return Item[T]{}, s.errorf("get", name, err)
	}
	return s.got(name, resp.Kvs)
}

// got is Get's answer from the key-value pairs etcd returned for name.
func (s Store[T]) got(name string, kvs []*mvccpb.KeyValue) (Item[T], error) {
	if len(kvs) == 0 {
		return Item[T]{}, s.errorf("get", name, ErrNotFound)
	}
	kv := kvs[0]
	v, err := s.kind.decode(name, kv.Value)
	if err != nil {
		return Item[T]{Name: name, ModRevision: kv.ModRevision}, s.errorf("get", name, fmt.Errorf("%w: %w", ErrMalformed, err))
	}
	return Item[T]{Name: name, Value: v, ModRevision: kv.ModRevision}, nil
}

// List returns every valid value of the store, sorted by key, and the etcd revision the list was
// read at (a consistent snapshot). Malformed values and keys are logged once, counted in
// margay_datastore_malformed_values_total and skipped.
func (s Store[T]) List(ctx context.Context) ([]Item[T], int64, error) {
	if s.err != nil {
		return nil, 0, s.listErr()
	}
	resp, err := s.c.cli.Get(ctx, s.listKey(), s.listOpts()...)
	if err != nil {
		return nil, 0, fmt.Errorf("datastore: list %s: %w", s.kind.name, err)
	}
	return s.listed(resp.Kvs), resp.Header.Revision, nil
}

func (s Store[T]) listErr() error {
	return fmt.Errorf("datastore: list %s: %w: %w", s.kind.name, ErrInvalid, s.err)
}

// listKey and listOpts select what List reads: the store's only key, or its directory.
func (s Store[T]) listKey() string { return s.Key(s.exact) }

func (s Store[T]) listOpts() []clientv3.OpOption {
	if s.exact == "" {
		return []clientv3.OpOption{clientv3.WithPrefix()}
	}
	return nil
}

// listed is List's answer from the key-value pairs etcd returned.
func (s Store[T]) listed(kvs []*mvccpb.KeyValue) []Item[T] {
	items := make([]Item[T], 0, len(kvs))
	for _, kv := range kvs {
		if it, ok := s.decodeKV(string(kv.Key), kv.Value, kv.ModRevision); ok {
			items = append(items, it)
		}
	}
	return items
}

// decodeKV decodes one key-value pair, or logs, counts and skips it. It returns the name whenever
// the key is a valid name, even if the value is malformed.
func (s Store[T]) decodeKV(key string, value []byte, modRev int64) (Item[T], bool) {
	name, err := s.nameOf(key)
	if err == nil {
		var v T
		if v, err = s.kind.decode(name, value); err == nil {
			return Item[T]{Name: name, Value: v, ModRevision: modRev}, true
		}
	}
	s.c.skipMalformed(s.kind.name, key, modRev, err)
	return Item[T]{Name: name}, false
}

// Create writes v under name if the key does not exist yet (ErrExists otherwise) and returns the
// new ModRevision.
func (s Store[T]) Create(ctx context.Context, name string, v T) (int64, error) {
	data, err := s.encode("create", name, v)
	if err != nil {
		return 0, err
	}
	key := s.Key(name)
	resp, err := s.c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(data))).
		Commit()
	if err != nil {
		return 0, s.errorf("create", name, err)
	}
	if !resp.Succeeded {
		return 0, s.errorf("create", name, ErrExists)
	}
	return resp.Header.Revision, nil
}

// Update replaces the value under name if its ModRevision is still modRev (compare-and-swap) and
// returns the new ModRevision. It fails with ErrConflict when the value changed since it was read
// and ErrNotFound when it is gone.
func (s Store[T]) Update(ctx context.Context, name string, v T, modRev int64) (int64, error) {
	data, err := s.encode("update", name, v)
	if err != nil {
		return 0, err
	}
	if modRev <= 0 {
		return 0, s.errorf("update", name, fmt.Errorf("%w modRevision %d: want the revision read", ErrInvalid, modRev))
	}
	key := s.Key(name)
	resp, err := s.c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpPut(key, string(data))).
		Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return 0, s.errorf("update", name, err)
	}
	if !resp.Succeeded {
		return 0, s.errorf("update", name, casFailure(resp))
	}
	return resp.Header.Revision, nil
}

// Put writes v under name unconditionally and returns the new ModRevision.
func (s Store[T]) Put(ctx context.Context, name string, v T) (int64, error) {
	data, err := s.encode("put", name, v)
	if err != nil {
		return 0, err
	}
	resp, err := s.c.cli.Put(ctx, s.Key(name), string(data))
	if err != nil {
		return 0, s.errorf("put", name, err)
	}
	return resp.Header.Revision, nil
}

// Delete removes name. With modRev 0 it deletes unconditionally; otherwise only if the
// ModRevision is still modRev (ErrConflict). It returns ErrNotFound if there was nothing to delete.
func (s Store[T]) Delete(ctx context.Context, name string, modRev int64) error {
	if err := s.checkName("delete", name); err != nil {
		return err
	}
	if modRev < 0 {
		return s.errorf("delete", name, fmt.Errorf("%w modRevision %d", ErrInvalid, modRev))
	}
	key := s.Key(name)
	if modRev == 0 {
		resp, err := s.c.cli.Delete(ctx, key)
		if err != nil {
			return s.errorf("delete", name, err)
		}
		if resp.Deleted == 0 {
			return s.errorf("delete", name, ErrNotFound)
		}
		return nil
	}
	resp, err := s.c.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpDelete(key)).
		Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return s.errorf("delete", name, err)
	}
	if !resp.Succeeded {
		return s.errorf("delete", name, casFailure(resp))
	}
	return nil
}

// casFailure tells a lost compare-and-swap on a key that moved from one on a key that is gone.
func casFailure(resp *clientv3.TxnResponse) error {
	if len(resp.Responses) == 1 {
		if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) == 0 {
			return ErrNotFound
		}
	}
	return ErrConflict
}

// Singleton is a store with a single key, such as config/bgp.
type Singleton[T any] struct{ s Store[T] }

// Name returns the name of the single key, as found in Items and Events.
func (s Singleton[T]) Name() string { return s.s.exact }

// Get returns the value, ErrNotFound or ErrMalformed (see Store.Get).
func (s Singleton[T]) Get(ctx context.Context) (Item[T], error) { return s.s.Get(ctx, s.s.exact) }

// Create writes v if the key does not exist (ErrExists otherwise).
func (s Singleton[T]) Create(ctx context.Context, v T) (int64, error) {
	return s.s.Create(ctx, s.s.exact, v)
}

// Update replaces the value if its ModRevision is still modRev (ErrConflict, ErrNotFound).
func (s Singleton[T]) Update(ctx context.Context, v T, modRev int64) (int64, error) {
	return s.s.Update(ctx, s.s.exact, v, modRev)
}

// Put writes v unconditionally.
func (s Singleton[T]) Put(ctx context.Context, v T) (int64, error) {
	return s.s.Put(ctx, s.s.exact, v)
}

// Delete removes the key; modRev 0 is unconditional (see Store.Delete).
func (s Singleton[T]) Delete(ctx context.Context, modRev int64) error {
	return s.s.Delete(ctx, s.s.exact, modRev)
}

// Watch delivers a Snapshot of zero or one items, then Put and Delete events (see Store.Watch).
func (s Singleton[T]) Watch(ctx context.Context, h func(Event[T])) error { return s.s.Watch(ctx, h) }

// Store returns the underlying Store, whose only valid name is Name().
func (s Singleton[T]) Store() Store[T] { return s.s }
