package maps

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/margaynet/margay/loader"
)

// ErrNotFound is returned by lookups of keys the map does not hold.
var ErrNotFound = errors.New("not found")

// Route is one entry of the routes LPM trie.
type Route struct {
	Prefix  netip.Prefix `json:"prefix"`
	Flags   RouteFlags   `json:"-"`
	Ifindex uint32       `json:"ifindex"`
	// NextHop is the host to hand packets to on remote routes; invalid means "the destination".
	NextHop netip.Addr `json:"nextHop,omitzero"`
}

// Kind is the route's kind flag without markers such as IN_POOL.
func (r Route) Kind() RouteFlags { return r.Flags & kinds }

func (r Route) validate() error {
	if !r.Prefix.IsValid() || !r.Prefix.Addr().Is4() {
		return fmt.Errorf("route %v: not an IPv4 prefix", r.Prefix)
	}
	if r.Prefix.Masked() != r.Prefix {
		return fmt.Errorf("route %v: host bits set (want %v)", r.Prefix, r.Prefix.Masked())
	}
	kind := r.Kind()
	if kind == 0 || kind&(kind-1) != 0 {
		return fmt.Errorf("route %v: want exactly one kind flag, have %v", r.Prefix, r.Flags)
	}
	if r.Flags&LocalHost != 0 && kind != Host {
		return fmt.Errorf("route %v: LOCAL_HOST without HOST", r.Prefix)
	}
	if r.Flags&^(kinds|InPool|LocalHost) != 0 {
		return fmt.Errorf("route %v: unknown flags %v", r.Prefix, r.Flags)
	}
	if kind&(LocalWorkload|RemoteBlock|RemoteWorkload) != 0 && r.Ifindex == 0 {
		return fmt.Errorf("route %v: %v needs an interface", r.Prefix, kind)
	}
	if r.NextHop.IsValid() && !r.NextHop.Is4() {
		return fmt.Errorf("route %v: next hop %v is not IPv4", r.Prefix, r.NextHop)
	}
	return nil
}

// Routes is the routes map.
type Routes struct {
	m   *ebpf.Map
	gen *Config // bumped after every write: conntrack entries keep routes
}

// NewRoutes wraps a loaded routes map; every write bumps config's route generation, so that no
// flow goes on with a route it kept from before. With a nil config the wrapper only reads.
func NewRoutes(m *ebpf.Map, config *Config) *Routes { return &Routes{m: m, gen: config} }

func routeKey(p netip.Prefix) loader.MargayRouteKey {
	return loader.MargayRouteKey{Prefixlen: uint32(p.Bits()), Addr: be32(p.Addr())}
}

// be32 stores an IPv4 address as the kernel's __be32 does: its bytes in network order.
func be32(a netip.Addr) uint32 {
	if !a.IsValid() {
		return 0
	}
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrFromBE32(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// Put adds or replaces the route for r.Prefix.
func (r *Routes) Put(rt Route) error {
	if err := rt.validate(); err != nil {
		return fmt.Errorf("put route: %w", err)
	}
	if r.gen == nil {
		return fmt.Errorf("put route %v: %w", rt.Prefix, errReadOnly)
	}
	k := routeKey(rt.Prefix)
	v := loader.MargayRouteValue{
		Flags:   loader.MargayRouteFlags(rt.Flags),
		Ifindex: rt.Ifindex,
		NextHop: be32(rt.NextHop),
	}
	if err := r.m.Put(&k, &v); err != nil {
		return fmt.Errorf("put route %v: %w", rt.Prefix, err)
	}
	if err := r.gen.BumpRouteGeneration(); err != nil {
		return fmt.Errorf("put route %v: %w", rt.Prefix, err)
	}
	return nil
}

// PutAll adds or replaces every route of rts with as few system calls as the kernel allows
// (BPF_MAP_UPDATE_BATCH, one per 4096 routes), falling back to one update each where batches
// are not supported.
func (r *Routes) PutAll(rts []Route) (err error) {
	if len(rts) == 0 {
		return nil
	}
	if r.gen == nil {
		return fmt.Errorf("put %d routes: %w", len(rts), errReadOnly)
	}
	keys := make([]loader.MargayRouteKey, len(rts))
	vals := make([]loader.MargayRouteValue, len(rts))
	for i, rt := range rts {
		if err := rt.validate(); err != nil {
			return fmt.Errorf("put route: %w", err)
		}
		keys[i] = routeKey(rt.Prefix)
		vals[i] = loader.MargayRouteValue{Flags: loader.MargayRouteFlags(rt.Flags), Ifindex: rt.Ifindex, NextHop: be32(rt.NextHop)}
	}
	// One bump for the whole call, also when it fails half way: what was written counts.
	defer r.bump(&err)
	for len(keys) > 0 {
		n := min(len(keys), batchSize)
		if _, err := r.m.BatchUpdate(keys[:n], vals[:n], nil); err != nil {
			if !errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("put %d routes: %w", n, err)
			}
			for i := range keys {
				if err := r.m.Put(&keys[i], &vals[i]); err != nil {
					return fmt.Errorf("put route %v: %w", decodeRoute(keys[i], vals[i]).Prefix, err)
				}
			}
			return nil
		}
		keys, vals = keys[n:], vals[n:]
	}
	return nil
}

// DeleteAll removes the routes for exactly ps; missing ones are not an error.
func (r *Routes) DeleteAll(ps []netip.Prefix) (err error) {
	if len(ps) == 0 {
		return nil
	}
	if r.gen == nil {
		return fmt.Errorf("delete %d routes: %w", len(ps), errReadOnly)
	}
	defer r.bump(&err)
	keys := make([]loader.MargayRouteKey, len(ps))
	for i, p := range ps {
		keys[i] = routeKey(p)
	}
	for len(keys) > 0 {
		n := min(len(keys), batchSize)
		// A batch stops at the first missing key: what is left goes one by one.
		done, err := r.m.BatchDelete(keys[:n], nil)
		if err != nil {
			for _, k := range keys[done:n] {
				if err := r.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return fmt.Errorf("delete route %v: %w", netip.PrefixFrom(addrFromBE32(k.Addr), int(k.Prefixlen)), err)
				}
			}
		}
		keys = keys[n:]
	}
	return nil
}

