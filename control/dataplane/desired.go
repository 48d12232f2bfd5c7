package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/maps"
)

// desired is a State resolved against the kernel: the interfaces looked up, every map entry and
// kernel route spelled out. A pass derives it entry by entry (setWorkload, setPrefix), all of
// them in a full pass and the changed ones in an incremental Update, which changes the last
// pass's desired state in place and records in a plan what the host must be told.
type desired struct {
	uplink      string
	uplinkIndex uint32
	// The frame: what every route's derivation reads besides workloads and remote routes. An
	// incremental Update needs it unchanged.
	self   netip.Addr
	hosts  map[netip.Addr]bool
	blocks map[netip.Prefix]bool
	pools  []netip.Prefix

	routes    map[netip.Prefix]maps.Route
	endpoints map[uint32]maps.Endpoint
	kernel    map[netip.Prefix]netlink.Route
	wanted    map[string]Workload     // every wanted workload, by interface
	byIP      map[netip.Addr]string   // their addresses
	present   map[string]netlink.Link // the wanted ones whose interface exists
	workloads map[string]Workload     // what each present interface was resolved for
	pending   map[string]bool         // the wanted ones whose interface does not exist (yet)
	policy    Policy
	entries   map[maps.PolicyKey]maps.PolicyValue // the policy map as this state wants it
	pentries  *PolicyEntries                      // entries, indexed for the incremental path
}

// newDesired starts the desired state of s: its frame, no entries yet.
func newDesired(s *State, uplinkIndex uint32) *desired {
	nw, nr := len(s.Workloads), len(s.Workloads)+len(s.Hosts)+len(s.Blocks)+len(s.Remote)
	d := &desired{uplink: s.Uplink, uplinkIndex: uplinkIndex, routes: make(map[netip.Prefix]maps.Route, nr),
		endpoints: make(map[uint32]maps.Endpoint, nw), kernel: make(map[netip.Prefix]netlink.Route, nr),
		wanted: make(map[string]Workload, nw), byIP: make(map[netip.Addr]string, nw), present: make(map[string]netlink.Link, nw),
		workloads: make(map[string]Workload, nw), pending: map[string]bool{}}
	d.setFrame(s)
	return d
}

func (d *desired) setFrame(s *State) {
	d.self = s.Self
	d.hosts = make(map[netip.Addr]bool, len(s.Hosts))
	for _, h := range s.Hosts {
		d.hosts[h] = true
	}
	d.blocks = make(map[netip.Prefix]bool, len(s.Blocks))
	for _, b := range s.Blocks {
		d.blocks[b] = true
	}
	d.pools = slices.Clone(s.Pools)
}

// sameFrame says whether s has d's frame.
func (d *desired) sameFrame(s *State) bool {
	if d.uplink != s.Uplink || d.self != s.Self || len(d.hosts) != len(s.Hosts) || len(d.blocks) != len(s.Blocks) ||
		len(d.pools) != len(s.Pools) {
		return false
	}
	for _, h := range s.Hosts {
		if !d.hosts[h] {
			return false
		}
	}
	for _, b := range s.Blocks {
		if !d.blocks[b] {
			return false
		}
	}
	for _, p := range s.Pools {
		if !slices.Contains(d.pools, p) {
			return false
		}
	}
	return true
}

func (d *desired) inPool(p netip.Prefix) maps.RouteFlags {
	for _, pool := range d.pools {
		if pool.Bits() <= p.Bits() && pool.Contains(p.Addr()) {
			return maps.InPool
		}
	}
	return 0
}

// unclaim takes the address of interface name's previous workload from the index, before the
// workloads of a pass are set: two that swap addresses in one pass are no conflict.
func (d *desired) unclaim(name string) {
	if old, ok := d.wanted[name]; ok && d.byIP[old.IPv4] == name {
		delete(d.byIP, old.IPv4)
	}
}

