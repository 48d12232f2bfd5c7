package selector

import "testing"

// TestCompose: the selectors Calico builds for namespaces and service accounts print as Calico
// prints the same trees, and match as those do.
func TestCompose(t *testing.T) {
	for _, c := range []struct {
		got  Selector
		want string
	}{
		{MustParse(`team == "a"`).Prefixed("pcns.", NamespaceLabel), `pcns.team == "a"`},
		{MustParse(`all()`).Prefixed("pcns.", NamespaceLabel), `has(projectcalico.org/namespace)`},
		{MustParse(`all()`).Prefixed("pcsa.", ""), `all()`},
		{MustParse(`global()`).Prefixed("pcns.", NamespaceLabel), `global()`},
		{MustParse(`!has(a) && (b in {"x", "y"} || c not in {"z"}) && d starts with "q"`).Prefixed("pcsa.", ""),
			`(!has(pcsa.a) && (pcsa.b in {"x", "y"} || pcsa.c not in {"z"}) && pcsa.d starts with "q")`},
		{And(Equal(NamespaceLabel, "prod"), MustParse(`app == "web"`)), `(projectcalico.org/namespace == "prod" && app == "web")`},
		{And(Equal(NamespaceLabel, "prod"), MustParse(`a == "1" && b == "2"`)),
			`(projectcalico.org/namespace == "prod" && (a == "1" && b == "2"))`},
		{And(MustParse(""), MustParse("all()")), `all()`},
		{And(MustParse(""), Has("x")), `has(x)`},
		{In("k", []string{"b", "a", "b"}), `k in {"a", "b"}`},
	} {
		if c.got.String() != c.want {
			t.Errorf("got %s, want %s", c.got, c.want)
		}
		// Calico's parser reads the printed form back to the same tree: so does ours.
		if back, err := Parse(c.got.String()); err != nil || back.String() != c.want {
			t.Errorf("%s parses back as %v, %v", c.want, back, err)
		}
	}
	ns := MustParse(`team == "a"`).Prefixed("pcns.", NamespaceLabel)
	if !ns.Matches(map[string]string{"pcns.team": "a"}) || ns.Matches(map[string]string{"team": "a"}) {
		t.Error("a prefixed selector matches the prefixed labels only")
	}
	all := MustParse("all()").Prefixed("pcns.", NamespaceLabel)
	if all.Matches(map[string]string{}) || !all.Matches(map[string]string{NamespaceLabel: "x"}) {
		t.Error("namespaceSelector all() matches the workloads in a namespace only")
	}
}
