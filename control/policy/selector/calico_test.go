package selector

// The tables in this file are data ported from Calico's own selector tests,
// projectcalico/calico at commit 87c15906f20c4ca1fda55af92295e7678b0cc0b2
// (the files last changed in 1b45850ec434a7a8cb6d3f269002a072e613a8be):
//
//   - calicoMatchTests, calicoBadSelectors, calicoCanonical:
//     libcalico-go/lib/selector/parser/parser_test.go (selectorTests,
//     badSelectors, canonicalisationTests; the UID column is left out, as
//     Margay has no selector UIDs)
//   - calicoVisitorCanonical: the same file, the Visitor table, with the
//     "visited/" prefix the visitor adds taken out of the expected output
//   - calicoRestrictions: libcalico-go/lib/selector/parser/
//     label_restriction_test.go (labelRestrictionsTests)
//   - calicoTokenizerGood, calicoTokenizerBad:
//     libcalico-go/lib/selector/tokenizer/tokenizer_test.go (inputs that
//     tokenize and form whole selectors; inputs the tokenizer refuses, and
//     inputs it tokenizes that the parser then refuses)
//
// Only the data is taken; the tests that use it are Margay's.

import (
	"slices"
	"strings"
	"testing"
)

type calicoMatchTest struct {
	sel           string
	expMatches    []labels
	expNonMatches []labels
}

