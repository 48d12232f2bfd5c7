package loader

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/margaynet/margay/tests/netns"
)

// pinMap creates a map from spec and pins it where the dataplane keeps the map of that name.
func pinMap(tb testing.TB, root, name string, spec *ebpf.MapSpec, fill func(*ebpf.Map)) ebpf.MapID {
	tb.Helper()
	if err := EnsureBPFFS(root); err != nil {
		tb.Fatal(err)
	}
	spec = spec.Copy()
	spec.Pinning = ebpf.PinNone
	m, err := ebpf.NewMap(spec)
	if err != nil {
		tb.Fatalf("create map %s: %v", name, err)
	}
	defer m.Close()
	if fill != nil {
		fill(m)
	}
	if err := m.Pin(filepath.Join(root, name)); err != nil {
		tb.Fatal(err)
	}
	info, err := m.Info()
	if err != nil {
		tb.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

func mapID(tb testing.TB, m *ebpf.Map) ebpf.MapID {
	tb.Helper()
	info, err := m.Info()
	if err != nil {
		tb.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

func TestMapLayoutChange(t *testing.T) {
	spec, err := LoadMargay()
	if err != nil {
		t.Fatal(err)
	}
	routes := spec.Maps["routes"]
	endpoints := spec.Maps["endpoints"]
	u32 := &btf.Int{Name: "__u32", Size: 4}
	mac := &btf.Array{Type: &btf.Int{Name: "__u8", Size: 1}, Index: u32, Nelems: 6}
	keys := []MargayRouteKey{{Prefixlen: 32, Addr: 0x010013c6}, {Prefixlen: 26, Addr: 0x400013c6}, {Prefixlen: 16, Addr: 0x000013c6}}

	for _, tc := range []struct {
		name         string
		mapName      string
		pinned       *ebpf.MapSpec
		fill         func(*ebpf.Map)
		wantReplaced bool
		wantLog      string
		wantEntries  int // entries of the loaded routes map, -1 to skip
	}{
		{
			name: "same layout is reused", mapName: "routes", pinned: routes,
			fill: func(m *ebpf.Map) {
				for _, k := range keys {
					if err := m.Put(&k, &MargayRouteValue{Flags: MargayRouteFlagsROUTE_LOCAL_WEP, Ifindex: 7}); err != nil {
						t.Fatal(err)
					}
				}
			},
			wantEntries: 3,
		},
		{
			name: "capacity change migrates entries", mapName: "routes",
			pinned: func() *ebpf.MapSpec { s := routes.Copy(); s.MaxEntries = 1024; return s }(),
			fill: func(m *ebpf.Map) {
				for _, k := range keys {
					if err := m.Put(&k, &MargayRouteValue{Flags: MargayRouteFlagsROUTE_REMOTE_BLOCK, Ifindex: 3}); err != nil {
						t.Fatal(err)
					}
				}
			},
			wantReplaced: true, wantLog: "MaxEntries: 1024 changed to", wantEntries: 3,
		},
		{
			name: "value size change replaces", mapName: "routes",
			pinned: &ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 8, MaxEntries: routes.MaxEntries,
				Flags: routes.Flags},
			wantReplaced: true, wantLog: "ValueSize: 8 changed to 12", wantEntries: 0,
		},
		{
			name: "map type change replaces", mapName: "endpoints",
			pinned:       &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 12, MaxEntries: endpoints.MaxEntries},
			wantReplaced: true, wantLog: "Type: Array changed to Hash", wantEntries: -1,
		},
		{
			// Same sizes, other fields: only BTF tells the difference.
			name: "field order change replaces", mapName: "endpoints",
			pinned: &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 12, MaxEntries: endpoints.MaxEntries,
				Key: u32,
				Value: &btf.Struct{Name: "endpoint", Size: 12, Members: []btf.Member{
					{Name: "mac", Type: mac, Offset: 0},
					{Name: "_pad", Type: &btf.Array{Type: &btf.Int{Name: "__u8", Size: 1}, Index: u32, Nelems: 2}, Offset: 48},
					{Name: "ipv4", Type: u32, Offset: 64},
				}}},
			wantReplaced: true, wantLog: "value endpoint", wantEntries: -1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := netns.BPFFS(t)
			oldID := pinMap(t, root, tc.mapName, tc.pinned, tc.fill)
			var logs bytes.Buffer
			d, err := Load(WithRoot(root), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			if err != nil {
				t.Fatalf("load over a changed pin must not fail: %v", err)
			}
			defer d.Close()

			m := d.objs.Routes
			if tc.mapName == "endpoints" {
				m = d.objs.Endpoints
			}
			newID := mapID(t, m)
			if replaced := newID != oldID; replaced != tc.wantReplaced {
				t.Errorf("map replaced = %v, want %v (log: %s)", replaced, tc.wantReplaced, logs.String())
			}
			if tc.wantReplaced && !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log does not say %q:\n%s", tc.wantLog, logs.String())
			}
			// The pin now holds the map the programs use.
			pinned, err := ebpf.LoadPinnedMap(filepath.Join(root, tc.mapName), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer pinned.Close()
			if id := mapID(t, pinned); id != newID {
				t.Errorf("pin holds map %d, programs use %d", id, newID)
			}
			if tc.wantEntries >= 0 {
				n := 0
				var k MargayRouteKey
				var v MargayRouteValue
				for it := m.Iterate(); it.Next(&k, &v); {
					n++
				}
				if n != tc.wantEntries {
					t.Errorf("routes map has %d entries, want %d", n, tc.wantEntries)
				}
			}
			if err := d.Maps().Routes.Update(&keys[0], &MargayRouteValue{}, ebpf.UpdateAny); err != nil && tc.mapName == "routes" {
				t.Errorf("the new routes map does not take entries of the current layout: %v", err)
			}
			// Loading again over the new pins changes nothing.
			logs.Reset()
			again, err := Load(WithRoot(root), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			if err != nil {
				t.Fatal(err)
			}
			defer again.Close()
			if strings.Contains(logs.String(), "replaced") {
				t.Errorf("second load replaced a map again:\n%s", logs.String())
			}
		})
	}
}
