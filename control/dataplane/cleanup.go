package dataplane

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/hostconv"
)

// RemoveRoutes deletes every IPv4 route of Margay's protocol (proto margay) from the main table
// of the calling thread's network namespace: the workloads' /32s, the blocks' blackholes and the
// remote blocks an agent leaves in place when it stops, so that forwarding goes on until the next
// one. margay-agent --cleanup removes them with the programs and pins. It returns how many it
// removed.
func RemoveRoutes() (int, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: hostconv.RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	var errs []error
	n := 0
	for _, r := range routes {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
