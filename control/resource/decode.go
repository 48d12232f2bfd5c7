package resource

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
)

// unsupportedKinds are the projectcalico.org/v3 kinds Calico has and Margay does not read.
var unsupportedKinds = map[string]string{
	"BGPFilter":                     "Margay has no BGP filters",
	"CalicoNodeStatus":              "margayctl node status shows the BGP sessions",
	"ClusterInformation":            "Calico writes it for itself",
	"FelixConfiguration":            "the agent's flags configure Margay",
	"GlobalNetworkSet":              "Margay has no network sets",
	"HostEndpoint":                  "Margay has no host endpoints",
	"IPAMConfiguration":             "Margay's IPAM has no such settings",
	"IPReservation":                 "Margay has no IP reservations",
	"KubeControllersConfiguration":  "Margay has no Calico kube-controllers",
	"NetworkSet":                    "Margay has no network sets",
	"StagedGlobalNetworkPolicy":     "Margay has no staged policies",
	"StagedKubernetesNetworkPolicy": "Margay has no staged policies",
	"StagedNetworkPolicy":           "Margay has no staged policies",
}

// Decode reads one projectcalico.org/v3 resource from a JSON document, strictly, as calicoctl
// apply -f reads one: the apiVersion and kind must be known, and every field must be one the
// kind has (field names match as in calicoctl: exactly, else ignoring case), with a value of
// its type. The name in metadata is required and checked, and so is the namespace: a
// namespaced resource without one gets DefaultNamespace, any other must have none.
//
// Decode does not run Validate: a decoded resource is well-formed, not necessarily valid. Its
// errors are *FieldError values naming the field, all of them (errors.Join).
func Decode(doc []byte) (Resource, error) {
	var errs errList
	root, err := parseJSON(doc, &errs)
	if err != nil {
		return nil, &FieldError{Reason: err.Error()}
	}
	if root.kind != jsonObject {
		return nil, &FieldError{Reason: "the document is " + root.describe() + ", not a resource (an object with apiVersion, kind, metadata and spec)"}
	}
	r, rest := resourceOf(root, &errs)
	if r == nil {
		return nil, errs.err()
	}
	d := decoder{errs: &errs}
	d.structFields("", &jsonValue{kind: jsonObject, members: rest}, reflect.ValueOf(r).Elem())
	if len(errs) > 0 {
		return nil, errs.err()
	}
	meta := r.Metadata()
	if r.Kind().Namespaced() && meta.Namespace == "" {
		meta.Namespace = DefaultNamespace
	}
	validateMeta(&errs, r.Kind(), meta)
	if len(errs) > 0 {
		return nil, errs.err()
	}
	return r, nil
}

// resourceOf reads apiVersion and kind and returns an empty resource of that kind with the
// other members of the document, or nil when apiVersion or kind is wrong.
func resourceOf(root *jsonValue, errs *errList) (Resource, []jsonMember) {
	var apiVersion, kind *jsonValue
	var rest []jsonMember
	for _, m := range root.members {
		switch m.key {
		case "apiVersion":
			apiVersion = m.value
		case "kind":
			kind = m.value
		default:
			rest = append(rest, m)
		}
	}
	n := len(*errs)
	switch {
	case apiVersion == nil:
		errs.addf("apiVersion", "required (%s)", APIVersion)
	case apiVersion.kind != jsonString:
		errs.addf("apiVersion", "expected a string, got %s", apiVersion.describe())
	case apiVersion.text != APIVersion:
		errs.addf("apiVersion", "%q is not supported: want %s", apiVersion.text, APIVersion)
	}
	var r Resource
	switch {
	case kind == nil:
		errs.addf("kind", "required (one of %s)", kindList())
	case kind.kind != jsonString:
		errs.addf("kind", "expected a string, got %s", kind.describe())
	default:
		if r = New(Kind(kind.text)); r != nil {
			break
		}
		if why, ok := unsupportedKinds[kind.text]; ok {
			errs.unsupported("kind", kind.text+": "+why)
		} else if strings.HasSuffix(kind.text, "List") {
			errs.addf("kind", "%q: a list; give each resource as a document of its own", kind.text)
		} else {
			errs.addf("kind", "%q is not a %s kind: want one of %s", kind.text, APIVersion, kindList())
		}
	}
	if len(*errs) > n {
		return nil, nil
	}
	return r, rest
}

func kindList() string {
	var names []string
	for _, k := range Kinds() {
		names = append(names, string(k))
	}
	return strings.Join(names, ", ")
}

// valueDecoder is implemented by the types whose JSON form is not that of their Go type
// (ports, protocols, AS numbers, durations, timestamps).
type valueDecoder interface {
	decodeJSON(v *jsonValue) error
}

// decoder fills Go values from parsed JSON by reflection, recording every problem with its
// path. JSON null leaves a value unset, as Kubernetes decoding does; an empty list or object
// leaves a slice or map nil, so that a decoded resource encodes and decodes to itself.
type decoder struct {
	errs *errList
}

