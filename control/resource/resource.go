package resource

import (
	"errors"
	"strconv"
	"time"
)

// APIVersion is the apiVersion of every resource of this package.
const APIVersion = "projectcalico.org/v3"

// Kind names a kind of resource, as its kind field does.
type Kind string

// The kinds Margay reads. Node and WorkloadEndpoint are read-only: Margay writes them itself.
const (
	KindNetworkPolicy       Kind = "NetworkPolicy"
	KindGlobalNetworkPolicy Kind = "GlobalNetworkPolicy"
	KindProfile             Kind = "Profile"
	KindTier                Kind = "Tier"
	KindIPPool              Kind = "IPPool"
	KindBGPPeer             Kind = "BGPPeer"
	KindBGPConfiguration    Kind = "BGPConfiguration"
	KindNode                Kind = "Node"
	KindWorkloadEndpoint    Kind = "WorkloadEndpoint"
)

// Kinds returns every kind of this package, in the order above.
func Kinds() []Kind {
	return []Kind{KindNetworkPolicy, KindGlobalNetworkPolicy, KindProfile, KindTier, KindIPPool,
		KindBGPPeer, KindBGPConfiguration, KindNode, KindWorkloadEndpoint}
}

// Namespaced reports whether resources of kind k live in a namespace.
func (k Kind) Namespaced() bool { return k == KindNetworkPolicy || k == KindWorkloadEndpoint }

// ReadOnly reports whether resources of kind k are written by Margay itself, never applied by
// users (as calicoctl recommends for them).
func (k Kind) ReadOnly() bool { return k == KindNode || k == KindWorkloadEndpoint }

// DefaultNamespace is the namespace of a namespaced resource whose manifest names none, as
// calicoctl has it.
const DefaultNamespace = "default"

// Resource is one projectcalico.org/v3 resource. Its dynamic type is a pointer to one of the
// resource types of this package (*NetworkPolicy, *GlobalNetworkPolicy, ...).
type Resource interface {
	// Kind returns the resource's kind.
	Kind() Kind
	// Metadata returns the resource's metadata, for reading and changing it.
	Metadata() *ObjectMeta
	// Validate reports everything wrong with the resource as Calico validates it, plus what
	// Margay cannot enforce (errors wrapping ErrUnsupported), all at once (errors.Join of
	// *FieldError).
	Validate() error
}

// New returns an empty resource of kind k, or nil for a kind this package does not know.
func New(k Kind) Resource {
	switch k {
	case KindNetworkPolicy:
		return new(NetworkPolicy)
	case KindGlobalNetworkPolicy:
		return new(GlobalNetworkPolicy)
	case KindProfile:
		return new(Profile)
	case KindTier:
		return new(Tier)
	case KindIPPool:
		return new(IPPool)
	case KindBGPPeer:
		return new(BGPPeer)
	case KindBGPConfiguration:
		return new(BGPConfiguration)
	case KindNode:
		return new(Node)
	case KindWorkloadEndpoint:
		return new(WorkloadEndpoint)
	}
	return nil
}

// ObjectMeta is the metadata of a resource: the part of Kubernetes' ObjectMeta that Calico's
// resources use. Margay sets UID, ResourceVersion and CreationTimestamp when it stores a
// resource; what a manifest gives for them is kept as given.
type ObjectMeta struct {
	Name              string            `json:"name,omitempty"`
	Namespace         string            `json:"namespace,omitempty"`
	UID               string            `json:"uid,omitempty"`
	ResourceVersion   string            `json:"resourceVersion,omitempty"`
	CreationTimestamp Time              `json:"creationTimestamp,omitzero"`
	Labels            map[string]string `json:"labels,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
}

// Metadata returns m; every resource type embeds an ObjectMeta, and so has this method.
func (m *ObjectMeta) Metadata() *ObjectMeta { return m }

// Time is a timestamp in a resource, written as RFC 3339 in UTC with whole seconds, as
// Kubernetes writes it.
type Time struct{ time.Time }

// NewTime returns t in the form a resource keeps it (UTC, whole seconds).
func NewTime(t time.Time) Time { return Time{t.UTC().Truncate(time.Second)} }

// MarshalJSON writes t as Kubernetes does: null when zero, else RFC 3339 in UTC.
func (t Time) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	return strconv.AppendQuote(nil, t.UTC().Format(time.RFC3339)), nil
}

func (t *Time) decodeJSON(v *jsonValue) error {
	if v.kind != jsonString {
		return errors.New("expected an RFC 3339 timestamp (a string), got " + v.describe())
	}
	parsed, err := time.Parse(time.RFC3339, v.text)
	if err != nil {
		return errors.New("not an RFC 3339 timestamp: " + strconv.Quote(v.text))
	}
	*t = NewTime(parsed)
	return nil
}
