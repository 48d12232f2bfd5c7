package workload

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/hostconv"
)

// openNetns opens the workload's namespace, or fails with ErrNetnsNotFound.
func openNetns(path string) (ns.NetNS, error) {
	target, err := ns.GetNS(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w: %w", path, ErrNetnsNotFound, err)
	}
	return target, nil
}

// isOwnNetns reports whether path is the calling thread's own network namespace, where a
// workload side would land on the host.
func isOwnNetns(path string) (bool, error) {
	var own, target unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &own); err != nil {
		return false, fmt.Errorf("stat own netns: %w", err)
	}
	if err := unix.Stat(path, &target); err != nil {
		return false, fmt.Errorf("stat netns %s: %w", path, err)
	}
	return own.Dev == target.Dev && own.Ino == target.Ino, nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// linkByName returns the interface, or nil when there is none.
func linkByName(h netlinksafe.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	return l, nil
}

// defaultRouteMTU returns the MTU of the interface of the host's IPv4 default route, 0 without one.
func defaultRouteMTU(h netlinksafe.Handle) (int, error) {
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, fmt.Errorf("list host routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		idx := r.LinkIndex
		if idx == 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
		}
		if idx == 0 {
			continue
		}
		l, err := h.LinkByIndex(idx)
		if err != nil {
			return 0, fmt.Errorf("look up default-route interface %d: %w", idx, err)
		}
		return l.Attrs().MTU, nil
	}
	return 0, nil
}

func hostNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
}

var (
	gatewayNet = hostNet(netip.PrefixFrom(Gateway, 32))
	defaultNet = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
)

// hostRoute is `<ip>/32 dev <veth> scope link`, so the workload is reachable at once. It has the
// kernel's default protocol (boot), not Margay's: the agent owns the routes of its protocol and
// removes those it does not know, so it would delete this one until the workload's record reaches
// it. Once it knows the workload it replaces the route with its own.
func hostRoute(index int, ip netip.Prefix) *netlink.Route {
	return &netlink.Route{
		LinkIndex: index,
		Dst:       hostNet(ip),
		Scope:     netlink.SCOPE_LINK,
		Type:      unix.RTN_UNICAST,
		Table:     unix.RT_TABLE_MAIN,
		Protocol:  unix.RTPROT_BOOT,
	}
}

// ownRoutes lists the main table's routes through the interface: the plugin's, or the agent's
// (protocol hostconv.RouteProtocol) that replaced it.
func ownRoutes(h netlinksafe.Handle, index int) ([]netlink.Route, error) {
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{LinkIndex: index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of interface %d: %w", index, err)
	}
	return routes, nil
}

// deleteHostVeth removes the host-side veth, which takes its peer along, and with it every route
// through it: the kernel flushes a device's routes, in every table, while it unregisters the
// device, before RTM_DELLINK returns. (Listing them first to delete them one by one dumped the
// whole main table, a route per workload of the host, on every DEL.) A veth that does not exist
// is not an error.
func deleteHostVeth(h netlinksafe.Handle, name string) error {
	l, err := linkByName(h, name)
	if err != nil || l == nil {
		return err
	}
	if _, ok := l.(*netlink.Veth); !ok {
		return fmt.Errorf("delete %s: it is a %s, not a veth; left alone", name, l.Type())
	}
	if err := h.LinkDel(l); err != nil && !isNotFound(err) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// peerOf reports whether the workload namespace's interface ifname is the other end of host.
func peerOf(target ns.NetNS, ifname string, host netlink.Link) (bool, error) {
	if _, ok := host.(*netlink.Veth); !ok {
		return false, nil
	}
	var match bool
	err := target.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifname)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("look up %s: %w", ifname, err)
		}
		_, isVeth := l.(*netlink.Veth)
		match = isVeth && l.Attrs().ParentIndex == host.Attrs().Index && host.Attrs().ParentIndex == l.Attrs().Index
		return nil
	})
	return match, err
}

