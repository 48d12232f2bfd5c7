package datastore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EventType says what an Event carries.
type EventType int

const (
	// EventSnapshot carries the complete state in Items; the consumer replaces all it had.
	EventSnapshot EventType = iota + 1
	// EventPut carries a created or changed value in Item.
	EventPut
	// EventDelete names a value (Name) that is gone or became malformed.
	EventDelete
)

func (t EventType) String() string {
	switch t {
	case EventSnapshot:
		return "snapshot"
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one step of a Watch.
type Event[T any] struct {
	Type     EventType
	Revision int64     // Snapshot: the revision listed at; Put, Delete: the revision of the change
	Items    []Item[T] // Snapshot only
	Item     Item[T]   // Put only
	Name     string    // Put and Delete
	// Malformed marks a Delete that stands for a Put of a malformed value: consumers that would
	// rather keep the last good value (policies) can.
	Malformed bool
}

// Watch bounds for re-listing after a failed list or watch. The maximum keeps a watch that failed
// a few times while etcd was away within 2 s of its return (agents must resync within 5 s).
const (
	watchBackoffMin = 100 * time.Millisecond
	watchBackoffMax = 2 * time.Second
)

// Watch follows the store: it lists a consistent snapshot and delivers it as one EventSnapshot,
// then watches from the next revision and delivers EventPut and EventDelete in revision order.
// When the watch cannot go on (the revision was compacted, etcd canceled the watch, the member
// lost its leader) it lists again, delivers a fresh EventSnapshot and watches from there, with a
// bounded backoff. The client library itself resumes a watch across a lost connection.
//
// A Put of a malformed value is logged, counted and delivered as an EventDelete of its name, so
// consumers drop the state they held for it; the consumer may get Deletes for names it never saw.
// Keys that are no valid name are skipped.
//
// h runs on Watch's goroutine, one event at a time; it should not block for long. Watch returns
// ctx.Err() when ctx ends, or ErrClosed when the Client is closed.
func (s Store[T]) Watch(ctx context.Context, h func(Event[T])) error {
	if s.err != nil {
		return fmt.Errorf("datastore: watch %s: %w: %w", s.kind.name, ErrInvalid, s.err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.c.done:
			cancel()
		case <-wctx.Done():
		}
	}()
	end := func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("datastore: watch %s: %w", s.kind.name, ErrClosed)
	}
	delay := watchBackoffMin
	for {
		items, rev, err := s.List(wctx)
		if wctx.Err() != nil {
			return end()
		}
		if err == nil {
			h(Event[T]{Type: EventSnapshot, Revision: rev, Items: items})
			started := time.Now()
			var reason string
			reason, err = s.watchFrom(wctx, rev+1, h)
			if wctx.Err() != nil {
				return end()
			}
			s.c.metrics.resyncs.WithLabelValues(s.kind.name, reason).Inc()
			s.c.log.Info("watch restarts with a fresh snapshot", "kind", s.kind.name, "reason", reason, "err", err)
			if time.Since(started) > watchBackoffMax {
				delay = watchBackoffMin
			}
		} else {
			s.c.log.Warn("watch cannot list", "kind", s.kind.name, "err", err)
		}
		// Full jitter between delay/2 and delay, so that many watchers do not list in step.
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-wctx.Done():
			t.Stop()
			return end()
		case <-t.C:
		}
		delay = min(2*delay, watchBackoffMax)
	}
}

// watchFrom watches from rev and delivers events until the watch ends, and says why it ended.
func (s Store[T]) watchFrom(ctx context.Context, rev int64, h func(Event[T])) (string, error) {
	// Require a leader, so that a member cut off from the cluster cancels the watch instead of
	// leaving it silently stale.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithRev(rev)}
	if s.exact == "" {
		opts = append(opts, clientv3.WithPrefix())
	}
	for resp := range s.c.cli.Watch(ctx, s.Key(s.exact), opts...) {
		if err := resp.Err(); err != nil {
			switch {
			case errors.Is(err, rpctypes.ErrCompacted):
				return "compacted", err
			case resp.Canceled:
				return "canceled", err
			}
			return "error", err
		}
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			switch ev.Type {
			case mvccpb.PUT:
				it, ok := s.decodeKV(key, ev.Kv.Value, ev.Kv.ModRevision)
				switch {
				case ok:
					h(Event[T]{Type: EventPut, Revision: ev.Kv.ModRevision, Item: it, Name: it.Name})
				case it.Name != "":
					h(Event[T]{Type: EventDelete, Revision: ev.Kv.ModRevision, Name: it.Name, Malformed: true})
				}
			case mvccpb.DELETE:
				if name, err := s.nameOf(key); err == nil {
					h(Event[T]{Type: EventDelete, Revision: ev.Kv.ModRevision, Name: name})
				}
			}
		}
	}
	return "canceled", errors.New("watch channel closed")
}
