package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/bgp"
	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/loader"
)

// routing keeps the BGP speaker in line with the view: the peers the mesh, reflector and explicit
// peer settings call for, and the prefixes this node originates. It is owned by the loop
// goroutine, which takes the speaker's Updates (updates) and decides with the view's import
// policy (view.learnedRoutes) which learned routes the host uses.
type routing struct {
	opts    []bgp.Option
	speaker bgp.Speaker // nil until the first sync, which knows the AS number
	peers   []bgp.Peer
	ads     []bgp.Advertisement
}

// bgpStatus is what routing publishes, read by the HTTP handlers and the metrics on their own
// goroutines.
type bgpStatus struct {
	speaker    atomic.Pointer[bgp.Speaker] // once the first sync started it
	learned    atomic.Int64                // learned routes the import policy takes
	advertised atomic.Int64                // prefixes the speaker originates
	retained   atomic.Int64                // remote routes kept from before a restart
}

// newRouting prepares the speaker for this node: router ID and source address the node's IPv4.
// forwarding says the dataplane of an earlier agent still forwards, which makes this a graceful
// restart (RFC 4724) towards the peers.
func (a *Agent) newRouting(self netip.Prefix, forwarding bool) *routing {
	listen := a.cfg.BGPListen
	if len(listen) == 0 {
		listen = []netip.Addr{self.Addr()}
	}
	opts := []bgp.Option{
		bgp.WithLogger(a.log.With("component", "bgp")),
		bgp.WithListenAddresses(listen...),
		bgp.WithLocalAddress(self.Addr()),
	}
	if a.cfg.BGPPort != 0 {
		opts = append(opts, bgp.WithListenPort(a.cfg.BGPPort))
	}
	gr := !a.cfg.BGPNoGracefulRestart
	if gr && a.cfg.BGPRestartTime > a.cfg.holdTime() {
		a.log.Warn("bgp restart time above the hold time: using the hold time, so that a host stopped for good is "+
			"withdrawn within it", "restart_time", a.cfg.BGPRestartTime, "hold_time", a.cfg.holdTime())
	}
	if gr && forwarding {
		a.log.Info("bgp graceful restart: the dataplane kept forwarding, peers are told so", "restart_time", a.cfg.restartTime())
	}
	opts = append(opts, bgp.WithTimers(a.cfg.BGPHold, a.cfg.BGPKeepalive, a.cfg.BGPConnectRetry),
		bgp.WithGracefulRestart(gr, a.cfg.restartTime()), bgp.WithRestarting(forwarding))
	return &routing{opts: opts}
}

// updates is the speaker's channel of learned routes; nil (never ready) without BGP or before
// the speaker runs.
func (r *routing) updates() <-chan bgp.Update {
	if r == nil || r.speaker == nil {
		return nil
	}
	return r.speaker.Updates()
}

// learn takes an Update of the speaker into the view.
func (a *Agent) learn(v *view, u bgp.Update) {
	v.learned = u.Routes
	v.dirtyRemote = true
	if v.learnedAt.IsZero() {
		v.learnedAt = time.Now() // the oldest change not yet programmed
	}
	if u.Synced {
		// After the routes of every peer's initial table: the retained routes can go.
		a.release(v, "every peer sent its End-of-RIB")
	}
}

func (c Config) holdTime() time.Duration { return cmp.Or(c.BGPHold, bgp.DefaultHoldTime) }

// restartTime is the graceful restart time announced to peers: the configured one, at most the
// hold time (RFC 4724: "less than or equal to the HOLDTIME"), the hold time when not set.
func (c Config) restartTime() time.Duration {
	if c.BGPRestartTime <= 0 {
		return c.holdTime()
	}
	return min(c.BGPRestartTime, c.holdTime())
}

// forwardingKept says whether programs an earlier agent attached are still pinned under root,
// and so forwarding while this agent starts.
func forwardingKept(root string) bool {
	pins, err := loader.LinkPins(root)
	return err == nil && len(pins) > 0
}

