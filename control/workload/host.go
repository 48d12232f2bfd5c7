package workload

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// HostSpec is a workload whose runtime moves the interface into the workload itself (Docker's
// libnetwork): AddHost makes the veth pair in the host namespace, the workload side under
// PeerName, and the runtime moves, renames and addresses it.
type HostSpec struct {
	ID          string // datastore name of the workload (Docker: the endpoint ID)
	Name        string // human name; default ID
	Node        string
	ContainerID string
	Network     string            // e.g. "docker:<network name>"
	PeerName    string            // the workload side's name in the host namespace
	IP          netip.Prefix      // the /32 the caller allocated
	MTU         int               // 0: the default route's interface's, else DefaultMTU
	Labels      map[string]string // policy labels
	Profiles    []string          // the profiles it takes labels and rules from
	Log         *slog.Logger
}

// AddHost gives the workload its host half: the veth pair in the calling thread's namespace
// (host side HostVethName(ID) as Add makes it: MAC ee:ee:ee:ee:ee:ee, up, sysctls, the /32
// route; the workload side PeerName, down, with the same MTU) and the endpoint record. It is
// idempotent: a repeated call reuses a pair whose peer is still PeerName beside it, or has been
// moved away by the runtime (the record then already names this address). When it fails it
// deletes a pair it created. The address is the caller's; AddHost neither takes nor frees it.
func AddHost(ctx context.Context, ds *datastore.Client, spec HostSpec) (_ Result, err error) {
	if spec.Name == "" {
		spec.Name = spec.ID
	}
	s := Spec{ID: spec.ID, Name: spec.Name, Node: spec.Node, ContainerID: spec.ContainerID, Network: spec.Network,
		IfName: spec.PeerName, MTU: spec.MTU, Labels: spec.Labels, Log: spec.Log}
	fail := func(err error) error { return fmt.Errorf("add workload %s: %w", spec.ID, err) }
	if err := s.validateKey(); err != nil {
		return Result{}, fail(err)
	}
	if err := validIfName(spec.PeerName); err != nil {
		return Result{}, fail(fmt.Errorf("%w: peer name: %w", ErrInvalidSpec, err))
	}
	if !spec.IP.IsValid() || !spec.IP.Addr().Is4() || spec.IP.Bits() != 32 {
		return Result{}, fail(fmt.Errorf("%w: ip %s: want an IPv4 /32", ErrInvalidSpec, spec.IP))
	}
	if spec.MTU != 0 && (spec.MTU < 68 || spec.MTU > 65535) {
		return Result{}, fail(fmt.Errorf("%w: mtu %d outside 68..65535", ErrInvalidSpec, spec.MTU))
	}
	rec := s.record(net.HardwareAddr{2, 0, 0, 0, 0, 1}, spec.IP)
	rec.Profiles = spec.Profiles
	if err := rec.Validate(); err != nil {
		return Result{}, fail(fmt.Errorf("%w: %w", ErrInvalidSpec, err))
	}
	log := s.logger()

	store := ds.Workloads(spec.Node)
	prev, prevErr := store.Get(ctx, spec.ID)
	existed := prevErr == nil
	if prevErr != nil && !errors.Is(prevErr, datastore.ErrNotFound) && !errors.Is(prevErr, datastore.ErrMalformed) {
		return Result{}, fail(prevErr)
	}
	if existed && prev.Value.Network != "" && spec.Network != "" && prev.Value.Network != spec.Network {
		return Result{}, fail(fmt.Errorf("%w: workload %s on node %s is attached by network %q already, not %q",
			ErrInvalidSpec, spec.ID, spec.Node, prev.Value.Network, spec.Network))
	}

	host, err := netlinksafe.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return Result{}, fail(fmt.Errorf("open netlink: %w", err))
	}
	defer host.Close()
	mtu := spec.MTU
	if mtu == 0 {
		if mtu, err = defaultRouteMTU(host); err != nil {
			return Result{}, fail(err)
		}
		if mtu == 0 {
			mtu = DefaultMTU
		}
	}
	hostName := s.HostVeth()
	// A moved peer is kept only when the record says this pair carries this address already.
	movedOK := existed && len(prev.Value.IPv4) == 1 && prev.Value.IPv4[0] == spec.IP && prev.Value.IfName == hostName
	hostLink, peerMAC, created, err := ensureHostPair(host, hostName, spec.PeerName, mtu, movedOK)
	if created {
		defer func() {
			if err != nil {
				if derr := deleteHostVeth(host, hostName); derr != nil {
					log.Error("roll back failed add", "err", derr)
					err = errors.Join(err, fmt.Errorf("roll back: %w", derr))
				}
			}
		}()
	}
	if err != nil {
		return Result{}, fail(err)
	}
	if peerMAC == nil && existed {
		peerMAC, _ = net.ParseMAC(prev.Value.MAC) // the peer is in the workload: keep the recorded MAC
	}
	if peerMAC == nil {
		return Result{}, fail(fmt.Errorf("%s's peer is gone and no record names its MAC", hostName))
	}
	if err := configureHost(host, hostLink, mtu, !created); err != nil {
		return Result{}, fail(err)
	}
	if err := routeHost(host, hostLink, spec.IP, !created); err != nil {
		return Result{}, fail(err)
	}
	rec = s.record(peerMAC, spec.IP)
	rec.Profiles = spec.Profiles
	if existed {
		rec.Netns = prev.Value.Netns // the runtime's join sets it
	}
	if !existed || !sameRecord(prev.Value, rec) || !slices.Equal(prev.Value.Profiles, rec.Profiles) {
		if _, err := store.Put(ctx, spec.ID, rec); err != nil {
			return Result{}, fail(err)
		}
	}
	log.Info("added workload (host half)", "ip", spec.IP, "veth", hostName, "peer", spec.PeerName, "repeat", existed)
	res := newResult(s, rec, peerMAC, spec.IP, mtu)
	res.Netns = rec.Netns
	return res, nil
}

