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
	xdp        XDPMode
	vethNoted  bool // the log line about a veth uplink was written
	// last is what the last successful pass left, the baseline of Update; nil forces Apply.
	last *desired
}

// Option configures a Reconciler.
type Option func(*Reconciler)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(r *Reconciler) { r.log = l } }

// XDPMode says when the XDP prefilter goes on the uplink.
type XDPMode int

const (
	// XDPAuto attaches it unless the uplink is a veth: the veth driver turns TSO off on the peer
	// of a veth that runs XDP and copies every packet, which costs far more than the prefilter
	// saves (BENCHMARKS.md). from_net makes the same source checks when XDP is off.
	XDPAuto XDPMode = iota
	XDPOn           // always
	XDPOff          // never
)

// ParseXDPMode reads auto, on or off (true and false too).
func ParseXDPMode(s string) (XDPMode, error) {
	switch strings.ToLower(s) {
	case "auto", "":
		return XDPAuto, nil
	case "on", "true":
		return XDPOn, nil
	case "off", "false":
		return XDPOff, nil
	}
	return XDPAuto, fmt.Errorf("XDP mode %q: want auto, on or off", s)
}

func (m XDPMode) String() string {
	return [...]string{"auto", "on", "off"}[m]
}

// WithXDP attaches (or, with false, keeps off) the XDP prefilter on the uplink, whatever it is.
func WithXDP(on bool) Option {
	return func(r *Reconciler) {
		r.xdp = XDPOff
		if on {
			r.xdp = XDPOn
		}
	}
}

// WithXDPMode sets when the XDP prefilter goes on the uplink; the default is XDPAuto.
func WithXDPMode(m XDPMode) Option { return func(r *Reconciler) { r.xdp = m } }

