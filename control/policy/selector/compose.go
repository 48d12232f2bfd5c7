package selector

import (
	"slices"
	"strings"
)

// Built selectors: what Calico makes of a namespaced policy, a namespaceSelector or a
// serviceAccounts match before it matches anything. Their canonical forms are Calico's for the
// same trees.

// fromRoot makes a Selector of a tree built here, not parsed: no length limit applies.
func fromRoot(root node) Selector {
	var b strings.Builder
	root.format(&b)
	var labels []string
	collectLabels(root, func(k string) { labels = append(labels, k) })
	slices.Sort(labels)
	return Selector{&parsed{root: root, canon: b.String(), labels: slices.Clip(slices.Compact(labels))}}
}

func (s Selector) root() node {
	if s.p == nil {
		return &allNode{}
	}
	return s.p.root
}

// Equal is `key == "value"`.
func Equal(key, value string) Selector { return fromRoot(&cmpNode{kind: cmpEq, key: key, val: value}) }

// In is `key in {values}`.
func In(key string, values []string) Selector {
	set := slices.Clone(values)
	slices.Sort(set)
	return fromRoot(&inNode{key: key, set: slices.Compact(set)})
}

// Has is `has(key)`.
func Has(key string) Selector { return fromRoot(&hasNode{key: key}) }

// And is the conjunction of the selectors, leaving out the ones that are all(); all() when
// every one is.
func And(sels ...Selector) Selector {
	var terms []node
	for _, s := range sels {
		if !s.IsAll() {
			terms = append(terms, s.root())
		}
	}
	switch len(terms) {
	case 0:
		return Selector{}
	case 1:
		return fromRoot(terms[0])
	}
	return fromRoot(&andNode{terms: terms})
}

// Prefixed is s with prefix before every label key, as Calico rewrites a namespaceSelector
// (prefix "pcns.") or a service account selector ("pcsa."). With allAs set, all() becomes
// has(allAs): Calico's namespaceSelector all() means "in some namespace". global() stays.
func (s Selector) Prefixed(prefix, allAs string) Selector {
	return fromRoot(rekey(s.root(), prefix, allAs))
}

func rekey(n node, prefix, allAs string) node {
	switch n := n.(type) {
	case *allNode:
		if allAs != "" {
			return &hasNode{key: allAs}
		}
		return n
	case *hasNode:
		return &hasNode{key: prefix + n.key}
	case *cmpNode:
		return &cmpNode{kind: n.kind, key: prefix + n.key, val: n.val}
	case *inNode:
		return &inNode{key: prefix + n.key, set: n.set, negated: n.negated}
	case *notNode:
		return &notNode{x: rekey(n.x, prefix, allAs)}
	case *andNode:
		return &andNode{terms: rekeyAll(n.terms, prefix, allAs)}
	case *orNode:
		return &orNode{terms: rekeyAll(n.terms, prefix, allAs)}
	}
	return n // globalNode
}

func rekeyAll(ns []node, prefix, allAs string) []node {
	out := make([]node, len(ns))
	for i, n := range ns {
		out[i] = rekey(n, prefix, allAs)
	}
	return out
}
