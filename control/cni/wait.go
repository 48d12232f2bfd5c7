package cni

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// waitProgrammed waits until this host's agent has programmed the workload: its endpoint entry
// (with its policy programs) for the host veth, written before anything else, and then both
// programs attached to the veth, the agent's last step. Until then the kernel would carry the
// workload's packets without policy.
func waitProgrammed(ctx context.Context, root string, res workload.Result, timeout time.Duration) error {
	link, err := netlink.LinkByName(res.HostVeth)
	if err != nil {
		return fmt.Errorf("look up %s: %w", res.HostVeth, err)
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
		err := programmed(root, res, ifindex, &endpoints)
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

func programmed(root string, res workload.Result, ifindex uint32, endpoints **maps.Endpoints) error {
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
			return fmt.Errorf("no endpoint for %s yet", res.HostVeth)
		}
		return err
	}
	if ep.IPv4 != res.IPv4.Addr() {
		return fmt.Errorf("the endpoint of %s is still an older one", res.HostVeth)
	}
	for _, hook := range []loader.Hook{loader.HookFromWep, loader.HookToWep} {
		if _, err := os.Stat(loader.LinkPin(root, res.HostVeth, hook)); err != nil {
			return fmt.Errorf("%s not attached to %s yet", hook, res.HostVeth)
		}
	}
	return nil
}
