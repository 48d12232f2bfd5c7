package bgp

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"
)

// GoBGP is the Speaker backed by an embedded GoBGP v3 server.
type GoBGP struct {
	asn      uint32
	routerID netip.Addr
	opts     options
	log      *slog.Logger

	opMu       sync.Mutex // serialises Start, Stop, SetPeers and Advertise
	srv        *server.BgpServer
	cancel     context.CancelFunc
	watchCtx   context.Context // ends with Stop
	logs       *logAdapter
	done       chan struct{}
	listenPort int
	peers      map[netip.Addr]Peer         // configured in GoBGP
	advertised map[netip.Prefix]netip.Addr // prefix → next hop
	// restarting says the next SetPeers adds the peers of a restart (WithRestarting): their
	// sessions open with the Restart State bit and the Forwarding State bit for IPv4 unicast.
	restarting bool
	// lateRestart are the peers of the restart whose session has not come up yet (see
	// keepRestartBits).
	lateRestart map[netip.Addr]bool

	mu      sync.Mutex // guards the fields below, shared with the watch callback
	started bool
	best    map[netip.Prefix]learned // best path per prefix, before filtering
	accept  map[netip.Addr][]netip.Prefix
	known   map[netip.Addr]bool
	own     map[netip.Prefix]bool
	pools   []netip.Prefix
	notify  chan struct{}
	// eor holds the peers whose End-of-RIB for IPv4 unicast arrived since the speaker started;
	// peersSet says SetPeers ran, so that the set of peers to wait for is known.
	eor          map[netip.Addr]bool
	peersSet     bool
	syncReported bool
}

type learned struct {
	nextHop netip.Addr
	peer    netip.Addr
}

var _ Speaker = (*GoBGP)(nil)

// New returns a stopped speaker for AS asn with routerID (the node's IPv4 address), which is
// also the next hop of advertised prefixes and the default source of outgoing sessions.
func New(asn uint32, routerID netip.Addr, opts ...Option) (*GoBGP, error) {
	if asn == 0 {
		return nil, fmt.Errorf("new speaker: AS 0: %w", ErrBadPeer)
	}
	if !routerID.Is4() {
		return nil, fmt.Errorf("new speaker: router ID %s: want an IPv4 address", routerID)
	}
	o := options{
		logger:          slog.Default(),
		listenPort:      DefaultListenPort,
		holdTime:        DefaultHoldTime,
		keepalive:       DefaultKeepalive,
		connectRetry:    DefaultConnectRetry,
		gracefulRestart: true,
		restartTime:     DefaultRestartTime,
		routeDelay:      DefaultRouteDelay,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if !o.localAddress.IsValid() {
		o.localAddress = routerID
	}
	return &GoBGP{
		asn:        asn,
		routerID:   routerID,
		opts:       o,
		log:        o.logger.With("component", "bgp"),
		peers:      make(map[netip.Addr]Peer),
		advertised: make(map[netip.Prefix]netip.Addr),
		best:       make(map[netip.Prefix]learned),
		accept:     make(map[netip.Addr][]netip.Prefix),
		known:      make(map[netip.Addr]bool),
		own:        make(map[netip.Prefix]bool),
		eor:        make(map[netip.Addr]bool),
		notify:     make(chan struct{}, 1),
	}, nil
}

// ListenPort returns the port the speaker listens on once started (useful with
// WithListenPort(0)), or -1 if it does not listen.
func (s *GoBGP) ListenPort() int {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	return s.listenPort
}

// Start implements Speaker.
func (s *GoBGP) Start(ctx context.Context) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.srv != nil {
		return fmt.Errorf("start speaker: %w", ErrAlreadyStarted)
	}
	if err := plainTCP(); err != nil {
		return fmt.Errorf("start speaker: %w", err)
	}
	listen := make([]string, 0, len(s.opts.listenAddresses))
	for _, a := range s.opts.listenAddresses {
		listen = append(listen, a.String())
	}
	port := s.opts.listenPort
	if port == 0 {
		p, err := freePort(ctx, s.opts.listenAddresses)
		if err != nil {
			return fmt.Errorf("start speaker: %w", err)
		}
		port = p
	}
	if port < 0 {
		port = -1
	}

	logs := newLogAdapter(s.log)
	srv := server.NewBgpServer(server.LoggerOption(logs))
	go srv.Serve()
	err := srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn:             s.asn,
		RouterId:        s.routerID.String(),
		ListenPort:      int32(port),
		ListenAddresses: listen,
	}})
	if err != nil {
		srv.Stop()
		return fmt.Errorf("start speaker: %w", err)
	}

	wctx, cancel := context.WithCancel(context.Background())
	err = srv.WatchEvent(wctx, &api.WatchEventRequest{Table: &api.WatchEventRequest_Table{
		// One watcher for both, so that a peer's End-of-RIB comes after the paths it sent before.
		Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST, Init: true},
			{Type: api.WatchEventRequest_Table_Filter_EOR, Init: true}},
	}}, s.onWatch)
	if err != nil {
		cancel()
		_ = srv.StopBgp(ctx, &api.StopBgpRequest{})
		srv.Stop()
		return fmt.Errorf("watch best paths: %w", err)
	}

	s.srv, s.cancel, s.listenPort, s.watchCtx, s.logs = srv, cancel, port, wctx, logs
	s.restarting = s.opts.restarting && s.opts.gracefulRestart
	s.done = make(chan struct{})
	s.mu.Lock()
	s.started = true
	s.mu.Unlock()
	go s.deliver(wctx, s.done)
	s.log.Info("bgp speaker started", "asn", s.asn, "routerID", s.routerID, "port", port)
	return nil
}

