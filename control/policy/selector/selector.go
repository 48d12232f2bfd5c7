package selector

import (
	"slices"
	"strings"
)

// Selector is a parsed label selector. It is immutable and cheap to copy.
// The zero Selector matches everything, like all().
//
// Selectors may be compared with ==, but that compares identity (two
// separately parsed selectors are never ==); compare String() results to
// test for equivalent canonical forms.
type Selector struct {
	p *parsed
}

// parsed is the shared, immutable state behind a Selector.
type parsed struct {
	root   node
	canon  string
	labels []string
}

// Matches reports whether the selector matches the given labels. A nil map
// is treated as an empty set of labels.
func (s Selector) Matches(labels map[string]string) bool {
	if s.p == nil {
		return true
	}
	return s.p.root.match(labels)
}

// String returns the canonical form of the selector; see the package
// documentation. It returns "all()" for a selector that matches everything
// by construction.
func (s Selector) String() string {
	if s.p == nil {
		return "all()"
	}
	return s.p.canon
}

// IsAll reports whether the selector is all() (or was parsed from an empty
// string), i.e. matches every set of labels syntactically. It does not try
// to prove that more complex expressions are tautologies.
func (s Selector) IsAll() bool {
	if s.p == nil {
		return true
	}
	_, ok := s.p.root.(*allNode)
	return ok
}

// Labels returns the sorted, distinct label keys that the selector reads.
// The result is a fresh slice that the caller may modify; it is nil for a
// selector that reads no labels.
func (s Selector) Labels() []string {
	if s.p == nil {
		return nil
	}
	return slices.Clone(s.p.labels)
}

// node is an element of the selector syntax tree.
type node interface {
	match(labels map[string]string) bool
	// format writes the canonical form of the node without enclosing
	// parentheses.
	format(b *strings.Builder)
}

type allNode struct{}

type eqNode struct{ key, val string }

type neNode struct{ key, val string }

type hasNode struct{ key string }

// inNode is "key in set" or, when negated is set, "key not in set".
// set is sorted and free of duplicates.
type inNode struct {
	key     string
	set     []string
	negated bool
}

type notNode struct{ x node }

// andNode and orNode hold at least two terms, none of which is itself an
// andNode (respectively orNode): chains are flattened during parsing.
type andNode struct{ terms []node }

type orNode struct{ terms []node }

func (*allNode) match(map[string]string) bool { return true }

func (n *eqNode) match(l map[string]string) bool {
	v, ok := l[n.key]
	return ok && v == n.val
}

func (n *neNode) match(l map[string]string) bool {
	v, ok := l[n.key]
	return !ok || v != n.val
}

func (n *hasNode) match(l map[string]string) bool {
	_, ok := l[n.key]
	return ok
}

func (n *inNode) match(l map[string]string) bool {
	v, ok := l[n.key]
	if !ok {
		return n.negated
	}
	_, found := slices.BinarySearch(n.set, v)
	return found != n.negated
}

func (n *notNode) match(l map[string]string) bool { return !n.x.match(l) }

func (n *andNode) match(l map[string]string) bool {
	for _, t := range n.terms {
		if !t.match(l) {
			return false
		}
	}
	return true
}

func (n *orNode) match(l map[string]string) bool {
	for _, t := range n.terms {
		if t.match(l) {
			return true
		}
	}
	return false
}

func (*allNode) format(b *strings.Builder) { b.WriteString("all()") }

func (n *eqNode) format(b *strings.Builder) {
	b.WriteString(n.key)
	b.WriteString(" == ")
	writeQuoted(b, n.val)
}

func (n *neNode) format(b *strings.Builder) {
	b.WriteString(n.key)
	b.WriteString(" != ")
	writeQuoted(b, n.val)
}

func (n *hasNode) format(b *strings.Builder) {
	b.WriteString("has(")
	b.WriteString(n.key)
	b.WriteString(")")
}

func (n *inNode) format(b *strings.Builder) {
	b.WriteString(n.key)
	if n.negated {
		b.WriteString(" not in {")
	} else {
		b.WriteString(" in {")
	}
	for i, v := range n.set {
		if i > 0 {
			b.WriteString(", ")
		}
		writeQuoted(b, v)
	}
	b.WriteString("}")
}

func (n *notNode) format(b *strings.Builder) {
	b.WriteString("!")
	switch n.x.(type) {
	case *andNode, *orNode:
		writeParens(b, n.x)
	default:
		n.x.format(b)
	}
}

func (n *andNode) format(b *strings.Builder) {
	for i, t := range n.terms {
		if i > 0 {
			b.WriteString(" && ")
		}
		if _, ok := t.(*orNode); ok {
			writeParens(b, t)
		} else {
			t.format(b)
		}
	}
}

func (n *orNode) format(b *strings.Builder) {
	for i, t := range n.terms {
		if i > 0 {
			b.WriteString(" || ")
		}
		// Terms are never orNodes, and "&&" binds tighter than "||",
		// so no parentheses are needed.
		t.format(b)
	}
}

func writeParens(b *strings.Builder, n node) {
	b.WriteString("(")
	n.format(b)
	b.WriteString(")")
}

// writeQuoted writes v as a string literal: in double quotes unless v
// contains a double quote, in which case single quotes. The parser ensures
// v never contains both.
func writeQuoted(b *strings.Builder, v string) {
	q := byte('"')
	if strings.IndexByte(v, '"') >= 0 {
		q = '\''
	}
	b.WriteByte(q)
	b.WriteString(v)
	b.WriteByte(q)
}

// collectLabels calls f for every label key n reads.
func collectLabels(n node, f func(string)) {
	switch n := n.(type) {
	case *eqNode:
		f(n.key)
	case *neNode:
		f(n.key)
	case *hasNode:
		f(n.key)
	case *inNode:
		f(n.key)
	case *notNode:
		collectLabels(n.x, f)
	case *andNode:
		for _, t := range n.terms {
			collectLabels(t, f)
		}
	case *orNode:
		for _, t := range n.terms {
			collectLabels(t, f)
		}
	}
}
