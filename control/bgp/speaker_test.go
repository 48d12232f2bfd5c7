package bgp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/tests/netns"
)

var (
	pool   = netip.MustParsePrefix("198.19.0.0/16")
	blocks = []netip.Prefix{
		netip.MustParsePrefix("198.19.0.0/26"),
		netip.MustParsePrefix("198.19.0.64/26"),
		netip.MustParsePrefix("198.19.0.128/26"),
	}
)

type testSpeaker struct {
	*GoBGP
	addr    netip.Addr
	changed chan struct{}
	observe atomic.Pointer[func([]Route)] // sees every Update's routes, if set
	synced  atomic.Int32                  // Updates that said Synced
	atSync  atomic.Pointer[[]Route]       // the routes of the last of them
}

// server is the GoBGP server of the running instance, for looking into what it negotiated.
func (ts *testSpeaker) server() *server.BgpServer { return ts.cur.Load().srv }

// startSpeaker runs a speaker on a loopback address and a free port, with timers short
// enough for tests.
func startSpeaker(tb testing.TB, addr string, opts ...Option) *testSpeaker {
	tb.Helper()
	a := netip.MustParseAddr(addr)
	ts := &testSpeaker{addr: a, changed: make(chan struct{}, 1)}
	level := slog.LevelWarn
	if os.Getenv("BGP_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("speaker", addr)
	opts = append([]Option{
		WithLogger(logger),
		WithListenAddresses(a),
		WithListenPort(0),
		WithTimers(9*time.Second, 3*time.Second, time.Second),
	}, opts...)
	s, err := New(64512, a, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	// The receiver of the speaker's Updates, as the agent's loop is; it ends after Stop.
	quit := make(chan struct{})
	tb.Cleanup(func() { close(quit) })
	go func() {
		for {
			select {
			case <-quit:
				return
			case u := <-s.Updates():
				if fn := ts.observe.Load(); fn != nil {
					(*fn)(u.Routes)
				}
				if u.Synced {
					ts.atSync.Store(&u.Routes)
					ts.synced.Add(1)
				}
				select {
				case ts.changed <- struct{}{}:
				default:
				}
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			tb.Error(err)
		}
	})
	ts.GoBGP = s
	return ts
}

func (ts *testSpeaker) peer(accept ...netip.Prefix) Peer {
	return Peer{Address: ts.addr, ASN: 64512, Type: PeerMesh, Port: uint16(ts.ListenPort()), Accept: accept}
}

func setPeers(tb testing.TB, s *testSpeaker, peers ...Peer) {
	tb.Helper()
	if err := s.SetPeers(context.Background(), peers); err != nil {
		tb.Fatal(err)
	}
}

func advertise(tb testing.TB, s *testSpeaker, prefixes ...netip.Prefix) {
	tb.Helper()
	ads := make([]Advertisement, 0, len(prefixes))
	for _, p := range prefixes {
		ads = append(ads, Advertisement{Prefix: p})
	}
	if err := s.Advertise(context.Background(), ads); err != nil {
		tb.Fatal(err)
	}
}

// waitRoutes waits until cond holds for the speaker's learned routes, waking on every route
// change (and every 100 ms for conditions on other state).
func waitRoutes(tb testing.TB, s *testSpeaker, timeout time.Duration, what string, cond func([]Route) bool) {
	tb.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		got := s.Learned()
		if cond(got) {
			return
		}
		select {
		case <-s.changed:
		case <-tick.C:
		case <-deadline.C:
			if len(got) > 10 {
				got = got[:10]
			}
			tb.Fatalf("%s: %s not reached within %s; learned (first 10) %v", s.addr, what, timeout, got)
		}
	}
}

func waitEstablished(tb testing.TB, s *testSpeaker, n int, timeout time.Duration) []PeerStatus {
	tb.Helper()
	var got []PeerStatus
	var err error
	waitRoutes(tb, s, timeout, fmt.Sprintf("%d sessions established", n), func([]Route) bool {
		got, err = s.Peers(context.Background())
		if err != nil {
			tb.Fatal(err)
		}
		up := 0
		for _, p := range got {
			if p.State == Established {
				up++
			}
		}
		return up == n && len(got) == n
	})
	return got
}

func routeSet(routes []Route) map[netip.Prefix]Route {
	m := make(map[netip.Prefix]Route, len(routes))
	for _, r := range routes {
		m[r.Prefix] = r
	}
	return m
}

// hasExactly returns a condition: the learned routes are exactly want (prefix → next hop).
func hasExactly(want map[netip.Prefix]netip.Addr) func([]Route) bool {
	return func(got []Route) bool {
		if len(got) != len(want) {
			return false
		}
		for _, r := range got {
			if want[r.Prefix] != r.NextHop {
				return false
			}
		}
		return true
	}
}

func TestFullMesh(t *testing.T) {
	s := []*testSpeaker{startSpeaker(t, "127.0.0.11"), startSpeaker(t, "127.0.0.12"), startSpeaker(t, "127.0.0.13")}
	for i, me := range s {
		var peers []Peer
		for j, other := range s {
			if j != i {
				peers = append(peers, other.peer())
			}
		}
		setPeers(t, me, peers...)
		// Setting the same peers again changes nothing and must not reset sessions.
		setPeers(t, me, peers...)
	}
	start := time.Now()
	for _, me := range s {
		st := waitEstablished(t, me, 2, 20*time.Second)
		for _, p := range st {
			if p.Type != PeerMesh || p.Since.IsZero() || p.Since.After(time.Now()) || p.Info != "Established" {
				t.Errorf("%s: peer status %+v", me.addr, p)
			}
		}
	}
	t.Logf("full mesh of 3 established in %s", time.Since(start).Round(time.Millisecond))

	for i, me := range s {
		advertise(t, me, blocks[i])
	}
	others := func(i int, except ...int) map[netip.Prefix]netip.Addr {
		m := map[netip.Prefix]netip.Addr{}
		for j := range s {
			if j != i && !slices.Contains(except, j) {
				m[blocks[j]] = s[j].addr
			}
		}
		return m
	}
	for i, me := range s {
		waitRoutes(t, me, 10*time.Second, "the two other blocks", hasExactly(others(i)))
		for _, r := range me.Learned() {
			if r.Peer != r.NextHop {
				t.Errorf("%s: route %+v: want it learned from its next hop", me.addr, r)
			}
		}
	}

	t.Run("withdraw", func(t *testing.T) {
		advertise(t, s[0])
		waitRoutes(t, s[1], 10*time.Second, "block 0 withdrawn", hasExactly(others(1, 0)))
		waitRoutes(t, s[2], 10*time.Second, "block 0 withdrawn", hasExactly(others(2, 0)))
		advertise(t, s[0], blocks[0])
		waitRoutes(t, s[1], 10*time.Second, "block 0 back", hasExactly(others(1)))
		waitRoutes(t, s[2], 10*time.Second, "block 0 back", hasExactly(others(2)))
	})

	t.Run("flood", func(t *testing.T) {
		const n = 10000
		flood := slices.Clone(blocks[1:2])
		base := netip.MustParseAddr("198.19.100.0").As4()
		first := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
		for i := range uint32(n) {
			v := first + i
			a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
			flood = append(flood, netip.PrefixFrom(a, 32))
		}
		start := time.Now()
		advertise(t, s[1], flood...)
		sent := time.Since(start)
		want := others(0)
		for _, p := range flood[1:] {
			want[p] = s[1].addr
		}
		waitRoutes(t, s[0], 30*time.Second, "10k flood learned", hasExactly(want))
		took := time.Since(start)
		t.Logf("flood: %d prefixes advertised in %s, learned by a peer in %s: %.0f routes/s",
			n, sent.Round(time.Millisecond), took.Round(time.Millisecond), n/took.Seconds())
		got := routeSet(s[0].Learned())
		if got[blocks[2]].NextHop != s[2].addr {
			t.Errorf("block of the third node lost during the flood: %+v", got[blocks[2]])
		}
		advertise(t, s[1], blocks[1])
		waitRoutes(t, s[0], 30*time.Second, "flood withdrawn", hasExactly(others(0)))
		t.Logf("flood withdrawn after %s", time.Since(start).Round(time.Millisecond))
	})

	t.Run("remove peer", func(t *testing.T) {
		// Node 0 leaves: the others drop it and its block.
		setPeers(t, s[1], s[2].peer())
		setPeers(t, s[2], s[1].peer())
		waitRoutes(t, s[1], 10*time.Second, "node 0's routes dropped", hasExactly(others(1, 0)))
		waitRoutes(t, s[2], 10*time.Second, "node 0's routes dropped", hasExactly(others(2, 0)))
		st, err := s[1].Peers(context.Background())
		if err != nil || len(st) != 1 || st[0].Address != s[2].addr {
			t.Errorf("Peers() = %+v, %v; want only %s", st, err, s[2].addr)
		}
	})
}

// The speaker hands out every best path its peers send (outside the pools, a default route from
// a node, our own block sent back); the node's import policy picks from them.
func TestImportFilter(t *testing.T) {
	node := startSpeaker(t, "127.0.0.21")
	other := startSpeaker(t, "127.0.0.22") // another node: what the pools allow is taken from it
	gw := startSpeaker(t, "127.0.0.23")    // a gateway allowed to send a default route
	defaultRoute := netip.MustParsePrefix("0.0.0.0/0")
	outside := netip.MustParsePrefix("10.0.0.0/24")
	ownBlock, otherBlock := blocks[0], blocks[1]
	self := netip.MustParsePrefix("127.0.0.21/8")
	peers := []Peer{other.peer(), gw.peer(defaultRoute)}

	setPeers(t, node, peers...)
	setPeers(t, other, node.peer())
	setPeers(t, gw, node.peer())
	waitEstablished(t, node, 2, 20*time.Second)
	advertise(t, node, ownBlock)
	im := NewImport(self, []netip.Prefix{pool}, peers, []netip.Prefix{ownBlock})
	taken := func(im Import, want map[netip.Prefix]netip.Addr) func([]Route) bool {
		return func(routes []Route) bool {
			var out []Route
			for _, r := range routes {
				if im.Takes(r) {
					out = append(out, r)
				}
			}
			return hasExactly(want)(out)
		}
	}

	advertise(t, other, otherBlock, outside, defaultRoute)
	waitRoutes(t, node, 10*time.Second, "all three of the other's prefixes received",
		hasExactly(map[netip.Prefix]netip.Addr{otherBlock: other.addr, outside: other.addr, defaultRoute: other.addr}))
	if got := node.Learned(); !taken(im, map[netip.Prefix]netip.Addr{otherBlock: other.addr})(got) {
		t.Errorf("taken from %v; want only %s", got, otherBlock)
	}

	// Our own block sent back by a peer (it may compete with ours; it must never be taken).
	advertise(t, other, otherBlock, outside, ownBlock)
	waitRoutes(t, node, 10*time.Second, "the default route from a node withdrawn", func(routes []Route) bool {
		return !slices.ContainsFunc(routes, func(r Route) bool { return r.Prefix == defaultRoute })
	})

	advertise(t, gw, defaultRoute, outside)
	want := map[netip.Prefix]netip.Addr{otherBlock: other.addr, defaultRoute: gw.addr}
	waitRoutes(t, node, 10*time.Second, "the gateway's default route taken", taken(im, want))

	// Pools narrowed: the other block is no longer taken.
	narrow := NewImport(self, []netip.Prefix{netip.MustParsePrefix("198.19.1.0/24")}, peers, []netip.Prefix{ownBlock})
	if got := node.Learned(); !taken(narrow, map[netip.Prefix]netip.Addr{defaultRoute: gw.addr})(got) {
		t.Errorf("narrowed pools: taken from %v; want only the default route", got)
	}

	// Once we stop advertising our block, the copy a peer sends is an ordinary route.
	advertise(t, node)
	want[ownBlock] = other.addr
	waitRoutes(t, node, 10*time.Second, "the former own block from the peer", taken(NewImport(self, []netip.Prefix{pool}, peers, nil), want))
}

func TestSpeakerErrors(t *testing.T) {
	if _, err := New(0, netip.MustParseAddr("127.0.0.1")); err == nil {
		t.Error("New with AS 0: no error")
	}
	if _, err := New(64512, netip.MustParseAddr("::1")); err == nil {
		t.Error("New with an IPv6 router ID: no error")
	}
	s, err := New(64512, netip.MustParseAddr("127.0.0.31"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.SetPeers(ctx, nil); err == nil {
		t.Error("SetPeers before Start: no error")
	}
	if err := s.Advertise(ctx, nil); err == nil {
		t.Error("Advertise before Start: no error")
	}
	ts := startSpeaker(t, "127.0.0.32")
	if err := ts.Start(ctx); err == nil {
		t.Error("second Start: no error")
	}
	p := Peer{Address: netip.MustParseAddr("127.0.0.33"), ASN: 64512}
	if err := ts.SetPeers(ctx, []Peer{p, p}); err == nil {
		t.Error("SetPeers with a duplicate: no error")
	}
	if err := ts.SetPeers(ctx, []Peer{{Address: p.Address}}); err == nil {
		t.Error("SetPeers with AS 0: no error")
	}
	if err := ts.Advertise(ctx, []Advertisement{{Prefix: netip.MustParsePrefix("2001:db8::/64")}}); err == nil {
		t.Error("Advertise IPv6: no error")
	}
}

func TestGracefulRestart(t *testing.T) {
	tests := []struct {
		name        string
		gr          bool
		restartTime time.Duration
		restart     bool // start the stopped speaker again
		wantKept    bool // the route survives the stop
	}{
		// GoBGP waits 5 s in Idle after a session drops, so a restart takes 6-8 s to come back.
		{name: "restart within restart time keeps routes", gr: true, restartTime: 30 * time.Second, restart: true, wantKept: true},
		{name: "restart time expiry removes routes", gr: true, restartTime: 3 * time.Second, wantKept: true},
		{name: "without graceful restart routes go at once", gr: false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			aAddr, bAddr := fmt.Sprintf("127.0.0.%d", 41+2*i), fmt.Sprintf("127.0.0.%d", 42+2*i)
			port, err := freePort(context.Background(), []netip.Addr{netip.MustParseAddr(bAddr)})
			if err != nil {
				t.Fatal(err)
			}
			gr := WithGracefulRestart(tt.gr, tt.restartTime)
			a := startSpeaker(t, aAddr, gr)
			b := startSpeaker(t, bAddr, gr, WithListenPort(port))
			setPeers(t, a, b.peer())
			setPeers(t, b, a.peer())
			waitEstablished(t, a, 1, 20*time.Second)
			advertise(t, b, blocks[1])
			want := map[netip.Prefix]netip.Addr{blocks[1]: b.addr}
			waitRoutes(t, a, 10*time.Second, "b's block", hasExactly(want))

			var lost atomic.Bool
			observe := func(routes []Route) {
				if !hasExactly(want)(routes) {
					lost.Store(true)
				}
			}
			a.observe.Store(&observe)
			stopped := time.Now()
			if err := b.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			if !tt.wantKept {
				waitRoutes(t, a, 5*time.Second, "b's block removed", hasExactly(nil))
				return
			}
			waitRoutes(t, a, 10*time.Second, "session down", func([]Route) bool {
				st, err := a.Peers(context.Background())
				return err == nil && len(st) == 1 && st[0].State != Established
			})
			if got := a.Learned(); !hasExactly(want)(got) {
				t.Fatalf("after the peer went down: learned %v, want b's block kept", got)
			}
			if !tt.restart {
				waitRoutes(t, a, 10*time.Second, "b's block removed after the restart time", hasExactly(nil))
				if d := time.Since(stopped); d < tt.restartTime-time.Second {
					t.Errorf("route removed %s after the stop; want about the restart time %s", d, tt.restartTime)
				}
				return
			}
			if err := b.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			setPeers(t, b, a.peer())
			advertise(t, b, blocks[1])
			waitEstablished(t, a, 1, 20*time.Second)
			waitRoutes(t, a, 10*time.Second, "route refreshed", hasExactly(want))
			if lost.Load() {
				t.Error("b's block was withdrawn during the restart")
			}
			t.Logf("restarted peer back after %s, routes kept", time.Since(stopped).Round(time.Millisecond))
		})
	}
}

// TestRouteReflector runs the peers Mesh computes with the mesh off: two clients learn each
// other's blocks through the reflector, with the originating client as next hop.
func TestRouteReflector(t *testing.T) {
	addrs := []string{"127.0.0.51", "127.0.0.52", "127.0.0.53"}
	nodes := []datastore.Node{
		{Name: "rr", AddressV4: netip.MustParsePrefix(addrs[0] + "/8"), RouteReflectorClusterID: "1.0.0.1"},
		{Name: "a", AddressV4: netip.MustParsePrefix(addrs[1] + "/8")},
		{Name: "b", AddressV4: netip.MustParsePrefix(addrs[2] + "/8")},
	}
	off := false
	cfg := datastore.BGPConfig{ASN: 64512, NodeToNodeMesh: &off}
	s := make([]*testSpeaker, len(nodes))
	ports := map[netip.Addr]uint16{}
	for i, n := range nodes {
		var opts []Option
		if n.RouteReflectorClusterID != "" {
			opts = append(opts, WithRouteReflectorClusterID(netip.MustParseAddr(n.RouteReflectorClusterID)))
		}
		s[i] = startSpeaker(t, addrs[i], opts...)
		ports[s[i].addr] = uint16(s[i].ListenPort())
	}
	for i, n := range nodes {
		peers := Mesh(n, nodes, cfg, nil)
		for j := range peers {
			peers[j].Port = ports[peers[j].Address]
		}
		setPeers(t, s[i], peers...)
	}
	waitEstablished(t, s[0], 2, 20*time.Second)
	advertise(t, s[1], blocks[1])
	advertise(t, s[2], blocks[2])
	waitRoutes(t, s[1], 10*time.Second, "b's block via the reflector", hasExactly(map[netip.Prefix]netip.Addr{blocks[2]: s[2].addr}))
	waitRoutes(t, s[2], 10*time.Second, "a's block via the reflector", hasExactly(map[netip.Prefix]netip.Addr{blocks[1]: s[1].addr}))
	if r := s[1].Learned()[0]; r.Peer != s[0].addr {
		t.Errorf("route %+v: want it learned from the reflector %s", r, s[0].addr)
	}
	if st, err := s[1].Peers(context.Background()); err != nil || len(st) != 1 {
		t.Errorf("client peers = %+v, %v; want only the reflector", st, err)
	}
}

// syncBuffer is a log sink that speakers write to from their own goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TCP MD5 (RFC 2385) on both ends of a session: a's lower address makes it the side that dials
// and b the side that listens, so the dialer's key and the listener's key are both needed. Matching secrets bring the
// session up, a wrong one keeps it down, and correcting it brings it back. Neither the secret nor
// anything derived from it shows in the speakers' logs, debug level included.
func TestMD5(t *testing.T) {
	logs := &syncBuffer{}
	// DEBUG-4 is where logAdapter puts GoBGP's own Debug messages (its dial attempts and their
	// errors among them): below slog's Debug, so LevelDebug would not see them.
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug - 4}))
	a := startSpeaker(t, "127.0.0.61", WithLogger(logger.With("speaker", "a")))
	b := startSpeaker(t, "127.0.0.62", WithLogger(logger.With("speaker", "b")))
	pa, pb := a.peer(), b.peer()
	pa.Password, pb.Password = "s3cret-md5", "s3cret-md5"
	setPeers(t, a, pb)
	setPeers(t, b, pa)
	waitEstablished(t, a, 1, 20*time.Second)
	md5KeyInstalled(t, b.ListenPort(), a.addr)

	// A password change resets the session; with mismatched secrets it cannot come up.
	pb.Password = "other-md5"
	setPeers(t, a, pb)
	waitRoutes(t, a, 10*time.Second, "session down with a wrong secret", func([]Route) bool {
		st, err := a.Peers(context.Background())
		return err == nil && len(st) == 1 && st[0].State != Established
	})
	// It stays down while a keeps dialling (connect retry 1 s): the kernel drops b's answers for
	// the wrong key, and counts each.
	failures := md5Failures(t)
	waitRoutes(t, a, 20*time.Second, "SYNs with the wrong key dropped", func([]Route) bool {
		return md5Failures(t) >= failures+2
	})
	if st, err := a.Peers(context.Background()); err != nil || len(st) != 1 || st[0].State == Established {
		t.Fatalf("with a wrong secret: %+v, %v; want the session down", st, err)
	}
	pa.Password = "other-md5"
	setPeers(t, b, pa)
	waitEstablished(t, a, 1, 20*time.Second)

	out := logs.String()
	if !strings.Contains(out, "level=DEBUG-4") || !strings.Contains(out, "source=gobgp") {
		t.Errorf("the speakers' logs hold no GoBGP debug message, so the check below proves nothing:\n%s", out)
	}
	for _, secret := range []string{"s3cret-md5", "other-md5"} {
		if strings.Contains(out, secret) {
			t.Errorf("the speakers' logs hold the secret %q", secret)
		}
	}
}

