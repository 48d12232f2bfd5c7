package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// plan is what a pass must tell the host: the difference between what the host has and the
// desired state. Update's is what derive changed in the last pass's desired state (the host is
// trusted to hold that pass's); Apply's is what the host itself differs in (hostPlan). Both are
// carried out by execute, in the one order.
type plan struct {
	// full is Apply's: the host-wide steps too (forwarding, netfilter and uplink programs,
	// counters), and every present interface's settings and programs checked.
	full         bool
	policy       policyStep
	configure    []netlink.Link // interfaces whose settings to make sure of, then their programs
	attach       []netlink.Link
	putEndpoints []maps.Endpoint
	programs     bool // an endpoint came, went or changed programs: the policy generation moves
	putRoutes    []maps.Route
	putKernel    []netlink.Route
	detach       []string
	delKernel    []netlink.Route
	delRoutes    []netip.Prefix
	delEndpoints []uint32
	// prefixes are the routes to derive again: those of the workloads that changed.
	prefixes map[netip.Prefix]bool
}

// policyStep is how the policy maps get to the desired state's compilation: nothing (the maps
// hold it), its delta from prev, or the difference from what is installed.
type policyStep struct {
	delta     bool
	prev      Policy     // with delta: the compilation the maps hold
	installed *installed // without delta: what the maps hold; nil when they hold the compilation
}

func newPlan() *plan { return &plan{prefixes: map[netip.Prefix]bool{}} }

// hostPlan replaces what a full derivation planned from nothing by what the host differs in:
// the maps' entries, the kernel's routes of protocol margay and the interfaces with programs,
// each read once. Every present interface's settings and programs are checked. A map or table
// that cannot be read is left as it is, with the error.
func (r *Reconciler) hostPlan(d *desired, p *plan) error {
	p.full = true
	var errs []error
	pol, err := r.readPolicy()
	errs = append(errs, err)
	p.policy = policyStep{installed: pol}

	p.configure, p.attach = nil, nil
	for _, link := range d.present {
		p.configure = append(p.configure, link)
	}
	p.attach = p.configure

	p.putEndpoints, p.delEndpoints = nil, nil
	if have, err := r.maps.Endpoints.List(); err != nil {
		errs = append(errs, err)
	} else {
		byIndex := make(map[uint32]maps.Endpoint, len(have))
		for _, ep := range have {
			byIndex[ep.Ifindex] = ep
			if _, ok := d.endpoints[ep.Ifindex]; !ok {
				p.delEndpoints = append(p.delEndpoints, ep.Ifindex)
			}
		}
		for idx, ep := range d.endpoints {
			if cur, ok := byIndex[idx]; !ok || !cur.Equal(ep) {
				p.putEndpoints = append(p.putEndpoints, ep)
			}
		}
	}
	p.programs = len(p.putEndpoints) > 0 || len(p.delEndpoints) > 0

	p.putRoutes, p.delRoutes = nil, nil
	if have, err := r.maps.Routes.All(); err != nil {
		errs = append(errs, err)
	} else {
		byPrefix := make(map[netip.Prefix]maps.Route, len(have))
		for _, rt := range have {
			byPrefix[rt.Prefix] = rt
			if _, ok := d.routes[rt.Prefix]; !ok {
				p.delRoutes = append(p.delRoutes, rt.Prefix)
			}
		}
		for pfx, rt := range d.routes {
			if cur, ok := byPrefix[pfx]; !ok || cur != rt {
				p.putRoutes = append(p.putRoutes, rt)
			}
		}
	}

	p.putKernel, p.delKernel = nil, nil
	if have, err := r.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: hostconv.RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE); err != nil {
		errs = append(errs, fmt.Errorf("list kernel routes: %w", err))
	} else {
		// A stale route is deleted after its replacement is in: the deletion names the old
		// route's type, scope, interface and gateway, of which the new one differs in one.
		seen := map[netip.Prefix]bool{}
		for _, cur := range have {
			pfx := prefixOf(cur.Dst)
			if w, ok := d.kernel[pfx]; ok && sameRoute(cur, w) && !seen[pfx] {
				seen[pfx] = true
				continue
			}
			p.delKernel = append(p.delKernel, cur)
		}
		for pfx, kr := range d.kernel {
			if !seen[pfx] {
				p.putKernel = append(p.putKernel, kr)
			}
		}
	}

	p.detach = nil
	if pins, err := loader.LinkPins(r.dp.Root()); err != nil {
		errs = append(errs, err)
	} else {
		// Programs on an interface that is neither a wanted workload nor the uplink: a workload
		// that went away, a former uplink.
		for ifname := range pins {
			if _, ok := d.wanted[ifname]; !ok && ifname != d.uplink {
				p.detach = append(p.detach, ifname)
			}
		}
		slices.Sort(p.detach)
	}
	return errors.Join(errs...)
}

