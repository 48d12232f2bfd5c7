package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/manifest"
)

// The operation on policies that an operator runs (margayctl policy apply is its adapter of
// flags and output): decode every document of a file, and only when all of them are policies,
// write them.

// DecodeDocs decodes and checks every document (from manifest.Split) as a policy, and reports
// every one that is wrong, each error naming its document; the policies are the ones that are
// right, so a caller writes nothing unless the errors are none. Two documents of the same name
// are an error of the second.
func DecodeDocs(docs []manifest.Doc) ([]datastore.Policy, []error) {
	var (
		out  []datastore.Policy
		errs []error
		seen = map[string]int{}
	)
	for _, d := range docs {
		var nm *manifest.NotMappingError
		switch {
		case errors.As(d.Err, &nm):
			errs = append(errs, fmt.Errorf("%s: want a policy (a mapping with name, selector, ingress, …), found %s", d.Label("policy"), nm.Found))
			continue
		case d.Err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", d.Label("policy"), d.Err))
			continue
		}
		p, err := datastore.DecodePolicy(d.Data)
		if err != nil {
			// The label names the document and the policy: drop DecodePolicy's own prefix.
			msg := err.Error()
			for _, prefix := range []string{fmt.Sprintf("policy %q: ", d.Name), "policy: ", "decode policy: "} {
				msg = strings.TrimPrefix(msg, prefix)
			}
			if strings.Contains(msg, "cannot unmarshal bool") && d.Line > 0 {
				msg += ` (YAML reads unquoted y, n, yes, no, on, off, true and false as booleans: quote the value)`
			}
			errs = append(errs, fmt.Errorf("%s: %s", d.Label("policy"), msg))
			continue
		}
		if first, ok := seen[p.Name]; ok {
			errs = append(errs, fmt.Errorf("%s: same name as document %d", d.Label("policy"), first))
			continue
		}
		seen[p.Name] = d.Index
		out = append(out, p)
	}
	return out, errs
}

// ApplyResult is what Apply did with a policy.
type ApplyResult string

// The results of Apply.
const (
	ApplyCreated    ApplyResult = "created"    // there was no policy of its name
	ApplyConfigured ApplyResult = "configured" // it replaced another of its name
	ApplyUnchanged  ApplyResult = "unchanged"  // the one of its name is the same as stored: not written
)

// Applied is one policy Apply wrote, or left as it was.
type Applied struct {
	Name   string
	Result ApplyResult
}

// Apply creates or replaces each policy, in order, as a whole. A policy already stored the same
// (compared as stored: an empty list and a missing one are alike) is not written again; a stored
// value that does not decode is replaced. At the first error Apply stops: it returns what it
// applied before, and an error that says how many of the policies that is ("nothing applied", or
// "N of M policies applied before it").
func Apply(ctx context.Context, store datastore.Store[datastore.Policy], policies []datastore.Policy) ([]Applied, error) {
	done := []Applied{}
	for i, p := range policies {
		result := ApplyCreated
		old, err := store.Get(ctx, p.Name)
		switch {
		case err == nil:
			result = ApplyConfigured
			if old.Value.Same(p) {
				result = ApplyUnchanged
			}
		case errors.Is(err, datastore.ErrNotFound):
		case errors.Is(err, datastore.ErrMalformed):
			result = ApplyConfigured // a stored value the agent cannot read: replace it
		default:
			return done, appliedSoFar(err, i, len(policies))
		}
		if result != ApplyUnchanged {
			if _, err := store.Put(ctx, p.Name, p); err != nil {
				return done, appliedSoFar(err, i, len(policies))
			}
		}
		done = append(done, Applied{Name: p.Name, Result: result})
	}
	return done, nil
}

func appliedSoFar(err error, done, total int) error {
	if done == 0 {
		return fmt.Errorf("%w (nothing applied)", err)
	}
	return fmt.Errorf("%w (%d of %d policies applied before it; run the command again)", err, done, total)
}
