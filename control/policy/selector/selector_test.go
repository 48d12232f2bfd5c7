package selector

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

type labels = map[string]string

func TestMatches(t *testing.T) {
	tests := []struct {
		sel  string
		l    labels
		want bool
	}{
		{"", nil, true},
		{"  \t ", labels{"a": "1"}, true},
		{"all()", nil, true},
		{"all()", labels{"a": "1"}, true},
		{"all( )", labels{}, true},
		{"global()", labels{"a": "1"}, true},
		{"global()", labels{NamespaceLabel: "default"}, false},
		{"!global()", labels{NamespaceLabel: ""}, true},
		{"( global() )", nil, true},

		{`a == "1"`, labels{"a": "1"}, true},
		{`a == "1"`, labels{"a": "2"}, false},
		{`a == "1"`, labels{}, false},
		{`a == "1"`, nil, false},
		{`a == ""`, labels{"a": ""}, true},
		{`a == ""`, labels{}, false},
		{`a == 'x"y'`, labels{"a": `x"y`}, true},
		{`a == "x'y"`, labels{"a": `x'y`}, true},
		{`a=="1"`, labels{"a": "1"}, true},

		{`a != "1"`, labels{"a": "1"}, false},
		{`a != "1"`, labels{"a": "2"}, true},
		{`a != "1"`, labels{}, true},
		{`a != "1"`, nil, true},
		{`a != ""`, labels{"a": ""}, false},

		{`has(a)`, labels{"a": ""}, true},
		{`has(a)`, labels{"b": "a"}, false},
		{`has( a )`, labels{"a": "x"}, true},
		{`!has(a)`, labels{"b": "a"}, true},
		{`!has(a)`, labels{"a": "1"}, false},

		{`a in {"1", "2"}`, labels{"a": "1"}, true},
		{`a in {"1", "2"}`, labels{"a": "2"}, true},
		{`a in {"1", "2"}`, labels{"a": "3"}, false},
		{`a in {"1", "2"}`, labels{}, false},
		{`a in {}`, labels{"a": ""}, false},
		{`a in {}`, labels{}, false},
		{`a in {''}`, labels{"a": ""}, true},

		{`a not in {"1", "2"}`, labels{"a": "1"}, false},
		{`a not in {"1", "2"}`, labels{"a": "3"}, true},
		{`a not in {"1", "2"}`, labels{}, true},
		{`a not in {}`, labels{"a": "1"}, true},
		{`a not in {}`, labels{}, true},

		{`!a == "1"`, labels{"a": "1"}, false},
		{`!a == "1"`, labels{"a": "2"}, true},
		{`!a == "1"`, labels{}, true},
		{`!!a == "1"`, labels{"a": "1"}, true},
		{`!all()`, labels{}, false},

		{`a == "1" && b == "2"`, labels{"a": "1", "b": "2"}, true},
		{`a == "1" && b == "2"`, labels{"a": "1"}, false},
		{`a == "1" && b == "2"`, labels{"b": "2"}, false},
		{`a == "1" || b == "2"`, labels{"b": "2"}, true},
		{`a == "1" || b == "2"`, labels{"a": "1"}, true},
		{`a == "1" || b == "2"`, labels{"a": "2", "b": "1"}, false},

		// "&&" binds tighter than "||".
		{`a == "1" || b == "1" && c == "1"`, labels{"a": "1"}, true},
		{`a == "1" || b == "1" && c == "1"`, labels{"b": "1"}, false},
		{`a == "1" || b == "1" && c == "1"`, labels{"b": "1", "c": "1"}, true},
		{`b == "1" && c == "1" || a == "1"`, labels{"a": "1"}, true},
		{`(a == "1" || b == "1") && c == "1"`, labels{"a": "1"}, false},
		{`(a == "1" || b == "1") && c == "1"`, labels{"a": "1", "c": "1"}, true},
		// "!" binds tighter than "&&" and "||".
		{`!has(a) && has(b)`, labels{"b": "1"}, true},
		{`!has(a) && has(b)`, labels{}, false},
		{`!(has(a) && has(b))`, labels{}, true},
		{`!has(a) || has(b)`, labels{"a": "1"}, false},
		{`!(has(a) || has(b))`, labels{"b": "1"}, false},

		// Keywords are usable as label keys.
		{`has == "x"`, labels{"has": "x"}, true},
		{`has(has)`, labels{"has": "x"}, true},
		{`all == "x" || in in {"y"} || not not in {"z"}`, labels{"not": "z"}, false},
		{`all == "x" || in in {"y"} || not not in {"z"}`, labels{"in": "y", "not": "z"}, true},

		{`a contains "b"`, labels{"a": "abc"}, true},
		{`a contains "b"`, labels{"a": "ac"}, false},
		{`a contains ""`, labels{"a": ""}, true},
		{`a contains ""`, labels{}, false},
		{`a starts with "ab"`, labels{"a": "abc"}, true},
		{`a starts with "ab"`, labels{"a": "cab"}, false},
		{`a startswith "ab"`, labels{"a": "ab"}, true},
		{`a starts	with ""`, labels{"a": "x"}, true},
		{`a starts with ""`, labels{"b": "x"}, false},
		{`a ends with "bc"`, labels{"a": "abc"}, true},
		{`a ends with "bc"`, labels{"a": "bca"}, false},
		{`a endswith "bc"`, labels{"a": "bc"}, true},
		{`!a ends with "bc"`, labels{}, true},
		{`a contains "'" && b contains '"'`, labels{"a": "x'y", "b": `x"y`}, true},
		{`a notin {"x"}`, labels{"a": "y"}, true},
		{`a in {"x",}`, labels{"a": "x"}, true},
		{`contains contains "s" && starts starts with "s" && ends ends with "s"`,
			labels{"contains": "s", "starts": "s", "ends": "s"}, true},

		// Keys as Calico's tokenizer takes them.
		{`_a == "1" && -b == "2" && .c == "3"`, labels{"_a": "1", "-b": "2", ".c": "3"}, true},
		{`has(a/b/c) && has(/x) && has(y/)`, labels{"a/b/c": "", "/x": "", "y/": ""}, true},
		{`has(1) && has(-) && has(.) && has(/)`, labels{"1": "", "-": "", ".": "", "/": ""}, true},
		{`has(` + strings.Repeat("p", 300) + `/n)`, labels{strings.Repeat("p", 300) + "/n": ""}, true},

		// Prefixed keys.
		{`k8s.io/app == "web"`, labels{"k8s.io/app": "web"}, true},
		{`projectcalico.org/namespace in {"a","b"}`, labels{"projectcalico.org/namespace": "b"}, true},
	}
	for _, tt := range tests {
		s, err := Parse(tt.sel)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.sel, err)
			continue
		}
		if got := s.Matches(tt.l); got != tt.want {
			t.Errorf("Parse(%q).Matches(%v) = %v, want %v", tt.sel, tt.l, got, tt.want)
		}
	}
}