// Stop implements Speaker. With graceful restart on (the default) it is a planned restart: the
// TCP connections of the sessions are closed without a NOTIFICATION, as a crash would close
// them, so that every peer that negotiated graceful restart (BIRD and GoBGP alike, RFC 4724, with
// no need for RFC 8538) keeps our routes as stale for the restart time and goes on forwarding to
// this host. A Cease would make a peer without RFC 8538 drop them at once. Without graceful
// restart, sessions end with a Cease and neighbors drop our routes at once. The speaker can be
// started again; peers and advertisements must then be set again.
func (s *GoBGP) Stop(ctx context.Context) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.srv == nil {
		return nil
	}
	s.cancel()
	if s.opts.gracefulRestart {
		// StopBgp below would send Peer De-configured, a Hard Reset that flushes our routes:
		// the sessions must be gone before it runs.
		s.logs.stopping.Store(true)
		n, err := s.closeSessions()
		if err != nil {
			s.log.Warn("bgp graceful stop: close sessions", "err", err)
		}
		s.log.Info("bgp graceful stop: sessions closed without notification", "connections", n)
		s.waitSessionsDown(ctx, time.Second)
	}
	err := s.srv.StopBgp(ctx, &api.StopBgpRequest{})
	s.srv.Stop()
	<-s.done
	s.srv, s.cancel, s.done, s.watchCtx, s.lateRestart = nil, nil, nil, nil, nil
	clear(s.peers)
	clear(s.advertised)
	s.mu.Lock()
	s.started = false
	clear(s.best)
	clear(s.accept)
	clear(s.known)
	clear(s.own)
	clear(s.eor)
	s.peersSet, s.syncReported = false, false
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("stop speaker: %w", err)
	}
	s.log.Info("bgp speaker stopped")
	return nil
}

// waitSessionsDown waits (at most limit) until no session is Established, so that no session is
// left for StopBgp to send its Hard Reset on.
func (s *GoBGP) waitSessionsDown(ctx context.Context, limit time.Duration) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		up := 0
		err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
			if p.GetState().GetSessionState() == api.PeerState_ESTABLISHED {
				up++
			}
		})
		if err != nil || up == 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			s.log.Warn("bgp graceful stop: sessions still up", "count", up)
			return
		case <-tick.C:
		}
	}
}

