package selector

import (
	"errors"
	"testing"
)

// literals returns the string literals in n (comparison values and set
// members), in tree order.
func literals(n node) []string {
	var out []string
	var walk func(node)
	walk = func(n node) {
		switch n := n.(type) {
		case *cmpNode:
			out = append(out, n.val)
		case *inNode:
			out = append(out, n.set...)
		case *notNode:
			walk(n.x)
		case *andNode:
			for _, t := range n.terms {
				walk(t)
			}
		case *orNode:
			for _, t := range n.terms {
				walk(t)
			}
		}
	}
	walk(n)
	return out
}

// probeLabels returns label maps that exercise s: a few fixed ones plus maps
// built from the keys s reads and the literals it contains.
func probeLabels(s Selector) []map[string]string {
	probes := []map[string]string{
		nil,
		{},
		{"a": "1"},
		{"a": "1", "b": "x"},
		{NamespaceLabel: "default"},
	}
	keys := s.Labels()
	if len(keys) == 0 {
		return probes
	}
	vals := []string{"", "no-such-value"}
	for _, l := range literals(s.p.root) {
		// The literal, and values it is a part of, for contains,
		// starts with and ends with.
		vals = append(vals, l, "x"+l, l+"x", "x"+l+"x")
	}
	if len(vals) > 18 {
		vals = vals[:18]
	}
	for i := range vals {
		// Every key set, with values rotated through the literals.
		m := make(map[string]string, len(keys))
		// The same, but leaving out every other key (offset by i).
		sparse := make(map[string]string, len(keys))
		for j, k := range keys {
			v := vals[(i+j)%len(vals)]
			m[k] = v
			if (i+j)%2 == 0 {
				sparse[k] = v
			}
		}
		probes = append(probes, m, sparse)
	}
	return probes
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		``,
		`all()`,
		`app == "web"`,
		`app == web`,
		`app != 'x"y'`,
		`has(k8s.io/app)`,
		`a in {"1", "2", '3'}`,
		`a not in {}`,
		`!a == "1"`,
		`!(has(a) || has(b)) && c in {"x"}`,
		`a == "1" || b == "1" && c == "1"`,
		`(a == "1" || b == "1") && c == "1"`,
		`has == "all" && all() || not not in {"in"}`,
		`((((has(a)))))`,
		`!!!!has(a)`,
		`a == "unterminated`,
		`a = "b"`,
		`a/b/c == "x"`,
		`has(a) &&`,
		`(has(a)`,
		`a in {"x",}`,
		`projectcalico.org/namespace == "default" && role in {"db", "cache"}`,
		`a contains "x" || b starts with 'y' && c ends with "z"`,
		`a startswith "x" && b endswith "y" || c notin {"z",}`,
		`a starts  with "x"`,
		`global()`,
		`!global() && has(_a) && .b == "1" && -c/d/e in {}`,
		`(has(a) && has(b)) && has(c)`,
		`!(!has(a))`,
		`has (a)`,
		`all ( )`,
		"a == \"1\"\n&& has(b)",
		`a ends withs "x"`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Parse(in)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse(%q): error %T is not a *ParseError", in, err)
			}
			if pe.Input != in || pe.Pos < 0 || pe.Pos > len(in) || pe.Msg == "" {
				t.Fatalf("Parse(%q): bad error %#v", in, pe)
			}
			_ = pe.Error()
			return
		}
		canon := s.String()
		s2, err := Parse(canon)
		if err != nil {
			t.Fatalf("Parse(%q) ok with canonical form %q, which does not parse: %v", in, canon, err)
		}
		if got := s2.String(); got != canon {
			t.Fatalf("canonical form not stable: %q -> %q -> %q", in, canon, got)
		}
		if s.IsAll() != s2.IsAll() {
			t.Fatalf("IsAll differs for %q and %q", in, canon)
		}
		l1, l2 := s.Labels(), s2.Labels()
		if len(l1) != len(l2) {
			t.Fatalf("Labels differ for %q and %q: %q vs %q", in, canon, l1, l2)
		}
		for i := range l1 {
			if l1[i] != l2[i] || (i > 0 && l1[i-1] >= l1[i]) {
				t.Fatalf("Labels bad for %q and %q: %q vs %q", in, canon, l1, l2)
			}
		}
		for _, l := range probeLabels(s) {
			if m1, m2 := s.Matches(l), s2.Matches(l); m1 != m2 {
				t.Fatalf("Matches(%q) differs: %q gives %v, canonical %q gives %v", l, in, m1, canon, m2)
			}
		}
	})
}
