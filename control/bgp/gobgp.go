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
	"sync/atomic"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"
)

// GoBGP is the Speaker backed by an embedded GoBGP v3 server. Between Start and Stop one
// goroutine (run) owns everything the speaker knows, as GoBGP's own server owns its state behind
// its management channel: the methods hand it closures, GoBGP's watch hands it events, and it
// hands out Updates. Nothing it owns is locked; the one mutex orders Start and Stop.
type GoBGP struct {
	asn      uint32
	routerID netip.Addr
	opts     options
	log      *slog.Logger
	updates  chan Update

	life sync.Mutex // serialises Start and Stop
	cur  atomic.Pointer[instance]
	port atomic.Int64 // the listen port of the last start
}

// instance is one run of the speaker, from Start to Stop. The fields above the line are set
// before run starts and never change; those below belong to run.
type instance struct {
	s           *GoBGP
	srv         *server.BgpServer
	listenPort  int
	logs        *logAdapter
	cancelWatch context.CancelFunc
	ops         chan func()                  // closures run by run, in order
	events      chan *api.WatchEventResponse // GoBGP's best paths and End-of-RIB markers
	done        chan struct{}                // closed when run returns

	// ---
	stopped    bool                        // the stop closure ran: run returns
	peers      map[netip.Addr]Peer         // configured in GoBGP
	advertised map[netip.Prefix]netip.Addr // prefix → next hop
	best       map[netip.Prefix]learned    // best path per prefix, from a configured peer
	// restarting says the next SetPeers adds the peers of a restart (WithRestarting): their
	// sessions open with the Restart State bit and the Forwarding State bit for IPv4 unicast.
	restarting bool
	// lateRestart are the peers of the restart whose session has not come up yet, watched by
	// restartTick until restartUntil (see renewRestartBits).
	lateRestart  map[netip.Addr]bool
	restartTick  *time.Ticker
	restartUntil time.Time
	// eor holds the peers whose End-of-RIB for IPv4 unicast arrived since the speaker started;
	// peersSet says SetPeers ran, so that the set of peers to wait for is known.
	eor          map[netip.Addr]bool
	peersSet     bool
	syncReported bool
	// changed says the routes (or whether they are synced) changed since the last Update was
	// made; settle fires when the route delay after the first such change is over.
	changed bool
	settle  <-chan time.Time
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
	return &GoBGP{asn: asn, routerID: routerID, opts: o, log: o.logger.With("component", "bgp"), updates: make(chan Update)}, nil
}

// Updates implements Speaker.
func (s *GoBGP) Updates() <-chan Update { return s.updates }

// ListenPort returns the port the speaker listens on once started (useful with
// WithListenPort(0)), or -1 if it does not listen.
func (s *GoBGP) ListenPort() int { return int(s.port.Load()) }

// do runs f on the owner goroutine of the running instance and returns its error, or
// ErrNotStarted.
func (s *GoBGP) do(ctx context.Context, op string, f func(in *instance) error) error {
	in := s.cur.Load()
	if in == nil {
		return fmt.Errorf("%s: %w", op, ErrNotStarted)
	}
	return in.do(ctx, op, func() error { return f(in) })
}

func (in *instance) do(ctx context.Context, op string, f func() error) error {
	reply := make(chan error, 1)
	select {
	case in.ops <- func() { reply <- f() }:
	case <-in.done:
		return fmt.Errorf("%s: %w", op, ErrNotStarted)
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", op, ctx.Err())
	}
	return <-reply // run always finishes a closure it took
}

// Start implements Speaker.
func (s *GoBGP) Start(ctx context.Context) error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.cur.Load() != nil {
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

	in := &instance{s: s, srv: srv, listenPort: port, logs: logs, ops: make(chan func()),
		events: make(chan *api.WatchEventResponse), done: make(chan struct{}),
		peers: map[netip.Addr]Peer{}, advertised: map[netip.Prefix]netip.Addr{}, best: map[netip.Prefix]learned{},
		eor: map[netip.Addr]bool{}, restarting: s.opts.restarting && s.opts.gracefulRestart}
	wctx, cancel := context.WithCancel(context.Background())
	err = srv.WatchEvent(wctx, &api.WatchEventRequest{Table: &api.WatchEventRequest_Table{
		// One watcher for both, so that a peer's End-of-RIB comes after the paths it sent before.
		Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST, Init: true},
			{Type: api.WatchEventRequest_Table_Filter_EOR, Init: true}},
	}}, func(r *api.WatchEventResponse) {
		// GoBGP queues events for its watcher without bound: waiting here never stalls its
		// main loop, only the watcher's goroutine, until run takes the event.
		select {
		case in.events <- r:
		case <-wctx.Done():
		}
	})
	if err != nil {
		cancel()
		_ = srv.StopBgp(ctx, &api.StopBgpRequest{})
		srv.Stop()
		return fmt.Errorf("watch best paths: %w", err)
	}
	in.cancelWatch = cancel
	s.port.Store(int64(port))
	s.cur.Store(in)
	go in.run()
	s.log.Info("bgp speaker started", "asn", s.asn, "routerID", s.routerID, "port", port)
	return nil
}