// sync pushes what changed in the view to the speaker, starting it on the first call. The AS
// number (the node's own, else config/bgp's) is fixed when the speaker starts; changing it
// resets every session anyway, so it takes an agent restart.
func (r *routing) sync(ctx context.Context, a *Agent, v *view) error {
	self, cfg, ok := v.bgpSettings()
	if !ok {
		return nil
	}
	if r.speaker == nil {
		s, err := bgp.New(datastore.EffectiveASN(self, cfg), self.AddressV4.Addr(), r.opts...)
		if err != nil {
			return fmt.Errorf("create bgp speaker: %w", err)
		}
		if err := s.Start(ctx); err != nil {
			return fmt.Errorf("start bgp speaker: %w", err)
		}
		r.speaker = s
		a.bgp.speaker.Store(&r.speaker)
	}
	var errs []error
	// Our prefixes before the peers: a restarting speaker sends its table with its End-of-RIB
	// as soon as the peers sent theirs, and it must be complete by then.
	ads := v.advertisements()
	if !slices.Equal(ads, r.ads) {
		if err := r.speaker.Advertise(ctx, ads); err != nil {
			errs = append(errs, fmt.Errorf("advertise: %w", err))
		} else {
			r.ads = ads
			a.bgp.advertised.Store(int64(len(ads)))
		}
	}
	peers := v.peers(self, cfg)
	if !slices.EqualFunc(peers, r.peers, samePeer) {
		if err := r.speaker.SetPeers(ctx, peers); err != nil {
			errs = append(errs, fmt.Errorf("set bgp peers: %w", err))
		} else {
			r.peers = peers
		}
	}
	return errors.Join(errs...)
}

// stop closes the sessions. Peers with graceful restart keep our routes for the restart time.
func (r *routing) stop() {
	if r.speaker != nil {
		_ = r.speaker.Stop(context.Background())
	}
}

