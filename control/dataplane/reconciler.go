package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// Reconciler makes the host match a State. It is not safe for concurrent use: one owner
// goroutine calls Apply, at start, on every change and periodically.
type Reconciler struct {
	dp         *loader.Dataplane
	maps       *maps.Set
	nl         *netlink.Handle
	log        *slog.Logger
	sysctlRoot string // hostconv.SysctlRoot; a directory of its own in tests
	xdp        XDPMode
	vethNoted  bool // the log line about a veth uplink was written
	// last is what the last successful pass left, the baseline of Update; nil forces Apply.
	last *desired
	// afterDerive, when set (tests), runs between a pass's derivation and its first change to
	// the host: where a CNI DEL beside the pass removes an interface the pass just looked up.
	afterDerive func()
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
	r := &Reconciler{dp: dp, maps: maps.FromDataplane(dp), nl: nl, log: slog.Default(), sysctlRoot: hostconv.SysctlRoot, xdp: XDPAuto}
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

// setPolicy gives d policy pol: the entries of the compilation d has when it is the same one,
// none yet when Update's incremental path will change d's into them, else all spelled out.
func (d *desired) setPolicy(pol Policy, same, delta bool) {
	d.policy = pol
	if d.policy.IPs == nil {
		d.policy.IPs = map[netip.Prefix]uint32{}
	}
	switch {
	case same, delta:
	case pol.Tables != nil:
		d.entries = pol.Tables.Entries(pol.Programs, pol.Identities)
		d.pentries = NewPolicyEntries(d.entries)
	default:
		d.entries = map[maps.PolicyKey]maps.PolicyValue{}
		d.pentries = NewPolicyEntries(d.entries)
	}
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

// changes collects the outcome of the steps of one pass.
type changes struct {
	res  Result
	errs []error
}

// noteOn is note for a step on the interface with index ifindex (and name, when known): a
// failure because the interface went away while the pass ran (a CNI DEL beside it) is no error
// of the pass. The workload's record goes next, and the pass for it cleans up; if it stays, the
// next full pass finds the interface missing and waits for it. Failing the pass instead would
// make the next one a full pass, which a DEL beside it fails again: at 1,000 workloads, full
// passes of ≈ 1 s back to back while pods go away.
func (c *changes) noteOn(r *Reconciler, ifindex int, name string) func(bool, error) {
	return func(changed bool, err error) {
		if err != nil && ifindex != 0 && r.vanished(ifindex, name) {
			r.log.Debug("interface went away during the pass", "interface", name, "ifindex", ifindex, "error", err)
			err = nil
		}
		c.note(changed, err)
	}
}

// noteRoute notes the addition of kernel route kr: on a workload's interface that went away, no
// error (see noteOn); on the uplink, blackholes and the rest, as it is.
func (c *changes) noteRoute(r *Reconciler, d *desired, kr netlink.Route, err error) {
	if kr.LinkIndex == 0 || kr.LinkIndex == int(d.uplinkIndex) {
		c.note(true, err)
		return
	}
	c.noteOn(r, kr.LinkIndex, "")(true, err)
}

// vanished says whether the interface with index ifindex (named name, when given) is gone.
func (r *Reconciler) vanished(ifindex int, name string) bool {
	l, err := r.nl.LinkByIndex(ifindex)
	if err != nil {
		var nf netlink.LinkNotFoundError
		return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
	}
	return name != "" && l.Attrs().Name != name
}

// addRoute adds or replaces a kernel route.
func (r *Reconciler) addRoute(kr netlink.Route) error {
	if err := r.nl.RouteReplace(&kr); err != nil {
		return fmt.Errorf("add route %v: %w", prefixOf(kr.Dst), err)
	}
	return nil
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
	uplink, err := r.nl.LinkByName(s.Uplink)
	if err != nil {
		return Result{}, fmt.Errorf("look up uplink %s: %w", s.Uplink, err)
	}
	d := newDesired(&s, uint32(uplink.Attrs().Index))
	d.setPolicy(s.Policy, false, false)
	p, err := r.derive(d, &s, true)
	var c changes
	c.note(false, err)
	c.note(false, r.hostPlan(d, p))
	return r.execute(d, p, &s, &c)
}

// Update applies only what changed between the state of the last successful pass and s, trusting
// the kernel and the maps to still hold what that pass left: the fast path for datastore events.
// With s.Changed set and the frame (uplink, hosts, blocks, pools) the same, it looks at the
// workloads and remote routes Changed names only, so that its cost is in what changed, not in
// the size of the host. Without a successful pass before, or when the uplink changed, it is Apply.
func (r *Reconciler) Update(s State) (Result, error) {
	d := r.last
	if d == nil || d.uplink != s.Uplink {
		return r.Apply(s)
	}
	r.last = nil // d changes in place: after a failure, only a full pass knows the host again
	all := s.Changed == nil || !d.sameFrame(&s)
	validate := s.validateChanged
	if all {
		validate = s.Validate
	}
	if err := validate(); err != nil {
		return Result{}, err
	}
	// The same compilation as the last pass: the policy maps hold it already. A compilation that
	// says what changed since the one the maps hold: only that is written.
	same := d.samePolicy(s.Policy)
	var step policyStep
	switch {
	case same:
	case d.deltaApplies(s.Policy):
		step = policyStep{delta: true, prev: d.policy}
	default:
		step.installed = d.installedPolicy() // before the endpoints change
	}
	if all {
		d.setFrame(&s)
	}
	d.setPolicy(s.Policy, same, step.delta)
	p, err := r.derive(d, &s, all)
	p.policy = step
	var c changes
	c.note(false, err)
	return r.execute(d, p, &s, &c)
}

// attachUplink puts from_net, and XDP unless it is off, on the uplink.
func (r *Reconciler) attachUplink(uplink string, ifindex int) (bool, error) {
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
		c2, err := r.attach(uplink, ifindex, loader.HookFromNet)
		return changed || c1 || c2, err
	}
	changed, err := r.attach(uplink, ifindex, loader.HookFromNet, loader.HookXDPFromNet)
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
	if !bytes.Equal(link.Attrs().HardwareAddr, hostconv.VethMAC) {
		if err := r.nl.LinkSetHardwareAddr(link, hostconv.VethMAC); err != nil {
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
	for _, kv := range hostconv.VethSysctls(name) {
		c, err := hostconv.SetSysctl(r.sysctlRoot, kv[0], kv[1])
		changed = changed || c
		if err != nil {
			errs = append(errs, err)
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

func (r *Reconciler) attach(ifname string, ifindex int, hooks ...loader.Hook) (bool, error) {
	changed := false
	for _, h := range hooks {
		c, err := r.dp.EnsureOn(ifname, ifindex, h)
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

// pruneCounters drops the counters of interfaces that no longer exist; those of d's present
// workloads and uplink, just looked up, do.
func (r *Reconciler) pruneCounters(d *desired) (bool, error) {
	gone, err := r.maps.Counters.Prune(func(ifindex uint32) bool {
		if _, ok := d.endpoints[ifindex]; ok || ifindex == d.uplinkIndex {
			return true
		}
		_, err := r.nl.LinkByIndex(int(ifindex))
		return err == nil
	})
	return len(gone) > 0, err
}
