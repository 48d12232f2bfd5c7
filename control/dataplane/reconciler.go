package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// HostVethMAC is the MAC of every host-side cali* veth, as in Calico.
var HostVethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// Reconciler makes the host match a State. It is not safe for concurrent use: one owner
// goroutine calls Apply, at start, on every change and periodically.
type Reconciler struct {
	dp         *loader.Dataplane
	maps       *maps.Set
	nl         *netlink.Handle
	log        *slog.Logger
	sysctlRoot string
	xdp        bool
}

// Option configures a Reconciler.
type Option func(*Reconciler)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(r *Reconciler) { r.log = l } }

// WithXDP attaches (or, with false, keeps off) the XDP prefilter on the uplink.
func WithXDP(on bool) Option { return func(r *Reconciler) { r.xdp = on } }

// New returns a reconciler working in the calling thread's network namespace.
func New(dp *loader.Dataplane, opts ...Option) (*Reconciler, error) {
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	r := &Reconciler{dp: dp, maps: maps.FromDataplane(dp), nl: nl, log: slog.Default(), sysctlRoot: "/proc/sys/net", xdp: true}
	for _, o := range opts {
		o(r)
	}
	return r, nil
}

// Close releases the netlink handle; the dataplane stays as it is.
func (r *Reconciler) Close() { r.nl.Close() }

// Result says what an Apply did.
type Result struct {
	// Changes counts every route, map entry, setting or attachment that was created, fixed or
	// removed; 0 means the host already matched.
	Changes int
	// Pending lists workloads whose interface does not exist (yet).
	Pending []string
}

