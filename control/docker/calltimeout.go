package docker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// DefaultCallTimeout bounds one call's work unless WithCallTimeout says otherwise.
const DefaultCallTimeout = 60 * time.Second

// WithCallTimeout bounds the work of each call (default DefaultCallTimeout, d <= 0 keeps it).
// dockerd waits for the plugin without a limit of its own, so this is how long a docker command
// waits for an etcd that does not answer before it fails.
func WithCallTimeout(d time.Duration) Option {
	return func(s *Server) {
		if d > 0 {
			s.callTimeout = d
		}
	}
}

// explainTimeout says of an error that the call's own deadline caused that the plugin gave up,
// after how long, and what it most likely waited for: the datastore client blocks while etcd is
// unreachable, and its error says only "context deadline exceeded".
func (s *Server) explainTimeout(ctx context.Context, err error) error {
	if err == nil || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w (margay-docker gave up after %s, its --call-timeout: is etcd up and reachable from this host?)", err, s.callTimeout)
}