// run is the instance's owner goroutine: it runs the methods' closures, takes GoBGP's events,
// renews the restart bits of late peers, and hands out an Update once the route delay after a
// change is over. A receiver busy with the last Update never holds the speaker up: the changes
// since gather, and make the next Update once it took that one.
func (in *instance) run() {
	defer close(in.done)
	var (
		out  chan<- Update // in.s.updates while next waits to be taken
		next Update
	)
	for {
		var restartC <-chan time.Time
		if in.restartTick != nil {
			restartC = in.restartTick.C
		}
		select {
		case f := <-in.ops:
			f()
			if in.stopped {
				return
			}
		case r := <-in.events:
			in.apply(r)
		case <-restartC:
			if time.Now().After(in.restartUntil) || !in.renewRestartBits() {
				in.restartTick.Stop()
				in.restartTick = nil
			}
		case <-in.settle:
			in.settle = nil
			next, out = in.update(), in.s.updates
		case out <- next:
			out, next = nil, Update{}
		}
		// While an Update waits to be taken, changes wait too: a new table every route delay
		// would copy the whole table again and again (100k routes during a burst) for a
		// receiver busy with the last one. Once it is taken, the changes since follow.
		if in.changed && in.settle == nil && out == nil {
			in.settle = time.After(in.s.opts.routeDelay)
		}
	}
}

// update is the Update of the routes as they are now, and the first to say Synced when every
// configured peer's End-of-RIB is in.
func (in *instance) update() Update {
	in.changed = false
	u := Update{Routes: in.routes()}
	if in.syncReported || !in.peersSet {
		return u
	}
	for addr := range in.peers {
		if !in.eor[addr] {
			return u
		}
	}
	in.syncReported, u.Synced = true, true
	return u
}

// routes are the best paths learned, in no particular order: sorting 100k routes for every
// Update would cost more than programming the change.
func (in *instance) routes() []Route {
	out := make([]Route, 0, len(in.best))
	for prefix, l := range in.best {
		out = append(out, Route{Prefix: prefix, NextHop: l.nextHop, Peer: l.peer})
	}
	return out
}

// apply records GoBGP's best-path changes and End-of-RIB markers.
func (in *instance) apply(r *api.WatchEventResponse) {
	t := r.GetTable()
	if t == nil {
		return
	}
	for _, p := range t.Paths {
		if peer, ok := endOfRIB(p); ok {
			if _, known := in.peers[peer]; known && !in.eor[peer] {
				in.eor[peer] = true
				in.changed = true
			}
			continue
		}
		prefix, ok := pathPrefix(p)
		if !ok {
			continue // not IPv4 unicast
		}
		peer, err := netip.ParseAddr(p.NeighborIp)
		_, known := in.peers[peer]
		if p.IsWithdraw || err != nil || !known {
			// Withdrawn, originated here (no neighbor), or from a peer removed since.
			if _, had := in.best[prefix]; had {
				delete(in.best, prefix)
				in.changed = true
			}
			continue
		}
		nh, ok := pathNextHop(p)
		if !ok {
			continue
		}
		if cur, had := in.best[prefix]; !had || cur != (learned{nextHop: nh, peer: peer}) {
			in.best[prefix] = learned{nextHop: nh, peer: peer}
			in.changed = true
		}
	}
}

// Stop implements Speaker. With graceful restart on (the default) it is a planned restart: the
// TCP connections of the sessions are closed without a NOTIFICATION, as a crash would close
// them, so that every peer that negotiated graceful restart (BIRD and GoBGP alike, RFC 4724, with
// no need for RFC 8538) keeps our routes as stale for the restart time and goes on forwarding to
// this host. A Cease would make a peer without RFC 8538 drop them at once. Without graceful
// restart, sessions end with a Cease and neighbors drop our routes at once. The speaker can be
// started again; peers and advertisements must then be set again.
func (s *GoBGP) Stop(ctx context.Context) error {
	s.life.Lock()
	defer s.life.Unlock()
	in := s.cur.Load()
	if in == nil {
		return nil
	}
	// Handed over whatever ctx says: the owner takes closures promptly, and a speaker must stop.
	err := in.do(context.WithoutCancel(ctx), "stop speaker", func() error { return in.stop(ctx) })
	<-in.done
	s.cur.Store(nil)
	if err != nil {
		return err
	}
	s.log.Info("bgp speaker stopped")
	return nil
}