// Apply changes whatever differs from s, in an order that never leaves traffic without a path:
// endpoint, then route, then program for a new workload; the reverse for a removed one. It goes
// on past individual failures and returns them joined.
func (r *Reconciler) Apply(s State) (Result, error) {
	var res Result
	if err := s.Validate(); err != nil {
		return res, err
	}
	var errs []error
	note := func(changed bool, err error) {
		if changed {

			res.Changes++
		}
		if err != nil {
			errs = append(errs, err)
		}
	}

	uplink, err := r.nl.LinkByName(s.Uplink)
	if err != nil {
		return res, fmt.Errorf("look up uplink %s: %w", s.Uplink, err)
	}
	uplinkIndex := uint32(uplink.Attrs().Index)
	note(r.sysctl("ipv4/ip_forward", "1"))

	wantRoutes := map[netip.Prefix]maps.Route{}
	wantEndpoints := map[uint32]maps.Endpoint{}
	wantKernel := map[netip.Prefix]netlink.Route{}
	wantIfaces := map[string]bool{}
	var present []string

	for _, w := range s.Workloads {
		wantIfaces[w.IfName] = true
		link, err := r.nl.LinkByName(w.IfName)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) {
				errs = append(errs, fmt.Errorf("look up %s: %w", w.IfName, err))
			}
			res.Pending = append(res.Pending, w.IfName)
			continue
		}
		present = append(present, w.IfName)
		note(r.configureInterface(link))
		idx := uint32(link.Attrs().Index)
		p := netip.PrefixFrom(w.IPv4, 32)
		wantEndpoints[idx] = maps.Endpoint{Ifindex: idx, IPv4: w.IPv4, MAC: w.MAC}
		wantRoutes[p] = maps.Route{Prefix: p, Flags: maps.LocalWorkload | s.inPool(p), Ifindex: idx}
		wantKernel[p] = netlink.Route{LinkIndex: int(idx), Dst: ipNet(p), Scope: netlink.SCOPE_LINK,
			Type: unix.RTN_UNICAST, Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
	}
	for _, b := range s.Blocks {
		wantRoutes[b] = maps.Route{Prefix: b, Flags: maps.LocalBlock | s.inPool(b)}
		wantKernel[b] = netlink.Route{Dst: ipNet(b), Type: unix.RTN_BLACKHOLE, Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
	}
	for _, rr := range s.Remote {
		kind := maps.RemoteBlock
		if rr.Workload {
			kind = maps.RemoteWorkload
		}
		wantRoutes[rr.Prefix] = maps.Route{Prefix: rr.Prefix, Flags: kind | s.inPool(rr.Prefix), Ifindex: uplinkIndex, NextHop: rr.NextHop}
		wantKernel[rr.Prefix] = netlink.Route{LinkIndex: int(uplinkIndex), Dst: ipNet(rr.Prefix),
			Gw: rr.NextHop.AsSlice(), Type: unix.RTN_UNICAST, Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
	}

	// Additions and repairs: endpoint before route before program.
	note(r.syncEndpoints(wantEndpoints, false))
	note(r.syncRoutes(wantRoutes, false))
	for _, ifname := range present {
		note(r.attach(ifname, loader.HookFromWep, loader.HookToWep))
	}
	hooks := []loader.Hook{loader.HookFromNet}
	if r.xdp {
		hooks = append(hooks, loader.HookXDPFromNet)
	} else {
		note(r.detach(s.Uplink, loader.HookXDPFromNet))
	}
	note(r.attach(s.Uplink, hooks...))
	note(r.syncKernelRoutes(wantKernel))

	// Removals: program, then route, then endpoint.
	note(r.detachStale(wantIfaces, s.Uplink))
	note(r.syncRoutes(wantRoutes, true))
	note(r.syncEndpoints(wantEndpoints, true))
	note(r.pruneCounters())

	return res, errors.Join(errs...)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

// configureInterface sets what Calico sets on a workload's host-side veth: up, the well-known
// MAC, proxy ARP (answers for 169.254.1.1) without delay, and forwarding.
func (r *Reconciler) configureInterface(link netlink.Link) (bool, error) {
	name := link.Attrs().Name
	changed := false
	var errs []error
	if !bytes.Equal(link.Attrs().HardwareAddr, HostVethMAC) {
		if err := r.nl.LinkSetHardwareAddr(link, HostVethMAC); err != nil {
			errs = append(errs, fmt.Errorf("set MAC of %s: %w", name, err))
		}
		changed = true
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := r.nl.LinkSetUp(link); err != nil {
			errs = append(errs, fmt.Errorf("set %s up: %w", name, err))
		}
		changed = true
	}
	for _, kv := range [][2]string{
		{"ipv4/conf/" + name + "/proxy_arp", "1"},
		{"ipv4/neigh/" + name + "/proxy_delay", "0"},
		{"ipv4/conf/" + name + "/forwarding", "1"},
	} {
		c, err := r.sysctl(kv[0], kv[1])
		changed = changed || c
		if err != nil {
			errs = append(errs, err)
		}
	}
	return changed, errors.Join(errs...)
}

// sysctl writes value under /proc/sys/net when it differs.
func (r *Reconciler) sysctl(key, value string) (bool, error) {
	path := filepath.Join(r.sysctlRoot, key)
	cur, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read sysctl %s: %w", key, err)
	}
	if strings.TrimSpace(string(cur)) == value {
		return false, nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return true, fmt.Errorf("write sysctl %s: %w", key, err)
	}
	return true, nil
}

// syncEndpoints adds and fixes entries (removeStale false) or removes the undesired ones.
func (r *Reconciler) syncEndpoints(want map[uint32]maps.Endpoint, removeStale bool) (bool, error) {
	have, err := r.maps.Endpoints.List()
	if err != nil {
		return false, err
	}
	changed := false
	var errs []error
	if removeStale {
		for _, ep := range have {
			if _, ok := want[ep.Ifindex]; !ok {
				changed = true
				errs = append(errs, r.maps.Endpoints.Delete(ep.Ifindex))
			}
		}
		return changed, errors.Join(errs...)
	}
	byIndex := map[uint32]maps.Endpoint{}
	for _, ep := range have {
		byIndex[ep.Ifindex] = ep
	}
	for idx, ep := range want {
		cur, ok := byIndex[idx]
		if ok && cur.IPv4 == ep.IPv4 && bytes.Equal(cur.MAC, ep.MAC) {
			continue
		}
		changed = true
		errs = append(errs, r.maps.Endpoints.Put(ep))
	}
	return changed, errors.Join(errs...)
}

func (r *Reconciler) syncRoutes(want map[netip.Prefix]maps.Route, removeStale bool) (bool, error) {
	have, err := r.maps.Routes.List()
	if err != nil {
		return false, err
	}
	changed := false
	var errs []error
	if removeStale {
		for _, rt := range have {
			if _, ok := want[rt.Prefix]; !ok {
				changed = true
				errs = append(errs, r.maps.Routes.Delete(rt.Prefix))
			}
		}
		return changed, errors.Join(errs...)
	}
	byPrefix := map[netip.Prefix]maps.Route{}
	for _, rt := range have {
		byPrefix[rt.Prefix] = rt
	}
	for p, rt := range want {
		if cur, ok := byPrefix[p]; ok && cur == rt {
			continue
		}
		changed = true
		errs = append(errs, r.maps.Routes.Put(rt))
	}
	return changed, errors.Join(errs...)
}

// syncKernelRoutes makes the main table's routes of protocol margay exactly want.
func (r *Reconciler) syncKernelRoutes(want map[netip.Prefix]netlink.Route) (bool, error) {
	have, err := r.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return false, fmt.Errorf("list kernel routes: %w", err)
	}
	changed := false
	var errs []error
	seen := map[netip.Prefix]bool{}
	for _, cur := range have {
		p := prefixOf(cur.Dst)
		w, ok := want[p]
		if ok && sameRoute(cur, w) && !seen[p] {
			seen[p] = true
			continue
		}
		changed = true
		if err := r.nl.RouteDel(&cur); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %v: %w", p, err))
		}
	}
	for p, w := range want {
		if seen[p] {
			continue
		}
		changed = true
		w := w
		if err := r.nl.RouteReplace(&w); err != nil {
			errs = append(errs, fmt.Errorf("add route %v: %w", p, err))
		}
	}
	return changed, errors.Join(errs...)
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	a, _ := netip.AddrFromSlice(n.IP.To4())
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a, bits)
}