// SetPeers implements Speaker. A peer whose settings change is deleted and added again, which
// resets its session.
func (s *GoBGP) SetPeers(ctx context.Context, peers []Peer) error {
	want := make(map[netip.Addr]Peer, len(peers))
	for _, p := range peers {
		if !p.Address.IsValid() || p.Address.Zone() != "" || p.ASN == 0 {
			return fmt.Errorf("set peers: %s AS %d: %w", p.Address, p.ASN, ErrBadPeer)
		}
		if _, dup := want[p.Address]; dup {
			return fmt.Errorf("set peers: %s listed twice: %w", p.Address, ErrBadPeer)
		}
		p.Accept = slices.Clone(p.Accept)
		want[p.Address] = p
	}

	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.srv == nil {
		return fmt.Errorf("set peers: %w", ErrNotStarted)
	}
	// Paths can arrive as soon as AddPeer returns: know the new peers (and their Accept lists)
	// first, so that onWatch does not discard them.
	s.mu.Lock()
	for addr, p := range want {
		s.known[addr] = true
		s.accept[addr] = p.Accept
	}
	s.mu.Unlock()

	var errs []error
	for addr, have := range s.peers {
		if w, ok := want[addr]; ok && samePeerSession(have, w) {
			continue
		}
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("delete peer %s: %w", addr, err))
			continue
		}
		delete(s.peers, addr)
		s.log.Info("bgp peer removed", "peer", addr)
	}
	for addr, w := range want {
		if _, ok := s.peers[addr]; ok {
			s.peers[addr] = w // Type and Accept change without a reset
			continue
		}
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(w, s.restarting)}); err != nil {
			errs = append(errs, fmt.Errorf("add peer %s: %w", addr, err))
			continue
		}
		s.peers[addr] = w
		s.log.Info("bgp peer added", "peer", addr, "asn", w.ASN, "type", w.Type)
	}

	if s.restarting {
		s.log.Info("bgp restarting with forwarding state kept: peers told so (restart and forwarding bits); "+
			"our routes go out once every peer sent its End-of-RIB", "peers", len(s.peers), "deferral_at_most", s.opts.restartTime)
		s.restarting = false // peers added later meet a speaker that is up, not restarting
		s.lateRestart = make(map[netip.Addr]bool, len(s.peers))
		for addr := range s.peers {
			s.lateRestart[addr] = true
		}
		go s.keepRestartBits(s.watchCtx, time.Now().Add(s.opts.restartTime))
	}
	s.mu.Lock()
	clear(s.accept)
	clear(s.known)
	for addr, p := range s.peers {
		s.known[addr] = true
		s.accept[addr] = p.Accept
	}
	for addr := range s.eor {
		if !s.known[addr] {
			delete(s.eor, addr)
		}
	}
	s.peersSet = true
	s.mu.Unlock()
	s.kick()
	return joinErrs("set peers", errs)
}

// keepRestartBits keeps the restart's promise to peers whose session comes up late. GoBGP ends a
// restart (it sends its table and End-of-RIB, and its OPENs lose the Restart State and
// Forwarding State bits) once every Established peer sent its End-of-RIB, counting peers that
// are not up yet as done. A peer that comes back later (a GoBGP mesh peer sits 5 s in Idle after
// its session dropped) would then see a plain OPEN: GoBGP logs "restart flag is not set", and a
// peer that goes by RFC 4724 4.2 deletes our stale routes for want of the forwarding bit instead
// of waiting for our End-of-RIB. Until the restart time is over,
// such a peer, still down, is added again as a peer of the restart, so that its OPEN carries
// both bits and its End-of-RIB is waited for again.
func (s *GoBGP) keepRestartBits(ctx context.Context, until time.Time) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if time.Now().After(until) || !s.renewRestartBits(ctx) {
			return
		}
	}
}