var calicoMatchTests = []calicoMatchTest{
	{`a == "b"`,
		[]labels{
			{"a": "b"},
			{"a": "b", "c": "d"}},
		[]labels{
			{},
			{"a": "c"},
			{"c": "d"},
		}},
	{`a == "b" && c == "d"`,
		[]labels{
			{"a": "b", "c": "d"}},
		[]labels{
			{},
			{"a": "b", "c": "e"},
			{"a": "c", "c": "d"},
			{"c": "d"},
			{"a": "b"},
		}},
	{`a == "b" || c == "d"`,
		[]labels{
			{"a": "b", "c": "d"},
			{"a": "b"},
			{"c": "d"}},
		[]labels{
			{},
			{"a": "e", "c": "e"},
			{"c": "e"},
			{"a": "e"},
		}},
	{`a in {"'", '"', "c"}`,
		[]labels{
			{"a": "c"},
			{"a": `"`},
			{"a": `'`},
		},
		[]labels{
			{},
			{"a": "e"},
		}},
	{`a not in {"'", '"', "c"}`,
		[]labels{
			{},
			{"a": "e"},
		},
		[]labels{
			{"a": "c"},
			{"a": `"`},
			{"a": `'`},
		}},

	{`a == 'a'`, []labels{{"a": "a"}}, []labels{}},
	{`a == "a"`, []labels{{"a": "a"}}, []labels{}},
	{`a != "b"`, []labels{{"a": "a"}}, []labels{}},
	{`a != "a"`, []labels{{}}, []labels{}},
	{`a contains "a"`, []labels{
		{"a": "a"},
		{"a": "bab"},
		{"a": "aaa", "b": "c"},
	}, []labels{
		{},
		{"a": "b"},
		{"b": "aaa"},
	}},
	{`a starts with "a"`, []labels{
		{"a": "a"},
		{"a": "abb"},
		{"a": "aaa", "b": "c"},
	}, []labels{
		{},
		{"a": "b"},
		{"a": "baa"},
		{"b": "aaa"},
	}},
	{`a ends with "a"`, []labels{
		{"a": "a"},
		{"a": "bba"},
		{"a": "aaa", "b": "c"},
	}, []labels{
		{},
		{"a": "b"},
		{"a": "aab"},
		{"b": "aaa"},
	}},
	{`a in {"a"}`, []labels{{"a": "a"}}, []labels{}},
	{`!a in {"a"}`, []labels{{"a": "b"}}, []labels{}},
	{`a in {"a", "b"}`, []labels{{"a": "a"}}, []labels{}},
	{`a in {"a", "b"}`, []labels{{"a": "b"}}, []labels{}},
	{`a not in {"d", "e"}`, []labels{{"a": "a"}}, []labels{}},
	{`has(a)`, []labels{{"a": "b"}}, []labels{}},
	{`!has(a)`, []labels{{"b": "b"}}, []labels{}},
	{``, []labels{{}}, []labels{}},
	{` `, []labels{{}}, []labels{}},
	{``, []labels{{"a": "b"}}, []labels{}},
	{`all()`, []labels{{}}, []labels{}},
	{` all()`, []labels{{}}, []labels{}},
	{` all()`, []labels{{"a": "b"}}, []labels{}},
	{`global()`, []labels{{}}, []labels{}},
	{` global()`, []labels{{}}, []labels{}},
	{` global()`, []labels{{"a": "b"}}, []labels{}},

	{`a == 'a'`, []labels{}, []labels{{"a": "b"}}},
	{`a == 'a'`, []labels{}, []labels{{}}},
	{`a != "a"`, []labels{}, []labels{{"a": "a"}}},
	{`a != 'a'`, []labels{}, []labels{{"a": "a"}}},
	{`a in {"a"}`, []labels{}, []labels{{"a": "b"}}},
	{`a not in {"a"}`, []labels{}, []labels{{"a": "a"}}},
	{`a in {"a", "b"}`, []labels{}, []labels{{"a": "c"}}},
	{`has(b)`, []labels{}, []labels{{"a": "b"}}},
	{`!!has(b)`, []labels{}, []labels{{"a": "b"}}},
	{`! has(a)`, []labels{}, []labels{{"a": "b"}}},
	{`!has(a)`, []labels{}, []labels{{"a": "b"}}},
	{`!!! has(a)`, []labels{}, []labels{{"a": "b"}}},
	{`!!!has(a)`, []labels{}, []labels{{"a": "b"}}},
	{`!! ! has(a)`, []labels{}, []labels{{"a": "b"}}},
	{`! !!has(a)`, []labels{}, []labels{{"a": "b"}}},

	// Boolean expressions...
	{`a == 'a1' && b == 'b1'`, []labels{{"a": "a1", "b": "b1"}}, []labels{}},
	{`a == 'a1' && b != 'b1'`, []labels{}, []labels{{"a": "a1", "b": "b1"}}},
	{`a != 'a1' && b == 'b1'`, []labels{}, []labels{{"a": "a1", "b": "b1"}}},
	{`a != 'a1' && b != 'b1'`, []labels{}, []labels{{"a": "a1", "b": "b1"}}},
	{`a != 'a1' && !b == 'b1'`, []labels{}, []labels{{"a": "a1", "b": "b1"}}},
	{`!a == 'a1' && b == 'b1'`, []labels{}, []labels{{"a": "a1", "b": "b1"}}},
	{`has(a) && !has(b)`, []labels{{"a": "a"}}, []labels{}},
	{`!has(b) && has(a)`, []labels{{"a": "a"}}, []labels{}},
	{`!(!has(a) || has(b))`, []labels{{"a": "a"}}, []labels{}},
	{`!(has(b) || !has(a))`, []labels{{"a": "a"}}, []labels{}},

	{`a == 'a1' || b == 'b1'`, []labels{{"a": "a1", "b": "b1"}}, []labels{}},
	{`a == 'a1' || b != 'b1'`, []labels{{"a": "a1", "b": "b1"}}, []labels{}},
	{`a != 'a1' || b == 'b1'`, []labels{{"a": "a1", "b": "b1"}}, []labels{}},
	{`a != 'a1' || b != 'b1'`, []labels{}, []labels{{"a": "a1", "b": "b1"}}},
	{`! a == 'a1' || ! b == 'b1'`, []labels{}, []labels{{"a": "a1", "b": "b1"}}},
}

var calicoBadSelectors = []string{
	"b == b",          // label == label
	"b contains b",    // label contains label
	"b starts with b", // label starts with label
	"b ends with b",   // label starts with label
	"'b1' == b",       // literal on lhs
	"b",               // bare label
	"a b",             // Garbage
	"!",               // Garbage
	`foo == "bar" &`,  // Garbage
	`foo == "bar" |`,  // Garbage
	`foo != ||`,       // Garbage
	`foo in {"", ||`,  // Garbage
	`foo in ""`,       // Expect set literal
	`"FOO`,            // Unterminated string
	`"FOO'`,           // Unterminated string
	`"FOO`,            // Unterminated string
	`'FOO`,            // Unterminated string
	`(`,               // Unterminated paren
	`(a == "foo"`,     // Unterminated paren
	`)`,               // Unterminated paren
	`()`,              // Unterminated paren
	`%`,               // Unexpected char
	`a == "b" && %`,   // Unexpected char
	`a == "b" || %`,   // Unexpected char
	`a `,              // should be followed by operator
	`has(foo) &&`,     // should be followed by operator
}