func TestZeroSelector(t *testing.T) {
	var s Selector
	if !s.Matches(nil) || !s.Matches(labels{"a": "b"}) {
		t.Error("zero Selector does not match everything")
	}
	if !s.IsAll() {
		t.Error("zero Selector: IsAll() = false")
	}
	if got := s.String(); got != "all()" {
		t.Errorf("zero Selector: String() = %q", got)
	}
	if got := s.Labels(); got != nil {
		t.Errorf("zero Selector: Labels() = %q", got)
	}
}

func TestIsAll(t *testing.T) {
	for sel, want := range map[string]bool{
		"":                true,
		" ":               true,
		"all()":           true,
		" ( ( all() ) ) ": true,
		"!all()":          false,
		"all() && all()":  false,
		`has(a)`:          false,
		`a not in {}`:     false,
		`all() || has(a)`: false,
		`all == "x"`:      false,
		`(all())`:         true,
		"\t all(\t) ":     true,
		"global()":        false,
	} {
		if got := MustParse(sel).IsAll(); got != want {
			t.Errorf("MustParse(%q).IsAll() = %v, want %v", sel, got, want)
		}
	}
}

func TestString(t *testing.T) {
	tests := []struct{ in, want string }{
		{``, `all()`},
		{` all( ) `, `all()`},
		{`global( )`, `global()`},
		{`!global()`, `!global()`},
		{`a=="1"`, `a == "1"`},
		{`a == '1'`, `a == "1"`},
		{`a == 'x"y'`, `a == 'x"y'`},
		{`a == "x'y"`, `a == "x'y"`},
		{`a!='1'`, `a != "1"`},
		{`has(  a  )`, `has(a)`},
		{`a in {"b","a","b", 'c'}`, `a in {"a", "b", "c"}`},
		{`a in {}`, `a in {}`},
		{`a in { }`, `a in {}`},
		{`a not   in {"x",'x'}`, `a not in {"x"}`},
		{`a in {'"', "'"}`, `a in {'"', "'"}`},
		{`!a == "1"`, `!a == "1"`},
		{`!(a == "1")`, `!a == "1"`},
		{`!!has(a)`, `has(a)`},
		{`!!!has(a)`, `!has(a)`},
		{`!(!has(a))`, `has(a)`},
		{`!(!(!has(a)))`, `!has(a)`},
		{`!(!has(a) && has(b))`, `!(!has(a) && has(b))`},
		{`!(!(has(a)))`, `has(a)`},
		{`((has(a)))`, `has(a)`},
		{`has(a)&&has(b)||has(c)`, `((has(a) && has(b)) || has(c))`},
		{`(has(a)&&has(b))||has(c)`, `((has(a) && has(b)) || has(c))`},
		{`has(a) || (has(b) && has(c))`, `(has(a) || (has(b) && has(c)))`},
		{`(has(a) || has(b)) && has(c)`, `((has(a) || has(b)) && has(c))`},
		{`has(a) && (has(b) || has(c))`, `(has(a) && (has(b) || has(c)))`},
		{`has(a) && has(b) && has(c)`, `(has(a) && has(b) && has(c))`},
		// As in Calico, parentheses keep a chain a term of its own.
		{`has(a) && (has(b) && has(c))`, `(has(a) && (has(b) && has(c)))`},
		{`(has(a) || has(b)) || (has(c) || has(d))`, `((has(a) || has(b)) || (has(c) || has(d)))`},
		{`((has(a) || has(b)))`, `(has(a) || has(b))`},
		{`!(has(a) && has(b))`, `!(has(a) && has(b))`},
		{`!(has(a) || has(b))`, `!(has(a) || has(b))`},
		{`!((has(a) || has(b)))`, `!(has(a) || has(b))`},
		{`!(has(a)) && !(has(b))`, `(!has(a) && !has(b))`},
		{`all() && has(a)`, `(all() && has(a))`},
		{`a contains"x"`, `a contains "x"`},
		{`a startswith 'x'`, `a starts with "x"`},
		{"a starts \t with 'x'", `a starts with "x"`},
		{`a endswith "x'"`, `a ends with "x'"`},
		{`a ends with '"'`, `a ends with '"'`},
		{`a notin {"x",}`, `a not in {"x"}`},
		{`_a/b/c == "1"`, `_a/b/c == "1"`},
		{`has == "x"`, `has == "x"`},
		{`all=="x"`, `all == "x"`},
		{`not not in{}`, `not not in {}`},
		{`in in{"in"}`, `in in {"in"}`},
		{`a == "multi
line"`, `a == "multi
line"`},
		{`a == "héllo"`, `a == "héllo"`},
	}
	for _, tt := range tests {
		s, err := Parse(tt.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tt.in, err)
			continue
		}
		got := s.String()
		if got != tt.want {
			t.Errorf("Parse(%q).String() = %q, want %q", tt.in, got, tt.want)
			continue
		}
		s2, err := Parse(got)
		if err != nil {
			t.Errorf("Parse(%q) (canonical form of %q): %v", got, tt.in, err)
			continue
		}
		if got2 := s2.String(); got2 != got {
			t.Errorf("canonical form not stable: %q -> %q -> %q", tt.in, got, got2)
		}
	}
}