// renewRestartBits does one round of keepRestartBits and says whether a peer is still waited for.
func (s *GoBGP) renewRestartBits(ctx context.Context) bool {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.srv == nil || len(s.lateRestart) == 0 {
		return false
	}
	var renew []netip.Addr
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil || !s.lateRestart[addr] {
			return
		}
		switch p.GetState().GetSessionState() {
		case api.PeerState_ESTABLISHED:
			delete(s.lateRestart, addr)
		case api.PeerState_IDLE, api.PeerState_CONNECT, api.PeerState_ACTIVE:
			if !p.GetGracefulRestart().GetLocalRestarting() {
				renew = append(renew, addr)
			}
		}
	})
	if err != nil {
		s.log.Warn("bgp restart: list peers", "err", err)
		return true
	}
	for _, addr := range renew {
		p, ok := s.peers[addr]
		if !ok {
			delete(s.lateRestart, addr)
			continue
		}
		// Not connected: deleting sends nothing.
		err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()})
		if err == nil {
			err = s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.apiPeer(p, true)})
		}
		if err != nil {
			s.log.Warn("bgp restart: add a late peer again as restarting", "peer", addr, "err", err)
			delete(s.lateRestart, addr)
			continue
		}
		s.log.Info("bgp restart: peer not back yet added again as restarting, so that it gets the restart and forwarding bits", "peer", addr)
	}
	return len(s.lateRestart) > 0
}

// samePeerSession says whether a and b need the same GoBGP neighbor configuration.
func samePeerSession(a, b Peer) bool {
	return a.ASN == b.ASN && a.Port == b.Port && a.Password == b.Password &&
		a.RouteReflectorClient == b.RouteReflectorClient
}

// apiPeer is the GoBGP neighbor for p; restarting makes it a neighbor of a restarting speaker
// (RFC 4724 4.1): its OPEN carries the Restart State bit and the Forwarding State bit of IPv4
// unicast, and GoBGP holds our updates back until every peer sent its End-of-RIB (at most the
// restart time), then sends them with our End-of-RIB.
func (s *GoBGP) apiPeer(p Peer, restarting bool) *api.Peer {
	secs := func(d time.Duration) uint64 { return uint64(d / time.Second) }
	ap := &api.Peer{
		Conf: &api.PeerConf{
			NeighborAddress: p.Address.String(),
			PeerAsn:         p.ASN,
			AuthPassword:    p.Password,
		},
		Transport: &api.Transport{
			LocalAddress: s.opts.localAddress.String(),
			RemotePort:   uint32(cmp.Or(p.Port, 179)),
			// Between two of our nodes only the lower address connects. When both sides dial,
			// GoBGP's fixed 5 s Idle after a refused attempt can phase-lock the two so that
			// each always dials while the other idles, and the session never comes up.
			PassiveMode: p.Type == PeerMesh && s.opts.localAddress.Compare(p.Address) > 0,
		},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          secs(s.opts.holdTime),
			KeepaliveInterval: secs(s.opts.keepalive),
			ConnectRetry:      secs(s.opts.connectRetry),
			// GoBGP's default of 30 s in Idle after a session drops would delay a peer's
			// return from a restart far beyond the connect retry.
			IdleHoldTimeAfterReset: secs(s.opts.connectRetry),
		}},
		AfiSafis: []*api.AfiSafi{{
			Config: &api.AfiSafiConfig{
				Family:  &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST},
				Enabled: true,
			},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{
				Enabled: s.opts.gracefulRestart,
			}},
		}},
	}
	if s.opts.gracefulRestart {
		ap.GracefulRestart = &api.GracefulRestart{
			Enabled:     true,
			RestartTime: uint32(s.opts.restartTime / time.Second),
			// RFC 8538: a NOTIFICATION other than Hard Reset keeps the routes too.
			NotificationEnabled: true,
			LocalRestarting:     restarting,
			// How long a restarting speaker waits for the peers' End-of-RIB before it sends its
			// own routes anyway (GoBGP's default would be 360 s).
			DeferralTime: uint32(s.opts.restartTime / time.Second),
		}
	}
	if p.RouteReflectorClient {
		id := s.routerID
		if s.opts.clusterID.IsValid() {
			id = s.opts.clusterID
		}
		ap.RouteReflector = &api.RouteReflector{RouteReflectorClient: true, RouteReflectorClusterId: id.String()}
	}
	return ap
}