var calicoCanonical = []struct{ input, expected string }{
	{"", "all()"},
	{" all() ", "all()"},
	{" (all() )", "all()"},
	{`! (has( b)||! has(a ))`, "!(has(b) || !has(a))"},
	{`! (a == "b"&&! c != "d")`, `!(a == "b" && !c != "d")`},
	{`a == "'"`, `a == "'"`},
	{`a == '"'`, `a == '"'`},
	{`a contains '"'`, `a contains '"'`},
	{`a contains "'"`, `a contains "'"`},
	{`a startswith '"'`, `a starts with '"'`},
	{`a endswith "'"`, `a ends with "'"`},
	{`a!='"'`, `a != '"'`},
	// Set items get sorted/de-duped.
	{`a in {"d"}`, `a in {"d"}`},
	{`a in {"a", "b"}`, `a in {"a", "b"}`},
	{`a in {"d", "a", "b"}`, `a in {"a", "b", "d"}`},
	{`a in {"z", "x", "y", "a"}`, `a in {"a", "x", "y", "z"}`},
	{`a in {"z", "z", "x", "y", "x", "a"}`, `a in {"a", "x", "y", "z"}`},
}

var calicoVisitorCanonical = []struct{ input, expected string }{
	{"k == 'v'", `k == "v"`},
	{"k != 'v'", `k != "v"`},
	{"k contains 'v'", `k contains "v"`},
	{"k starts with 'v'", `k starts with "v"`},
	{"k ends with 'v'", `k ends with "v"`},
	{"k == 'v' && x == 'y'", `(k == "v" && x == "y")`},
	{"k == 'v' || has(x)", `(k == "v" || has(x))`},
	{"!(k == 'v')", `!k == "v"`},
	{"k in {'v'}", `k in {"v"}`},
	{"k not in {'v'}", `k not in {"v"}`},
	{"!(!(k == 'v' && has(t) || all()) && (a in {'b', 'c'}))",
		`!(!((k == "v" && has(t)) || all()) && a in {"b", "c"})`},
}

var calicoTokenizerGood = []string{
	`a=="b"`,
	`a!="b"`,
	`a != "b"`,
	`(a=="b")`,
	`label == "value"`,
	`label contains "value"`,
	`contains contains "contains"`,
	`contains contains 'contains'`,
	`label contains"value"`,
	`label startswith "value"`,
	`label endswith "value"`,
	`label starts with "value"`,
	`startswith starts with "value"`,
	`label ends with "value"`,
	`endswith ends with "value"`,
	`label starts  with "value"`,
	`label ends  with "value"`,
	strings.Repeat("a", 512) + ` == "value"`,
	`has(calico/k8s_ns)`,
	`has(calico/k8s_ns/role)`,
	`has(calico/k8s_NS-.1/role)`,
	`calico/k8s_ns == "kube-system" && k8s-app == "kube-dns"`,
	`a not in {}`,
	`a not in {"a"}`,
	`a not in {"a","B"}`,
	`global()`,
	`global( )`,
	`all()`,
	`all( )`,
}

var calicoTokenizerBad = []string{
	strings.Repeat("a", 513) + ` == "value"`,
	`label == "value`,
	`label == 'value`,
	`label = "value"`,
	`all(`,
	`global(`,
	`has()`,
	`has(foo`,
	`has( foo `,
	`a == "b" & has(foo)`,
	`a == "b" | has(foo)`,
	`label starts foo "value"`,
	`label inf "value"`,
	`label ends foo "value"`,
	`label ends withs "value"`,
	`label squiggles "value"`,
	// These tokenize, but are not selectors: "in" needs a set literal.
	`a not in "bar" && !has(foo) || b in c`,
	`a  not  in  "bar"  &&  ! has( foo )  ||  b  in  c `,
	`a notin"bar"&&!has(foo)||b in"c"`,
}

