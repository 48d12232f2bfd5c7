package bgp

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// Speaker is the node's BGP speaker. The rest of Margay talks BGP only through it, so GoBGP can be
// replaced (or faked) without touching callers. Every method is safe for concurrent use; SetPeers
// and Advertise are declarative and idempotent. The speaker decides nothing about the routes it
// learns: it hands out every best path its peers sent, and the node's import policy (Import)
// chooses among them.
type Speaker interface {
	// Start starts the BGP instance and its listener.
	Start(ctx context.Context) error
	// Stop closes every session and stops the instance.
	Stop(ctx context.Context) error
	// SetPeers adds, updates and removes neighbors so that they are exactly peers.
	SetPeers(ctx context.Context, peers []Peer) error
	// Advertise makes ads exactly the set of prefixes this node originates, with the node's
	// address as next hop unless an advertisement names another.
	Advertise(ctx context.Context, ads []Advertisement) error
	// Updates delivers the routes learned from peers after they change. A receiver that falls
	// behind misses nothing but intermediate tables: the next Update holds every route. The
	// channel is the speaker's for its life, across Stop and Start.
	Updates() <-chan Update
	// Learned returns the current best paths learned from peers, sorted by prefix.
	Learned() []Route
	// Peers returns the state of every configured neighbor, sorted by address.
	Peers(ctx context.Context) ([]PeerStatus, error)
}

// PeerType says why a peer exists, as `margayctl node status` prints it.
type PeerType int

// Peer types.
const (
	PeerMesh         PeerType = iota // node-to-node mesh or reflector ↔ client; the higher address waits passively
	PeerGlobal                       // explicit peer of every node
	PeerNodeSpecific                 // explicit peer of this node only
)

func (t PeerType) String() string {
	switch t {
	case PeerMesh:
		return "node-to-node mesh"
	case PeerGlobal:
		return "global"
	case PeerNodeSpecific:
		return "node specific"
	}
	return "unknown"
}

// Peer is one desired BGP neighbor.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	Type    PeerType
	// Port is the neighbor's TCP port; 0 means 179.
	Port     uint16
	Password string // TCP MD5 secret; "" = none
	// RouteReflectorClient makes this node reflect routes to the peer (this node is a reflector).
	RouteReflectorClient bool
	// Accept lists prefixes the peer may send even outside the pools (e.g. 0.0.0.0/0 from a
	// gateway). Entries match exactly: 0.0.0.0/0 allows the default route, not everything.
	Accept []netip.Prefix
}

// Advertisement is a prefix this node originates: an affine block or a borrowed /32, or, on a
// restarting route reflector, another node's prefix it had before the restart (NextHop that
// node), so that its clients keep it until its owner's session is back.
type Advertisement struct {
	Prefix  netip.Prefix
	NextHop netip.Addr // invalid: this node
}

// Update is one delivery of the speaker.
type Update struct {
	// Routes are every best path learned from a configured peer, in no particular order.
	Routes []Route
	// Synced says that Routes hold every configured peer's initial table: each sent its
	// End-of-RIB marker (RFC 4724) since the speaker started, or none is configured. It is set in
	// one Update only, the first to hold them. A restarting node keeps the routes it had until
	// then, as RFC 4724's restarting speaker keeps its forwarding state. Peers that do not
	// negotiate graceful restart send no End-of-RIB: with such a peer no Update is Synced.
	Synced bool
}

// Route is a best path learned from a peer.
type Route struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	Peer    netip.Addr // the neighbor it was learned from (a reflector for reflected routes)
}

// State is a BGP session state (RFC 4271 §8.2.2).
type State int

// Session states.
const (
	StateUnknown State = iota
	Idle
	Connect
	Active
	OpenSent
	OpenConfirm
	Established
)

func (s State) String() string {
	switch s {
	case Idle:
		return "Idle"
	case Connect:
		return "Connect"
	case Active:
		return "Active"
	case OpenSent:
		return "OpenSent"
	case OpenConfirm:
		return "OpenConfirm"
	case Established:
		return "Established"
	}
	return "Unknown"
}

// PeerStatus is one row of `margayctl node status`.
type PeerStatus struct {
	Address netip.Addr
	Type    PeerType
	State   State
	Since   time.Time // when the session entered or last left Established; zero if never
	Info    string
}

// Errors returned by the speaker.
var (
	ErrNotStarted     = errors.New("speaker not started")
	ErrAlreadyStarted = errors.New("speaker already started")
	ErrBadPeer        = errors.New("invalid peer")
	ErrBadPrefix      = errors.New("invalid prefix")
	// ErrMultipathTCP: the process opens Multipath TCP sockets by default, on which Linux refuses
	// the TCP MD5 key of a password-protected session and the TTL settings.
	ErrMultipathTCP = errors.New("tcp sockets default to multipath tcp (GODEBUG multipathtcp); bgp needs plain tcp: set multipathtcp=0")
)
