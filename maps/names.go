package maps

import (
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf/btf"

	"github.com/margaynet/margay/loader"
)

// enumNames reads the value names of the C enum from the dataplane's BTF, without their common
// prefix: the C enum is the only place they are written.
type enumNames struct {
	prefix  string // of the C names, "REASON_"
	byValue map[uint64]string
	byName  map[string]uint64
	order   []uint64
}

var enums = sync.OnceValue(func() map[string]*enumNames {
	out := map[string]*enumNames{}
	spec, err := loader.LoadMargay()
	if err != nil {
		panic(fmt.Sprintf("embedded BPF object is unreadable: %v", err)) // a build defect, not data
	}
	for name, prefix := range map[string]string{"reason": "REASON_", "hook": "HOOK_", "route_flags": "ROUTE_",
		"ct_state": "CT_", "ct_verdict": "CT_VERDICT_"} {
		var e *btf.Enum
		if err := spec.Types.TypeByName(name, &e); err != nil {
			panic(fmt.Sprintf("enum %s missing from BTF: %v", name, err))
		}
		n := &enumNames{prefix: prefix, byValue: map[uint64]string{}, byName: map[string]uint64{}}
		for _, v := range e.Values {
			short := strings.TrimPrefix(v.Name, prefix)
			n.byValue[v.Value] = short
			n.byName[short] = v.Value
			n.order = append(n.order, v.Value)
		}
		sort.Slice(n.order, func(i, j int) bool { return n.order[i] < n.order[j] })
		out[name] = n
	}
	return out
})

func enumName(enum string, v uint64) string {
	if s, ok := enums()[enum].byValue[v]; ok {
		return s
	}
	return fmt.Sprintf("%s(%d)", enum, v)
}

// parseEnum reads the name of a value of enum, in any case, with or without the C enum's prefix.
func parseEnum(enum, s string) (uint64, bool) {
	e := enums()[enum]
	v, ok := e.byName[strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(s)), e.prefix)]
	return v, ok
}

// Reason says why a packet left a program the way it did (C enum reason).
type Reason uint16

func (r Reason) String() string { return enumName("reason", uint64(r)) }

// Drop reports whether packets with this reason were dropped.
func (r Reason) Drop() bool { return strings.HasPrefix(r.String(), "DROP_") }

// Forward reports whether packets with this reason were forwarded by eBPF.
func (r Reason) Forward() bool { return strings.HasPrefix(r.String(), "FWD_") }

// Reasons lists every reason the dataplane knows, in numeric order.
func Reasons() []Reason {
	var out []Reason
	for _, v := range enums()["reason"].order {
		out = append(out, Reason(v))
	}
	return out
}

// ParseReason reads a reason's name as String writes it, in any case, with or without the
// REASON_ prefix of the C enum: "drop_spoofed" and "REASON_DROP_SPOOFED" are DROP_SPOOFED. Its
// error lists the reasons there are (but UNSPEC) and leaves naming s to the caller.
func ParseReason(s string) (Reason, error) {
	if v, ok := parseEnum("reason", s); ok {
		return Reason(v), nil
	}
	var names []string
	for _, r := range Reasons() {
		if r.String() != "UNSPEC" {
			names = append(names, r.String())
		}
	}
	return 0, fmt.Errorf("unknown reason (one of %s)", strings.Join(names, ", "))
}

// Hook is the attach point a counter belongs to (C enum hook).
type Hook uint16

func (h Hook) String() string { return strings.ToLower(enumName("hook", uint64(h))) }

// Hooks lists every hook the dataplane knows, in numeric order.
func Hooks() []Hook {
	var out []Hook
	for _, v := range enums()["hook"].order {
		out = append(out, Hook(v))
	}
	return out
}

// HookNames lists the names of Hooks as String writes them: from_wep, to_wep, …
func HookNames() []string {
	var out []string
	for _, h := range Hooks() {
		out = append(out, h.String())
	}
	return out
}

// ParseHook reads a hook's name as String writes it, in any case, with or without the HOOK_
// prefix of the C enum: "nf_policy" and "HOOK_NF_POLICY" are HookNFPolicy. Its error lists the
// hooks there are and leaves naming s to the caller.
func ParseHook(s string) (Hook, error) {
	if v, ok := parseEnum("hook", s); ok {
		return Hook(v), nil
	}
	return 0, fmt.Errorf("unknown hook (one of %s)", strings.Join(HookNames(), ", "))
}

// RouteFlags classify a route (C enum route_flags).
type RouteFlags uint32

// Route kinds and markers, as in bpf/include/types.h.
const (
	LocalWorkload  = RouteFlags(loader.MargayRouteFlagsROUTE_LOCAL_WEP)
	RemoteBlock    = RouteFlags(loader.MargayRouteFlagsROUTE_REMOTE_BLOCK)
	RemoteWorkload = RouteFlags(loader.MargayRouteFlagsROUTE_REMOTE_WEP)
	LocalBlock     = RouteFlags(loader.MargayRouteFlagsROUTE_LOCAL_BLOCK)
	Host           = RouteFlags(loader.MargayRouteFlagsROUTE_HOST)
	InPool         = RouteFlags(loader.MargayRouteFlagsROUTE_IN_POOL)

	// LocalHost marks, beside Host, an address of this host.
	LocalHost = RouteFlags(loader.MargayRouteFlagsROUTE_LOCAL_HOST)
	kinds     = LocalWorkload | RemoteBlock | RemoteWorkload | LocalBlock | Host
)

// String lists the set flags by name, "LOCAL_WEP|IN_POOL".
func (f RouteFlags) String() string {
	if f == 0 {
		return "NONE"
	}
	var parts []string
	for _, v := range enums()["route_flags"].order {
		if uint64(f)&v != 0 {
			parts = append(parts, enumName("route_flags", v))
			f &^= RouteFlags(v)
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("%#x", uint32(f)))
	}
	return strings.Join(parts, "|")
}

// ParseRouteFlags reads the form String writes.
func ParseRouteFlags(s string) (RouteFlags, error) {
	var f RouteFlags
	for _, part := range strings.Split(s, "|") {
		v, ok := enums()["route_flags"].byName[strings.ToUpper(strings.TrimSpace(part))]
		if !ok {
			return 0, fmt.Errorf("parse route flags %q: unknown flag %q", s, part)
		}
		f |= RouteFlags(v)
	}
	return f, nil
}
