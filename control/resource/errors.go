package resource

import (
	"errors"
	"fmt"
	"strconv"
)

// ErrUnsupported is wrapped by the errors about fields that Calico accepts and Margay cannot
// enforce (see the package documentation), so that callers can tell them from invalid input
// with errors.Is.
var ErrUnsupported = errors.New("not supported by Margay")

// FieldError is one thing wrong with a document: where, and why.
type FieldError struct {
	// Path names the field the way it is written in the document, e.g.
	// spec.ingress[0].destination.ports[1] or metadata.labels["app"]; it is empty for the
	// document as a whole.
	Path   string
	Reason string
	err    error // a sentinel (ErrUnsupported) or nil
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Reason
	}
	return e.Path + ": " + e.Reason
}

// Unwrap returns ErrUnsupported for the fields Margay does not support, nil otherwise.
func (e *FieldError) Unwrap() error { return e.err }

// path is where a field is in a document.
type path string

func (p path) child(name string) path {
	if p == "" {
		return path(name)
	}
	return p + "." + path(name)
}

func (p path) index(i int) path { return p + "[" + path(strconv.Itoa(i)) + "]" }

func (p path) key(k string) path { return p + "[" + path(strconv.Quote(k)) + "]" }

// errList collects every error of a document.
type errList []error

func (l *errList) addf(at path, format string, args ...any) {
	*l = append(*l, &FieldError{Path: string(at), Reason: fmt.Sprintf(format, args...)})
}

// unsupported records that Margay cannot enforce the field at: why says what Margay lacks.
func (l *errList) unsupported(at path, why string) {
	*l = append(*l, &FieldError{Path: string(at), Reason: "not supported by Margay (" + why + ")", err: ErrUnsupported})
}

func (l errList) err() error { return errors.Join(l...) }
