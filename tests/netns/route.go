package netns

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteDev adds `<cidr> dev <ifname> scope link`: a destination reached without a gateway, as
// Calico routes a workload's /32 to its cali* veth.
func (n *NS) RouteDev(tb testing.TB, cidr, ifname string) {
	tb.Helper()
	n.addRoute(tb, &netlink.Route{
		LinkIndex: n.Link(tb, ifname).Attrs().Index,
		Dst:       parseCIDR(tb, cidr),
		Scope:     netlink.SCOPE_LINK,
	})
}

// RouteVia adds `<cidr> via <gw> dev <ifname>`; cidr "default" stands for 0.0.0.0/0.
func (n *NS) RouteVia(tb testing.TB, cidr, gw, ifname string) {
	tb.Helper()
	if cidr == "default" {
		cidr = "0.0.0.0/0"
	}
	n.addRoute(tb, &netlink.Route{
		LinkIndex: n.Link(tb, ifname).Attrs().Index,
		Dst:       parseCIDR(tb, cidr),
		Gw:        parseIP(tb, gw),
	})
}

// Blackhole adds `blackhole <cidr>`, as a Calico host keeps for the blocks it owns.
func (n *NS) Blackhole(tb testing.TB, cidr string) {
	tb.Helper()
	n.addRoute(tb, &netlink.Route{Dst: parseCIDR(tb, cidr), Type: unix.RTN_BLACKHOLE})
}

func (n *NS) addRoute(tb testing.TB, r *netlink.Route) {
	tb.Helper()
	if err := n.nl.RouteAdd(r); err != nil {
		tb.Fatalf("add route %s in %s: %v", r, n.Name, err)
	}
}

// PermanentNeigh adds `<ip> lladdr <mac> dev <ifname> nud permanent`: an entry that never needs
// ARP, as the CNI plugin writes for 169.254.1.1 inside a workload.
func (n *NS) PermanentNeigh(tb testing.TB, ifname, ip, mac string) {
	tb.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		tb.Fatal(err)
	}
	neigh := &netlink.Neigh{
		LinkIndex:    n.Link(tb, ifname).Attrs().Index,
		Family:       netlink.FAMILY_V4,
		State:        netlink.NUD_PERMANENT,
		IP:           parseIP(tb, ip),
		HardwareAddr: hw,
	}
	if err := n.nl.NeighAdd(neigh); err != nil {
		tb.Fatalf("add neighbour %s on %s in %s: %v", ip, ifname, n.Name, err)
	}
}

// DelAddr removes an address in CIDR form from an interface.
func (n *NS) DelAddr(tb testing.TB, ifname, cidr string) {
	tb.Helper()
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		tb.Fatal(err)
	}
	if err := n.nl.AddrDel(n.Link(tb, ifname), addr); err != nil {
		tb.Fatalf("delete %s from %s: %v", cidr, ifname, err)
	}
}

func parseCIDR(tb testing.TB, cidr string) *net.IPNet {
	tb.Helper()
	_, ipnet, err := net.ParseCIDR(cidr)
	if err != nil {
		tb.Fatal(err)
	}
	return ipnet
}

func parseIP(tb testing.TB, s string) net.IP {
	tb.Helper()
	ip := net.ParseIP(s)
	if ip == nil {
		tb.Fatalf("parse IP %q", s)
	}
	return ip
}
