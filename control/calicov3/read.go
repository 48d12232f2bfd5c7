package calicov3

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/resource"
	"github.com/margaynet/margay/control/resource/convert"
)

// List reads the resources of kind, as calicoctl get KIND lists them: in the namespace given,
// or in every namespace when it is "" (for the namespaced kinds; the others have none). A
// resource's resourceVersion is its record's etcd revision. It also returns the revision of the
// read. The BGPConfiguration default is listed when the cluster has one stored; the tier
// default always (it needs no record: without one it is Calico's, order 1000000 and Deny), and
// the tiers by order, as calicoctl lists them. The policies margay-agent keeps for Kubernetes
// NetworkPolicies (knp.default.*) are neither GlobalNetworkPolicies nor NetworkPolicies here.
func List(ctx context.Context, c *datastore.Client, kind resource.Kind, namespace string) ([]resource.Resource, int64, error) {
	switch kind {
	case resource.KindGlobalNetworkPolicy, resource.KindNetworkPolicy:
		all, rev, err := listOf(ctx, c.Policies(), func(p datastore.Policy) (resource.Resource, error) { return convert.PolicyResourceToV3(p), nil })
		var out []resource.Resource
		for _, r := range all {
			m := r.Metadata()
			if r.Kind() == kind && !(kind == resource.KindGlobalNetworkPolicy && kubernetesPolicy(m.Name)) &&
				(namespace == "" || m.Namespace == namespace) {
				out = append(out, r)
			}
		}
		return out, rev, err
	case resource.KindTier:
		all, rev, err := listOf(ctx, c.Tiers(), func(t datastore.Tier) (resource.Resource, error) { return convert.TierToV3(t), nil })
		if err != nil {
			return nil, 0, err
		}
		if !slices.ContainsFunc(all, func(r resource.Resource) bool { return r.Metadata().Name == resource.DefaultTierName }) {
			all = append(all, convert.DefaultTierV3())
		}
		// As calicoctl get tier: by order, those without one last; then by name.
		slices.SortStableFunc(all, func(a, b resource.Resource) int {
			return datastore.CompareOrder(a.Metadata().Name, a.(*resource.Tier).Spec.Order, b.Metadata().Name, b.(*resource.Tier).Spec.Order)
		})
		return all, rev, nil
	case resource.KindProfile:
		return listOf(ctx, c.Profiles(), func(p datastore.Profile) (resource.Resource, error) { return convert.ProfileToV3(p), nil })
	case resource.KindIPPool:
		return listOf(ctx, c.Pools(), func(p datastore.Pool) (resource.Resource, error) { return convert.PoolToV3(p), nil })
	case resource.KindBGPPeer:
		return listOf(ctx, c.BGPPeers(), func(p datastore.BGPPeer) (resource.Resource, error) { return convert.PeerToV3(p), nil })
	case resource.KindBGPConfiguration:
		return listOf(ctx, c.BGPConfig().Store(), func(b datastore.BGPConfig) (resource.Resource, error) { return convert.BGPConfigToV3(b), nil })
	case resource.KindNode:
		return listOf(ctx, c.Nodes(), func(n datastore.Node) (resource.Resource, error) { return convert.NodeToV3(n), nil })
	case resource.KindWorkloadEndpoint:
		all, rev, err := listOf(ctx, c.AllWorkloads(), func(w datastore.Workload) (resource.Resource, error) { return convert.WorkloadToV3(w) })
		if err != nil || namespace == "" {
			return all, rev, err
		}
		var out []resource.Resource
		for _, r := range all {
			if r.Metadata().Namespace == namespace {
				out = append(out, r)
			}
		}
		return out, rev, nil
	}
	if err := convert.CheckKind(kind); err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", kind, err)
	}
	return nil, 0, fmt.Errorf("get %s: not a kind Margay reads", kind)
}

// kubernetesPolicy says whether a policy is one margay-agent --k8s-policy-sync keeps for a
// Kubernetes NetworkPolicy. Calico shows those as namespaced NetworkPolicies, never as
// GlobalNetworkPolicies, and only the sync writes them.
func kubernetesPolicy(name string) bool {
	return strings.HasPrefix(name, datastore.KubernetesPolicyPrefix)
}

