package workload

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/control/ipam"
)

// rollbackTimeout bounds the undo of a failed Add, which runs even when ctx is already done.
const rollbackTimeout = 30 * time.Second

// Add gives the workload its network: an address from IPAM (the handle is the workload ID), a
// veth pair with the host side (HostVeth, MAC ee:ee:ee:ee:ee:ee, up) in the calling thread's
// namespace and the workload side (IfName) in spec.Netns holding the /32 with a default route via
// 169.254.1.1 and a permanent neighbour entry for it; on the host the /32 route (the kernel's
// default protocol, which the agent replaces with its own) and the veth's sysctls, so the workload
// is reachable before the agent's next pass; last the endpoint record in the datastore.
//
// Add is idempotent: repeating it for the same ID returns the same address and repairs what
// differs. When it fails it undoes everything it did (veth, route, address, record), so nothing
// is left behind. The calling goroutine must be in the host's network namespace.
func Add(ctx context.Context, ds *datastore.Client, ipm *ipam.IPAM, spec Spec) (_ Result, err error) {
	spec = spec.withDefaults()
	if err := spec.validate(); err != nil {
		return Result{}, fmt.Errorf("add workload %s: %w", spec.ID, err)
	}
	log := spec.logger()
	fail := func(err error) error { return fmt.Errorf("add workload %s: %w", spec.ID, err) }

	target, err := openNetns(spec.Netns)
	if err != nil {
		return Result{}, fail(err)
	}
	defer target.Close()
	if own, err := isOwnNetns(spec.Netns); err != nil || own {
		if err == nil {
			err = fmt.Errorf("%w: netns %s is the host's own namespace", ErrInvalidSpec, spec.Netns)
		}
		return Result{}, fail(err)
	}
	host, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Result{}, fail(fmt.Errorf("open netlink: %w", err))
	}
	defer host.Close()

	// A record of this ID means the workload exists already: this is a repeated ADD (or a new
	// sandbox of the same pod) and its address must survive a failure.
	// Read with the IPAM handle of the ID, in one round trip; Assign takes the handle as read.
	var (
		prev          datastore.Item[datastore.Workload]
		handle        datastore.Item[datastore.Handle]
		prevErr, hErr error
	)
	if _, err := ds.Fetch(ctx, ds.Workloads(spec.Node).GetRead(spec.ID, &prev, &prevErr), ds.Handles().GetRead(spec.ID, &handle, &hErr)); err != nil {
		return Result{}, fail(err)
	}
	existed := prevErr == nil
	if err := prevErr; err != nil && !errors.Is(err, datastore.ErrNotFound) && !errors.Is(err, datastore.ErrMalformed) {
		return Result{}, fail(err)
	}
	if existed && spec.Network != "" && prev.Value.Network != "" && prev.Value.Network != spec.Network {
		// One record per workload ID: attaching it for a second network would let that
		// network's DEL or GC remove the first one's.
		return Result{}, fail(fmt.Errorf("%w: workload %s on node %s is attached by network %q already, not %q",
			ErrInvalidSpec, spec.ID, spec.Node, prev.Value.Network, spec.Network))
	}
	if err := checkHandleOwner(spec, handle, hErr); err != nil {
		return Result{}, fail(err)
	}

	var undo []func(context.Context) error
	defer func() {
		if err == nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](rctx); uerr != nil {
				log.Error("roll back failed add", "err", uerr)
				err = errors.Join(err, fmt.Errorf("roll back: %w", uerr))
			}
		}
	}()

	// The handle may be half written when Assign fails, so the undo is registered first;
	// ReleaseHandle of nothing is a no-op. But a handle Assign refused (ErrHandleInUse) is
	// another workload's, taken since it was read above, and Assign wrote nothing: it is not
	// this ADD's to release.
	var assignErr error
	if !existed {
		undo = append(undo, func(ctx context.Context) error {
			if errors.Is(assignErr, ipam.ErrHandleInUse) {
				return nil
			}
			_, err := ipm.ReleaseHandle(ctx, spec.ID)
			return err
		})
	}
	// IPAM's round trips to etcd overlap the veth's netlink calls: only the addresses and the
	// host route need the address. Assign is always waited for, so that a rollback never races it.
	// It takes the handle as read above instead of reading it again; its writes still fail, and
	// it reads again, if another writer changed the handle since.
	type assigned struct {
		a   ipam.Assignment
		err error
	}
	assignment := make(chan assigned, 1)
	go func() {
		a, err := ipm.Assign(ctx, ipam.Request{Handle: spec.ID, Node: spec.Node, Workload: spec.workloadKey(),
			HandleRead: &ipam.HandleRead{Item: handle, Err: hErr}})
		assignment <- assigned{a, err}
	}()
	hostName := spec.HostVeth()
	hostLink, mac, mtu, created, linkErr := prepareVeth(host, target, spec, hostName)
	if created {
		undo = append(undo, func(context.Context) error { return deleteHostVeth(host, hostName) })
	}
	got := <-assignment
	assignErr = got.err
	if got.err != nil || linkErr != nil {
		return Result{}, fail(errors.Join(got.err, linkErr))
	}
	a := got.a
	ip := netip.PrefixFrom(a.IP, 32)

	err = target.Do(func(ns.NetNS) error { return addWorkloadAddress(spec.IfName, ip) })
	if err != nil {
		return Result{}, fail(fmt.Errorf("configure %s in %s: %w", spec.IfName, spec.Netns, err))
	}
	if err := routeHost(host, hostLink, ip, !created); err != nil {
		return Result{}, fail(err)
	}

	rec := spec.record(mac, ip)
	if !spec.Started.IsZero() {
		// Rounded to microseconds; a repeated ADD that changes nothing else keeps the first one.
		rec.AddDurationSeconds = max(time.Since(spec.Started).Round(time.Microsecond), time.Microsecond).Seconds()
	}
	if !existed || !sameRecord(prev.Value, rec) {
		if _, err := ds.Workloads(spec.Node).Put(ctx, spec.ID, rec); err != nil {
			return Result{}, fail(err)
		}
	}
	log.Info("added workload", "ip", ip, "veth", hostName, "netns", spec.Netns, "ifname", spec.IfName,
		"block", a.Block, "borrowed", a.Borrowed, "repeat", existed)
	return newResult(spec, rec, mac, ip, mtu), nil
}

