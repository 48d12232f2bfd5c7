package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

// prepareMaps compares every map pinned under root with the map this binary wants. A pin with
// another layout (map type, key or value size, capacity, flags, or the fields of its BTF key and
// value types) is replaced by a new map pinned at the same path; its entries are copied when the
// entry layout itself is unchanged. The returned maps are to be used instead of the spec's.
func prepareMaps(spec *ebpf.CollectionSpec, root string, log *slog.Logger) (map[string]*ebpf.Map, error) {
	replacements := make(map[string]*ebpf.Map)
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(root, name)
		old, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			// Not a map we can open (a stray pin of another kind): take its place.
			log.Warn("replacing unusable pin", "map", name, "path", path, "error", err)
			if err := os.Remove(path); err != nil {
				return closeAll(replacements, fmt.Errorf("remove unusable pin %s: %w", path, err))
			}
			continue
		}
		diff := layoutDiff(ms, old)
		if diff == "" {
			old.Close()
			continue
		}

		nm, migrated, err := replaceMap(ms, old, path)
		old.Close()
		if err != nil {
			return closeAll(replacements, fmt.Errorf("replace map %s: %w", name, err))
		}
		log.Warn("pinned map has another layout; replaced it", "map", name, "change", diff,
			"entries_migrated", migrated)
		replacements[name] = nm
	}
	return replacements, nil
}

func closeAll(ms map[string]*ebpf.Map, err error) (map[string]*ebpf.Map, error) {
	for _, m := range ms {
		m.Close()
	}
	return nil, err
}

// replaceMap creates the map the spec describes, copies the old entries when their layout is the
// same and swaps the pin. Per-CPU maps (counters) start afresh.
func replaceMap(ms *ebpf.MapSpec, old *ebpf.Map, path string) (*ebpf.Map, int, error) {
	fresh := ms.Copy()
	fresh.Pinning = ebpf.PinNone
	nm, err := ebpf.NewMap(fresh)
	if err != nil {
		return nil, 0, fmt.Errorf("create map: %w", err)
	}
	migrated := 0
	if sameEntries(ms, old) && !perCPU(ms.Type) {
		key := make([]byte, ms.KeySize)
		val := make([]byte, ms.ValueSize)
		it := old.Iterate()
		for it.Next(&key, &val) {
			if err := nm.Put(key, val); err != nil {
				break // the new map is smaller: keep what fits, the agent refills the rest
			}
			migrated++
		}
	}
	if err := os.Remove(path); err != nil {
		nm.Close()
		return nil, 0, fmt.Errorf("unpin old map: %w", err)
	}
	if err := nm.Pin(path); err != nil {
		nm.Close()
		return nil, 0, fmt.Errorf("pin new map: %w", err)
	}
	return nm, migrated, nil
}

func perCPU(t ebpf.MapType) bool {
	switch t {
	case ebpf.PerCPUHash, ebpf.PerCPUArray, ebpf.LRUCPUHash, ebpf.PerCPUCGroupStorage:
		return true
	}
	return false
}

// sameEntries reports whether keys and values of old can be copied byte for byte.
func sameEntries(ms *ebpf.MapSpec, old *ebpf.Map) bool {
	return old.Type() == ms.Type && old.KeySize() == ms.KeySize && old.ValueSize() == ms.ValueSize &&
		btfDiff(ms, old) == ""
}

// layoutDiff describes how the pinned map differs from the spec, or returns "" when it may be
// reused as it is.
func layoutDiff(ms *ebpf.MapSpec, m *ebpf.Map) string {
	var diffs []string
	if err := ms.Compatible(m); err != nil {
		diffs = append(diffs, strings.TrimSuffix(err.Error(), ": "+ebpf.ErrMapIncompatible.Error()))
	}
	if d := btfDiff(ms, m); d != "" {
		diffs = append(diffs, d)
	}
	return strings.Join(diffs, "; ")
}

// btfDiff compares the field layout of the spec's key and value types with the types of the same
// name in the pinned map's BTF: two structs of one size may still order their fields otherwise.
func btfDiff(ms *ebpf.MapSpec, m *ebpf.Map) string {
	if ms.Key == nil || ms.Value == nil {
		return ""
	}
	info, err := m.Info()
	if err != nil {
		return fmt.Sprintf("map info: %v", err)
	}
	id, ok := info.BTFID()
	if !ok {
		return "pinned map has no BTF"
	}
	h, err := btf.NewHandleFromID(id)
	if err != nil {
		return fmt.Sprintf("pinned map BTF: %v", err)
	}
	defer h.Close()
	pinned, err := h.Spec(nil)
	if err != nil {
		return fmt.Sprintf("pinned map BTF: %v", err)
	}
	var diffs []string
	for _, part := range []struct {
		what string
		typ  btf.Type
	}{{"key", ms.Key}, {"value", ms.Value}} {
		want := typeLayout(part.typ)
		name := part.typ.TypeName()
		if name == "" {
			continue // anonymous: its size was compared already
		}
		types, err := pinned.AnyTypesByName(name)
		if err != nil || len(types) == 0 {
			diffs = append(diffs, fmt.Sprintf("%s type %s missing from pinned BTF", part.what, name))
			continue
		}
		if got := typeLayout(types[0]); got != want {
			diffs = append(diffs, fmt.Sprintf("%s %s: %s changed to %s", part.what, name, got, want))
		}
	}
	return strings.Join(diffs, "; ")
}

// typeLayout renders the memory layout of t: field names, offsets and widths.
func typeLayout(t btf.Type) string {
	var b strings.Builder
	writeLayout(&b, t, 0)
	return b.String()
}

func writeLayout(b *strings.Builder, t btf.Type, depth int) {
	if depth > 8 {
		b.WriteString("…")
		return
	}
	switch u := btf.UnderlyingType(t).(type) {
	case *btf.Struct:
		writeMembers(b, u.Members, depth)
	case *btf.Union:
		b.WriteString("union")
		writeMembers(b, u.Members, depth)
	case *btf.Array:
		fmt.Fprintf(b, "[%d]", u.Nelems)
		writeLayout(b, u.Type, depth+1)
	case *btf.Int:
		fmt.Fprintf(b, "u%d", u.Size*8)
	case *btf.Enum:
		fmt.Fprintf(b, "e%d", u.Size*8)
	case *btf.Pointer:
		b.WriteString("ptr")
	default:
		fmt.Fprintf(b, "%T", u)
	}
}

func writeMembers(b *strings.Builder, ms []btf.Member, depth int) {
	b.WriteString("{")
	for i, m := range ms {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(b, "%s@%d:", m.Name, m.Offset.Bytes())
		writeLayout(b, m.Type, depth+1)
	}
	b.WriteString("}")
}