// New returns a reconciler working in the calling thread's network namespace.
func New(dp *loader.Dataplane, opts ...Option) (*Reconciler, error) {
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	r := &Reconciler{dp: dp, maps: maps.FromDataplane(dp), nl: nl, log: slog.Default(), sysctlRoot: "/proc/sys/net", xdp: XDPAuto}
	for _, o := range opts {
		o(r)
	}
	// Routes that conntrack entries keep from before this reconciler are looked up again.
	if err := r.maps.Config.RestartRouteGeneration(); err != nil {
		nl.Close()
		return nil, fmt.Errorf("dataplane: %w", err)
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

// desired is a State resolved against the kernel: the interfaces looked up, every map entry and
// kernel route spelled out.
type desired struct {
	uplink      string
	uplinkIndex uint32
	routes      map[netip.Prefix]maps.Route
	endpoints   map[uint32]maps.Endpoint
	kernel      map[netip.Prefix]netlink.Route
	ifaces      map[string]bool         // every wanted workload interface
	present     map[string]netlink.Link // the wanted ones that exist
	workloads   map[string]Workload     // what each present interface was resolved for
	pending     []string                // the wanted ones that do not exist (yet)
	policy      Policy
	entries     map[maps.PolicyKey]maps.PolicyValue // the policy map as this state wants it
	pentries    *PolicyEntries                      // entries, indexed for the incremental path
}

// resolve looks up the interfaces of s. With a previous desired state, the interface of a workload
// it resolved with the same record is taken from it: re-creating a veth (CNI DEL and ADD) gives
// the workload side a new MAC, so a changed interface always comes with a changed record.
func (r *Reconciler) resolve(s State, prev *desired) (*desired, error) {
	// Sized up front: built again in every pass, the maps would otherwise grow step by step.
	nw, nr := len(s.Workloads), len(s.Workloads)+len(s.Hosts)+len(s.Blocks)+len(s.Remote)
	d := &desired{uplink: s.Uplink, routes: make(map[netip.Prefix]maps.Route, nr), endpoints: make(map[uint32]maps.Endpoint, nw),
		kernel: make(map[netip.Prefix]netlink.Route, nr), ifaces: make(map[string]bool, nw), present: make(map[string]netlink.Link, nw),
		workloads: make(map[string]Workload, nw), policy: s.Policy}
	if d.policy.IPs == nil {
		d.policy.IPs = map[netip.Prefix]uint32{}
	}
	switch {
	case prev.samePolicy(s.Policy):
		d.entries, d.pentries = prev.entries, prev.pentries // the same compilation: the same entries, which are many
	case prev.deltaApplies(s.Policy):
		// Update's incremental path changes prev's entries into these.
	case s.Policy.Entries != nil:
		d.entries = s.Policy.Entries(s.Policy.Programs, s.Policy.Identities)
		d.pentries = NewPolicyEntries(d.entries)
	default:
		d.entries = map[maps.PolicyKey]maps.PolicyValue{}
		d.pentries = NewPolicyEntries(d.entries)
	}
	for _, h := range s.Hosts {
		p := netip.PrefixFrom(h, 32)
		flags := maps.Host | s.inPool(p)
		if h == s.Self {
			flags |= maps.LocalHost
		}
		d.routes[p] = maps.Route{Prefix: p, Flags: flags}
	}
	if prev != nil && prev.uplink == s.Uplink {
		d.uplinkIndex = prev.uplinkIndex
	} else {
		uplink, err := r.nl.LinkByName(s.Uplink)
		if err != nil {
			return nil, fmt.Errorf("look up uplink %s: %w", s.Uplink, err)
		}
		d.uplinkIndex = uint32(uplink.Attrs().Index)
	}
	var errs []error
	for _, w := range s.Workloads {
		d.ifaces[w.IfName] = true
		link, ok := prev.link(w)
		if !ok {
			var err error
			link, err = r.nl.LinkByName(w.IfName)
			if err != nil {
				var nf netlink.LinkNotFoundError
				if !errors.As(err, &nf) {
					errs = append(errs, fmt.Errorf("look up %s: %w", w.IfName, err))
				}
				d.pending = append(d.pending, w.IfName)
				continue
			}
		}
		d.present[w.IfName] = link
		d.workloads[w.IfName] = w
		idx := uint32(link.Attrs().Index)
		p := netip.PrefixFrom(w.IPv4, 32)
		d.endpoints[idx] = maps.Endpoint{Ifindex: idx, IPv4: w.IPv4, MAC: w.MAC,
			IngressProgram: w.IngressProgram, EgressProgram: w.EgressProgram}
		d.routes[p] = maps.Route{Prefix: p, Flags: maps.LocalWorkload | s.inPool(p), Ifindex: idx}
		d.kernel[p] = netlink.Route{LinkIndex: int(idx), Dst: ipNet(p), Scope: netlink.SCOPE_LINK,
			Type: unix.RTN_UNICAST, Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
	}
	for _, b := range s.Blocks {
		d.routes[b] = maps.Route{Prefix: b, Flags: maps.LocalBlock | s.inPool(b)}
		d.kernel[b] = netlink.Route{Dst: ipNet(b), Type: unix.RTN_BLACKHOLE, Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
	}
	for _, rr := range s.Remote {
		kind := maps.RemoteBlock
		if rr.Workload {
			kind = maps.RemoteWorkload
		}
		d.routes[rr.Prefix] = maps.Route{Prefix: rr.Prefix, Flags: kind | s.inPool(rr.Prefix), Ifindex: d.uplinkIndex, NextHop: rr.NextHop}
		d.kernel[rr.Prefix] = netlink.Route{LinkIndex: int(d.uplinkIndex), Dst: ipNet(rr.Prefix),
			Gw: rr.NextHop.AsSlice(), Type: unix.RTN_UNICAST, Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
	}
	return d, errors.Join(errs...)
}

// samePolicy says whether p comes from the compilation d's policy came from.
func (d *desired) samePolicy(p Policy) bool {
	return d != nil && p.Compiled != 0 && p.Compiled == d.policy.Compiled && len(p.NewRules) == 0
}

// deltaApplies says whether p's Delta is based on the compilation d's policy came from, which
// the maps hold.
func (d *desired) deltaApplies(p Policy) bool {
	return d != nil && p.Delta != nil && d.policy.Compiled != 0 && p.Delta.Base == d.policy.Compiled && d.pentries != nil
}

func (d *desired) link(w Workload) (netlink.Link, bool) {
	if d == nil {
		return nil, false
	}
	prev, ok := d.workloads[w.IfName]
	if !ok || prev.IPv4 != w.IPv4 || !bytes.Equal(prev.MAC, w.MAC) {
		return nil, false
	}
	return d.present[w.IfName], true
}

// changes collects the outcome of the steps of one pass.
type changes struct {
	res  Result
	errs []error
}

func (c *changes) note(changed bool, err error) {
	if changed {
		c.res.Changes++
	}
	if err != nil {
		c.errs = append(c.errs, err)
	}
}

// Apply compares everything with the kernel and the maps and changes whatever differs from s, in
// an order that never leaves traffic without a path: endpoint, then route, then program for a new
// workload; the reverse for a removed one. It repairs hand-made changes and removes leftovers, and
// goes on past individual failures, returning them joined. Run it at start and periodically;
// Update is the cheap pass for events in between.
func (r *Reconciler) Apply(s State) (Result, error) {
	r.last = nil
	if err := s.Validate(); err != nil {
		return Result{}, err
	}
	d, err := r.resolve(s, nil)
	if d == nil {
		return Result{}, err
	}
	var c changes
	c.note(false, err)
	c.res.Pending = d.pending
	c.note(r.sysctl("ipv4/ip_forward", "1"))
	for _, link := range d.present {
		c.note(r.configureInterface(link))
	}

	// Additions and repairs: policy before endpoint before route before program.
	pol, err := r.readPolicy()
	c.note(false, err)
	policyChanged, err := r.addPolicy(d, pol)
	c.note(policyChanged, err)
	epChanged, err := r.syncEndpoints(d.endpoints, false)
	c.note(epChanged, err)
	if policyChanged || epChanged {
		c.note(r.bumpGeneration())
	}
	c.note(r.removePolicy(d, pol))
	// The map is read once: the additions below never add what the removals take away.
	haveRoutes, listErr := r.maps.Routes.All()
	c.note(false, listErr)
	if listErr == nil {
		c.note(r.syncRoutes(d.routes, haveRoutes, false))
	}
	c.note(r.attachNetfilter())
	for ifname := range d.present {
		c.note(r.attach(ifname, loader.HookFromWep, loader.HookToWep))
	}
	c.note(r.attachUplink(s.Uplink))
	c.note(r.syncKernelRoutes(d.kernel))

	// Removals: program, then route, then endpoint.
	c.note(r.detachStale(d.ifaces, s.Uplink))
	if listErr == nil {
		c.note(r.syncRoutes(d.routes, haveRoutes, true))
	}
	c.note(r.syncEndpoints(d.endpoints, true))
	c.note(r.pruneCounters())

	if len(c.errs) == 0 {
		r.last = d
	}
	return c.res, errors.Join(c.errs...)
}

// Update applies only what changed between the state of the last successful pass and s, trusting
// the kernel and the maps to still hold what that pass left: the fast path for datastore events.
// Without such a pass, or when the uplink changed, it is Apply.
func (r *Reconciler) Update(s State) (Result, error) {
	prev := r.last
	if prev == nil || prev.uplink != s.Uplink {
		return r.Apply(s)
	}
	r.last = nil
	if err := s.Validate(); err != nil {
		return Result{}, err
	}
	d, err := r.resolve(s, prev)
	if d == nil {
		return Result{}, err
	}
	var c changes
	c.note(false, err)
	c.res.Pending = d.pending

	// Additions and changes: interface settings, endpoint, route, program, kernel route.
	for ifname, link := range d.present {
		if _, ok := prev.present[ifname]; !ok {
			c.note(r.configureInterface(link))
		}
	}
	// The same compilation as the last pass: the policy maps hold it already.
	samePolicy := prev.samePolicy(s.Policy)
	// A compilation that says what changed since the one the maps hold: only that is written.
	delta := !samePolicy && prev.deltaApplies(s.Policy)
	var (
		pol           *installed
		removal       *PolicyRemoval
		policyChanged bool
	)
	switch {
	case delta:
		d.pentries = prev.pentries
		policyChanged, err = r.resetRules(s.Policy.NewRules)
		c.note(false, err)
		var added bool
		removal, added, err = d.pentries.AddDelta(prev.policy, s.Policy, r.maps.Policy, r.maps.PolicyIPs)
		c.note(added, err)
		changed, err := r.syncPolicySettings(s.Policy)
		c.note(changed, err)
		policyChanged = policyChanged || added || changed
	case !samePolicy:
		pol = prev.installedPolicy()
		policyChanged, err = r.addPolicy(d, pol)
		c.note(policyChanged, err)
	}
	for idx, ep := range d.endpoints {
		if old, ok := prev.endpoints[idx]; !ok || !old.Equal(ep) {
			policyChanged = policyChanged || !ok || old.IngressProgram != ep.IngressProgram || old.EgressProgram != ep.EgressProgram
			c.note(true, r.maps.Endpoints.Put(ep))
		}
	}
	if policyChanged {
		c.note(r.bumpGeneration())
	}
	switch {
	case delta:
		c.note(removal.Remove(r.maps.Policy))
		d.entries = d.pentries.Map()
	case !samePolicy:
		c.note(r.removePolicy(d, pol))
	}
	var put []maps.Route
	for p, rt := range d.routes {
		if old, ok := prev.routes[p]; !ok || old != rt {
			put = append(put, rt)
		}
	}
	if len(put) > 0 {
		c.res.Changes += len(put) - 1
		c.note(true, r.maps.Routes.PutAll(put))
	}
	for ifname := range d.present {
		if _, ok := prev.present[ifname]; !ok {
			c.note(r.attach(ifname, loader.HookFromWep, loader.HookToWep))
		}
	}
	for p, kr := range d.kernel {
		if old, ok := prev.kernel[p]; !ok || !sameRoute(old, kr) {
			kr := kr
			err := r.nl.RouteReplace(&kr)
			if err != nil {
				err = fmt.Errorf("add route %v: %w", p, err)
			}
			c.note(true, err)
		}
	}

	// Removals: program, kernel route, map route, endpoint.
	for ifname := range prev.present {
		if _, ok := d.present[ifname]; !ok {
			c.note(true, r.dp.DetachInterface(ifname))
		}
	}
	for p, kr := range prev.kernel {
		if _, ok := d.kernel[p]; !ok {
			kr := kr
			err := r.nl.RouteDel(&kr)
			if err != nil && !errors.Is(err, unix.ESRCH) {
				c.note(true, fmt.Errorf("delete route %v: %w", p, err))
			} else {
				c.note(true, nil)
			}
		}
	}
	var gone []netip.Prefix
	for p := range prev.routes {
		if _, ok := d.routes[p]; !ok {
			gone = append(gone, p)
		}
	}
	if len(gone) > 0 {
		c.res.Changes += len(gone) - 1
		c.note(true, r.maps.Routes.DeleteAll(gone))
	}
	for idx := range prev.endpoints {
		if _, ok := d.endpoints[idx]; !ok {
			c.note(true, r.maps.Endpoints.Delete(idx))
		}
	}

	if len(c.errs) == 0 {
		r.last = d
	}
	return c.res, errors.Join(c.errs...)
}

// attachUplink puts from_net, and XDP unless it is off, on the uplink.
func (r *Reconciler) attachUplink(uplink string) (bool, error) {
	// from_net skips the source checks of the prefilter only while the prefilter runs: the flag
	// goes off before XDP does, and on after.
	if !r.wantXDP(uplink) {
		changed, err := r.maps.Config.SetPrefilter(false)
		if err != nil {
			return changed, err
		}
		c1, err := r.detach(uplink, loader.HookXDPFromNet)
		if err != nil {
			return changed || c1, err
		}
		c2, err := r.attach(uplink, loader.HookFromNet)
		return changed || c1 || c2, err
	}
	changed, err := r.attach(uplink, loader.HookFromNet, loader.HookXDPFromNet)
	if err != nil {
		return changed, err
	}
	c2, err := r.maps.Config.SetPrefilter(true)
	return changed || c2, err
}

// attachNetfilter puts nf_policy at netfilter's forward and local-in hooks; from_wep leaves the
// policy of what it hands to the kernel to it only once it runs (the flag goes on after).
func (r *Reconciler) attachNetfilter() (bool, error) {
	changed, err := r.dp.EnsureNetfilter()
	if err != nil {
		return changed, err
	}
	c2, err := r.maps.Config.SetNFPolicy(true)
	return changed || c2, err
}

// wantXDP decides whether the prefilter goes on the uplink.
func (r *Reconciler) wantXDP(uplink string) bool {
	switch r.xdp {
	case XDPOn:
		return true
	case XDPOff:
		return false
	}
	link, err := r.nl.LinkByName(uplink)
	if err != nil {
		return true // attach reports the missing uplink
	}
	if link.Type() == "veth" {
		if !r.vethNoted {
			r.log.Info("no XDP prefilter on a veth uplink: veth would turn TSO off for it; from_net makes the checks",
				"uplink", uplink)
			r.vethNoted = true
		}
		return false
	}
	return true
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
		if ok && cur.Equal(ep) {
			continue
		}
		changed = true
		errs = append(errs, r.maps.Endpoints.Put(ep))
	}
	return changed, errors.Join(errs...)
}

// syncRoutes adds and fixes routes (removeStale false) or removes the undesired ones, given
// what the map holds.
func (r *Reconciler) syncRoutes(want map[netip.Prefix]maps.Route, have []maps.Route, removeStale bool) (bool, error) {
	if removeStale {
		var gone []netip.Prefix
		for _, rt := range have {
			if _, ok := want[rt.Prefix]; !ok {
				gone = append(gone, rt.Prefix)
			}
		}
		return len(gone) > 0, r.maps.Routes.DeleteAll(gone)
	}
	byPrefix := make(map[netip.Prefix]maps.Route, len(have))
	for _, rt := range have {
		byPrefix[rt.Prefix] = rt
	}
	var put []maps.Route
	for p, rt := range want {
		if cur, ok := byPrefix[p]; ok && cur == rt {
			continue
		}
		put = append(put, rt)
	}
	return len(put) > 0, r.maps.Routes.PutAll(put)
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