// stop ends the instance; run returns after it.
func (in *instance) stop(ctx context.Context) error {
	in.stopped = true
	in.cancelWatch()
	if in.restartTick != nil {
		in.restartTick.Stop()
	}
	if in.s.opts.gracefulRestart {
		// StopBgp below would send Peer De-configured, a Hard Reset that flushes our routes:
		// the sessions must be gone before it runs.
		in.logs.stopping.Store(true)
		n, err := in.closeSessions()
		if err != nil {
			in.s.log.Warn("bgp graceful stop: close sessions", "err", err)
		}
		in.s.log.Info("bgp graceful stop: sessions closed without notification", "connections", n)
		in.waitSessionsDown(ctx, time.Second)
	}
	err := in.srv.StopBgp(ctx, &api.StopBgpRequest{})
	in.srv.Stop()
	if err != nil {
		return fmt.Errorf("stop speaker: %w", err)
	}
	return nil
}

// waitSessionsDown waits (at most limit) until no session is Established, so that no session is
// left for StopBgp to send its Hard Reset on.
func (in *instance) waitSessionsDown(ctx context.Context, limit time.Duration) {
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		up := 0
		err := in.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
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
			in.s.log.Warn("bgp graceful stop: sessions still up", "count", up)
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
	return s.do(ctx, "set peers", func(in *instance) error { return in.setPeers(ctx, want) })
}

func (in *instance) setPeers(ctx context.Context, want map[netip.Addr]Peer) error {
	var errs []error
	for addr, have := range in.peers {
		if w, ok := want[addr]; ok && samePeerSession(have, w) {
			continue
		}
		if err := in.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("delete peer %s: %w", addr, err))
			continue
		}
		delete(in.peers, addr)
		in.s.log.Info("bgp peer removed", "peer", addr)
	}
	for addr, w := range want {
		if _, ok := in.peers[addr]; ok {
			in.peers[addr] = w // Type and Accept change without a reset
			continue
		}
		if err := in.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: in.s.apiPeer(w, in.restarting)}); err != nil {
			errs = append(errs, fmt.Errorf("add peer %s: %w", addr, err))
			continue
		}
		in.peers[addr] = w
		in.s.log.Info("bgp peer added", "peer", addr, "asn", w.ASN, "type", w.Type)
	}

	if in.restarting {
		in.s.log.Info("bgp restarting with forwarding state kept: peers told so (restart and forwarding bits); "+
			"our routes go out once every peer sent its End-of-RIB", "peers", len(in.peers), "deferral_at_most", in.s.opts.restartTime)
		in.restarting = false // peers added later meet a speaker that is up, not restarting
		in.lateRestart = make(map[netip.Addr]bool, len(in.peers))
		for addr := range in.peers {
			in.lateRestart[addr] = true
		}
		in.restartUntil = time.Now().Add(in.s.opts.restartTime)
		in.restartTick = time.NewTicker(100 * time.Millisecond)
	}
	// Paths of a peer removed are gone with it (GoBGP withdraws them; events still on their way
	// are dropped by apply), and so is its End-of-RIB.
	for prefix, l := range in.best {
		if _, ok := in.peers[l.peer]; !ok {
			delete(in.best, prefix)
		}
	}
	for addr := range in.eor {
		if _, ok := in.peers[addr]; !ok {
			delete(in.eor, addr)
		}
	}
	in.peersSet, in.changed = true, true
	return joinErrs("set peers", errs)
}