func samePeer(a, b bgp.Peer) bool {
	return a.Address == b.Address && a.ASN == b.ASN && a.Type == b.Type && a.Port == b.Port &&
		a.Password == b.Password && a.RouteReflectorClient == b.RouteReflectorClient && slices.Equal(a.Accept, b.Accept)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func mapValues[V any](m map[string]V) []V {
	out := make([]V, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}

// advertisements are the prefixes this node originates: its blocks, and the /32 of every local
// workload whose address was borrowed from another node's block (as the last state derived
// them). A route reflector that
// restarted with the remote routes of its predecessor retained also advertises those, with
// their next hops, until BGP converged: a client that comes back before another would
// otherwise take the reflector's End-of-RIB for the end of the other's routes and drop them.
func (v *view) advertisements() []bgp.Advertisement { return v.advertisementsOf(v.der) }

// advertisementsOf are the advertisements with the borrowed /32s of d.
func (v *view) advertisementsOf(d *derived) []bgp.Advertisement {
	var ads []bgp.Advertisement
	if v.nodes[v.node].RouteReflectorClusterID != "" {
		for _, r := range v.retained {
			ads = append(ads, bgp.Advertisement{Prefix: r.Prefix, NextHop: r.NextHop})
		}
	}
	for _, b := range v.blocks {
		if b.Node() == v.node {
			ads = append(ads, bgp.Advertisement{Prefix: b.CIDR})
		}
	}
	if d != nil {
		for _, p := range d.lent {
			ads = append(ads, bgp.Advertisement{Prefix: p})
		}
	}
	slices.SortFunc(ads, func(a, b bgp.Advertisement) int {
		if c := a.Prefix.Compare(b.Prefix); c != 0 {
			return c
		}
		if a.NextHop.IsValid() != b.NextHop.IsValid() {
			return cmp.Compare(btoi(a.NextHop.IsValid()), btoi(b.NextHop.IsValid()))
		}
		return a.NextHop.Compare(b.NextHop)
	})
	// One per prefix: this node's own (no next hop given) before a retained route.
	return slices.CompactFunc(ads, func(a, b bgp.Advertisement) bool { return a.Prefix == b.Prefix })
}

// bgpSettings are this node's record and the cluster's BGP configuration (the defaults when
// config/bgp is not set); ok is false until the node's record is known.
func (v *view) bgpSettings() (self datastore.Node, cfg datastore.BGPConfig, ok bool) {
	self, ok = v.nodes[v.node]
	cfg = datastore.DefaultBGPConfig()
	if c, found := v.bgpConfig[bgpConfigName]; found {
		cfg = c
	}
	return self, cfg, ok
}

// peers are the BGP neighbors this node should have.
func (v *view) peers(self datastore.Node, cfg datastore.BGPConfig) []bgp.Peer {
	return bgp.Mesh(self, mapValues(v.nodes), cfg, mapValues(v.bgpPeers))
}

// importPolicy is this node's import policy (bgp.Import) as the view has it: the node's address
// and subnet, the pools, the peers' Accept lists and what the node advertises (with the
// borrowed /32s of d).
func (v *view) importPolicy(d *derived) bgp.Import {
	self, cfg, _ := v.bgpSettings()
	pools := make([]netip.Prefix, 0, len(v.pools))
	for _, p := range v.pools {
		pools = append(pools, p.CIDR)
	}
	ads := v.advertisementsOf(d)
	own := make([]netip.Prefix, 0, len(ads))
	for _, a := range ads {
		own = append(own, a.Prefix)
	}
	return bgp.NewImport(self.AddressV4, pools, v.peers(self, cfg), own)
}

// learnedRoutes are the BGP-learned routes the import policy takes (d's borrowed /32s among
// what the node advertises); v.taken counts them.
func (v *view) learnedRoutes(d *derived) []dataplane.RemoteRoute {
	im := v.importPolicy(d)
	var out []dataplane.RemoteRoute
	for _, r := range v.learned {
		if im.Takes(r) {
			out = append(out, dataplane.RemoteRoute{Prefix: r.Prefix, NextHop: r.NextHop, Workload: r.Prefix.Bits() == 32})
		}
	}
	v.taken = len(out)
	return out
}

// retainedRoutes reads the remote routes an earlier agent left in the kernel (protocol margay,
// through a gateway on the uplink): a restarted agent keeps them until BGP has delivered every
// peer's table again, as RFC 4724's restarting speaker keeps its forwarding state, so that the
// first pass, which runs before any session is up, does not take the other hosts' blocks away.
func retainedRoutes(uplink string) ([]dataplane.RemoteRoute, error) {
	link, err := netlink.LinkByName(uplink)
	if err != nil {
		return nil, fmt.Errorf("look up uplink %s: %w", uplink, err)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: hostconv.RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list kernel routes: %w", err)
	}
	var out []dataplane.RemoteRoute
	for _, r := range routes {
		gw, ok := netip.AddrFromSlice(r.Gw.To4())
		if !ok || r.Dst == nil || r.LinkIndex != link.Attrs().Index || r.Type != unix.RTN_UNICAST {
			continue
		}
		bits, _ := r.Dst.Mask.Size()
		dst, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok {
			continue
		}
		p := netip.PrefixFrom(dst, bits).Masked()
		out = append(out, dataplane.RemoteRoute{Prefix: p, NextHop: gw, Workload: bits == 32})
	}
	return out, nil
}

// retain fills v.retained from the kernel when BGP with graceful restart runs, and returns when
// to give up waiting for the peers' End-of-RIB: the restart time, as long as the peers keep our
// routes (nil when nothing is retained). It runs on the loop's thread, in the host's namespace.
func (a *Agent) retain(v *view, uplink string) <-chan time.Time {
	if !a.cfg.BGP || a.cfg.BGPNoGracefulRestart {
		return nil
	}
	routes, err := retainedRoutes(uplink)
	if err != nil {
		a.log.Warn("reading the routes of the previous agent", "error", err)
		return nil
	}
	if len(routes) == 0 {
		return nil
	}
	v.retained = routes
	a.bgp.retained.Store(int64(len(routes)))
	deferral := a.cfg.restartTime()
	a.log.Info("keeping the remote routes found in the kernel until bgp has every peer's table", "routes", len(routes),
		"at_most", deferral)
	return time.After(deferral)
}

// withRetained adds to the learned routes the retained ones whose prefix BGP has not delivered
// (yet), until releaseRetained.
func (v *view) withRetained(learned []dataplane.RemoteRoute) []dataplane.RemoteRoute {
	if len(v.retained) == 0 {
		return learned
	}
	have := map[netip.Prefix]bool{}
	for _, r := range learned {
		have[r.Prefix] = true
	}
	for _, b := range v.blocks {
		if b.Node() == v.node {
			have[b.CIDR] = true
		}
	}
	for _, r := range v.retained {
		if !have[r.Prefix] {
			learned = append(learned, r)
		}
	}
	return learned
}

// release drops the retained routes: from now on BGP alone says what is remote.
func (a *Agent) release(v *view, why string) {
	if v.retained == nil {
		return
	}
	a.log.Info("bgp converged; routes kept from before the restart released", "reason", why, "kept", len(v.retained))
	v.retained = nil
	v.dirtyRemote = true
	a.bgp.retained.Store(0)
}