// configureWorkload sets up the workload side, inside its namespace, but for its address
// (addWorkloadAddress): MTU, up, the link-scope route to the gateway, the default route through
// it and the gateway's permanent neighbour entry. It replaces what is there, so a repeated ADD
// converges. It returns the interface's MAC.
func configureWorkload(ifname string, mtu int) (net.HardwareAddr, error) {
	l, err := netlinksafe.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", ifname, err)
	}
	if l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return nil, fmt.Errorf("set MTU of %s to %d: %w", ifname, mtu, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", ifname, err)
	}
	idx := l.Attrs().Index
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: gatewayNet, Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, fmt.Errorf("add route %s dev %s scope link: %w", Gateway, ifname, err)
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: defaultNet, Gw: Gateway.AsSlice()}); err != nil {
		return nil, fmt.Errorf("add route default via %s dev %s: %w", Gateway, ifname, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: Gateway.AsSlice(), HardwareAddr: hostconv.VethMAC}); err != nil {
		return nil, fmt.Errorf("add neighbour %s lladdr %s dev %s: %w", Gateway, hostconv.VethMAC, ifname, err)
	}
	return l.Attrs().HardwareAddr, nil
}

// addWorkloadAddress gives ifname (in the calling thread's namespace) ip as its only IPv4 address.
func addWorkloadAddress(ifname string, ip netip.Prefix) error {
	l, err := netlinksafe.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("look up %s: %w", ifname, err)
	}
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", ifname, err)
	}
	have := false
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p == ip {
			have = true
			continue
		}
		if err := netlink.AddrDel(l, &a); err != nil {
			return fmt.Errorf("remove stale address %s from %s: %w", a.IPNet, ifname, err)
		}
	}
	if !have {
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: hostNet(ip)}); err != nil {
			return fmt.Errorf("add %s to %s: %w", ip, ifname, err)
		}
	}
	return nil
}

// checkWorkloadSide verifies inside the namespace what configureWorkload set up.
func checkWorkloadSide(ifname string, ip netip.Prefix, mac string, hostIndex int) error {
	l, err := netlinksafe.LinkByName(ifname)
	if isNotFound(err) {
		return mismatch("no interface %s in the workload namespace", ifname)
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", ifname, err)
	}
	a := l.Attrs()
	if _, ok := l.(*netlink.Veth); !ok || a.ParentIndex != hostIndex {
		return mismatch("%s in the workload namespace is not the peer of the host veth", ifname)
	}
	if a.Flags&net.FlagUp == 0 {
		return mismatch("%s is down", ifname)
	}
	if a.HardwareAddr.String() != mac {
		return mismatch("%s has MAC %s, the endpoint says %s", ifname, a.HardwareAddr, mac)
	}
	addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", ifname, err)
	}
	found := false
	for _, ad := range addrs {
		if p, ok := prefixOf(ad.IPNet); ok && p == ip {
			found = true
		}
	}
	if !found {
		return mismatch("%s lacks address %s", ifname, ip)
	}
	routes, err := netlinksafe.RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", ifname, err)
	}
	var gwRoute, defRoute bool
	for _, r := range routes {
		p, _ := prefixOf(r.Dst)
		switch {
		case p == netip.PrefixFrom(Gateway, 32) && r.Scope == netlink.SCOPE_LINK && r.Gw == nil:
			gwRoute = true
		case (r.Dst == nil || p.Bits() == 0) && r.Gw.Equal(Gateway.AsSlice()):
			defRoute = true
		}
	}
	if !gwRoute {
		return mismatch("no route %s dev %s scope link", Gateway, ifname)
	}
	if !defRoute {
		return mismatch("no route default via %s dev %s", Gateway, ifname)
	}
	neighs, err := netlink.NeighList(a.Index, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", ifname, err)
	}
	for _, n := range neighs {
		if n.IP.Equal(Gateway.AsSlice()) {
			if n.State&netlink.NUD_PERMANENT == 0 || !bytes.Equal(n.HardwareAddr, hostconv.VethMAC) {
				return mismatch("neighbour %s on %s is %s state %#x, want %s permanent", Gateway, ifname, n.HardwareAddr, n.State, hostconv.VethMAC)
			}
			return nil
		}
	}
	return mismatch("no permanent neighbour %s on %s", Gateway, ifname)
}

func mismatch(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrMismatch)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a, bits), true
}