// checkHandleOwner refuses an ID whose IPAM handle (h, as reading it returned with err) belongs to
// a workload on another node: Assign would hand that workload's address out a second time.
func checkHandleOwner(spec Spec, h datastore.Item[datastore.Handle], err error) error {
	if errors.Is(err, datastore.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if w := h.Value.Workload; (w != "" && w != spec.workloadKey()) || h.Value.Node != spec.Node {
		return fmt.Errorf("%w: id %s: its IPAM handle belongs to workload %s on node %s; choose another name",
			ErrInvalidSpec, spec.ID, h.Value.Workload, h.Value.Node)
	}
	return nil
}

// ensureVeth returns the host side of the workload's veth pair, creating the pair when the host
// side is missing or its peer is not spec.IfName in the workload namespace (a stale veth of an
// earlier sandbox, which is deleted). created reports a new pair, to be deleted on rollback.
func ensureVeth(host netlinksafe.Handle, target ns.NetNS, hostName, ifname string, mtu int) (_ netlink.Link, created bool, _ error) {
	cur, err := linkByName(host, hostName)
	if err != nil {
		return nil, false, err
	}
	if cur != nil {
		ok, err := peerOf(target, ifname, cur)
		if err != nil {
			return nil, false, err
		}
		if ok {
			return cur, false, nil
		}
		if err := deleteHostVeth(host, hostName); err != nil {
			return nil, false, fmt.Errorf("replace stale veth: %w", err)
		}
	}
	la := netlink.NewLinkAttrs()
	la.Name = hostName
	la.MTU = mtu
	la.HardwareAddr = hostconv.VethMAC
	veth := &netlink.Veth{
		LinkAttrs:     la,
		PeerName:      ifname,
		PeerNamespace: netlink.NsFd(int(target.Fd())),
		PeerMTU:       uint32(mtu),
		PeerTxQLen:    -1,
	}
	if err := host.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, false, fmt.Errorf("create veth %s/%s: %w: %s (or %s on the host)", hostName, ifname, ErrInterfaceExists, ifname, hostName)
		}
		return nil, false, fmt.Errorf("create veth %s/%s: %w", hostName, ifname, err)
	}
	l, err := host.LinkByName(hostName)
	if err != nil {
		return nil, true, fmt.Errorf("look up new veth %s: %w", hostName, err)
	}
	return l, true, nil
}

