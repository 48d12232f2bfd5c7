package resource

import "reflect"

// Defaulted returns a copy of r with Calico's defaults filled in, as Calico stores the
// resource and calicoctl get prints it (see the Defaulted method of each kind). A kind without
// defaults is copied as it is. r is not changed.
func Defaulted(r Resource) Resource {
	switch r := r.(type) {
	case *NetworkPolicy:
		return r.Defaulted()
	case *GlobalNetworkPolicy:
		return r.Defaulted()
	case *Tier:
		return r.Defaulted()
	case *IPPool:
		return r.Defaulted()
	case *BGPConfiguration:
		return r.Defaulted()
	case nil:
		return nil
	}
	out := reflect.New(reflect.TypeOf(r).Elem())
	deepCopy(out.Elem(), reflect.ValueOf(r).Elem())
	return out.Interface().(Resource)
}

// clone returns a deep copy of *p: no slice, map or pointer of the copy is shared with p.
func clone[T any](p *T) *T {
	out := new(T)
	deepCopy(reflect.ValueOf(out).Elem(), reflect.ValueOf(p).Elem())
	return out
}

// deepCopy copies src into dst, which has src's type. The types of this package hold
// structs, pointers, slices, maps of strings and scalars; a struct with unexported fields
// (time.Time) holds no references and is copied as a value.
func deepCopy(dst, src reflect.Value) {
	switch src.Kind() {
	case reflect.Pointer:
		if src.IsNil() {
			return
		}
		p := reflect.New(src.Type().Elem())
		deepCopy(p.Elem(), src.Elem())
		dst.Set(p)
	case reflect.Struct:
		for i := range src.NumField() {
			if !src.Type().Field(i).IsExported() {
				dst.Set(src)
				return
			}
		}
		for i := range src.NumField() {
			deepCopy(dst.Field(i), src.Field(i))
		}
	case reflect.Slice:
		if src.IsNil() {
			return
		}
		s := reflect.MakeSlice(src.Type(), src.Len(), src.Len())
		for i := range src.Len() {
			deepCopy(s.Index(i), src.Index(i))
		}
		dst.Set(s)
	case reflect.Map:
		if src.IsNil() {
			return
		}
		m := reflect.MakeMapWithSize(src.Type(), src.Len())
		for it := src.MapRange(); it.Next(); {
			v := reflect.New(src.Type().Elem()).Elem()
			deepCopy(v, it.Value())
			m.SetMapIndex(it.Key(), v)
		}
		dst.Set(m)
	default:
		dst.Set(src)
	}
}
