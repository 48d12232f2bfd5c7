package datastore

import (
	"context"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Read is one read of a Fetch, made by a store's GetRead or ListRead: Fetch puts its answer
// where the Read was told to.
type Read struct {
	op   clientv3.Op
	take func(*etcdserverpb.RangeResponse)
	err  error // the read cannot be made (an invalid name or store): Fetch fails with it
}

// GetRead is Get as one read of a Fetch: after Fetch succeeds, *into and *err hold what Get would
// have returned (ErrNotFound and ErrMalformed included).
func (s Store[T]) GetRead(name string, into *Item[T], err *error) Read {
	if cerr := s.checkName("get", name); cerr != nil {
		return Read{err: cerr}
	}
	return Read{op: clientv3.OpGet(s.Key(name)), take: func(r *etcdserverpb.RangeResponse) { *into, *err = s.got(name, r.Kvs) }}
}

// ListRead is List as one read of a Fetch: after Fetch succeeds, *into holds the valid values.
func (s Store[T]) ListRead(into *[]Item[T]) Read {
	if s.err != nil {
		return Read{err: s.listErr()}
	}
	return Read{op: clientv3.OpGet(s.listKey(), s.listOpts()...), take: func(r *etcdserverpb.RangeResponse) { *into = s.listed(r.Kvs) }}
}

// Fetch makes the reads in one etcd transaction, so at one revision, which it returns, and in one
// round trip where as many Gets and Lists would take one each.
func (c *Client) Fetch(ctx context.Context, reads ...Read) (int64, error) {
	ops := make([]clientv3.Op, 0, len(reads))
	for _, r := range reads {
		if r.err != nil {
			return 0, r.err
		}
		ops = append(ops, r.op)
	}
	resp, err := c.cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("datastore: read: %w", err)
	}
	if len(resp.Responses) != len(reads) {
		return 0, fmt.Errorf("datastore: read: %d answers to %d reads", len(resp.Responses), len(reads))
	}
	for i, r := range reads {
		rr := resp.Responses[i].GetResponseRange()
		if rr == nil {
			return 0, fmt.Errorf("datastore: read: answer %d is no range", i)
		}
		r.take(rr)
	}
	return resp.Header.Revision, nil
}

// Write is one write of an atomic Commit, made by a store's CreateWrite or UpdateWrite: the value
// is encoded and validated when the Write is made, and written only if every Write of its
// Commit still holds.
type Write struct {
	cmp  clientv3.Cmp
	put  clientv3.Op
	what string // "create ipam/handles/h1", for errors
	err  error
	// condOnly: a condition without a write (UnchangedSince).
	condOnly bool
}

// CreateWrite is Create as one write of a Commit: it holds while name does not exist.
func (s Store[T]) CreateWrite(name string, v T) Write {
	data, err := s.encode("create", name, v)
	key := s.Key(name)
	return Write{cmp: clientv3.Compare(clientv3.CreateRevision(key), "=", 0), put: clientv3.OpPut(key, string(data)),
		what: "create " + s.kind.name + " " + name, err: err}
}

// UpdateWrite is Update as one write of a Commit: it holds while name's ModRevision is modRev.
func (s Store[T]) UpdateWrite(name string, v T, modRev int64) Write {
	data, err := s.encode("update", name, v)
	if err == nil && modRev <= 0 {
		err = s.errorf("update", name, fmt.Errorf("%w modRevision %d: want the revision read", ErrInvalid, modRev))
	}
	key := s.Key(name)
	return Write{cmp: clientv3.Compare(clientv3.ModRevision(key), "=", modRev), put: clientv3.OpPut(key, string(data)),
		what: "update " + s.kind.name + " " + name, err: err}
}

// DeleteWrite is Delete as one write of a Commit: it holds while name's ModRevision is modRev.
func (s Store[T]) DeleteWrite(name string, modRev int64) Write {
	err := s.checkName("delete", name)
	if err == nil && modRev <= 0 {
		err = s.errorf("delete", name, fmt.Errorf("%w modRevision %d: want the revision read", ErrInvalid, modRev))
	}
	key := s.Key(name)
	return Write{cmp: clientv3.Compare(clientv3.ModRevision(key), "=", modRev), put: clientv3.OpDelete(key),
		what: "delete " + s.kind.name + " " + name, err: err}
}

// UnchangedSince is a condition of a Commit that writes nothing: it holds while no value of the
// store was created or changed after revision rev (a Fetch's). Deletions do not break it.
func (s Store[T]) UnchangedSince(rev int64) Write {
	var err error
	if s.err != nil {
		err = s.listErr()
	}
	cmp := clientv3.Compare(clientv3.ModRevision(s.listKey()), "<", rev+1)
	if s.exact == "" {
		cmp = cmp.WithPrefix()
	}
	return Write{cmp: cmp, what: fmt.Sprintf("no %s written since revision %d", s.kind.name, rev), err: err, condOnly: true}
}

// Commit makes every write or none, in one etcd transaction, and returns the new revision. It
// fails with ErrConflict when any write no longer holds (a key created or changed since it was
// read, or gone): the caller reads again.
func (c *Client) Commit(ctx context.Context, writes ...Write) (int64, error) {
	cmps := make([]clientv3.Cmp, 0, len(writes))
	ops := make([]clientv3.Op, 0, len(writes))
	whats := make([]string, 0, len(writes))
	for _, w := range writes {
		if w.err != nil {
			return 0, w.err
		}
		cmps, whats = append(cmps, w.cmp), append(whats, w.what)
		if !w.condOnly {
			ops = append(ops, w.put)
		}
	}
	resp, err := c.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("datastore: commit %s: %w", strings.Join(whats, ", "), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("datastore: commit %s: %w", strings.Join(whats, ", "), ErrConflict)
	}
	return resp.Header.Revision, nil
}
