package datastore

import (
	"context"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Write is one write of an atomic Commit, made by a store's CreateWrite or UpdateWrite: the value
// is encoded and validated when the Write is made, and written only if every Write of its
// Commit still holds.
type Write struct {
	cmp  clientv3.Cmp
	put  clientv3.Op
	what string // "create ipam/handles/h1", for errors
	err  error
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
		cmps, ops, whats = append(cmps, w.cmp), append(ops, w.put), append(whats, w.what)
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
