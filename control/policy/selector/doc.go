// Package selector implements Calico-style label selectors, as used by the
// selector fields of Calico NetworkPolicy and GlobalNetworkPolicy resources.
//
// # Syntax
//
// A selector is an expression over a set of labels (a map from label key to
// value). Whitespace between tokens is insignificant. The supported forms are:
//
//	all()                 matches everything (so does the empty selector "")
//	k == "v"              label k is present and equals "v"
//	k != "v"              label k is absent or does not equal "v"
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
// the other kind of quote but not both. A set may be empty ({}).
//
// "!" binds tightest, then "&&", then "||"; the binary operators are
// left-associative, so
//
//	a == "1" || b == "1" && c == "1"
//
// means a == "1" || (b == "1" && c == "1"). A comparison is a single term, so
// !a == "1" means !(a == "1").
//
// Label keys have the Kubernetes form [prefix/]name: letters, digits, '-',
// '_' and '.', with at most one '/'. The key and the name after the '/' must
// start with a letter or digit; the prefix may be at most 253 bytes and the
// name at most 63. The words all, has, in and not are only special where the
// grammar expects them, so they may also be used as label keys.
//
// # Limits
//
// To bound the work done on untrusted input, Parse refuses selectors longer
// than [MaxLength] bytes (in the input or in canonical form) and nesting of
// parentheses and "!" deeper than [MaxDepth] levels.
//
// # Canonical form
//
// [Selector.String] returns a canonical rendering: single spaces around
// operators, string literals in double quotes (single quotes when the value
// contains a double quote), set members sorted and deduplicated, nested
// chains of the same binary operator flattened, and only the parentheses the
// precedence rules require. Parsing the canonical form yields a selector with
// the same canonical form and the same matching behaviour.
package selector
