package bgp

import (
	"log/slog"
	"net/netip"
	"slices"
	"time"
)

// Defaults for the options below. Hold and keepalive follow RFC 4271's suggestions (and BIRD's);
// the short connect retry makes a fresh mesh converge in seconds rather than minutes.
const (
	DefaultListenPort   = 179
	DefaultHoldTime     = 90 * time.Second
	DefaultKeepalive    = 30 * time.Second
	DefaultConnectRetry = 5 * time.Second
	DefaultRestartTime  = 120 * time.Second
	DefaultRouteDelay   = 20 * time.Millisecond
)

type options struct {
	logger          *slog.Logger
	listenAddresses []netip.Addr
	listenPort      int
	localAddress    netip.Addr
	holdTime        time.Duration
	keepalive       time.Duration
	connectRetry    time.Duration
	gracefulRestart bool
	restartTime     time.Duration
	restarting      bool
	clusterID       netip.Addr
	routeDelay      time.Duration
}

// Option configures a speaker built by New.
type Option func(*options)

// WithLogger sets the logger for the speaker and for GoBGP's own messages.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithListenAddresses sets the addresses the speaker accepts sessions on; the default is every
// address.
func WithListenAddresses(addrs ...netip.Addr) Option {
	return func(o *options) { o.listenAddresses = slices.Clone(addrs) }
}

// WithListenPort sets the TCP port the speaker listens on: > 0 that port, 0 any free port (see
// ListenPort), < 0 no listener (outgoing sessions only).
func WithListenPort(port int) Option { return func(o *options) { o.listenPort = port } }

// WithLocalAddress sets the source address of outgoing sessions; the default is the router ID.
func WithLocalAddress(a netip.Addr) Option { return func(o *options) { o.localAddress = a } }

// WithTimers sets the hold time, keepalive interval and connect-retry interval of every
// session. Durations are rounded down to whole seconds; zero keeps the default.
func WithTimers(hold, keepalive, connectRetry time.Duration) Option {
	return func(o *options) {
		if hold > 0 {
			o.holdTime = hold
		}
		if keepalive > 0 {
			o.keepalive = keepalive
		}
		if connectRetry > 0 {
			o.connectRetry = connectRetry
		}
	}
}

// WithGracefulRestart enables or disables the graceful restart capability (RFC 4724) on every
// session, with the restart time announced to peers. It is on by default with
// DefaultRestartTime, so a peer's routes stay while it restarts.
func WithGracefulRestart(enabled bool, restartTime time.Duration) Option {
	return func(o *options) {
		o.gracefulRestart = enabled
		if restartTime > 0 {
			o.restartTime = restartTime
		}
	}
}

// WithRestarting says the speaker starts as a restarting speaker whose forwarding state was kept
// (RFC 4724 4.1), as an agent that finds the dataplane of the one before it still forwarding:
// the sessions of the first SetPeers open with the Restart State bit and the Forwarding State
// bit for IPv4 unicast, so that peers keep our routes until our End-of-RIB, and the speaker
// sends its routes and its End-of-RIB once every peer sent its own (at most the restart time).
// It has no effect without graceful restart.
func WithRestarting(restarting bool) Option { return func(o *options) { o.restarting = restarting } }

// WithRouteReflectorClusterID sets the cluster ID used towards route reflector clients; the
// default is the router ID.
func WithRouteReflectorClusterID(id netip.Addr) Option {
	return func(o *options) { o.clusterID = id }
}

// WithRouteDelay sets how long the speaker gathers route changes before it makes an Update of
// them (default DefaultRouteDelay); 0 makes it as soon as possible.
func WithRouteDelay(d time.Duration) Option { return func(o *options) { o.routeDelay = max(d, 0) } }
