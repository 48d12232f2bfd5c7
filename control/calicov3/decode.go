package calicov3

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

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
}

// Label names the document in a message: document 2 (GlobalNetworkPolicy "web", line 12).
func (d Doc) Label() string { return label(d.Source) }

// label names document d by its kind and name, as far as it has them, and its line.
func label(d manifest.Doc) string {
	var head struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(d.Data, &head) // best effort: the document may be anything
	var what []string
	switch {
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
// documents, so that a caller writes nothing. Read-only kinds (Node, WorkloadEndpoint), kinds
// Margay does not store yet and the same resource twice are errors.
func Decode(input []byte, action Action) ([]Doc, error) {
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
		d, err := decodeDoc(s, action)
		if err == nil {
			ref := RefOf(d.Resource)
			if first, dup := seen[ref]; dup {
				err = fmt.Errorf("%s again (also document %d)", ref, first)
			}
			seen[ref] = s.Index
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%s", label(s), indent(err)))
			continue
		}
		docs = append(docs, d)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %d of %d documents wrong, nothing written:\n%w", ErrInvalid, len(errs), len(split), errors.Join(errs...))
	}
	return docs, nil
}

func decodeDoc(s manifest.Doc, action Action) (Doc, error) {
	d := Doc{Source: s}
	if s.Err != nil {
		return d, s.Err
	}
	r, err := resource.Decode(s.Data)
	if err != nil {
		return d, err
	}
	d.Resource = r
	if err := convert.CheckKind(r.Kind()); err != nil {
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

// indent puts each line of a multi-line error on a line of its own under the document.
func indent(err error) string {
	msg := err.Error()
	if !strings.Contains(msg, "\n") {
		return " " + msg
	}
	return "\n    " + strings.ReplaceAll(msg, "\n", "\n    ")
}