// ensureHostPair returns the host side of a pair whose peer is peerName in the same namespace,
// creating it (created) when there is none or the existing one is stale. With movedOK, a host
// side whose peer is no longer in this namespace (the runtime moved it) is kept, and the peer's
// MAC returned is nil.
func ensureHostPair(host netlinksafe.Handle, hostName, peerName string, mtu int, movedOK bool) (_ netlink.Link, peerMAC net.HardwareAddr, created bool, _ error) {
	cur, err := linkByName(host, hostName)
	if err != nil {
		return nil, nil, false, err
	}
	if cur != nil {
		if _, isVeth := cur.(*netlink.Veth); isVeth {
			peer, err := linkByName(host, peerName)
			if err != nil {
				return nil, nil, false, err
			}
			if peer != nil && peer.Attrs().ParentIndex == cur.Attrs().Index && cur.Attrs().ParentIndex == peer.Attrs().Index {
				return cur, peer.Attrs().HardwareAddr, false, nil
			}
			if peer == nil && movedOK {
				return cur, nil, false, nil
			}
		}
		if err := deleteHostVeth(host, hostName); err != nil {
			return nil, nil, false, fmt.Errorf("replace stale veth: %w", err)
		}
	}
	la := netlink.NewLinkAttrs()
	la.Name = hostName
	la.MTU = mtu
	la.HardwareAddr = hostconv.VethMAC
	veth := &netlink.Veth{LinkAttrs: la, PeerName: peerName, PeerMTU: uint32(mtu), PeerTxQLen: -1}
	if err := host.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, nil, false, fmt.Errorf("create veth %s/%s: %w: %s or %s exists on the host", hostName, peerName, ErrInterfaceExists, peerName, hostName)
		}
		return nil, nil, false, fmt.Errorf("create veth %s/%s: %w", hostName, peerName, err)
	}
	l, err := host.LinkByName(hostName)
	if err != nil {
		return nil, nil, true, fmt.Errorf("look up new veth %s: %w", hostName, err)
	}
	p, err := host.LinkByName(peerName)
	if err != nil {
		return nil, nil, true, fmt.Errorf("look up new veth %s: %w", peerName, err)
	}
	return l, p.Attrs().HardwareAddr, true, nil
}

// ErrNoInterface: SetGatewayNeighbour found no interface of the MAC in the namespace.
var ErrNoInterface = errors.New("no interface of that MAC in the workload namespace")

// SetGatewayNeighbour writes, in the namespace at netnsPath, the permanent neighbour entry of
// 169.254.1.1 (lladdr ee:ee:ee:ee:ee:ee) on the interface whose MAC is mac: what Add writes, for a
// workload whose runtime moved the interface in itself (a neighbour entry does not survive the
// move).
func SetGatewayNeighbour(netnsPath string, mac net.HardwareAddr) error {
	target, err := openNetns(netnsPath)
	if err != nil {
		return err
	}
	defer target.Close()
	return target.Do(func(ns.NetNS) error {
		links, err := netlinksafe.LinkList()
		if err != nil {
			return fmt.Errorf("list interfaces in %s: %w", netnsPath, err)
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() != mac.String() {
				continue
			}
			if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				IP: Gateway.AsSlice(), HardwareAddr: hostconv.VethMAC}); err != nil {
				return fmt.Errorf("add neighbour %s lladdr %s dev %s: %w", Gateway, hostconv.VethMAC, l.Attrs().Name, err)
			}
			return nil
		}
		return fmt.Errorf("%w: %s in %s", ErrNoInterface, mac, netnsPath)
	})
}
