package resource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
)

// Encode writes r as canonical JSON: kind and apiVersion first, then metadata and spec in
// Calico's field order, with Calico's field names, and without the fields Calico leaves out
// when empty, so that it converts to the YAML calicoctl get -o yaml prints (sigs.k8s.io/yaml
// sorts the keys). Ports, protocols and AS numbers take their canonical forms (80, "TCP",
// 64512); empty lists and maps are left out. Decode(Encode(r)) gives r back for every r that
// Decode returned.
func Encode(r Resource) ([]byte, error) {
	if r == nil || reflect.ValueOf(r).IsNil() {
		return nil, errors.New("resource: encode a nil resource")
	}
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	enc.SetEscapeHTML(false) // selectors hold && and <: keep them readable
	if err := enc.Encode(r); err != nil {
		return nil, fmt.Errorf("resource: encode %s %q: %w", r.Kind(), r.Metadata().Name, err)
	}
	// body is {"metadata":{...},"spec":{...}}\n: metadata, never left out, comes first.
	fields := bytes.TrimSuffix(body.Bytes(), []byte("\n"))[1:]
	// Kinds are plain words: no quoting needed.
	out := []byte(`{"kind":"` + string(r.Kind()) + `","apiVersion":"` + APIVersion + `",`)
	return append(out, fields...), nil
}