// SetPools implements Speaker.
func (s *GoBGP) SetPools(pools []netip.Prefix) {
	s.mu.Lock()
	s.pools = make([]netip.Prefix, 0, len(pools))
	for _, p := range pools {
		s.pools = append(s.pools, p.Masked())
	}
	s.mu.Unlock()
	s.kick()
}

// Advertise implements Speaker.
func (s *GoBGP) Advertise(ctx context.Context, ads []Advertisement) error {
	want := make(map[netip.Prefix]netip.Addr, len(ads))
	for _, a := range ads {
		if !a.Prefix.IsValid() || !a.Prefix.Addr().Is4() {
			return fmt.Errorf("advertise %s: want an IPv4 prefix: %w", a.Prefix, ErrBadPrefix)
		}
		nh := a.NextHop
		if !nh.IsValid() {
			nh = s.routerID
		}
		if !nh.Is4() {
			return fmt.Errorf("advertise %s: next hop %s: want an IPv4 address: %w", a.Prefix, nh, ErrBadPrefix)
		}
		want[a.Prefix.Masked()] = nh
	}

	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.srv == nil {
		return fmt.Errorf("advertise: %w", ErrNotStarted)
	}
	// Our own prefixes are filtered out of Learned before GoBGP withdraws or adds them.
	s.mu.Lock()
	for p := range want {
		s.own[p] = true
	}
	s.mu.Unlock()

	var errs []error
	for p, nh := range s.advertised {
		if _, ok := want[p]; ok {
			continue
		}
		path, err := s.apiPath(p, nh, true)
		if err == nil {
			err = s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Path: path})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
			continue
		}
		delete(s.advertised, p)
	}
	for p, nh := range want {
		if have, ok := s.advertised[p]; ok && have == nh {
			continue
		}
		// A new next hop replaces the path: no withdrawal in between.
		path, err := s.apiPath(p, nh, false)
		if err == nil {
			_, err = s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", p, err))
			continue
		}
		s.advertised[p] = nh
	}

	s.mu.Lock()
	clear(s.own)
	for p := range s.advertised {
		s.own[p] = true
	}
	s.mu.Unlock()
	s.kick()
	return joinErrs("advertise", errs)
}

func (s *GoBGP) apiPath(p netip.Prefix, nextHop netip.Addr, withdraw bool) (*api.Path, error) {
	nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: p.Addr().String(), PrefixLen: uint32(p.Bits())})
	if err != nil {
		return nil, err
	}
	origin, err := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	if err != nil {
		return nil, err
	}
	nh, err := anypb.New(&api.NextHopAttribute{NextHop: nextHop.String()})
	if err != nil {
		return nil, err
	}
	return &api.Path{
		Family:     &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST},
		Nlri:       nlri,
		Pattrs:     []*anypb.Any{origin, nh},
		IsWithdraw: withdraw,
	}, nil
}

// onWatch records best-path changes. GoBGP queues events without bound, so taking the lock
// here never stalls its main loop.
func (s *GoBGP) onWatch(r *api.WatchEventResponse) {
	t := r.GetTable()
	if t == nil {
		return
	}
	changed := false
	s.mu.Lock()
	for _, p := range t.Paths {
		if peer, ok := endOfRIB(p); ok {
			if s.known[peer] && !s.eor[peer] {
				s.eor[peer] = true
				changed = true
			}
			continue
		}
		prefix, ok := pathPrefix(p)
		if !ok {
			continue // not IPv4 unicast
		}
		peer, err := netip.ParseAddr(p.NeighborIp)
		if p.IsWithdraw || err != nil || !s.known[peer] {
			// Withdrawn, originated here (no neighbor), or from a peer being removed.
			if _, had := s.best[prefix]; had {
				delete(s.best, prefix)
				changed = true
			}
			continue
		}
		nh, ok := pathNextHop(p)
		if !ok {
			continue
		}
		s.best[prefix] = learned{nextHop: nh, peer: peer}
		changed = true
	}
	s.mu.Unlock()
	if changed {
		s.kick()
	}
}

