package manifest_test

import (
	"encoding/json"
	"testing"

	"github.com/margaynet/margay/control/manifest"
)

// FuzzSplit: Split never panics, and every document it returns has its index in order and
// either JSON data or an error.
func FuzzSplit(f *testing.F) {
	for _, s := range []string{
		"name: a\n",
		"---\nname: a\n---   # b next\n\nname: b\n...\n",
		"- name: a\n- name: b\n",
		"--- {name: a}\n",
		"{name: a, selector: has(x)}\n",
		`[{"name": "a"}, {"name": "b"}]`,
		`{"name": "a"} {"name": "b"}`,
		"name: a\r\n---\r\nname: b\r\n",
		"\xef\xbb\xbfname: a\n",
		"name: a\n---\n\nname: [b\n",
		"hello\n",
		"- 42\n- [1]\n- \n",
		"{\"name\": \"x\",\n  \"order\": }",
		"name: web\ningress:\n  - action: allow\n    destination:\n      ports: [80, 8000:8080]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		docs, err := manifest.Split(input)
		if err != nil && docs != nil {
			t.Fatalf("Split(%q) = %d documents and an error: %v", input, len(docs), err)
		}
		for i, d := range docs {
			if d.Index != i+1 {
				t.Fatalf("Split(%q): document %d has index %d", input, i+1, d.Index)
			}
			if d.Err == nil && !json.Valid(d.Data) {
				t.Fatalf("Split(%q): document %d has neither an error nor JSON data: %q", input, d.Index, d.Data)
			}
			if d.Line < 0 {
				t.Fatalf("Split(%q): document %d starts at line %d", input, d.Index, d.Line)
			}
			_ = d.Label("policy")
		}
	})
}
