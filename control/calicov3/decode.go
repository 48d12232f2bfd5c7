package calicov3

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/manifest"
	"github.com/margaynet/margay/control/resource"
	"github.com/margaynet/margay/control/resource/convert"
)

// Doc is one document of an input, decoded, checked and ready to be written.
type Doc struct {
	Source   manifest.Doc
	Resource resource.Resource // as decoded, with Calico's defaults
	record   any               // the datastore record it becomes; nil for a deletion
	revision int64             // metadata.resourceVersion: write only over this revision; 0 = any
	margay   bool              // a policy in Margay's own record format (DecodeWithPolicyRecords)
}

// Label names the document in a message: document 2 (GlobalNetworkPolicy "web", line 12).
func (d Doc) Label() string { return label(d.Source, d.margay) }

// label names document d by its kind and name, as far as it has them, and its line; a policy
// in Margay's own format (margay) by its name.
func label(d manifest.Doc, margay bool) string {
	var head struct {
		Kind     string `json:"kind"`
		Name     string `json:"name"`
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(d.Data, &head) // best effort: the document may be anything
	var what []string
	switch {
	case margay && head.Name != "":
		what = append(what, fmt.Sprintf("Margay policy %q", head.Name))
	case margay:
		what = append(what, "Margay policy")
	case head.Kind != "" && head.Metadata.Name != "":
		what = append(what, fmt.Sprintf("%s %q", head.Kind, head.Metadata.Name))
	case head.Kind != "":
		what = append(what, head.Kind)
	}
	if d.Line > 0 {
		what = append(what, fmt.Sprintf("line %d", d.Line))
	}
	if len(what) == 0 {
		return fmt.Sprintf("document %d", d.Index)
	}
	return fmt.Sprintf("document %d (%s)", d.Index, strings.Join(what, ", "))
}

// ErrInvalid is wrapped by Decode's error: some document is wrong, and nothing may be written.
var ErrInvalid = errors.New("invalid input")

// Decode reads every document of input (YAML or JSON, manifest.Split) as a Calico resource
// for action: decoded strictly, validated, defaulted and converted to its datastore record
// (for a deletion, only decoded: a deletion needs the kind and the name). It reports every
// wrong document at once, each error naming the document and the field, and then returns no
// documents, so that a caller writes nothing. Read-only kinds (Node, WorkloadEndpoint), the
// policies of Kubernetes NetworkPolicies (knp.default.*), a deletion of the default tier and
// the same resource twice are errors. What needs the datastore to check (a policy's tier
// exists, a tier to delete holds no policies) is checked by the write, before it writes.
func Decode(input []byte, action Action) ([]Doc, error) { return decode(input, action, false) }

// DecodeWithPolicyRecords is Decode for margayctl policy apply, which took Margay's own policy
// format before Calico's manifests: a document without apiVersion and kind is read as a policy
// record in that format (datastore.DecodePolicy: name, order, selector, types, ingress,
// egress, ...) and goes on as the GlobalNetworkPolicy it is (a NetworkPolicy, when it has a
// namespace), through the same checks and conversion as any other.
func DecodeWithPolicyRecords(input []byte, action Action) ([]Doc, error) {
	return decode(input, action, true)
}

func decode(input []byte, action Action, records bool) ([]Doc, error) {
	split, err := manifest.Split(input)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(split) == 0 {
		return nil, fmt.Errorf("%w: no resources in the input", ErrInvalid)
	}
	var (
		docs []Doc
		errs []error
		seen = map[Ref]int{}
	)
	for _, s := range split {
		d, err := decodeDoc(s, action, records)
		if err == nil {
			ref := RefOf(d.Resource)
			if first, dup := seen[ref]; dup {
				err = fmt.Errorf("metadata.name: %s again (also document %d)", ref, first)
			}
			seen[ref] = s.Index
		}
		if err != nil {
			errs = append(errs, docError{d.Label(), err})
			continue
		}
		docs = append(docs, d)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %d of %d documents wrong, nothing written:\n%w", ErrInvalid, len(errs), len(split), errors.Join(errs...))
	}
	return docs, nil
}

// isPolicyRecord reports whether a document has neither apiVersion nor kind: in
// DecodeWithPolicyRecords, a policy in Margay's own format.
func isPolicyRecord(data []byte) bool {
	var head map[string]json.RawMessage
	if json.Unmarshal(data, &head) != nil {
		return false
	}
	for k := range head {
		if strings.EqualFold(k, "apiVersion") || strings.EqualFold(k, "kind") {
			return false
		}
	}
	return true
}

// policyRecord reads a policy in Margay's own format as the resource it is.
func policyRecord(data []byte) (resource.Resource, error) {
	p, err := datastore.DecodePolicy(data)
	if err != nil {
		// The document's label names the policy: drop DecodePolicy's own prefix.
		msg := err.Error()
		if m := recordErrPrefix.FindString(msg); m != "" {
			msg = msg[len(m):]
		}
		return nil, errors.New(msg)
	}
	return convert.PolicyResourceToV3(p), nil
}

// recordErrPrefix is how datastore.DecodePolicy starts its errors.
var recordErrPrefix = regexp.MustCompile(`^(decode policy: |policy: |policy "(?:[^"\\]|\\.)*": )`)

func decodeDoc(s manifest.Doc, action Action, records bool) (Doc, error) {
	d := Doc{Source: s}
	if s.Err != nil {
		return d, s.Err
	}
	var (
		r   resource.Resource
		err error
	)
	if records && isPolicyRecord(s.Data) {
		d.margay = true
		r, err = policyRecord(s.Data)
	} else {
		r, err = resource.Decode(s.Data)
	}
	if err != nil {
		return d, err
	}
	d.Resource = r
	if err := convert.CheckKind(r.Kind()); err != nil {
		return d, err
	}
	if err := checkRef(RefOf(r), action); err != nil {
		return d, err
	}
	if rv := r.Metadata().ResourceVersion; rv != "" {
		if d.revision, err = strconv.ParseInt(rv, 10, 64); err != nil || d.revision <= 0 {
			return d, fmt.Errorf("metadata.resourceVersion: %q is not a revision Margay wrote (a positive number)", rv)
		}
	}
	if action == ActionDelete {
		return d, nil
	}
	if err := r.Validate(); err != nil {
		return d, err
	}
	d.Resource = resource.Defaulted(r)
	if d.record, err = convert.FromV3(d.Resource); err != nil {
		return d, err
	}
	return d, nil
}

// checkRef refuses what is never written here, whatever the resource holds: the policies of
// Kubernetes NetworkPolicies, which calicoctl refuses too, and a deletion of the default tier.
func checkRef(ref Ref, action Action) error {
	switch {
	case ref.Kind == resource.KindNetworkPolicy && kubernetesPolicy(ref.Name):
		return fmt.Errorf("metadata.name: %q: %s* names the policy of a Kubernetes NetworkPolicy, which is managed through the Kubernetes API (margay-agent --k8s-policy-sync keeps it), as calicoctl refuses it too",
			ref.Name, datastore.KubernetesPolicyPrefix)
	case ref.Kind == resource.KindTier && ref.Name == resource.DefaultTierName && action == ActionDelete:
		return fmt.Errorf("metadata.name: the %s tier cannot be deleted (every policy without a tier is in it), as in Calico", resource.DefaultTierName)
	}
	return nil
}

// docError is the error of one document: its label, then the error, a line of its own under
// it for each of several; it wraps the error (ErrNotExist, resource.ErrUnsupported, ...).
type docError struct {
	label string
	err   error
}

func (e docError) Error() string { return e.label + ":" + indent(e.err) }
func (e docError) Unwrap() error { return e.err }

// indent puts each line of a multi-line error on a line of its own under the document.
func indent(err error) string {
	msg := err.Error()
	if !strings.Contains(msg, "\n") {
		return " " + msg
	}
	return "\n    " + strings.ReplaceAll(msg, "\n", "\n    ")
}