func TestLabels(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{``, nil},
		{`all()`, nil},
		{`!all()`, nil},
		{`has(a)`, []string{"a"}},
		{`b == "1" && a != "2" || c in {} || !(d not in {"x"}) && has(b) && a == "x"`, []string{"a", "b", "c", "d"}},
		{`x/y == "1" && x == "1" && y == "1"`, []string{"x", "x/y", "y"}},
		{`has == "all" && has(in)`, []string{"has", "in"}},
		{`global() || a contains "x" || b starts with "y" || c ends with "z"`, []string{"a", "b", "c", NamespaceLabel}},
	}
	for _, tt := range tests {
		s := MustParse(tt.in)
		got := s.Labels()
		if !slices.Equal(got, tt.want) || (got == nil) != (tt.want == nil) {
			t.Errorf("MustParse(%q).Labels() = %q, want %q", tt.in, got, tt.want)
		}
		// The result must be a copy.
		if len(got) > 0 {
			got[0] = "mutated"
			if s.Labels()[0] == "mutated" {
				t.Errorf("MustParse(%q).Labels() returns shared slice", tt.in)
			}
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in      string
		pos     int
		msgPart string // substring of Msg
	}{
		{`app == web`, 7, `expected a quoted string, found "web"`},
		{`app ==`, 6, `expected a quoted string, found end of input`},
		{`app == "web`, 7, `unterminated string (missing closing ")`},
		{`app == 'web`, 7, `unterminated string (missing closing ')`},
		{`app = "web"`, 4, `unexpected "=" (did you mean "=="?)`},
		{`has(a) & has(b)`, 7, `unexpected "&" (did you mean "&&"?)`},
		{`has(a) | has(b)`, 7, `unexpected "|" (did you mean "||"?)`},
		{`app == "web" @`, 13, `unexpected character "@"`},
		{`app == "web" é`, 13, `unexpected character "é"`},
		{`app`, 3, `expected "==", "!=", "contains", "starts with", "ends with", "in" or "not in" after label key, found end of input`},
		{`app web`, 4, `expected "==", "!=", "contains", "starts with", "ends with", "in" or "not in" after label key, found "web"`},
		{`app starts "x"`, 11, `expected "with" after "starts", found string "x"`},
		{`app ends withs "x"`, 9, `expected "with" after "ends", found "withs"`},
		{`app startswith x`, 15, `expected a quoted string, found "x"`},
		{`app contains {"x"}`, 13, `expected a quoted string, found "{"`},
		{`app in {"x" "y"`, 12, `expected "," or "}" to close "{" at position 7, found string "y"`},
		{`app in {,}`, 8, `expected a quoted string or "}" to close "{" at position 7, found ","`},
		{`app in {"x",,}`, 12, `expected a quoted string or "}" to close "{" at position 7, found ","`},
		{`all ()`, 4, `no blank allowed between "all" and "("`},
		{`has (a)`, 4, `no blank allowed between "has" and "("`},
		{`global ()`, 7, `no blank allowed between "global" and "("`},
		{`global(x)`, 7, `expected ")" to close "global(" at position 0, found "x"`},
		{"has(a)\n&& has(b)", 6, `unexpected character "\n" (only spaces and tabs may separate tokens)`},
		{"has(a)\r", 6, `unexpected character "\r"`},
		{`app not {"x"}`, 8, `expected "in" after "not", found "{"`},
		{`app in "x"`, 7, `expected "{", found string "x"`},
		{`app in {"x"`, 11, `expected "," or "}" to close "{" at position 7, found end of input`},
		{`app in {x}`, 8, `expected a quoted string or "}" to close "{" at position 7, found "x"`},
		{`(app == "x"`, 11, `expected ")" to close "(" at position 0, found end of input`},
		{`((app == "x") && has(b)`, 23, `expected ")" to close "(" at position 0, found end of input`},
		{`has(app`, 7, `expected ")" to close "has(" at position 0, found end of input`},
		{`has()`, 4, `expected a label key, found ")"`},
		{`has("app")`, 4, `expected a label key, found string "app"`},
		{`all(x)`, 4, `expected ")" to close "all(" at position 0, found "x"`},
		{`app == "x")`, 10, `unmatched ")"`},
		{`app == "x" has(b)`, 11, `expected "&&", "||" or end of input, found "has"`},
		{`app == "x" "y"`, 11, `expected "&&", "||" or end of input, found string "y"`},
		{`&& has(a)`, 0, `expected an expression, found "&&"`},
		{`has(a) &&`, 9, `expected an expression, found end of input`},
		{`has(a) && || has(b)`, 10, `expected an expression, found "||"`},
		{`has(a) ||`, 9, `expected an expression, found end of input`},
		{`has(a) || && has(b)`, 10, `expected an expression, found "&&"`},
		{`()`, 1, `expected an expression, found ")"`},
		{`!`, 1, `expected an expression, found end of input`},
		{`"a" == "b"`, 0, `expected an expression, found string "a"`},
		{`has(` + strings.Repeat("k", 513) + `)`, 4, `label key "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk"... is 513 bytes long, more than the maximum of 512`},
		{strings.Repeat("k", 513) + ` == "x"`, 0, `is 513 bytes long, more than the maximum of 512`},
		{`a == "x" && ` + strings.Repeat("k", 513) + ` == "x"`, 12, `is 513 bytes long`},
		{strings.Repeat("(", MaxDepth+1) + "all()" + strings.Repeat(")", MaxDepth+1), MaxDepth, `nested too deeply`},
		{strings.Repeat("!(", MaxDepth+1) + "!all()" + strings.Repeat(")", MaxDepth+1), 2*MaxDepth + 1, `nested too deeply (more than 512 levels of parentheses)`},
		{strings.Repeat(" ", MaxLength+1), MaxLength, `more than the maximum of 16384`},
		// Within the input limit, but too long in canonical form.
		{strings.Repeat(`a==""||`, (MaxLength-5)/7) + `a==""`, 0, `bytes long in canonical form`},
	}
	for _, tt := range tests {
		s, err := Parse(tt.in)
		if err == nil {
			t.Errorf("Parse(%.80q) = %.80q, want error", tt.in, s)
			continue
		}
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("Parse(%.80q): error %T is not a *ParseError", tt.in, err)
			continue
		}
		if pe.Input != tt.in {
			t.Errorf("Parse(%.80q): error Input = %.80q", tt.in, pe.Input)
		}
		if pe.Pos != tt.pos || !strings.Contains(pe.Msg, tt.msgPart) {
			t.Errorf("Parse(%.80q): got position %d: %q; want position %d: %q", tt.in, pe.Pos, pe.Msg, tt.pos, tt.msgPart)
		}
		if msg := err.Error(); strings.Contains(msg, "\n") && !strings.Contains(tt.in, "\n") {
			t.Errorf("Parse(%.80q): multi-line error %q", tt.in, msg)
		}
	}
}