func (s *GoBGP) kick() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// deliver hands the accepted routes to the route handler after every change, coalescing
// changes that arrive while the handler runs.
func (s *GoBGP) deliver(ctx context.Context, done chan struct{}) {
	defer close(done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.notify:
		}
		// Let a burst (a peer's full table, a flood) land before handing out a snapshot: one
		// delivery per UPDATE would cost O(n²) for n routes.
		if s.opts.routeDelay > 0 {
			t := time.NewTimer(s.opts.routeDelay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			select {
			case <-s.notify:
			default:
			}
		}
		routes, synced := s.snapshot()
		if s.opts.onRoutes != nil {
			s.opts.onRoutes(routes)
		}
		if synced && s.opts.onSynced != nil {
			s.opts.onSynced()
		}
	}
}

// snapshot returns the learned routes and whether they are the first to hold every configured
// peer's initial table (see WithSyncedHandler), which it reports only once. Both are read under
// one lock, so that a marker never counts before the paths that came ahead of it.
func (s *GoBGP) snapshot() ([]Route, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	routes := s.acceptedLocked()
	if s.syncReported || !s.peersSet {
		return routes, false
	}
	for addr := range s.known {
		if !s.eor[addr] {
			return routes, false
		}
	}
	s.syncReported = true
	return routes, true
}

// endOfRIB reports whether p is an End-of-RIB marker for IPv4 unicast, and from which peer.
func endOfRIB(p *api.Path) (netip.Addr, bool) {
	if p.GetNlri() != nil || p.GetFamily().GetAfi() != api.Family_AFI_IP || p.GetFamily().GetSafi() != api.Family_SAFI_UNICAST {
		return netip.Addr{}, false
	}
	peer, err := netip.ParseAddr(p.NeighborIp)
	return peer, err == nil
}

// Learned implements Speaker. Import policy: a prefix is handed out only if it is not one we
// advertise and it lies inside a pool or is on the sending peer's Accept list.
func (s *GoBGP) Learned() []Route {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.learnedLocked()
}

// learnedLocked is Learned; s.mu must be held.
func (s *GoBGP) learnedLocked() []Route {
	out := s.acceptedLocked()
	// IPv4 prefixes sort on one integer each, which at 100k routes is several times quicker
	// than comparing netip values.
	slices.SortFunc(out, func(a, b Route) int { return cmp.Compare(prefixKey(a.Prefix), prefixKey(b.Prefix)) })
	return out
}

// acceptedLocked is the routes the import policy accepts, in no particular order: what the
// route handler gets after every change, where sorting 100k routes each time would cost more
// than programming the change. s.mu must be held.
func (s *GoBGP) acceptedLocked() []Route {
	out := make([]Route, 0, len(s.best))
	for prefix, l := range s.best {
		if s.acceptable(prefix, l.peer) {
			out = append(out, Route{Prefix: prefix, NextHop: l.nextHop, Peer: l.peer})
		}
	}
	return out
}

// prefixKey orders IPv4 prefixes by address, then length (the speaker keeps IPv4 unicast only).
func prefixKey(p netip.Prefix) uint64 {
	a := p.Addr().As4()
	return uint64(a[0])<<32 | uint64(a[1])<<24 | uint64(a[2])<<16 | uint64(a[3])<<8 | uint64(p.Bits())
}

