package docker

import (
	"context"
	"fmt"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/workload/programmed"
)

// WithPolicySetup makes ProgramExternalConnectivity, dockerd's last call before it starts the
// container, wait up to timeout until this host's agent (pinning under root) has programmed the
// endpoint: its endpoint entry with its policy programs, then both programs attached to the host
// veth, as margay-cni's policySetupTimeout does for a pod. Until then the container's first
// packets would pass without its policy. Past timeout the call fails, and with it `docker run`,
// whose clean-up removes the endpoint. timeout 0 (the default) does not wait.
func WithPolicySetup(root string, timeout time.Duration) Option {
	return func(s *Server) { s.bpffsRoot, s.policyTimeout = root, timeout }
}

// waitProgrammed waits as WithPolicySetup says, for the endpoint w.
func (s *Server) waitProgrammed(ctx context.Context, eid string, w datastore.Workload) error {
	if s.policyTimeout <= 0 {
		return nil
	}
	ip, ok := w.Addr()
	if !ok {
		return fmt.Errorf("endpoint %s has no address", eid)
	}
	start := time.Now()
	if err := s.do(func() error { return programmed.Wait(ctx, s.bpffsRoot, w.IfName, ip, s.policyTimeout) }); err != nil {
		return fmt.Errorf("the agent did not program endpoint %s (%s, %s) in time, so its policy would not hold: %w (is margay-agent running on this host with --bpffs-root %s? margay-docker --policy-setup-timeout)",
			eid, ip, w.IfName, err, s.bpffsRoot)
	}
	s.log.Debug("endpoint programmed by the agent", "endpoint", eid, "waited", time.Since(start))
	return nil
}