func TestErrorString(t *testing.T) {
	_, err := Parse("app == web")
	want := `selector "app == web": position 7: expected a quoted string, found "web"`
	if err == nil || err.Error() != want {
		t.Errorf("Parse error = %v, want %s", err, want)
	}

	long := strings.Repeat("x", 500) + " == y"
	_, err = Parse(long)
	if err == nil {
		t.Fatal("Parse(long) succeeded")
	}
	if got := err.Error(); len(got) > 300 || !strings.Contains(got, `..."`) && !strings.Contains(got, `"...`) {
		t.Errorf("long input error not abbreviated: %q", got)
	}
}

func TestLimits(t *testing.T) {
	// Exactly MaxDepth levels is allowed and round-trips.
	for _, in := range []string{
		strings.Repeat("(", MaxDepth) + "all()" + strings.Repeat(")", MaxDepth),
		strings.Repeat("!", MaxDepth) + "all()",
		strings.Repeat("!(has(a) || ", MaxDepth/2) + "has(b)" + strings.Repeat(")", MaxDepth/2),
	} {
		s, err := Parse(in)
		if err != nil {
			t.Errorf("Parse(%.40q...): %v", in, err)
			continue
		}
		if _, err := Parse(s.String()); err != nil {
			t.Errorf("Parse(String()) of %.40q...: %v", in, err)
		}
	}

	// Exactly MaxLength bytes is allowed.
	in := `a == "` + strings.Repeat("x", MaxLength-7) + `"`
	if len(in) != MaxLength {
		t.Fatalf("bad test: len %d", len(in))
	}
	s, err := Parse(in)
	if err != nil {
		t.Fatalf("Parse of %d-byte selector: %v", len(in), err)
	}
	if s.String() != in {
		t.Errorf("String() of long selector changed")
	}

	// Long chains are flattened and evaluated without deep recursion.
	chain := strings.Repeat(`has(a)&&`, 1000) + `has(b)`
	s = MustParse(chain)
	if !s.Matches(labels{"a": "", "b": ""}) || s.Matches(labels{"a": ""}) {
		t.Error("long && chain matches wrongly")
	}
}

