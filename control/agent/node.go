package agent

// The node: which interface is the uplink, and the node's record in the datastore.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/datastore"
)

// detectUplink returns the uplink and its IPv4 address/prefix: the named interface, or the one
// the default route leaves through.
func detectUplink(nl *netlink.Handle, name string) (string, netip.Prefix, error) {
	var link netlink.Link
	var err error
	if name != "" {
		link, err = nl.LinkByName(name)
		if err != nil {
			return "", netip.Prefix{}, fmt.Errorf("find uplink %s: %w", name, err)
		}
	} else {
		routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: nil, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_TABLE)
		if err != nil {
			return "", netip.Prefix{}, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				if link, err = nl.LinkByIndex(r.LinkIndex); err == nil {
					break
				}
			}
		}
		if link == nil {
			return "", netip.Prefix{}, errors.New("find uplink: no default route; name one with --uplink")
		}
	}
	addrs, err := nl.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return "", netip.Prefix{}, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, a := range addrs {
		if a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		return link.Attrs().Name, netip.PrefixFrom(ip, bits), nil
	}
	return "", netip.Prefix{}, fmt.Errorf("uplink %s has no global IPv4 address", link.Attrs().Name)
}

// register writes this node's record, keeping what operators set on it (labels, AS, reflector).
func (a *Agent) register(ctx context.Context, uplink string, addr netip.Prefix) error {
	written := false
	err := datastore.Retry(ctx, func() error {
		cur, err := a.ds.Nodes().Get(ctx, a.cfg.NodeName)
		n := datastore.Node{Version: datastore.CurrentVersion, Name: a.cfg.NodeName}
		if err == nil {
			n = cur.Value
		} else if !errors.Is(err, datastore.ErrNotFound) {
			return err
		}
		if err == nil && n.AddressV4 == addr && n.Uplink == uplink {
			return nil
		}
		n.AddressV4, n.Uplink = addr, uplink
		if err == nil {
			_, err = a.ds.Nodes().Update(ctx, a.cfg.NodeName, n, cur.ModRevision)
		} else if _, err = a.ds.Nodes().Create(ctx, a.cfg.NodeName, n); errors.Is(err, datastore.ErrExists) {
			return datastore.ErrConflict // created meanwhile: read it
		}
		written = err == nil
		return err
	})
	if err != nil {
		return fmt.Errorf("agent: register node %s: %w", a.cfg.NodeName, err)
	}
	if written {
		a.log.Info("registered node", "node", a.cfg.NodeName, "address", addr, "uplink", uplink)
	}
	return nil
}