// TestCalicoMatches: every selector of Calico's table parses, matches and
// fails to match as Calico's tests say, and so does its canonical form.
func TestCalicoMatches(t *testing.T) {
	for _, tt := range calicoMatchTests {
		s, err := Parse(tt.sel)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.sel, err)
			continue
		}
		s2, err := Parse(s.String())
		if err != nil {
			t.Errorf("Parse(%q) (canonical form of %q): %v", s.String(), tt.sel, err)
			continue
		}
		for _, sel := range []Selector{s, s2} {
			for _, l := range tt.expMatches {
				if !sel.Matches(l) {
					t.Errorf("%q (from %q) does not match %v", sel, tt.sel, l)
				}
			}
			for _, l := range tt.expNonMatches {
				if sel.Matches(l) {
					t.Errorf("%q (from %q) matches %v", sel, tt.sel, l)
				}
			}
		}
	}
}

// TestCalicoBad: what Calico's parser or tokenizer refuses, Margay refuses.
func TestCalicoBad(t *testing.T) {
	for _, in := range append(append([]string{}, calicoBadSelectors...), calicoTokenizerBad...) {
		if s, err := Parse(in); err == nil {
			t.Errorf("Parse(%.80q) = %q, want an error", in, s)
		} else if _, ok := err.(*ParseError); !ok {
			t.Errorf("Parse(%.80q): error %T is not a *ParseError", in, err)
		}
	}
}

// TestCalicoCanonical: Margay prints Calico's canonical form, and reads it
// back to the same selector.
func TestCalicoCanonical(t *testing.T) {
	for _, tt := range append(append([]struct{ input, expected string }{}, calicoCanonical...), calicoVisitorCanonical...) {
		s, err := Parse(tt.input)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.input, err)
			continue
		}
		if got := s.String(); got != tt.expected {
			t.Errorf("Parse(%q).String() = %q, want Calico's %q", tt.input, got, tt.expected)
		}
		s2, err := Parse(tt.expected)
		if err != nil {
			t.Errorf("Parse(%q) (Calico's canonical form): %v", tt.expected, err)
			continue
		}
		if got := s2.String(); got != tt.expected {
			t.Errorf("canonical form not stable: %q -> %q", tt.expected, got)
		}
	}
}

// TestCalicoTokenizerGood: inputs Calico's tokenizer accepts and that form
// whole selectors parse, and their canonical forms round-trip.
func TestCalicoTokenizerGood(t *testing.T) {
	for _, in := range calicoTokenizerGood {
		s, err := Parse(in)
		if err != nil {
			t.Errorf("Parse(%.80q): %v", in, err)
			continue
		}
		s2, err := Parse(s.String())
		if err != nil || s2.String() != s.String() {
			t.Errorf("canonical form of %.80q: %.80q does not round-trip (%v)", in, s, err)
		}
	}
}

// TestCalicoTableSizes guards against the tables losing cases by accident.
func TestCalicoTableSizes(t *testing.T) {
	for name, got := range map[string][2]int{
		"parser_test.go selectorTests":         {len(calicoMatchTests), 58},
		"parser_test.go badSelectors":          {len(calicoBadSelectors), 26},
		"parser_test.go canonicalisationTests": {len(calicoCanonical), 17},
		"parser_test.go Visitor table":         {len(calicoVisitorCanonical), 11},
		"tokenizer_test.go accepted":           {len(calicoTokenizerGood), 29},
		"tokenizer_test.go refused":            {len(calicoTokenizerBad), 19},
		"label_restriction_test.go":            {len(calicoRestrictions), 32},
	} {
		if got[0] != got[1] {
			t.Errorf("%s: %d cases, want %d", name, got[0], got[1])
		}
	}
}

// calicoRestriction is what Calico's LabelRestrictions says every label set
// a selector matches must have: the key present, the key absent, and (when
// oneOf is not nil) a value among oneOf.
type calicoRestriction struct {
	present, absent bool
	oneOf           []string
}

func values(vs ...string) []string { return append([]string{}, vs...) }

