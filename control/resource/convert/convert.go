package convert

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"

	"github.com/margaynet/margay/control/resource"
)

// ErrNotYet is wrapped by the errors about fields Calico accepts that Margay's datastore cannot
// hold yet (Calico's policy model comes in steps); it wraps resource.ErrUnsupported, so that
// errors.Is tells both kinds of "not supported" from invalid input.
var ErrNotYet = fmt.Errorf("%w yet", resource.ErrUnsupported)

// Why a field is not supported yet: each reason completes "not supported by Margay yet (...)".
const (
	whyIPVersion = "Margay is IPv4-only, and its rules hold no IP version: leave ipVersion out"
	whyHints     = "Margay's policy records hold no performance hints"
	whyLabels    = "Margay's records hold no labels or annotations for this kind"
	whyPools     = "Margay's pools hold a CIDR, a block size and disabled"
	whyPeers     = "Margay's peers hold a node, a peer IP and an AS number"
	whyBGPConfig = "Margay's BGP configuration holds an AS number and the node-to-node mesh"
)

// Why a field is not supported at all: it completes "not supported by Margay (...)", as
// control/resource's reasons do.
const whyHostEPs = "it concerns host endpoints, which Margay does not have"

// fieldErrs collects every problem of a resource, each naming its field.
type fieldErrs []error

func (e *fieldErrs) notYet(at, why string) {
	*e = append(*e, fmt.Errorf("%s: %w (%s)", at, ErrNotYet, why))
}

// unsupported records a field Calico accepts and Margay will not support (resource.ErrUnsupported).
func (e *fieldErrs) unsupported(at, why string) {
	*e = append(*e, fmt.Errorf("%s: %w (%s)", at, resource.ErrUnsupported, why))
}

func (e *fieldErrs) addf(at, format string, args ...any) {
	*e = append(*e, fmt.Errorf("%s: %s", at, fmt.Sprintf(format, args...)))
}

func (e fieldErrs) err() error { return errors.Join(e...) }

// finish runs the record's own validation, for what only Margay limits (rule counts, ...; a
// resource that passed resource.Validate rarely fails it), when nothing else was wrong, and
// returns the record, or the zero record and every problem.
func finish[T interface{ Validate() error }](e *fieldErrs, out T) (T, error) {
	if len(*e) == 0 {
		if err := out.Validate(); err != nil {
			e.addf("spec", "%s", err)
		}
	}
	if err := e.err(); err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// checkMeta refuses the labels and annotations a record cannot hold: every label but the ones
// in keep (with their values), every annotation. Name, namespace, uid, resourceVersion and
// creationTimestamp are the caller's.
func checkMeta(e *fieldErrs, m *resource.ObjectMeta, keep map[string]string) {
	for _, k := range slices.Sorted(maps.Keys(m.Labels)) {
		if v, ok := keep[k]; !ok || v != m.Labels[k] {
			e.notYet("metadata.labels["+strconv.Quote(k)+"]", whyLabels)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(m.Annotations)) {
		e.notYet("metadata.annotations["+strconv.Quote(k)+"]", whyLabels)
	}
}

// FromV3 converts a resource of a kind Margay stores (GlobalNetworkPolicy, NetworkPolicy, Tier,
// Profile, IPPool, BGPPeer, BGPConfiguration) into its record: a datastore.Policy, Tier,
// Profile, Pool, BGPPeer or BGPConfig. The resource should have passed Validate; FromV3 fills in
// Calico's defaults itself. Every field the record cannot hold is an error wrapping ErrNotYet
// (or resource.ErrUnsupported, for what Margay will not do), all of them joined.
func FromV3(r resource.Resource) (any, error) {
	if err := CheckKind(r.Kind()); err != nil {
		return nil, err
	}
	switch r := r.(type) {
	case *resource.GlobalNetworkPolicy:
		return PolicyFromV3(r)
	case *resource.NetworkPolicy:
		return NetworkPolicyFromV3(r)
	case *resource.Tier:
		return TierFromV3(r)
	case *resource.Profile:
		return ProfileFromV3(r)
	case *resource.IPPool:
		return PoolFromV3(r)
	case *resource.BGPPeer:
		return PeerFromV3(r)
	case *resource.BGPConfiguration:
		return BGPConfigFromV3(r)
	}
	return nil, fmt.Errorf("convert: no record for %T", r)
}

// CheckKind says whether resources of kind k can be written: nil for the kinds Margay stores,
// and an error for the read-only kinds, which Margay writes itself.
func CheckKind(k resource.Kind) error {
	switch k {
	case resource.KindGlobalNetworkPolicy, resource.KindNetworkPolicy, resource.KindTier, resource.KindProfile,
		resource.KindIPPool, resource.KindBGPPeer, resource.KindBGPConfiguration:
		return nil
	}
	if k.ReadOnly() {
		return fmt.Errorf("kind: %s is read-only: Margay writes it itself", k)
	}
	return fmt.Errorf("kind: %q is not a kind Margay reads", k)
}

// parseNet reads a CIDR or a bare address (a /32), as Calico's nets take them.
func parseNet(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func ptr[T any](v T) *T { return &v }
