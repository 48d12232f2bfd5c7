package workload

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/hostconv"
)

// Check verifies that the workload is set up as Add left it: the endpoint record (container,
// namespace, veth name, one /32 held by the workload's IPAM handle), the host-side veth (up, MAC
// ee:ee:ee:ee:ee:ee, sysctls, the /32 route through it) and, inside the
// workload namespace, the interface (the veth's peer, up, the recorded MAC), its /32, the routes
// to and via 169.254.1.1 and the gateway's permanent neighbour entry. The error names the first
// difference and wraps ErrNotFound (no record), ErrNetnsNotFound or ErrMismatch.
func Check(ctx context.Context, ds *datastore.Client, spec Spec) error {
	spec = spec.withDefaults()
	fail := func(err error) error { return fmt.Errorf("check workload %s: %w", spec.ID, err) }
	if err := spec.validate(); err != nil {
		return fail(err)
	}
	it, err := ds.Workloads(spec.Node).Get(ctx, spec.ID)
	if errors.Is(err, datastore.ErrNotFound) {
		return fail(fmt.Errorf("no endpoint record on node %s: %w", spec.Node, ErrNotFound))
	}
	if err != nil {
		return fail(err)
	}
	rec := it.Value
	switch {
	case spec.ContainerID != "" && rec.ContainerID != spec.ContainerID:
		return fail(mismatch("the endpoint belongs to container %q", rec.ContainerID))
	case spec.Network != "" && rec.Network != "" && rec.Network != spec.Network:
		return fail(mismatch("the endpoint belongs to network %q", rec.Network))
	case rec.Netns != spec.Netns:
		return fail(mismatch("the endpoint is in netns %q, not %q", rec.Netns, spec.Netns))
	case rec.IfName != spec.HostVeth():
		return fail(mismatch("the endpoint's veth is %s, want %s", rec.IfName, spec.HostVeth()))
	case len(rec.IPv4) == 0:
		return fail(mismatch("the endpoint has no address"))
	}
	ip := rec.IPv4[0]
	h, err := ds.Handles().Get(ctx, spec.ID)
	if errors.Is(err, datastore.ErrNotFound) {
		return fail(mismatch("IPAM handle %s does not exist", spec.ID))
	}
	if err != nil {
		return fail(err)
	}
	if !slices.Contains(h.Value.IPs, ip.Addr()) {
		return fail(mismatch("IPAM handle %s holds %v, not %s", spec.ID, h.Value.IPs, ip.Addr()))
	}

	host, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fail(fmt.Errorf("open netlink: %w", err))
	}
	defer host.Close()
	hostIndex, err := checkHostSide(host, rec.IfName, ip)
	if err != nil {
		return fail(err)
	}

	target, err := openNetns(spec.Netns)
	if err != nil {
		return fail(err)
	}
	defer target.Close()
	err = target.Do(func(ns.NetNS) error { return checkWorkloadSide(spec.IfName, ip, rec.MAC, hostIndex) })
	if err != nil {
		return fail(err)
	}
	return nil
}

func checkHostSide(host netlinksafe.Handle, name string, ip netip.Prefix) (int, error) {
	l, err := linkByName(host, name)
	if err != nil {
		return 0, err
	}
	if l == nil {
		return 0, mismatch("no host veth %s", name)
	}
	a := l.Attrs()
	if _, ok := l.(*netlink.Veth); !ok {
		return 0, mismatch("host interface %s is a %s, not a veth", name, l.Type())
	}
	if a.Flags&net.FlagUp == 0 {
		return 0, mismatch("host veth %s is down", name)
	}
	if a.HardwareAddr.String() != hostconv.VethMAC.String() {
		return 0, mismatch("host veth %s has MAC %s, want %s", name, a.HardwareAddr, hostconv.VethMAC)
	}
	for _, kv := range hostconv.VethSysctls(name) {
		v, err := hostconv.ReadSysctl(hostconv.SysctlRoot, kv[0])
		if err != nil {
			return 0, err
		}
		if v != kv[1] {
			return 0, mismatch("sysctl net.%s is %s, want %s", dotted(kv[0]), v, kv[1])
		}
	}
	routes, err := ownRoutes(host, a.Index)
	if err != nil {
		return 0, err
	}
	for _, r := range routes {
		if p, ok := prefixOf(r.Dst); ok && p == ip && r.Scope == netlink.SCOPE_LINK {
			return a.Index, nil
		}
	}
	return 0, mismatch("no host route %s dev %s scope link", ip, name)
}

func dotted(key string) string {
	b := []byte(key)
	for i, c := range b {
		if c == '/' {
			b[i] = '.'
		}
	}
	return string(b)
}
