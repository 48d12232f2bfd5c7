package manifest_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/manifest"
)

func TestSplit(t *testing.T) {
	for _, tc := range []struct {
		in    string
		names []string
		lines []int
	}{
		{"name: a\n", []string{"a"}, []int{1}},
		{"---\nname: a\n---   # b next\n\nname: b\n...\n", []string{"a", "b"}, []int{2, 5}},
		{"- name: a\n- name: b\n", []string{"a", "b"}, []int{1, 1}},
		{"--- {name: a}\n", []string{"a"}, []int{1}},
		{"{name: a, selector: has(x)}\n", []string{"a"}, []int{1}}, // YAML flow style, not JSON
		{"---\n# only a comment\n---\n", nil, nil},
		{`[{"name": "a"}, {"name": "b"}]`, []string{"a", "b"}, []int{0, 0}},
		{`{"name": "a"} {"name": "b"}`, []string{"a", "b"}, []int{0, 0}},
		{"{\"name\": \"a\"}\n{\"name\": \"b\", \"selector\": \"!has(x)\"}", []string{"a", "b"}, []int{0, 0}},
		{"name: a\r\n---\r\nname: b\r\n", []string{"a", "b"}, []int{1, 3}},
		{"name: a\nselector: \"x == '---'\"\n", []string{"a"}, []int{1}},
		{"\xef\xbb\xbfname: a\n", []string{"a"}, []int{1}},
		{"\xef\xbb\xbf[{\"name\": \"a\"}]", []string{"a"}, []int{0}},
		{"name: a\n---\nnull\n---\nname: b\n", []string{"a", "b"}, []int{1, 5}},
		{"{\"name\": 5}", []string{""}, []int{0}}, // a name that is not a string: no name
		{"", nil, nil},
	} {
		docs, err := manifest.Split([]byte(tc.in))
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		var names []string
		var lines []int
		for i, d := range docs {
			if d.Err != nil {
				t.Errorf("%q: document %d: %v", tc.in, d.Index, d.Err)
			}
			if d.Index != i+1 || !json.Valid(d.Data) {
				t.Errorf("%q: document %d has index %d, data %q", tc.in, i+1, d.Index, d.Data)
			}
			names = append(names, d.Name)
			lines = append(lines, d.Line)
		}
		if !slices.Equal(names, tc.names) || !slices.Equal(lines, tc.lines) {
			t.Errorf("%q: names %q lines %v, want %q %v", tc.in, names, lines, tc.names, tc.lines)
		}
	}
}

// TestSplitData checks that a document's JSON is the document, in YAML and in JSON.
func TestSplitData(t *testing.T) {
	docs, err := manifest.Split([]byte("name: web\nports: [80, 8000:8080]\nok: true\n"))
	if err != nil || len(docs) != 1 {
		t.Fatalf("Split = %+v, %v", docs, err)
	}
	if got, want := string(docs[0].Data), `{"name":"web","ok":true,"ports":[80,"8000:8080"]}`; got != want {
		t.Errorf("data %s, want %s", got, want)
	}
	docs, err = manifest.Split([]byte(`[{"name": "j1", "order": 5}, {"name": "j2"}]`))
	if err != nil || len(docs) != 2 || string(docs[0].Data) != `{"name": "j1", "order": 5}` || string(docs[1].Data) != `{"name": "j2"}` {
		t.Errorf("Split of a JSON array = %+v, %v", docs, err)
	}
}

// TestSplitErrors: a document that is wrong comes back with its error, and the documents around
// it still come; input that is not JSON at all is an error of Split.
func TestSplitErrors(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wantErr string   // Split's error
		docErrs []string // each document's error, "" for none
		labels  []string // each document's Label("policy")
	}{
		{in: "name: a\n---\n\nname: [b\n",
			docErrs: []string{"", "invalid YAML"},
			labels:  []string{`document 1 (policy "a")`, "document 2 (starting at line 4)"}},
		{in: "hello\n",
			docErrs: []string{`want a mapping, found a string "hello"`},
			labels:  []string{"document 1 (starting at line 1)"}},
		// A null in a list is passed on as it is: its kind's decoder says what is wrong with it.
		{in: "- name: a\n- [1, 2]\n- 42\n- \n",
			docErrs: []string{"", "want a mapping, found a list", "want a mapping, found 42", ""},
			labels:  []string{`document 1 (policy "a")`, "document 2 (starting at line 1)", "document 3 (starting at line 1)", "document 4 (starting at line 1)"}},
		{in: `[{"name": "k1"}, "k2", {"selector": "all()"}]`,
			docErrs: []string{"", `want a mapping, found a string "k2"`, ""},
			labels:  []string{`document 1 (policy "k1")`, "document 2", "document 3"}},
		{in: "{\"name\": \"x\",\n  \"order\": }", wantErr: "invalid JSON at line 2, column 13: invalid character '}'"},
		{in: `{"name": "x"`, wantErr: "invalid JSON: unexpected EOF"},
	} {
		docs, err := manifest.Split([]byte(tc.in))
		if tc.wantErr != "" {
			if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) || docs != nil {
				t.Errorf("%q: Split = %+v, %v; want error %q", tc.in, docs, err, tc.wantErr)
			}
			continue
		}
		if err != nil || len(docs) != len(tc.docErrs) {
			t.Errorf("%q: Split = %+v, %v; want %d documents", tc.in, docs, err, len(tc.docErrs))
			continue
		}
		for i, d := range docs {
			switch want := tc.docErrs[i]; {
			case want == "" && d.Err != nil, want != "" && (d.Err == nil || !strings.HasPrefix(d.Err.Error(), want)):
				t.Errorf("%q: document %d: error %v, want %q", tc.in, i+1, d.Err, want)
			}
			if got := d.Label("policy"); got != tc.labels[i] {
				t.Errorf("%q: document %d: label %q, want %q", tc.in, i+1, got, tc.labels[i])
			}
		}
	}
}

func TestNotMappingError(t *testing.T) {
	docs, err := manifest.Split([]byte("--- [[1]]\n"))
	var nm *manifest.NotMappingError
	if err != nil || len(docs) != 1 || !errors.As(docs[0].Err, &nm) || nm.Found != "a list" {
		t.Fatalf("Split = %+v, %v; want one document that is not a mapping but a list", docs, err)
	}
}

func TestLabel(t *testing.T) {
	for _, tc := range []struct {
		d    manifest.Doc
		kind string
		want string
	}{
		{manifest.Doc{Index: 2, Line: 7, Name: "web"}, "policy", `document 2 (policy "web")`},
		{manifest.Doc{Index: 2, Name: "web"}, "NetworkPolicy", `document 2 (NetworkPolicy "web")`},
		{manifest.Doc{Index: 3, Line: 7}, "policy", "document 3 (starting at line 7)"},
		{manifest.Doc{Index: 1}, "policy", "document 1"},
	} {
		if got := tc.d.Label(tc.kind); got != tc.want {
			t.Errorf("%+v.Label(%q) = %q, want %q", tc.d, tc.kind, got, tc.want)
		}
	}
}
