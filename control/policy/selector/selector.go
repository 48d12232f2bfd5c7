package selector

import (
	"fmt"
	"slices"
	"strings"
)

// Selector is a parsed label selector. It is immutable and cheap to copy.
// The zero Selector matches everything, like all().
//
// Selectors may be compared with ==, but that compares identity (two
// separately parsed selectors are never ==); compare String() results to
// test for equal selectors.
type Selector struct {
	p *parsed
}

// parsed is the shared, immutable state behind a Selector.
type parsed struct {
	root   node
	canon  string
	labels []string
}

// newSelector finishes parsing: it renders the canonical form, checks its
// length and collects the label keys.
func newSelector(root node, p *parser) (Selector, error) {
	var b strings.Builder
	root.format(&b)
	if b.Len() > MaxLength {
		return Selector{}, p.errAt(0, fmt.Sprintf("selector is %d bytes long in canonical form, more than the maximum of %d", b.Len(), MaxLength))
	}
	var labels []string
	collectLabels(root, func(k string) { labels = append(labels, k) })
	slices.Sort(labels)
	labels = slices.Clip(slices.Compact(labels))
	return Selector{&parsed{root: root, canon: b.String(), labels: labels}}, nil
}

// Matches reports whether the selector matches the given labels. A nil map
// is treated as an empty set of labels.
func (s Selector) Matches(labels map[string]string) bool {
	if s.p == nil {
		return true
	}
	return s.p.root.match(labels)
}

// String returns the canonical form of the selector, which is Calico's; see
// the package documentation. It returns "all()" for a selector that matches
// everything by construction.
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

// Labels returns the sorted, distinct label keys that the selector reads
// (global() reads [NamespaceLabel]). The result is a fresh slice that the
// caller may modify; it is nil for a selector that reads no labels.
func (s Selector) Labels() []string {
	if s.p == nil {
		return nil
	}
	return slices.Clone(s.p.labels)
}

// node is an element of the selector syntax tree.
type node interface {
	match(labels map[string]string) bool
	// format writes the canonical form of the node.
	format(b *strings.Builder)
}

type allNode struct{}

// globalNode is global(): the labels are not those of a namespaced entity.
type globalNode struct{}

type hasNode struct{ key string }

type cmpKind uint8

const (
	cmpEq cmpKind = iota
	cmpNe
	cmpContains
	cmpStartsWith
	cmpEndsWith
)

var cmpOps = [...]string{
	cmpEq:         " == ",
	cmpNe:         " != ",
	cmpContains:   " contains ",
	cmpStartsWith: " starts with ",
	cmpEndsWith:   " ends with ",
}

// cmpNode compares the value of label key with val.
type cmpNode struct {
	kind     cmpKind
	key, val string
}

// inNode is "key in set" or, when negated is set, "key not in set".
// set is sorted and free of duplicates.
type inNode struct {
	key     string
	set     []string
	negated bool
}

// notNode negates x, which is never itself a notNode.
type notNode struct{ x node }

// andNode and orNode hold at least two terms. As in Calico, a chain
// a && b && c is one andNode, but a parenthesised chain stays a term of
// its own: (a && b) && c is an andNode whose first term is an andNode.
type andNode struct{ terms []node }

type orNode struct{ terms []node }

func (*allNode) match(map[string]string) bool { return true }

func (*globalNode) match(l map[string]string) bool {
	_, ok := l[NamespaceLabel]
	return !ok
}

func (n *hasNode) match(l map[string]string) bool {
	_, ok := l[n.key]
	return ok
}

func (n *cmpNode) match(l map[string]string) bool {
	v, ok := l[n.key]
	switch n.kind {
	case cmpNe:
		return !ok || v != n.val
	case cmpContains:
		return ok && strings.Contains(v, n.val)
	case cmpStartsWith:
		return ok && strings.HasPrefix(v, n.val)
	case cmpEndsWith:
		return ok && strings.HasSuffix(v, n.val)
	}
	return ok && v == n.val
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

func (*globalNode) format(b *strings.Builder) { b.WriteString("global()") }

func (n *hasNode) format(b *strings.Builder) {
	b.WriteString("has(")
	b.WriteString(n.key)
	b.WriteString(")")
}

func (n *cmpNode) format(b *strings.Builder) {
	b.WriteString(n.key)
	b.WriteString(cmpOps[n.kind])
	writeQuoted(b, n.val)
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

// notNode, andNode and orNode print as Calico does: "!" directly before its
// operand, and every && and || chain in parentheses of its own, also at the
// top level. So the canonical form shows the tree exactly, and Calico's
// parser reads it back to the same tree.
func (n *notNode) format(b *strings.Builder) {
	b.WriteString("!")
	n.x.format(b)
}

func (n *andNode) format(b *strings.Builder) { formatChain(b, n.terms, " && ") }

func (n *orNode) format(b *strings.Builder) { formatChain(b, n.terms, " || ") }

func formatChain(b *strings.Builder, terms []node, op string) {
	b.WriteString("(")
	for i, t := range terms {
		if i > 0 {
			b.WriteString(op)
		}
		t.format(b)
	}
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

// sortedSet sorts and deduplicates the members of a set in place.
func sortedSet(set []string) []string {
	slices.Sort(set)
	return slices.Clip(slices.Compact(set))
}

// collectLabels calls f for every label key n reads.
func collectLabels(n node, f func(string)) {
	switch n := n.(type) {
	case *globalNode:
		f(NamespaceLabel)
	case *cmpNode:
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
