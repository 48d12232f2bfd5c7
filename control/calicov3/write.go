package calicov3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/resource"
	"github.com/margaynet/margay/control/resource/convert"
)

// Action is what to do with the resources of an input, as calicoctl's commands of its name do.
type Action string

// The actions.
const (
	ActionApply   Action = "apply"   // create, or replace the one of its name
	ActionCreate  Action = "create"  // create; an existing one of its name is an error
	ActionReplace Action = "replace" // replace; a missing one is an error
	ActionDelete  Action = "delete"  // delete; a missing one is an error
)

func (a Action) past() string {
	if a == ActionApply {
		return "applied"
	}
	return string(a) + "d"
}

// The errors of a write, as calicoctl reports them.
var (
	ErrExists    = errors.New("resource already exists")
	ErrNotExist  = errors.New("resource does not exist")
	ErrStale     = errors.New("update conflict: the resource changed since the resourceVersion given")
	ErrPeerExtra = errors.New("the stored peer holds what a BGPPeer cannot")
)

// Result is what a write did: which resources, in order, out of how many.
type Result struct {
	Action Action
	Done   []Ref
	Total  int
}

// String reports the result as calicoctl does: "Successfully applied 2 'GlobalNetworkPolicy'
// resource(s)", or, when it stopped at an error, which ones it wrote before.
func (r Result) String() string {
	kind := ""
	if k, ok := oneKind(r.Done); ok {
		kind = "'" + string(k) + "' "
	}
	if len(r.Done) == r.Total {
		return fmt.Sprintf("Successfully %s %d %sresource(s)", r.Action.past(), r.Total, kind)
	}
	if len(r.Done) == 0 {
		return fmt.Sprintf("Failed to %s any resources", r.Action)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Partial success: %s the first %d out of %d resources:", r.Action.past(), len(r.Done), r.Total)
	for i, ref := range r.Done {
		fmt.Fprintf(&b, "\n  %d. %s", i+1, ref)
	}
	return b.String()
}

func oneKind(refs []Ref) (resource.Kind, bool) {
	if len(refs) == 0 {
		return "", false
	}
	for _, r := range refs[1:] {
		if r.Kind != refs[0].Kind {
			return "", false
		}
	}
	return refs[0].Kind, true
}

// Apply creates each resource, or replaces the one of its name, in order.
func Apply(ctx context.Context, c *datastore.Client, docs []Doc) (Result, error) {
	return write(ctx, c, ActionApply, docs)
}

// Create creates each resource, in order; one that exists already is an error (ErrExists).
func Create(ctx context.Context, c *datastore.Client, docs []Doc) (Result, error) {
	return write(ctx, c, ActionCreate, docs)
}

// Replace replaces each resource, in order; one that does not exist is an error (ErrNotExist).
func Replace(ctx context.Context, c *datastore.Client, docs []Doc) (Result, error) {
	return write(ctx, c, ActionReplace, docs)
}

// Delete deletes the resources the documents name, in order; one that does not exist is an
// error (ErrNotExist).
func Delete(ctx context.Context, c *datastore.Client, docs []Doc) (Result, error) {
	return write(ctx, c, ActionDelete, docs)
}

// DeleteRefs deletes the resources named, in order (margayctl delete KIND NAME).
func DeleteRefs(ctx context.Context, c *datastore.Client, refs []Ref) (Result, error) {
	res := Result{Action: ActionDelete, Total: len(refs)}
	for _, ref := range refs {
		if err := remove(ctx, c, ref, 0); err != nil {
			return res, err
		}
		res.Done = append(res.Done, ref)
	}
	return res, nil
}

// write does action with each document, in order, each by compare-and-swap; it stops at the
// first error, which names the document, and returns what it did before.
func write(ctx context.Context, c *datastore.Client, action Action, docs []Doc) (Result, error) {
	res := Result{Action: action, Total: len(docs)}
	for _, d := range docs {
		ref := RefOf(d.Resource)
		var err error
		if action == ActionDelete {
			err = remove(ctx, c, ref, d.revision)
		} else if d.record == nil {
			err = fmt.Errorf("calicov3: %s not decoded for %s", ref, action)
		} else {
			err = put(ctx, c, action, ref, d)
		}
		if err != nil {
			return res, fmt.Errorf("%s: %w", d.Label(), err)
		}
		res.Done = append(res.Done, ref)
	}
	return res, nil
}

func put(ctx context.Context, c *datastore.Client, action Action, ref Ref, d Doc) error {
	switch rec := d.record.(type) {
	case datastore.Policy:
		return store(ctx, c.Policies(), ref, rec, action, d.revision, nil)
	case datastore.Pool:
		return store(ctx, c.Pools(), ref, rec, action, d.revision, func(old *datastore.Pool) error {
			return checkPool(ctx, c, rec, old)
		})
	case datastore.BGPPeer:
		return store(ctx, c.BGPPeers(), ref, rec, action, d.revision, func(old *datastore.BGPPeer) error {
			if old == nil {
				return nil
			}
			if extras := convert.PeerExtras(*old); len(extras) > 0 {
				return fmt.Errorf("%w: %s (set with margayctl bgp peer add); change it with margayctl bgp peer, or delete it first",
					ErrPeerExtra, strings.Join(extras, " and "))
			}
			return nil
		})
	case datastore.BGPConfig:
		s := c.BGPConfig()
		return storeAt(ctx, s.Store(), s.Name(), ref, rec, action, d.revision, nil)
	}
	return fmt.Errorf("calicov3: no store for %T", d.record)
}

func store[T any](ctx context.Context, s datastore.Store[T], ref Ref, v T, action Action, rev int64, check func(old *T) error) error {
	return storeAt(ctx, s, ref.Name, ref, v, action, rev, check)
}

// storeAt writes v at key name of s for action, by compare-and-swap at the revision read (or
// the one the resource gave), again while another writer wins. check, if set, sees the stored
// value (nil when there is none) before every attempt and can refuse the write.
func storeAt[T any](ctx context.Context, s datastore.Store[T], name string, ref Ref, v T, action Action, rev int64, check func(old *T) error) error {
	return datastore.Retry(ctx, func() error {
		old, err := s.Get(ctx, name)
		exists := err == nil || errors.Is(err, datastore.ErrMalformed) // a value the agent cannot read is replaced
		if err != nil && !exists && !errors.Is(err, datastore.ErrNotFound) {
			return err
		}
		switch {
		case action == ActionCreate && exists:
			return fmt.Errorf("%w: %s", ErrExists, ref)
		case action == ActionReplace && !exists:
			return fmt.Errorf("%w: %s", ErrNotExist, ref)
		case rev != 0 && exists && old.ModRevision != rev:
			// As calicoctl: a creation ignores the resourceVersion, an update is conditional on it.
			return fmt.Errorf("%w: %s", ErrStale, ref)
		}
		if check != nil {
			var prev *T
			if err == nil {
				prev = &old.Value
			}
			if err := check(prev); err != nil {
				return err
			}
		}
		if !exists {
			_, err = s.Create(ctx, name, v)
			if errors.Is(err, datastore.ErrExists) && action == ActionApply {
				return fmt.Errorf("%w: created meanwhile", datastore.ErrConflict) // read it again
			}
			if errors.Is(err, datastore.ErrExists) {
				return fmt.Errorf("%w: %s", ErrExists, ref)
			}
			return err
		}
		_, err = s.Update(ctx, name, v, old.ModRevision)
		return err
	})
}

// checkPool refuses what Calico refuses of a pool, and what would break Margay's IPAM: a
// changed CIDR or block size (the blocks are cut already), a CIDR that overlaps another pool,
// or a node's uplink subnet (workload addresses there would collide with the hosts').
func checkPool(ctx context.Context, c *datastore.Client, p datastore.Pool, old *datastore.Pool) error {
	if old != nil {
		if old.CIDR != p.CIDR {
			return fmt.Errorf("spec.cidr: a pool's CIDR cannot change (%s to %s): create another pool and delete this one", old.CIDR, p.CIDR)
		}
		if old.BlockSize != p.BlockSize {
			return fmt.Errorf("spec.blockSize: a pool's block size cannot change (%d to %d): create another pool and delete this one", old.BlockSize, p.BlockSize)
		}
		return nil
	}
	var (
		pools []datastore.Item[datastore.Pool]
		nodes []datastore.Item[datastore.Node]
	)
	if _, err := c.Fetch(ctx, c.Pools().ListRead(&pools), c.Nodes().ListRead(&nodes)); err != nil {
		return err
	}
	if err := ipam.PoolConflict(p, pools, nodes); err != nil {
		return fmt.Errorf("spec.cidr: %w", err)
	}
	return nil
}

// remove deletes the resource ref names, at revision rev if it is not 0.
func remove(ctx context.Context, c *datastore.Client, ref Ref, rev int64) error {
	if err := convert.CheckKind(ref.Kind); err != nil {
		return err
	}
	switch ref.Kind {
	case resource.KindGlobalNetworkPolicy:
		if kubernetesPolicy(ref.Name) {
			return fmt.Errorf("%w: %s (a Kubernetes NetworkPolicy's, which the agent keeps: delete the NetworkPolicy)", ErrNotExist, ref)
		}
		return removeAt(ctx, c.Policies(), ref.Name, ref, rev, nil)
	case resource.KindIPPool:
		return removeAt(ctx, c.Pools(), ref.Name, ref, rev, func() error {
			// IPAM deletes the pool's empty blocks with it, and keeps a pool in use.
			quiet := ipam.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
			_, _, err := ipam.New(c, quiet).DeletePool(ctx, ref.Name, false)
			return err
		})
	case resource.KindBGPPeer:
		return removeAt(ctx, c.BGPPeers(), ref.Name, ref, rev, nil)
	case resource.KindBGPConfiguration:
		if ref.Name != resource.DefaultBGPConfigurationName {
			return fmt.Errorf("%w: %s", ErrNotExist, ref)
		}
		s := c.BGPConfig()
		return removeAt(ctx, s.Store(), s.Name(), ref, rev, nil)
	}
	return fmt.Errorf("calicov3: cannot delete %s", ref)
}

// removeAt deletes key name of s by compare-and-swap (or with del, when set, after the checks).
func removeAt[T any](ctx context.Context, s datastore.Store[T], name string, ref Ref, rev int64, del func() error) error {
	return datastore.Retry(ctx, func() error {
		old, err := s.Get(ctx, name)
		switch {
		case errors.Is(err, datastore.ErrNotFound):
			return fmt.Errorf("%w: %s", ErrNotExist, ref)
		case err != nil && !errors.Is(err, datastore.ErrMalformed):
			return err
		case rev != 0 && old.ModRevision != rev:
			return fmt.Errorf("%w: %s", ErrStale, ref)
		}
		if del != nil {
			return del()
		}
		err = s.Delete(ctx, name, old.ModRevision)
		if errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrNotExist, ref)
		}
		return err
	})
}