// renewRestartBits keeps the restart's promise to peers whose session comes up late, and says
// whether a peer is still waited for. GoBGP ends a restart (it sends its table and End-of-RIB,
// and its OPENs lose the Restart State and Forwarding State bits) once every Established peer
// sent its End-of-RIB, counting peers that are not up yet as done. A peer that comes back later
// (a GoBGP mesh peer sits 5 s in Idle after its session dropped) would then see a plain OPEN:
// GoBGP logs "restart flag is not set", and a peer that goes by RFC 4724 4.2 deletes our stale
// routes for want of the forwarding bit instead of waiting for our End-of-RIB. Until the restart
// time is over, such a peer, still down, is added again as a peer of the restart, so that its
// OPEN carries both bits and its End-of-RIB is waited for again.
func (in *instance) renewRestartBits() bool {
	if len(in.lateRestart) == 0 {
		return false
	}
	ctx := context.Background()
	var renew []netip.Addr
	err := in.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
		if err != nil || !in.lateRestart[addr] {
			return
		}
		switch p.GetState().GetSessionState() {
		case api.PeerState_ESTABLISHED:
			delete(in.lateRestart, addr)
		case api.PeerState_IDLE, api.PeerState_CONNECT, api.PeerState_ACTIVE:
			if !p.GetGracefulRestart().GetLocalRestarting() {
				renew = append(renew, addr)
			}
		}
	})
	if err != nil {
		in.s.log.Warn("bgp restart: list peers", "err", err)
		return true
	}
	for _, addr := range renew {
		p, ok := in.peers[addr]
		if !ok {
			delete(in.lateRestart, addr)
			continue
		}
		// Not connected: deleting sends nothing.
		err := in.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()})
		if err == nil {
			err = in.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: in.s.apiPeer(p, true)})
		}
		if err != nil {
			in.s.log.Warn("bgp restart: add a late peer again as restarting", "peer", addr, "err", err)
			delete(in.lateRestart, addr)
			continue
		}
		in.s.log.Info("bgp restart: peer not back yet added again as restarting, so that it gets the restart and forwarding bits", "peer", addr)
	}
	return len(in.lateRestart) > 0
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
	return s.do(ctx, "advertise", func(in *instance) error { return in.advertise(ctx, want) })
}

func (in *instance) advertise(ctx context.Context, want map[netip.Prefix]netip.Addr) error {
	var errs []error
	for p, nh := range in.advertised {
		if _, ok := want[p]; ok {
			continue
		}
		path, err := apiPath(p, nh, true)
		if err == nil {
			err = in.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Path: path})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
			continue
		}
		delete(in.advertised, p)
	}
	for p, nh := range want {
		if have, ok := in.advertised[p]; ok && have == nh {
			continue
		}
		// A new next hop replaces the path: no withdrawal in between.
		path, err := apiPath(p, nh, false)
		if err == nil {
			_, err = in.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("advertise %s: %w", p, err))
			continue
		}
		in.advertised[p] = nh
	}
	return joinErrs("advertise", errs)
}

// Learned implements Speaker.
func (s *GoBGP) Learned() []Route {
	var out []Route
	_ = s.do(context.Background(), "learned", func(in *instance) error {
		out = in.routes()
		return nil
	})
	// IPv4 prefixes sort on one integer each, which at 100k routes is several times quicker
	// than comparing netip values.
	slices.SortFunc(out, func(a, b Route) int { return cmp.Compare(prefixKey(a.Prefix), prefixKey(b.Prefix)) })
	return out
}

// Peers implements Speaker.
func (s *GoBGP) Peers(ctx context.Context) ([]PeerStatus, error) {
	var out []PeerStatus
	err := s.do(ctx, "list peers", func(in *instance) error {
		err := in.srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
			addr, err := netip.ParseAddr(p.GetConf().GetNeighborAddress())
			if err != nil {
				return
			}
			st := PeerStatus{Address: addr, Type: in.peers[addr].Type}
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
			return fmt.Errorf("list peers: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return a.Address.Compare(b.Address) })
	return out, nil
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

func apiPath(p netip.Prefix, nextHop netip.Addr, withdraw bool) (*api.Path, error) {
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

// endOfRIB reports whether p is an End-of-RIB marker for IPv4 unicast, and from which peer.
func endOfRIB(p *api.Path) (netip.Addr, bool) {
	if p.GetNlri() != nil || p.GetFamily().GetAfi() != api.Family_AFI_IP || p.GetFamily().GetSafi() != api.Family_SAFI_UNICAST {
		return netip.Addr{}, false
	}
	peer, err := netip.ParseAddr(p.NeighborIp)
	return peer, err == nil
}

// prefixKey orders IPv4 prefixes by address, then length (the speaker keeps IPv4 unicast only).
func prefixKey(p netip.Prefix) uint64 {
	a := p.Addr().As4()
	return uint64(a[0])<<32 | uint64(a[1])<<24 | uint64(a[2])<<16 | uint64(a[3])<<8 | uint64(p.Bits())
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