// md5KeyInstalled proves that the listener on port holds a key for peer, and that the
// established session on it is signed (ss prints a socket's keys as md5keys:<peer>/32 and marks a
// connection signed with "md5").
func md5KeyInstalled(tb testing.TB, port int, peer netip.Addr) {
	tb.Helper()
	for _, state := range []string{"listening", "established"} {
		out, err := exec.Command("ss", "-tnie", "state", state, fmt.Sprintf("( sport = :%d )", port)).CombinedOutput()
		if err != nil {
			tb.Fatalf("ss: %v\n%s", err, out)
		}
		want := "md5keys:" + peer.String() + "/32"
		if state == "established" {
			want = "md5"
		}
		if !strings.Contains(string(out), want) {
			tb.Fatalf("the %s socket on port %d has no MD5 key for %s:\n%s", state, port, peer, out)
		}
	}
}

// md5Failures is the kernel's count of segments dropped for a wrong MD5 signature (this
// namespace's, where the test speakers run on loopback addresses).
func md5Failures(tb testing.TB) uint64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/thread-self/net/netstat")
	if err != nil {
		tb.Fatal(err)
	}
	n, err := netns.ParseNetStat(b, "TcpExt", "TCPMD5Failure")
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// The speaker refuses to start where its sockets would be Multipath TCP (GODEBUG from the
// environment overriding go.mod's multipathtcp=0), instead of running sessions whose passwords
// can never work.
func TestStartRefusesMultipathTCP(t *testing.T) {
	for _, v := range []string{
		"2", // listeners only: Go's own default without go.mod's line
		"3", // dialers only: the outgoing side
		"1", // both
	} {
		t.Run("multipathtcp="+v, func(t *testing.T) {
			t.Setenv("GODEBUG", "multipathtcp="+v)
			s, err := New(64512, netip.MustParseAddr("127.0.0.63"), WithListenAddresses(netip.MustParseAddr("127.0.0.63")), WithListenPort(0))
			if err != nil {
				t.Fatal(err)
			}
			err = s.Start(t.Context())
			if !errors.Is(err, ErrMultipathTCP) {
				_ = s.Stop(t.Context())
				t.Fatalf("Start with multipathtcp=%s: %v, want %v", v, err, ErrMultipathTCP)
			}
		})
	}
}