// prepareVeth does what needs no address: it picks the MTU (spec.MTU, else the default route's
// interface's), makes sure of the veth pair (ensureVeth) and configures both sides but for their
// addresses and the host route. created reports a new pair, to be deleted on rollback, also when
// a later step failed.
func prepareVeth(host netlinksafe.Handle, target ns.NetNS, spec Spec, hostName string) (_ netlink.Link, _ net.HardwareAddr, mtu int, created bool, _ error) {
	mtu = spec.MTU
	if mtu == 0 {
		var err error
		if mtu, err = defaultRouteMTU(host); err != nil {
			return nil, nil, 0, false, err
		}
		if mtu == 0 {
			mtu = DefaultMTU
		}
	}
	hostLink, created, err := ensureVeth(host, target, hostName, spec.IfName, mtu)
	if err != nil {
		return nil, nil, 0, created, err
	}
	var mac net.HardwareAddr
	err = target.Do(func(ns.NetNS) error {
		var err error
		mac, err = configureWorkload(spec.IfName, mtu)
		return err
	})
	if err != nil {
		return nil, nil, 0, created, fmt.Errorf("configure %s in %s: %w", spec.IfName, spec.Netns, err)
	}
	if err := configureHost(host, hostLink, mtu, !created); err != nil {
		return nil, nil, 0, created, err
	}
	return hostLink, mac, mtu, created, nil
}

// configureHost sets the host side up with its sysctls; for a reused veth it also fixes MAC and
// MTU.
func configureHost(host netlinksafe.Handle, l netlink.Link, mtu int, reused bool) error {
	a := l.Attrs()
	if reused {
		if a.HardwareAddr.String() != hostconv.VethMAC.String() {
			if err := host.LinkSetHardwareAddr(l, hostconv.VethMAC); err != nil {
				return fmt.Errorf("set MAC of %s: %w", a.Name, err)
			}
		}
		if a.MTU != mtu {
			if err := host.LinkSetMTU(l, mtu); err != nil {
				return fmt.Errorf("set MTU of %s: %w", a.Name, err)
			}
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := host.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", a.Name, err)
		}
	}
	for _, kv := range hostconv.VethSysctls(a.Name) {
		if _, err := hostconv.SetSysctl(hostconv.SysctlRoot, kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// routeHost routes the /32 to the host side; through a reused veth it also removes Margay routes
// to other addresses.
func routeHost(host netlinksafe.Handle, l netlink.Link, ip netip.Prefix, reused bool) error {
	a := l.Attrs()
	if err := host.RouteReplace(hostRoute(a.Index, ip)); err != nil {
		return fmt.Errorf("add route %s dev %s: %w", ip, a.Name, err)
	}
	if !reused {
		return nil
	}
	routes, err := ownRoutes(host, a.Index)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if p, ok := prefixOf(r.Dst); ok && p != ip {
			if err := host.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("delete stale route %s dev %s: %w", p, a.Name, err)
			}
		}
	}
	return nil
}

func sameRecord(a, b datastore.Workload) bool {
	return a.ID == b.ID && a.Name == b.Name && a.Namespace == b.Namespace && a.Node == b.Node && a.IfName == b.IfName &&
		a.ContainerID == b.ContainerID && a.Network == b.Network && a.Netns == b.Netns && a.MAC == b.MAC &&
		slices.Equal(a.IPv4, b.IPv4) && maps.Equal(a.Labels, b.Labels) && slices.Equal(a.Ports, b.Ports)
}