func TestMustParse(t *testing.T) {
	defer func() {
		r := recover()
		if _, ok := r.(*ParseError); !ok {
			t.Errorf("MustParse panic value = %#v, want *ParseError", r)
		}
	}()
	MustParse("app ==")
}

func TestSelectorCopyAndCompare(t *testing.T) {
	s := MustParse(`has(a)`)
	c := s
	if c != s || c.String() != s.String() {
		t.Error("copies differ")
	}
	if MustParse(`has(a)`) == s {
		t.Error("separately parsed selectors compare equal with ==")
	}
}

// TestCalicoDifferences pins down where Margay knowingly departs from
// Calico's parser and evaluator; see the package documentation.
func TestCalicoDifferences(t *testing.T) {
	// Calico prints !(!has(a)) as !!has(a), which its parser reads as
	// has(a); Margay prints has(a) straight away.
	if got := MustParse(`!(!has(a))`).String(); got != `has(a)` {
		t.Errorf("!(!has(a)) prints as %q", got)
	}
	// Calico's evaluator takes global() as true, and gives it its meaning by
	// rewriting a namespaceSelector global() to !has(projectcalico.org/namespace);
	// Margay gives it that meaning wherever it appears.
	g := MustParse(`global()`)
	if !g.Matches(nil) || g.Matches(labels{NamespaceLabel: "default"}) {
		t.Error("global() does not mean \"not namespaced\"")
	}
	// Calico has no depth limit; Margay's is above what fits in Calico's
	// 1024-byte selector fields.
	deep := strings.Repeat("(", 509) + "all()" + strings.Repeat(")", 509)
	if len(deep) > 1024 {
		t.Fatalf("bad test: %d bytes", len(deep))
	}
	if _, err := Parse(deep); err != nil {
		t.Errorf("509 levels of parentheses: %v", err)
	}
}