func listOf[T any](ctx context.Context, s datastore.Store[T], toV3 func(T) (resource.Resource, error)) ([]resource.Resource, int64, error) {
	items, rev, err := s.List(ctx)
	if err != nil {
		return nil, 0, err
	}
	out := make([]resource.Resource, 0, len(items))
	for _, it := range items {
		r, err := toV3(it.Value)
		if err != nil {
			return nil, 0, fmt.Errorf("%s %s: %w", s.Kind(), it.Name, err)
		}
		r.Metadata().ResourceVersion = strconv.FormatInt(it.ModRevision, 10)
		out = append(out, r)
	}
	return out, rev, nil
}

// Get reads one resource of kind by name (and namespace, for the namespaced kinds: "" is
// resource.DefaultNamespace). A missing one is ErrNotExist.
func Get(ctx context.Context, c *datastore.Client, kind resource.Kind, name, namespace string) (resource.Resource, error) {
	ref := Ref{Kind: kind, Name: name}
	if kind.Namespaced() {
		if namespace == "" {
			namespace = resource.DefaultNamespace
		}
		ref.Namespace = namespace
	}
	var (
		r   resource.Resource
		err error
	)
	switch kind {
	case resource.KindGlobalNetworkPolicy:
		if kubernetesPolicy(name) {
			return nil, fmt.Errorf("%w: %s (the policy margay-agent --k8s-policy-sync keeps for a Kubernetes NetworkPolicy: kubectl get networkpolicy shows its source, the agent's /policy what it enforces)", ErrNotExist, ref)
		}
		r, err = getOf(ctx, c.Policies(), name, func(p datastore.Policy) (resource.Resource, error) { return convert.PolicyToV3(p), nil })
	case resource.KindNetworkPolicy:
		if datastore.ValidateNamespace(namespace) != nil {
			return nil, fmt.Errorf("%w: %s", ErrNotExist, ref)
		}
		r, err = getOf(ctx, c.Policies(), name, func(p datastore.Policy) (resource.Resource, error) { return convert.NetworkPolicyToV3(p), nil },
			namespace+"/")
	case resource.KindTier:
		r, err = getOf(ctx, c.Tiers(), name, func(t datastore.Tier) (resource.Resource, error) { return convert.TierToV3(t), nil })
		if errors.Is(err, datastore.ErrNotFound) && name == resource.DefaultTierName {
			return convert.DefaultTierV3(), nil
		}
	case resource.KindProfile:
		r, err = getOf(ctx, c.Profiles(), name, func(p datastore.Profile) (resource.Resource, error) { return convert.ProfileToV3(p), nil })
	case resource.KindIPPool:
		r, err = getOf(ctx, c.Pools(), name, func(p datastore.Pool) (resource.Resource, error) { return convert.PoolToV3(p), nil })
	case resource.KindBGPPeer:
		r, err = getOf(ctx, c.BGPPeers(), name, func(p datastore.BGPPeer) (resource.Resource, error) { return convert.PeerToV3(p), nil })
	case resource.KindBGPConfiguration:
		if name != resource.DefaultBGPConfigurationName {
			return nil, fmt.Errorf("%w: %s", ErrNotExist, ref)
		}
		s := c.BGPConfig()
		r, err = getOf(ctx, s.Store(), s.Name(), func(b datastore.BGPConfig) (resource.Resource, error) { return convert.BGPConfigToV3(b), nil })
	case resource.KindNode:
		r, err = getOf(ctx, c.Nodes(), name, func(n datastore.Node) (resource.Resource, error) { return convert.NodeToV3(n), nil })
	default:
		// Workload endpoints are named by Calico's rule, not by their key: look through them.
		all, _, lerr := List(ctx, c, kind, namespace)
		if lerr != nil {
			return nil, lerr
		}
		for _, r := range all {
			if r.Metadata().Name == name {
				return r, nil
			}
		}
		return nil, fmt.Errorf("%w: %s", ErrNotExist, ref)
	}
	if errors.Is(err, datastore.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotExist, ref)
	}
	return r, err
}

// getOf reads name (under dir, for a namespaced policy: "<namespace>/") of s as a resource.
func getOf[T any](ctx context.Context, s datastore.Store[T], name string, toV3 func(T) (resource.Resource, error), dir ...string) (resource.Resource, error) {
	if datastore.ValidateName(name) != nil {
		return nil, datastore.ErrNotFound // no resource can have this name
	}
	it, err := s.Get(ctx, strings.Join(dir, "")+name)
	if err != nil {
		return nil, err
	}
	r, err := toV3(it.Value)
	if err != nil {
		return nil, err
	}
	r.Metadata().ResourceVersion = strconv.FormatInt(it.ModRevision, 10)
	return r, nil
}