func (d decoder) value(at path, v *jsonValue, rv reflect.Value) {
	if v.kind == jsonNull {
		return
	}
	if vd, ok := rv.Addr().Interface().(valueDecoder); ok {
		if err := vd.decodeJSON(v); err != nil {
			d.errs.addf(at, "%s", err)
		}
		return
	}
	switch rv.Kind() {
	case reflect.Pointer:
		p := reflect.New(rv.Type().Elem())
		d.value(at, v, p.Elem())
		rv.Set(p)
	case reflect.Struct:
		d.structFields(at, v, rv)
	case reflect.Slice:
		d.slice(at, v, rv)
	case reflect.Map:
		d.stringMap(at, v, rv)
	case reflect.String:
		if v.kind != jsonString {
			d.errs.addf(at, "expected a string, got %s", v.describe())
			return
		}
		rv.SetString(v.text)
	case reflect.Bool:
		if v.kind != jsonBool {
			d.errs.addf(at, "expected true or false, got %s", v.describe())
			return
		}
		rv.SetBool(v.text == "true")
	case reflect.Int, reflect.Int32, reflect.Int64:
		if n, ok := d.integer(at, v, rv.Type()); ok {
			rv.SetInt(n)
		}
	case reflect.Uint8, reflect.Uint16, reflect.Uint32:
		if n, ok := d.integer(at, v, rv.Type()); ok {
			rv.SetUint(uint64(n))
		}
	case reflect.Float64:
		if v.kind != jsonNumber {
			d.errs.addf(at, "expected a number, got %s", v.describe())
			return
		}
		f, err := strconv.ParseFloat(v.text, 64)
		if err != nil {
			d.errs.addf(at, "%s is out of range", v.text)
			return
		}
		rv.SetFloat(f)
	default:
		panic("resource: cannot decode into " + rv.Type().String())
	}
}

// integer reads an integer of type t (a signed or unsigned integer type of at most 64 bits).
func (d decoder) integer(at path, v *jsonValue, t reflect.Type) (int64, bool) {
	n, err := parseInteger(v, t)
	if err != nil {
		d.errs.addf(at, "%s", err)
		return 0, false
	}
	return n, true
}

func parseInteger(v *jsonValue, t reflect.Type) (int64, error) {
	if v.kind != jsonNumber {
		return 0, errors.New("expected an integer, got " + v.describe())
	}
	n, err := strconv.ParseInt(v.text, 10, 64)
	if errors.Is(err, strconv.ErrRange) {
		return 0, errors.New(v.text + " is out of range")
	}
	if err != nil {
		return 0, errors.New("expected an integer, got " + v.describe())
	}
	if t.Bits() == 64 {
		return n, nil
	}
	lo, hi := int64(-1)<<(t.Bits()-1), int64(1)<<(t.Bits()-1)-1
	if t.Kind() != reflect.Int && t.Kind() != reflect.Int32 {
		lo, hi = 0, int64(1)<<t.Bits()-1
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("%s is out of range (%d to %d)", v.text, lo, hi)
	}
	return n, nil
}

func (d decoder) slice(at path, v *jsonValue, rv reflect.Value) {
	if v.kind != jsonArray {
		d.errs.addf(at, "expected a list, got %s", v.describe())
		return
	}
	if len(v.items) == 0 {
		return
	}
	s := reflect.MakeSlice(rv.Type(), len(v.items), len(v.items))
	for i, item := range v.items {
		d.value(at.index(i), item, s.Index(i))
	}
	rv.Set(s)
}

// stringMap fills a map from string to string (the only maps of these resources).
func (d decoder) stringMap(at path, v *jsonValue, rv reflect.Value) {
	if v.kind != jsonObject {
		d.errs.addf(at, "expected an object, got %s", v.describe())
		return
	}
	if len(v.members) == 0 {
		return
	}
	m := reflect.MakeMapWithSize(rv.Type(), len(v.members))
	for _, member := range v.members {
		e := reflect.New(rv.Type().Elem()).Elem()
		d.value(at.key(member.key), member.value, e)
		m.SetMapIndex(reflect.ValueOf(member.key), e)
	}
	rv.Set(m)
}

// structFields fills a struct from an object's members, by the fields' json names.
func (d decoder) structFields(at path, v *jsonValue, rv reflect.Value) {
	if v.kind != jsonObject {
		d.errs.addf(at, "expected an object, got %s", v.describe())
		return
	}
	fields := fieldsOf(rv.Type())
	given := make(map[int]string) // field index -> the key that set it
	for _, m := range v.members {
		f, ok := fields.lookup(m.key)
		if !ok {
			d.errs.addf(at.child(m.key), "unknown field%s", fields.suggest(m.key))
			continue
		}
		if prev, dup := given[f.index]; dup {
			d.errs.addf(at.child(m.key), "duplicate field (also given as %q)", prev)
			continue
		}
		given[f.index] = m.key
		d.value(at.child(m.key), m.value, rv.Field(f.index))
	}
}

type field struct {
	name  string // json name
	index int
}

type structFields []field

var fieldCache sync.Map // reflect.Type -> structFields

func fieldsOf(t reflect.Type) structFields {
	if fs, ok := fieldCache.Load(t); ok {
		return fs.(structFields)
	}
	var fs structFields
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			fs = append(fs, field{name, i})
		}
	}
	fieldCache.Store(t, fs)
	return fs
}

// lookup finds the field named key: exactly, else ignoring case, as encoding/json (and so
// calicoctl) does.
func (fs structFields) lookup(key string) (field, bool) {
	for _, f := range fs {
		if f.name == key {
			return f, true
		}
	}
	for _, f := range fs {
		if strings.EqualFold(f.name, key) {
			return f, true
		}
	}
	return field{}, false
}

// suggest names the field an unknown key is probably a misspelling of, if one is close.
func (fs structFields) suggest(key string) string {
	const maxKey = 64 // longer keys are no typos of these fields, and distance is quadratic
	if len(key) > maxKey {
		return ""
	}
	best, bestDist := "", 3 // suggest at distance 1 or 2 only
	for _, f := range fs {
		if dist := editDistance(strings.ToLower(key), strings.ToLower(f.name)); dist < bestDist {
			best, bestDist = f.name, dist
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean " + strconv.Quote(best) + "?)"
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