// bump moves the route generation after a batch write, keeping the write's own error first.
func (r *Routes) bump(err *error) {
	if berr := r.gen.BumpRouteGeneration(); berr != nil && *err == nil {
		*err = fmt.Errorf("routes written: %w", berr)
	}
}

// batchSize is how many entries one batch system call carries.
const batchSize = 4096

// Delete removes the route for exactly p; a missing route is not an error.
func (r *Routes) Delete(p netip.Prefix) error {
	if r.gen == nil {
		return fmt.Errorf("delete route %v: %w", p, errReadOnly)
	}
	k := routeKey(p)
	if err := r.m.Delete(&k); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		return fmt.Errorf("delete route %v: %w", p, err)
	}
	if err := r.gen.BumpRouteGeneration(); err != nil {
		return fmt.Errorf("delete route %v: %w", p, err)
	}
	return nil
}

// Get returns the route for exactly p. An LPM trie has no exact lookup, so this walks the map:
// for tools and tests, not for hot paths.
func (r *Routes) Get(p netip.Prefix) (Route, error) {
	want := routeKey(p)
	var (
		k loader.MargayRouteKey
		v loader.MargayRouteValue
	)
	it := r.m.Iterate()
	for it.Next(&k, &v) {
		if k == want {
			return decodeRoute(k, v), nil
		}
	}
	if err := it.Err(); err != nil {
		return Route{}, fmt.Errorf("get route %v: %w", p, err)
	}
	return Route{}, fmt.Errorf("route %v: %w", p, ErrNotFound)
}

// Match returns the route the dataplane uses for addr: the kernel's longest-prefix match. The
// kernel does not say which prefix matched; Prefix is the longest listed one that holds addr.
func (r *Routes) Match(addr netip.Addr) (Route, error) {
	k := loader.MargayRouteKey{Prefixlen: 32, Addr: be32(addr)}
	var v loader.MargayRouteValue
	if err := r.m.Lookup(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Route{}, fmt.Errorf("route for %v: %w", addr, ErrNotFound)
		}
		return Route{}, fmt.Errorf("match route for %v: %w", addr, err)
	}
	rt := decodeRoute(k, v)
	rt.Prefix = netip.Prefix{}
	all, err := r.List()
	if err != nil {
		return Route{}, err
	}
	for _, c := range all {
		if c.Prefix.Contains(addr) && (!rt.Prefix.IsValid() || c.Prefix.Bits() > rt.Prefix.Bits()) {
			rt.Prefix = c.Prefix
		}
	}
	return rt, nil
}

func decodeRoute(k loader.MargayRouteKey, v loader.MargayRouteValue) Route {
	rt := Route{
		Prefix:  netip.PrefixFrom(addrFromBE32(k.Addr), int(k.Prefixlen)),
		Flags:   RouteFlags(v.Flags),
		Ifindex: v.Ifindex,
	}
	if v.NextHop != 0 {
		rt.NextHop = addrFromBE32(v.NextHop)
	}
	return rt
}

// List returns every route, sorted by address then prefix length.
func (r *Routes) List() ([]Route, error) {
	out, err := r.All()
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Route) int { return cmp.Compare(sortKey(a.Prefix), sortKey(b.Prefix)) })
	return out, nil
}

// sortKey orders prefixes by address, then length.
func sortKey(p netip.Prefix) uint64 {
	a := p.Addr().As4()
	return uint64(binary.BigEndian.Uint32(a[:]))<<8 | uint64(p.Bits())
}

// All returns every route in the map's order: List without the sort. It reads the map in
// batches (BPF_MAP_LOOKUP_BATCH) where the kernel can, one entry at a time otherwise.
func (r *Routes) All() ([]Route, error) {
	var out []Route
	err := each(r.m, func(k loader.MargayRouteKey, v loader.MargayRouteValue) { out = append(out, decodeRoute(k, v)) },
		func() { out = out[:0] })
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return out, nil
}

// each calls fn for every entry of m, read in batches (BPF_MAP_LOOKUP_BATCH, 4096 entries per
// system call, where one entry at a time takes two) where the map type supports them, else one
// at a time after calling restart.
func each[K, V any](m *ebpf.Map, fn func(K, V), restart func()) error {
	var (
		cursor ebpf.MapBatchCursor
		keys   = make([]K, batchSize)
		vals   = make([]V, batchSize)
	)
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			fn(keys[i], vals[i])
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil // the end
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return err
		}
	}
	restart()
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		fn(k, v)
	}
	return it.Err()
}

// Longest returns the route the map's longest-prefix match gives for p (an exact lookup when
// the map holds p itself), without its prefix, which the kernel does not say: a cheap check of
// one entry, where Get walks the map.
func (r *Routes) Longest(p netip.Prefix) (Route, error) {
	k := routeKey(p)
	var v loader.MargayRouteValue
	if err := r.m.Lookup(&k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return Route{}, fmt.Errorf("route for %v: %w", p, ErrNotFound)
		}
		return Route{}, fmt.Errorf("look up route for %v: %w", p, err)
	}
	rt := decodeRoute(k, v)
	rt.Prefix = netip.Prefix{}
	return rt, nil
}