// acceptable applies the import policy; s.mu must be held.
func (s *GoBGP) acceptable(prefix netip.Prefix, peer netip.Addr) bool {
	if s.own[prefix] {
		return false
	}
	if slices.Contains(s.accept[peer], prefix) {
		return true
	}
	for _, pool := range s.pools {
		if pool.Bits() <= prefix.Bits() && pool.Contains(prefix.Addr()) {
			return true
		}
	}
	return false
}

// Peers implements Speaker.
func (s *GoBGP) Peers(ctx context.Context) ([]PeerStatus, error) {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.srv == nil {
		return nil, fmt.Errorf("list peers: %w", ErrNotStarted)
	}
	var out []PeerStatus
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil {
			return
		}
		st := PeerStatus{Address: addr, Type: s.peers[addr].Type}
		if ss := p.GetState(); ss != nil {
			st.State = State(ss.SessionState) // the API enum counts from Unknown = 0 as we do
			if st.State < StateUnknown || st.State > Established {
				st.State = StateUnknown
			}
		}
		ts := p.GetTimers().GetState()
		if st.State == Established && ts.GetUptime() != nil {
			st.Since = ts.GetUptime().AsTime()
		} else if ts.GetDowntime() != nil {
			st.Since = ts.GetDowntime().AsTime()
		}
		st.Info = st.State.String()
		if p.GetState().GetAdminState() == api.PeerState_DOWN {
			st.Info = "Admin down"
		}
		out = append(out, st)
	})
	if err != nil {
		return nil, fmt.Errorf("list peers: %w", err)
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return a.Address.Compare(b.Address) })
	return out, nil
}

func pathPrefix(p *api.Path) (netip.Prefix, bool) {
	if p.GetNlri() == nil || p.GetFamily().GetAfi() != api.Family_AFI_IP || p.GetFamily().GetSafi() != api.Family_SAFI_UNICAST {
		return netip.Prefix{}, false
	}
	var n api.IPAddressPrefix
	if err := p.Nlri.UnmarshalTo(&n); err != nil {
		return netip.Prefix{}, false
	}
	a, err := netip.ParseAddr(n.Prefix)
	if err != nil || !a.Is4() || n.PrefixLen > 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, int(n.PrefixLen)).Masked(), true
}

func pathNextHop(p *api.Path) (netip.Addr, bool) {
	for _, a := range p.Pattrs {
		switch {
		case a.MessageIs(&api.NextHopAttribute{}):
			var nh api.NextHopAttribute
			if a.UnmarshalTo(&nh) == nil {
				if addr, err := netip.ParseAddr(nh.NextHop); err == nil {
					return addr, true
				}
			}
		case a.MessageIs(&api.MpReachNLRIAttribute{}):
			var mp api.MpReachNLRIAttribute
			if a.UnmarshalTo(&mp) == nil && len(mp.NextHops) > 0 {
				if addr, err := netip.ParseAddr(mp.NextHops[0]); err == nil {
					return addr, true
				}
			}
		}
	}
	return netip.Addr{}, false
}

// plainTCP checks that GoBGP's sockets, which it makes with zero ListenConfig and Dialer
// settings, will be plain TCP: go.mod sets multipathtcp=0 for this module's binaries, and an
// environment GODEBUG, or a program of another module linking this package, can turn it back on.
func plainTCP() error {
	var lc net.ListenConfig
	var d net.Dialer
	if lc.MultipathTCP() || d.MultipathTCP() {
		return ErrMultipathTCP
	}
	return nil
}

// freePort finds a TCP port free on every address (or on all addresses when none is given).
func freePort(ctx context.Context, addrs []netip.Addr) (int, error) {
	host := ""
	if len(addrs) > 0 {
		host = addrs[0].String()
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	_, port, err := net.SplitHostPort(l.Addr().String())
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	return strconv.Atoi(port)
}

func joinErrs(op string, errs []error) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("%s: %w", op, errs[0])
	}
	return fmt.Errorf("%s: %w (and %d more)", op, errs[0], len(errs)-1)
}