// setWorkload brings d's entries of interface name in line with s: looked up (unless the last
// pass did for the same record), endpoint, and in p what changes. The routes of its old and new
// address are left to setPrefix, through p.prefixes.
func (r *Reconciler) setWorkload(d *desired, s *State, name string, p *plan) error {
	old, had := d.wanted[name]
	w, want := s.Workloads[name]
	if had {
		p.prefixes[netip.PrefixFrom(old.IPv4, 32)] = true
	}
	if want {
		p.prefixes[netip.PrefixFrom(w.IPv4, 32)] = true
	}
	oldLink, wasPresent := d.present[name]
	prevRec := d.workloads[name]
	var (
		link    netlink.Link
		present bool
		err     error
	)
	if want {
		if wasPresent && prevRec.IPv4 == w.IPv4 && bytes.Equal(prevRec.MAC, w.MAC) {
			// Re-creating a veth (CNI DEL and ADD) gives the workload side a new MAC: a changed
			// interface always comes with a changed record.
			link, present = oldLink, true
		} else if l, lerr := r.nl.LinkByName(name); lerr == nil {
			link, present = l, true
		} else if nf := (netlink.LinkNotFoundError{}); !errors.As(lerr, &nf) {
			err = fmt.Errorf("look up %s: %w", name, lerr)
		}
	}
	recreated := wasPresent && present && oldLink.Attrs().Index != link.Attrs().Index
	if wasPresent && (!present || recreated) {
		if !present {
			p.detach = append(p.detach, name)
		}
		idx := uint32(oldLink.Attrs().Index)
		if _, ok := d.endpoints[idx]; ok {
			delete(d.endpoints, idx)
			p.delEndpoints = append(p.delEndpoints, idx)
			p.programs = true
		}
		delete(d.present, name)
		delete(d.workloads, name)
	}
	delete(d.pending, name)
	if !want {
		delete(d.wanted, name)
		return nil
	}
	d.wanted[name] = w
	if owner, ok := d.byIP[w.IPv4]; ok && owner != name {
		return errors.Join(err, fmt.Errorf("validate state: workload %s (%v) listed twice", name, w.IPv4))
	}
	d.byIP[w.IPv4] = name
	if !present {
		d.pending[name] = true
		return err
	}
	if !wasPresent || recreated {
		p.configure = append(p.configure, link)
		p.attach = append(p.attach, link)
	}
	d.present[name], d.workloads[name] = link, w
	idx := uint32(link.Attrs().Index)
	ep := maps.Endpoint{Ifindex: idx, IPv4: w.IPv4, MAC: w.MAC, IngressProgram: w.IngressProgram, EgressProgram: w.EgressProgram}
	if cur, ok := d.endpoints[idx]; !ok || !cur.Equal(ep) {
		p.programs = p.programs || !ok || cur.IngressProgram != ep.IngressProgram || cur.EgressProgram != ep.EgressProgram
		p.putEndpoints = append(p.putEndpoints, ep)
		d.endpoints[idx] = ep
	}
	return nil
}