func sameRoute(a, b netlink.Route) bool {
	return a.Type == b.Type && a.LinkIndex == b.LinkIndex && a.Scope == b.Scope && a.Gw.Equal(b.Gw)
}

func (r *Reconciler) attach(ifname string, hooks ...loader.Hook) (bool, error) {
	changed := false
	for _, h := range hooks {
		c, err := r.dp.Ensure(ifname, h)
		if err != nil {
			return changed, err
		}
		changed = changed || c
	}
	return changed, nil
}

func (r *Reconciler) detach(ifname string, hook loader.Hook) (bool, error) {
	if _, err := r.dp.Attached(ifname, hook); errors.Is(err, loader.ErrNotAttached) {
		return false, nil
	}
	return true, r.dp.Detach(ifname, hook)
}

// detachStale removes the programs of interfaces that are neither a wanted workload nor the
// uplink: workloads that went away, a former uplink.
func (r *Reconciler) detachStale(wantIfaces map[string]bool, uplink string) (bool, error) {
	pins, err := loader.LinkPins(r.dp.Root())
	if err != nil {
		return false, err
	}
	changed := false
	var errs []error
	for ifname := range pins {
		if wantIfaces[ifname] || ifname == uplink {
			continue
		}
		changed = true
		r.log.Info("detaching from interface no longer wanted", "interface", ifname)
		errs = append(errs, r.dp.DetachInterface(ifname))
	}
	return changed, errors.Join(errs...)
}

// pruneCounters drops the counters of interfaces that no longer exist.
func (r *Reconciler) pruneCounters() (bool, error) {
	cs, err := r.maps.Counters.List()
	if err != nil {
		return false, err
	}
	gone := map[uint32]bool{}
	for _, c := range cs {
		if gone[c.Ifindex] {
			continue
		}
		if _, err := r.nl.LinkByIndex(int(c.Ifindex)); err != nil {
			gone[c.Ifindex] = true
		}
	}
	var errs []error
	for idx := range gone {
		errs = append(errs, r.maps.Counters.DeleteInterface(idx))
	}
	return len(gone) > 0, errors.Join(errs...)
}
