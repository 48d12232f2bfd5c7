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
	ErrTierInUse = errors.New("cannot delete a non-empty tier")
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
// first error, which names the document, and returns what it did before. What the datastore
// decides is checked for every document first (check), so that such a file writes nothing.
func write(ctx context.Context, c *datastore.Client, action Action, docs []Doc) (Result, error) {
	res := Result{Action: action, Total: len(docs)}
	if err := check(ctx, c, action, docs); err != nil {
		return res, err
	}
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

// check refuses, before anything is written, the documents that the datastore's state makes
// wrong, as Calico refuses them: a policy whose tier exists neither in the datastore nor as a
// Tier earlier in the same input, and the deletion of a tier that still holds policies (but
// for those the input deletes before it). Every such document is reported, as Decode reports
// its errors.
func check(ctx context.Context, c *datastore.Client, action Action, docs []Doc) error {
	var (
		tiers    []datastore.Item[datastore.Tier]
		policies []datastore.Item[datastore.Policy]
		reads    []datastore.Read
	)
	for _, d := range docs {
		switch p := d.record.(type) {
		case datastore.Policy:
			if p.Tier != "" && reads == nil {
				reads = append(reads, c.Tiers().ListRead(&tiers))
			}
		case nil:
			if action == ActionDelete && d.Resource.Kind() == resource.KindTier && len(reads) == 0 {
				reads = append(reads, c.Policies().ListRead(&policies))
			}
		}
	}
	if len(reads) == 0 {
		return nil
	}
	if _, err := c.Fetch(ctx, reads...); err != nil {
		return err
	}
	stored := map[string]bool{}
	for _, t := range tiers {
		stored[t.Name] = true
	}
	inTier := map[string][]Ref{} // the stored policies of each tier
	for _, it := range policies {
		p := it.Value
		inTier[p.TierName()] = append(inTier[p.TierName()], policyRef(p))
	}
	var (
		errs    []error
		created = map[string]int{} // tier: the document that creates it
		deleted = map[Ref]bool{}
	)
	for _, d := range docs {
		var err error
		switch rec := d.record.(type) {
		case datastore.Tier:
			created[rec.Name] = d.Source.Index
		case datastore.Policy:
			if rec.Tier != "" && !stored[rec.Tier] && created[rec.Tier] == 0 {
				err = tierMissing(rec.Tier, docs, d)
			}
		case nil:
			ref := RefOf(d.Resource)
			deleted[ref] = true
			if ref.Kind == resource.KindTier {
				var left []string
				for _, p := range inTier[ref.Name] {
					if !deleted[p] {
						left = append(left, p.String())
					}
				}
				if len(left) > 0 {
					err = tierInUse(ref.Name, left)
				}
			}
		}
		if err != nil {
			errs = append(errs, docError{d.Label(), err})
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %d of %d documents refused, nothing written:\n%w", ErrInvalid, len(errs), len(docs), errors.Join(errs...))
	}
	return nil
}

// tierMissing is the error of document d, a policy in tier, which no stored tier and no Tier
// before it in docs is.
func tierMissing(tier string, docs []Doc, d Doc) error {
	later := ""
	for _, o := range docs {
		if t, ok := o.record.(datastore.Tier); ok && t.Name == tier && o.Source.Index > d.Source.Index {
			later = fmt.Sprintf(": document %d creates it, after this one; put the Tier first", o.Source.Index)
		}
	}
	if later == "" {
		later = ": create the Tier first (in this file, before its policies, or with margayctl apply -f)"
	}
	return fmt.Errorf("spec.tier: %w: Tier(%s)%s", ErrNotExist, tier, later)
}

// tierInUse is the error of deleting tier, which still holds the policies left.
func tierInUse(tier string, left []string) error {
	more := ""
	if len(left) > 5 {
		more, left = fmt.Sprintf(" and %d more", len(left)-5), left[:5]
	}
	return fmt.Errorf("metadata.name: %w: Tier(%s) still holds %s%s; delete or move them first, as Calico requires",
		ErrTierInUse, tier, strings.Join(left, ", "), more)
}

// policyRef names a policy record as the resource it is.
func policyRef(p datastore.Policy) Ref {
	if p.Namespace != "" {
		return Ref{Kind: resource.KindNetworkPolicy, Namespace: p.Namespace, Name: p.Name}
	}
	return Ref{Kind: resource.KindGlobalNetworkPolicy, Name: p.Name}
}

func put(ctx context.Context, c *datastore.Client, action Action, ref Ref, d Doc) error {
	switch rec := d.record.(type) {
	case datastore.Policy:
		return storeAt(ctx, c.Policies(), rec.Key(), ref, rec, action, d.revision, func(*datastore.Policy) error {
			if rec.Tier == "" {
				return nil
			}
			// check saw the tier; it may have gone since.
			if _, err := c.Tiers().Get(ctx, rec.Tier); errors.Is(err, datastore.ErrNotFound) {
				return fmt.Errorf("spec.tier: %w: Tier(%s): create the Tier first", ErrNotExist, rec.Tier)
			} else if err != nil && !errors.Is(err, datastore.ErrMalformed) {
				return err
			}
			return nil
		})
	case datastore.Tier:
		return store(ctx, c.Tiers(), ref, rec, action, d.revision, nil)
	case datastore.Profile:
		return store(ctx, c.Profiles(), ref, rec, action, d.revision, nil)
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
	if err := checkRef(ref, ActionDelete); err != nil {
		return err
	}
	switch ref.Kind {
	case resource.KindGlobalNetworkPolicy:
		if kubernetesPolicy(ref.Name) {
			return fmt.Errorf("%w: %s (a Kubernetes NetworkPolicy's, which the agent keeps: delete the NetworkPolicy)", ErrNotExist, ref)
		}
		return removeAt(ctx, c.Policies(), ref.Name, ref, rev, nil)
	case resource.KindNetworkPolicy:
		if datastore.ValidateNamespace(ref.Namespace) != nil || datastore.ValidateName(ref.Name) != nil {
			return fmt.Errorf("%w: %s", ErrNotExist, ref) // no policy can have this name
		}
		return removeAt(ctx, c.Policies(), ref.Namespace+"/"+ref.Name, ref, rev, nil)
	case resource.KindTier:
		return removeAt(ctx, c.Tiers(), ref.Name, ref, rev, func(modRev int64) error {
			// As Calico: a tier goes only once its policies have (check saw them, and now
			// again, for a policy written since). A policy written between this look and the
			// deletion keeps its tier name, as with calicoctl, and the tier is gone.
			items, _, err := c.Policies().List(ctx)
			if err != nil {
				return err
			}
			var left []string
			for _, it := range items {
				if it.Value.TierName() == ref.Name {
					left = append(left, policyRef(it.Value).String())
				}
			}
			if len(left) > 0 {
				return tierInUse(ref.Name, left)
			}
			return c.Tiers().Delete(ctx, ref.Name, modRev)
		})
	case resource.KindProfile:
		return removeAt(ctx, c.Profiles(), ref.Name, ref, rev, nil)
	case resource.KindIPPool:
		return removeAt(ctx, c.Pools(), ref.Name, ref, rev, func(int64) error {
			// IPAM deletes the pool's empty blocks with it, and keeps a pool in use.
			quiet := ipam.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
			_, use, err := ipam.New(c, quiet).DeletePool(ctx, ref.Name, false)
			if errors.Is(err, ipam.ErrPoolInUse) {
				var where []string
				for _, b := range use.Blocks {
					where = append(where, fmt.Sprintf("%s on %s", b.CIDR, b.Node()))
				}
				return fmt.Errorf("%w: %s in %s (%s); delete those workloads first (spec.disabled: true stops new assignments)",
					err, plural(use.Addresses, "address", "addresses"), plural(len(use.Blocks), "block", "blocks"), strings.Join(where, ", "))
			}
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

// removeAt deletes key name of s by compare-and-swap (or with del, when set, after the checks,
// given the revision read).
func removeAt[T any](ctx context.Context, s datastore.Store[T], name string, ref Ref, rev int64, del func(modRev int64) error) error {
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
			err := del(old.ModRevision)
			if errors.Is(err, datastore.ErrNotFound) {
				return fmt.Errorf("%w: %s", ErrNotExist, ref)
			}
			return err
		}
		err = s.Delete(ctx, name, old.ModRevision)
		if errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrNotExist, ref)
		}
		return err
	})
}

// plural is n and the noun for n: "1 block", "2 blocks".
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