// execute tells the host p, in an order that never leaves traffic without a path: for what comes,
// interface settings, policy, endpoint, route, program, kernel route; for what goes, program,
// kernel route, route, endpoint. It goes on past failures, noting them in c, and makes d the
// baseline of the next Update when there was none.
func (r *Reconciler) execute(d *desired, p *plan, s *State, c *changes) (Result, error) {
	c.res.Pending = d.pendingList()
	if p.full {
		c.note(hostconv.SetSysctl(r.sysctlRoot, "ipv4/ip_forward", "1"))
	}
	if r.afterDerive != nil {
		r.afterDerive()
	}
	for _, link := range p.configure {
		c.noteOn(r, link.Attrs().Index, link.Attrs().Name)(r.configureInterface(link))
	}

	var (
		removal       *PolicyRemoval
		policyChanged bool
		err           error
	)
	switch step := p.policy; {
	case step.delta:
		_, err = r.resetRules(s.Policy.NewRules)
		c.note(false, err)
		var added bool
		removal, added, err = d.pentries.AddDelta(step.prev, s.Policy, r.maps.Policy, r.maps.PolicyIPs)
		c.note(added, err)
		changed, err := r.syncPolicySettings(s.Policy)
		c.note(changed, err)
		policyChanged = added || changed
	case step.installed != nil:
		policyChanged, err = r.addPolicy(d, step.installed)
		c.note(policyChanged, err)
	}
	for _, ep := range p.putEndpoints {
		c.note(true, r.maps.Endpoints.Put(ep))
	}
	if policyChanged || p.programs {
		c.note(r.bumpGeneration())
	}
	switch step := p.policy; {
	case step.delta:
		c.note(removal.Remove(r.maps.Policy))
		d.entries = d.pentries.Map()
	case step.installed != nil:
		c.note(r.removePolicy(d, step.installed))
	}
	if len(p.putRoutes) > 0 {
		c.res.Changes += len(p.putRoutes) - 1
		c.note(true, r.maps.Routes.PutAll(p.putRoutes))
	}
	if p.full {
		c.note(r.attachNetfilter())
	}
	for _, link := range p.attach {
		c.noteOn(r, link.Attrs().Index, link.Attrs().Name)(r.attach(link.Attrs().Name, link.Attrs().Index, loader.HookFromWep, loader.HookToWep))
	}
	if p.full {
		c.note(r.attachUplink(s.Uplink, int(d.uplinkIndex)))
	}
	// In address order: the kernel's table takes a burst of routes (a BGP table) faster so.
	slices.SortFunc(p.putKernel, func(a, b netlink.Route) int { return prefixOf(a.Dst).Compare(prefixOf(b.Dst)) })
	for _, kr := range p.putKernel {
		c.noteRoute(r, d, kr, r.addRoute(kr))
	}

	for _, name := range p.detach {
		if p.full { // a leftover; Update's are the workloads it removes
			r.log.Info("detaching from interface no longer wanted", "interface", name)
		}
		c.note(true, r.dp.DetachInterface(name))
	}
	for _, kr := range p.delKernel {
		if err := r.nl.RouteDel(&kr); err != nil && !errors.Is(err, unix.ESRCH) {
			c.note(true, fmt.Errorf("delete route %v: %w", prefixOf(kr.Dst), err))
		} else {
			c.note(true, nil)
		}
	}
	if len(p.delRoutes) > 0 {
		c.res.Changes += len(p.delRoutes) - 1
		c.note(true, r.maps.Routes.DeleteAll(p.delRoutes))
	}
	for _, idx := range p.delEndpoints {
		c.note(true, r.maps.Endpoints.Delete(idx))
	}
	if p.full {
		c.note(r.pruneCounters(d))
	}

	if len(c.errs) == 0 {
		r.last = d
	}
	return c.res, errors.Join(c.errs...)
}