// A speaker starts without a warning: GoBGP sets TTL 255 on its listener, which Linux refuses on
// a Multipath TCP socket ("cannot set TTL (255) for TCPListener", logged at every agent start
// while Go's listeners defaulted to MPTCP); go.mod's multipathtcp=0 makes it plain TCP.
func TestStartWarnsNothing(t *testing.T) {
	var (
		mu  sync.Mutex
		buf bytes.Buffer
	)
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), &slog.HandlerOptions{Level: slog.LevelWarn}))
	a := netip.MustParseAddr("127.0.0.64")
	s, err := New(64512, a, WithLogger(logger), WithListenAddresses(a), WithListenPort(0))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if buf.Len() != 0 {
		t.Errorf("start and stop of a speaker logged warnings or errors:\n%s", buf.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestSetPeersUpdate(t *testing.T) {
	a := startSpeaker(t, "127.0.0.71")
	b := startSpeaker(t, "127.0.0.72")
	setPeers(t, b, a.peer())
	pb := b.peer()
	setPeers(t, a, pb)
	before := waitEstablished(t, a, 1, 20*time.Second)[0]

	// Type and Accept are ours: changing them keeps the session.
	pb.Type, pb.Accept = PeerGlobal, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}
	setPeers(t, a, pb)
	st, err := a.Peers(context.Background())
	if err != nil || len(st) != 1 || st[0].Type != PeerGlobal || st[0].State != Established || !st[0].Since.Equal(before.Since) {
		t.Fatalf("after a Type change: %+v, %v; want the same session (since %s) as global", st, err, before.Since)
	}
	advertise(t, b, netip.MustParsePrefix("0.0.0.0/0"))
	waitRoutes(t, a, 10*time.Second, "default route received", hasExactly(map[netip.Prefix]netip.Addr{netip.MustParsePrefix("0.0.0.0/0"): b.addr}))

	// A wrong AS is a session change: the peer is re-added and cannot come up.
	pb.ASN = 65000
	setPeers(t, a, pb)
	waitRoutes(t, a, 10*time.Second, "session down with a wrong AS", func(routes []Route) bool {
		st, err := a.Peers(context.Background())
		return err == nil && len(st) == 1 && st[0].State != Established && len(routes) == 0
	})
	pb.ASN = 64512
	setPeers(t, a, pb)
	waitEstablished(t, a, 1, 20*time.Second)
	waitRoutes(t, a, 10*time.Second, "default route back", hasExactly(map[netip.Prefix]netip.Addr{netip.MustParsePrefix("0.0.0.0/0"): b.addr}))

	setPeers(t, a)
	waitRoutes(t, a, 10*time.Second, "no peers, no routes", hasExactly(nil))
	if st, err := a.Peers(context.Background()); err != nil || len(st) != 0 {
		t.Errorf("Peers() = %+v, %v; want none", st, err)
	}
}

// One Update says Synced: the first to hold every configured peer's initial table (End-of-RIB
// received from each), at once when there are no peers.
func TestSyncedAfterEndOfRIB(t *testing.T) {
	a := startSpeaker(t, "127.0.0.81")
	b := startSpeaker(t, "127.0.0.82")
	// b's table is complete before the session: a's initial table from b holds both blocks.
	advertise(t, b, blocks[1], blocks[2])
	setPeers(t, b, a.peer())
	setPeers(t, a, b.peer())
	want := map[netip.Prefix]netip.Addr{blocks[1]: b.addr, blocks[2]: b.addr}
	waitRoutes(t, a, 20*time.Second, "synced", func([]Route) bool { return a.synced.Load() > 0 })
	if got := a.atSync.Load(); got == nil || !hasExactly(want)(*got) {
		t.Fatalf("routes of the synced Update: %v, want b's two blocks", got)
	}
	// Later changes do not call it again.
	advertise(t, b, blocks[1])
	waitRoutes(t, a, 10*time.Second, "b's withdrawal", hasExactly(map[netip.Prefix]netip.Addr{blocks[1]: b.addr}))
	if n := a.synced.Load(); n != 1 {
		t.Errorf("%d Updates said Synced, want one", n)
	}

	c := startSpeaker(t, "127.0.0.83")
	setPeers(t, c)
	waitRoutes(t, c, 10*time.Second, "synced without peers", func([]Route) bool { return c.synced.Load() == 1 })
}

// peerView is what a speaker knows of one neighbor's last OPEN and of the messages it got.
type peerView struct {
	established     bool
	restartBit      bool // Restart State (R) in the graceful restart capability
	forwardingIPv4  bool // Forwarding State (F) of IPv4 unicast
	notificationsIn uint64
	peerRestarting  bool // keeping the neighbor's routes as stale until its End-of-RIB
}

func viewPeer(tb testing.TB, s *testSpeaker, addr netip.Addr) peerView {
	tb.Helper()
	var v peerView
	found := false
	err := s.server().ListPeer(context.Background(), &api.ListPeerRequest{Address: addr.String()}, func(p *api.Peer) {
		found = true
		v.established = p.GetState().GetSessionState() == api.PeerState_ESTABLISHED
		v.notificationsIn = p.GetState().GetMessages().GetReceived().GetNotification()
		v.peerRestarting = p.GetGracefulRestart().GetPeerRestarting()
		for _, c := range p.GetState().GetRemoteCap() {
			var gr api.GracefulRestartCapability
			if c.UnmarshalTo(&gr) != nil {
				continue
			}
			v.restartBit = gr.Flags&0x08 != 0
			for _, t := range gr.Tuples {
				if t.GetFamily().GetAfi() == api.Family_AFI_IP && t.GetFamily().GetSafi() == api.Family_SAFI_UNICAST {
					v.forwardingIPv4 = t.Flags&0x80 != 0
				}
			}
		}
	})
	if err != nil || !found {
		tb.Fatalf("list peer %s: found %v, %v", addr, found, err)
	}
	return v
}

// A planned restart: Stop closes the session without a NOTIFICATION (a peer without RFC 8538,
// such as BIRD, would drop our routes on a Cease), the peer keeps our block throughout, and the
// restarted speaker (WithRestarting) opens with the restart and forwarding-state bits and sends
// its block again with an End-of-RIB. A first start sets neither bit.
func TestPlannedRestart(t *testing.T) {
	aAddr, bAddr := "127.0.0.91", "127.0.0.92"
	port, err := freePort(context.Background(), []netip.Addr{netip.MustParseAddr(bAddr)})
	if err != nil {
		t.Fatal(err)
	}
	gr := WithGracefulRestart(true, 30*time.Second)
	a := startSpeaker(t, aAddr, gr)
	b := startSpeaker(t, bAddr, gr, WithListenPort(port))
	setPeers(t, a, b.peer())
	setPeers(t, b, a.peer())
	advertise(t, a, blocks[0])
	advertise(t, b, blocks[1])
	waitEstablished(t, a, 1, 20*time.Second)
	want := map[netip.Prefix]netip.Addr{blocks[1]: b.addr}
	waitRoutes(t, a, 10*time.Second, "b's block", hasExactly(want))
	if v := viewPeer(t, a, b.addr); v.restartBit || v.forwardingIPv4 {
		t.Errorf("first start: a sees %+v, want neither restart nor forwarding bit", v)
	}

	var lost atomic.Bool
	observe := func(routes []Route) {
		if !hasExactly(want)(routes) {
			lost.Store(true)
		}
	}
	a.observe.Store(&observe)
	if err := b.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, a, 10*time.Second, "session down", func([]Route) bool { return !viewPeer(t, a, b.addr).established })
	if v := viewPeer(t, a, b.addr); v.notificationsIn != 0 || !v.peerRestarting {
		t.Errorf("after the planned stop a sees %+v, want no NOTIFICATION received and b restarting", v)
	}

	b2 := startSpeaker(t, bAddr, gr, WithListenPort(port), WithRestarting(true))
	// What an agent does: its own prefixes first, then the peers.
	advertise(t, b2, blocks[1])
	setPeers(t, b2, a.peer())
	waitEstablished(t, a, 1, 20*time.Second)
	v := viewPeer(t, a, b.addr)
	if !v.restartBit || !v.forwardingIPv4 {
		t.Errorf("restart: a sees %+v, want the restart and the IPv4 forwarding bits", v)
	}
	waitRoutes(t, b2, 10*time.Second, "a's block at the restarted b", hasExactly(map[netip.Prefix]netip.Addr{blocks[0]: a.addr}))
	// b2's End-of-RIB ends a's stale state, and a still has exactly b's block.
	waitRoutes(t, a, 10*time.Second, "b's End-of-RIB", func([]Route) bool { return !viewPeer(t, a, b.addr).peerRestarting })
	if got := a.Learned(); !hasExactly(want)(got) {
		t.Errorf("after the restart a learned %v", got)
	}
	if lost.Load() {
		t.Error("b's block was withdrawn at a during the planned restart")
	}
}