// route derives what prefix pfx should be in the routes map and the kernel: a remote route
// before a block of ours before a local workload before a host, as a longest-prefix lookup
// would have it among equal prefixes.
func (d *desired) route(s *State, pfx netip.Prefix) (rt maps.Route, kr netlink.Route, hasRoute, hasKernel bool) {
	if rr, ok := s.Remote[pfx]; ok {
		kind := maps.RemoteBlock
		if rr.Workload {
			kind = maps.RemoteWorkload
		}
		return maps.Route{Prefix: pfx, Flags: kind | d.inPool(pfx), Ifindex: d.uplinkIndex, NextHop: rr.NextHop},
			netlink.Route{LinkIndex: int(d.uplinkIndex), Dst: ipNet(pfx), Gw: rr.NextHop.AsSlice(), Type: unix.RTN_UNICAST,
				Table: unix.RT_TABLE_MAIN, Protocol: hostconv.RouteProtocol}, true, true
	}
	if d.blocks[pfx] {
		return maps.Route{Prefix: pfx, Flags: maps.LocalBlock | d.inPool(pfx)},
			netlink.Route{Dst: ipNet(pfx), Type: unix.RTN_BLACKHOLE, Table: unix.RT_TABLE_MAIN, Protocol: hostconv.RouteProtocol}, true, true
	}
	if pfx.Bits() != 32 {
		return
	}
	if name, ok := d.byIP[pfx.Addr()]; ok {
		if link, ok := d.present[name]; ok {
			idx := uint32(link.Attrs().Index)
			return maps.Route{Prefix: pfx, Flags: maps.LocalWorkload | d.inPool(pfx), Ifindex: idx},
				netlink.Route{LinkIndex: int(idx), Dst: ipNet(pfx), Scope: netlink.SCOPE_LINK, Type: unix.RTN_UNICAST,
					Table: unix.RT_TABLE_MAIN, Protocol: hostconv.RouteProtocol}, true, true
		}
	}
	if d.hosts[pfx.Addr()] {
		flags := maps.Host | d.inPool(pfx)
		if pfx.Addr() == d.self {
			flags |= maps.LocalHost
		}
		return maps.Route{Prefix: pfx, Flags: flags}, kr, true, false
	}
	return
}

// setPrefix brings d's route and kernel route of pfx in line with s, and notes in p what changes.
func (d *desired) setPrefix(s *State, pfx netip.Prefix, p *plan) {
	rt, kr, hasRoute, hasKernel := d.route(s, pfx)
	if cur, ok := d.routes[pfx]; hasRoute && (!ok || cur != rt) {
		d.routes[pfx] = rt
		p.putRoutes = append(p.putRoutes, rt)
	} else if !hasRoute && ok {
		delete(d.routes, pfx)
		p.delRoutes = append(p.delRoutes, pfx)
	}
	if cur, ok := d.kernel[pfx]; hasKernel && (!ok || !sameRoute(cur, kr)) {
		d.kernel[pfx] = kr
		p.putKernel = append(p.putKernel, kr)
	} else if !hasKernel && ok {
		delete(d.kernel, pfx)
		p.delKernel = append(p.delKernel, cur)
	}
}

// allPrefixes are the prefixes a full derivation looks at: every one d has a route for, and
// every one s may want one for.
func (d *desired) allPrefixes(s *State, into map[netip.Prefix]bool) {
	for pfx := range d.routes {
		into[pfx] = true
	}
	for pfx := range s.Remote {
		into[pfx] = true
	}
	for _, b := range s.Blocks {
		into[b] = true
	}
	for _, h := range s.Hosts {
		into[netip.PrefixFrom(h, 32)] = true
	}
	for _, w := range s.Workloads {
		into[netip.PrefixFrom(w.IPv4, 32)] = true
	}
}

// derive brings d in line with s: every workload and prefix when all, else the ones s.Changed
// names and those of the workloads still pending. It returns what the host must be told.
func (r *Reconciler) derive(d *desired, s *State, all bool) (*plan, error) {
	p := newPlan()
	names := map[string]bool{}
	if all {
		for name := range d.wanted {
			names[name] = true
		}
		for name := range s.Workloads {
			names[name] = true
		}
	} else {
		for name := range s.Changed.Workloads {
			names[name] = true
		}
		for name := range d.pending {
			names[name] = true
		}
		for pfx := range s.Changed.Remote {
			p.prefixes[pfx] = true
		}
	}
	for name := range names {
		d.unclaim(name)
	}
	var errs []error
	for name := range names {
		errs = append(errs, r.setWorkload(d, s, name, p))
	}
	if all {
		d.allPrefixes(s, p.prefixes)
	}
	for pfx := range p.prefixes {
		d.setPrefix(s, pfx, p)
	}
	return p, errors.Join(errs...)
}

// pendingList is the pending interfaces, sorted.
func (d *desired) pendingList() []string {
	if len(d.pending) == 0 {
		return nil
	}
	out := make([]string, 0, len(d.pending))
	for name := range d.pending {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}
