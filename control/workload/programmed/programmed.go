// Package programmed waits until this host's agent has programmed a workload, for the runtimes'
// front ends (margay-cni's policySetupTimeout, margay-docker's --policy-setup-timeout): until
// then the kernel would carry the workload's packets without its policy.
package programmed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// Wait waits, up to timeout, until the agent pinning under root has programmed the workload of
// hostVeth (in the calling thread's network namespace) and address ip: its endpoint entry (with
// its policy programs) for the veth, written before anything else, then both programs attached
// to the veth, the agent's last step.
func Wait(ctx context.Context, root, hostVeth string, ip netip.Addr, timeout time.Duration) error {
	link, err := netlink.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("look up %s: %w", hostVeth, err)
	}
	ifindex := uint32(link.Attrs().Index)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var endpoints *maps.Endpoints
	defer func() {
		if endpoints != nil {
			endpoints.Close()
		}
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check(root, hostVeth, ip, ifindex, &endpoints)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %v: %w", timeout, err)
		case <-tick.C:
		}
	}
}

func check(root, hostVeth string, ip netip.Addr, ifindex uint32, endpoints **maps.Endpoints) error {
	if *endpoints == nil {
		m, err := ebpf.LoadPinnedMap(loader.MapPin(root, loader.MargayMapEndpoints), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return fmt.Errorf("no endpoints map under %s (is margay-agent running?): %w", root, err)
		}
		*endpoints = maps.NewEndpoints(m, nil) // read only
	}
	ep, err := (*endpoints).Get(ifindex)
	if err != nil {
		if errors.Is(err, maps.ErrNotFound) {
			return fmt.Errorf("no endpoint for %s yet", hostVeth)
		}
		return err
	}
	if ep.IPv4 != ip {
		return fmt.Errorf("the endpoint of %s is still an older one", hostVeth)
	}
	for _, hook := range []loader.Hook{loader.HookFromWep, loader.HookToWep} {
		if _, err := os.Stat(loader.LinkPin(root, hostVeth, hook)); err != nil {
			return fmt.Errorf("%s not attached to %s yet", hook, hostVeth)
		}
	}
	return nil
}
