package resource

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzDecode checks that Decode never panics, that its errors say something, and that what it
// accepts encodes and decodes to itself, validates without panicking, and gets its defaults
// without being changed.
func FuzzDecode(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "calico-docs", "*.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	var manifests []string
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		manifests = append(manifests, string(b))
	}
	for _, m := range everyField {
		manifests = append(manifests, m)
	}
	for _, tt := range goodManifests {
		manifests = append(manifests, tt.doc)
	}
	for _, m := range manifests {
		doc, err := yaml.YAMLToJSON([]byte(m))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(doc)
	}
	for _, tt := range badManifests {
		if tt.json {
			f.Add([]byte(tt.doc))
		} else if doc, err := yaml.YAMLToJSON([]byte(tt.doc)); err == nil {
			f.Add(doc)
		}
	}

	f.Fuzz(func(t *testing.T, doc []byte) {
		r, err := Decode(doc)
		if err != nil {
			if r != nil {
				t.Fatalf("Decode returned a resource with its error %v", err)
			}
			checkErrors(t, err)
			return
		}
		roundTrip(t, r)
		if err := r.Validate(); err != nil {
			checkErrors(t, err)
		}
		before, err := Encode(r)
		if err != nil {
			t.Fatal(err)
		}
		d := Defaulted(r)
		if after, _ := Encode(r); !bytes.Equal(before, after) {
			t.Fatalf("Defaulted changed its argument:\n%s\n%s", before, after)
		}
		if r.Validate() == nil {
			// A valid resource stays valid, and readable, with its defaults.
			if err := d.Validate(); err != nil {
				t.Fatalf("Validate after Defaulted: %v", err)
			}
			roundTrip(t, d)
		}
	})
}

// checkErrors checks that err joins *FieldError values that say what is wrong.
func checkErrors(t *testing.T, err error) {
	t.Helper()
	if err.Error() == "" {
		t.Fatal("empty error")
	}
	for _, fe := range fieldErrors(t, err) {
		if fe.Reason == "" {
			t.Fatalf("error without a reason at %q", fe.Path)
		}
		if errors.Is(fe, ErrUnsupported) && fe.Path == "" {
			t.Fatalf("%q: not supported, but names no field", fe)
		}
	}
}
