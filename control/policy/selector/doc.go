// Package selector implements Calico's label selectors, as used by the
// selector fields of Calico NetworkPolicy and GlobalNetworkPolicy resources:
// the same grammar, the same meaning and the same canonical printed form as
// Calico's libcalico-go/lib/selector. Calico's own selector test tables are
// ported into this package's tests (calico_test.go).
//
// # Syntax
//
// A selector is an expression over a set of labels (a map from label key to
// value). The forms are:
//
//	all()                 matches everything (so does the empty selector "")
//	global()              the labels are not those of a namespaced entity; see below
//	k == "v"              label k is present and equals "v"
//	k != "v"              label k is absent or does not equal "v"
//	k contains "v"        label k is present and its value contains "v"
//	k starts with "v"     label k is present and its value starts with "v"
//	k ends with "v"       label k is present and its value ends with "v"
//	has(k)                label k is present, whatever its value
//	k in {"a", "b"}       label k is present and its value is in the set
//	k not in {"a", "b"}   label k is absent or its value is not in the set
//	!e                    negation
//	e1 && e2              conjunction
//	e1 || e2              disjunction
//	(e)                   grouping
//
// String literals are enclosed in double or single quotes and extend to the
// next matching quote; there are no escape sequences, so a value may contain
// the other kind of quote but not both. A set may be empty ({}) and, as in
// Calico, may end with a comma ({"a",}). "starts with" and "ends with" may
// also be written startswith and endswith, "not in" as notin, and any number
// of blanks may separate the two words.
//
// Blanks (spaces and tabs, and only those, as in Calico: a newline is an
// error) may separate tokens, except that all, global and has must be
// followed directly by "(": "all ()" is an error, as in Calico.
//
// "!" binds tightest, then "&&", then "||", so
//
//	a == "1" || b == "1" && c == "1"
//
// means a == "1" || (b == "1" && c == "1"). A comparison is a single term, so
// !a == "1" means !(a == "1"). A run of "!" counts by its parity: !!has(a) is
// has(a).
//
// # Label keys
//
// As Calico's selector tokenizer has it, a label key is any run of 1 to 512
// letters, digits, '_', '-', '.' and '/' ([MaxKeyLength]); it may start with
// any of them and hold any number of '/'. (Calico checks the labels of its
// resources against Kubernetes' stricter rules, but its selectors accept
// every such key, and so does this package.) The words all, global, has,
// in, not, contains, starts, ends and with are only special where the
// grammar expects them, so they may also be used as label keys:
// contains contains "x" is a valid selector.
//
// # global()
//
// In Calico, global() is only allowed as the whole of a rule's
// namespaceSelector, where it means "only entities that are not namespaced"
// (host endpoints and global network sets); Calico implements it by
// rewriting it to !has(projectcalico.org/namespace). This package gives
// global() that meaning wherever it appears: it matches exactly the label
// sets without [NamespaceLabel]. Margay's endpoints are workloads, and a
// workload in a namespace carries that label, so global() matches no
// namespaced workload (and !global() matches every one).
//
// # Canonical form
//
// [Selector.String] returns Calico's canonical form, the text Calico's
// Selector.String gives for the same input: single spaces around
// operators, string literals in double quotes (single quotes when the value
// contains a double quote), set members sorted and deduplicated, "!"
// directly before its operand, and every && or || chain in parentheses of
// its own, also at the top level:
//
//	has(a)&&b=='x'||!(c in {'z','y'})   prints as   ((has(a) && b == "x") || !c in {"y", "z"})
//
// Parentheses the input has around a chain are kept as structure, as in
// Calico: (a && b) && c is not flattened into a && b && c.
//
// The one difference from Calico is a negated parenthesised negation,
// !(!e): Calico keeps both negations and prints !!e, which its own parser
// then reads as e; this package cancels them at once and prints e. So the
// canonical form is always a fixed point: it parses back (in Margay and in
// Calico) to a selector with the same canonical form and the same matching
// behaviour.
//
// # Limits
//
// To bound the work done on untrusted input, Parse refuses selectors longer
// than [MaxLength] bytes (in the input or in canonical form) and nesting of
// parentheses deeper than [MaxDepth] levels. Calico has no such limits in
// its parser, but its API refuses selectors longer than 1024 bytes, and
// every selector of that length is within both.
package selector