// A peer that comes back only after the restarting speaker finished its restart with the others
// still gets an OPEN with the restart and forwarding-state bits (GoBGP alone would send a plain
// one: the peer logs "restart flag is not set", and BIRD would flush our routes at once).
func TestRestartBitsForLatePeer(t *testing.T) {
	aAddr, bAddr, cAddr := "127.0.0.101", "127.0.0.102", "127.0.0.103"
	ports := map[string]int{}
	for _, addr := range []string{bAddr, cAddr} {
		p, err := freePort(context.Background(), []netip.Addr{netip.MustParseAddr(addr)})
		if err != nil {
			t.Fatal(err)
		}
		ports[addr] = p
	}
	gr := WithGracefulRestart(true, 30*time.Second)
	a := startSpeaker(t, aAddr, gr)
	b := startSpeaker(t, bAddr, gr, WithListenPort(ports[bAddr]))
	c := startSpeaker(t, cAddr, gr, WithListenPort(ports[cAddr]))
	bPeer, cPeer := b.peer(), c.peer()
	setPeers(t, a, bPeer)
	setPeers(t, c, bPeer)
	setPeers(t, b, a.peer(), cPeer)
	advertise(t, b, blocks[1])
	waitEstablished(t, b, 2, 20*time.Second)

	// b restarts while c is away.
	for _, s := range []*testSpeaker{c, b} {
		if err := s.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	b2 := startSpeaker(t, bAddr, gr, WithListenPort(ports[bAddr]), WithRestarting(true))
	advertise(t, b2, blocks[1])
	setPeers(t, b2, a.peer(), cPeer)
	// b2 is done with a: its End-of-RIB ended a's stale state.
	waitRoutes(t, a, 20*time.Second, "b2's restart done with a", func([]Route) bool {
		v := viewPeer(t, a, b.addr)
		return v.established && !v.peerRestarting
	})
	if v := viewPeer(t, a, b.addr); !v.restartBit || !v.forwardingIPv4 {
		t.Errorf("a sees %+v, want the restart and forwarding bits", v)
	}

	c2 := startSpeaker(t, cAddr, gr, WithListenPort(ports[cAddr]))
	setPeers(t, c2, bPeer)
	waitEstablished(t, c2, 1, 20*time.Second)
	if v := viewPeer(t, c2, b.addr); !v.restartBit || !v.forwardingIPv4 {
		t.Errorf("c, back after b's restart with a was done, sees %+v, want the restart and forwarding bits", v)
	}
	waitRoutes(t, c2, 10*time.Second, "b's block at c", hasExactly(map[netip.Prefix]netip.Addr{blocks[1]: b.addr}))
}

// An advertisement may name another next hop (a restarting reflector's retained routes); a new
// next hop for the prefix replaces the path without a withdrawal in between.
func TestAdvertiseNextHop(t *testing.T) {
	a := startSpeaker(t, "127.0.0.111")
	b := startSpeaker(t, "127.0.0.112")
	setPeers(t, a, b.peer())
	setPeers(t, b, a.peer())
	other := netip.MustParseAddr("127.0.0.113")
	if err := b.Advertise(context.Background(), []Advertisement{{Prefix: blocks[2], NextHop: other}}); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, a, 20*time.Second, "blocks[2] via the named next hop", hasExactly(map[netip.Prefix]netip.Addr{blocks[2]: other}))
	var lost atomic.Bool
	observe := func(routes []Route) {
		if len(routes) != 1 || routes[0].Prefix != blocks[2] {
			lost.Store(true)
		}
	}
	a.observe.Store(&observe)
	advertise(t, b, blocks[2])
	waitRoutes(t, a, 10*time.Second, "blocks[2] via b", hasExactly(map[netip.Prefix]netip.Addr{blocks[2]: b.addr}))
	if lost.Load() {
		t.Error("blocks[2] missing at a while its next hop changed")
	}
	if err := b.Advertise(context.Background(), []Advertisement{{Prefix: blocks[1], NextHop: netip.MustParseAddr("2001:db8::1")}}); err == nil {
		t.Error("an IPv6 next hop for an IPv4 prefix was accepted")
	}
}