// calicoRestrictions is the data of labelRestrictionsTests in
// libcalico-go/lib/selector/parser/label_restriction_test.go (same commit).
var calicoRestrictions = []struct {
	sel string
	res map[string]calicoRestriction
}{
	// Base cases.
	{"", nil},
	{"all()", nil},
	{"global()", nil},
	{"a == 'value'", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("value")},
	}},
	{"has(a)", map[string]calicoRestriction{
		"a": {present: true},
	}},
	{"a in {'v1','v2'}", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("v1", "v2")},
	}},
	{"a not in {'v1','v2'}", nil},
	{"a contains 'foo'", map[string]calicoRestriction{
		"a": {present: true},
	}},
	{"a ends with 'foo'", map[string]calicoRestriction{
		"a": {present: true},
	}},
	{"a starts with 'foo'", map[string]calicoRestriction{
		"a": {present: true},
	}},
	{"a != 'value'", nil},

	// AND
	{"a == 'v1' && a == 'v1'", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("v1")},
	}},
	{"a == 'v1' && a == 'v2'", map[string]calicoRestriction{
		"a": {present: true, oneOf: values()},
	}},
	{"a == 'v1' && has(a)", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("v1")},
	}},
	{"a in {'v1','v2'} && a in {'v2','v3'} ", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("v2")},
	}},
	{"a in {'v1','v2', 'v3'} && a in {'v2','v3'} ", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("v2", "v3")},
	}},
	{"has(a) && a == 'v1'", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("v1")},
	}},
	{"has(a) && !has(a)", map[string]calicoRestriction{
		"a": {present: true, absent: true},
	}},
	{"a == 'v1' && b == 'v2'", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("v1")},
		"b": {present: true, oneOf: values("v2")},
	}},
	{"a == 'v1' && all()", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("v1")},
	}},
	{"all() && a == 'v1'", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("v1")},
	}},

	// OR
	{"a == 'v1' || a == 'v2'", map[string]calicoRestriction{
		"a": {present: true, oneOf: values("v1", "v2")},
	}},
	{"has(a) || a == 'v2'", map[string]calicoRestriction{
		"a": {present: true},
	}},
	{"a=='v2' || has(a)", map[string]calicoRestriction{
		"a": {present: true},
	}},
	{"a=='v2' || has(b)", nil},
	{"a=='v2' || (has(b) && has(a))", map[string]calicoRestriction{
		"a": {present: true},
	}},
	{"a == 'v1' || b == 'v2'", nil},
	{"a == 'v1' || all()", nil},
	{"all() || b == 'v2'", nil},

	// NOT
	{"!(a == 'value')", nil},
	{"!has(a)", map[string]calicoRestriction{
		"a": {absent: true},
	}},
	{"!!has(a)", map[string]calicoRestriction{
		"a": {present: true},
	}},
}

// TestCalicoRestrictions: Calico's label restrictions are lower bounds on
// what a selector matches; every label set (over keys a and b) that Margay
// says the selector matches must meet them, with "all() && (sel)" too.
func TestCalicoRestrictions(t *testing.T) {
	vals := []string{"", "v1", "v2", "v3", "value", "foo", "xfoo", "foox", "xfoox"}
	var probes []labels
	for i := -1; i < len(vals); i++ {
		for j := -1; j < len(vals); j++ {
			l := labels{}
			if i >= 0 {
				l["a"] = vals[i]
			}
			if j >= 0 {
				l["b"] = vals[j]
			}
			probes = append(probes, l)
		}
	}
	for _, tt := range calicoRestrictions {
		ins := []string{tt.sel}
		if tt.sel != "" {
			ins = append(ins, "all() && ("+tt.sel+")")
		}
		for _, in := range ins {
			s, err := Parse(in)
			if err != nil {
				t.Errorf("Parse(%q): %v", in, err)
				continue
			}
			for _, l := range probes {
				if !s.Matches(l) {
					continue
				}
				for k, r := range tt.res {
					v, ok := l[k]
					if r.present && !ok || r.absent && ok || r.oneOf != nil && (!ok || !slices.Contains(r.oneOf, v)) {
						t.Errorf("%q matches %v, against Calico's restriction on %s: %+v", in, l, k, r)
					}
				}
			}
		}
	}
}
