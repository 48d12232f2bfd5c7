package datastore

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestPolicySelectors: the policy decoder takes every selector Calico takes, in each selector
// field, and names the field and the position of a bad one.
func TestPolicySelectors(t *testing.T) {
	doc := func(sel, src, notSel string) []byte {
		b, err := json.Marshal(map[string]any{"name": "p", "selector": sel,
			"ingress": []any{map[string]any{"action": "allow",
				"source": map[string]any{"selector": src, "notSelector": notSel}}}})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, sel := range []string{
		`app contains "we" && tier starts with "b" || role ends with "e"`,
		`app startswith 'w' && role endswith "e" && tier notin {"x",}`,
		`global()`,
		`!global() && has(_private) && has(a/b/c) && .x == "1"`,
		`(app == "web" && (has(a) || has(b))) && !(!has(c))`,
		"app == 'web'\t&&\thas(x)",
	} {
		for i, d := range [][]byte{doc(sel, "", ""), doc("", sel, ""), doc("", "", sel)} {
			if _, err := DecodePolicy(d); err != nil {
				t.Errorf("field %d: DecodePolicy with selector %q: %v", i, sel, err)
			}
		}
	}
	for _, c := range []struct{ sel, want string }{
		{`app contains web`, `position 13: expected a quoted string, found "web"`},
		{`all ()`, `position 4: no blank allowed between "all" and "("`},
		{"has(a)\n&& has(b)", `position 6: unexpected character "\n"`},
		{`app starts "w"`, `position 11: expected "with" after "starts"`},
	} {
		for i, c2 := range []struct {
			d     []byte
			field string
		}{{doc(c.sel, "", ""), "selector: "}, {doc("", c.sel, ""), "source: selector: "}, {doc("", "", c.sel), "source: notSelector: "}} {
			_, err := DecodePolicy(c2.d)
			if err == nil || !strings.Contains(err.Error(), c2.field) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("field %d: DecodePolicy with selector %q = %v, want an error with %q and %q", i, c.sel, err, c2.field, c.want)
			}
		}
	}
}
