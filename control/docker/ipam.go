package docker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
)

// The address spaces the IPAM driver answers; both mean "Margay's pools".
const (
	LocalAddressSpace  = "MargayLocal"
	GlobalAddressSpace = "MargayGlobal"
)

// Pool IDs: poolAny for a network without --subnet (addresses from any enabled pool), else
// poolPrefix + the subnet, so the ID carries all the plugin needs and it keeps no state.
const (
	poolAny    = "margay-any"
	poolPrefix = "margay-"
)

// HandlePrefix starts the IPAM handle of every address RequestAddress allocates.
const HandlePrefix = "docker-"

// gatewayOption is RequestAddress's option naming a gateway request, and RequestPool's answer
// key giving the gateway.
const gatewayOption = "com.docker.network.gateway"

var (
	anyNet     = netip.MustParsePrefix("0.0.0.0/0")
	gatewayNet = netip.PrefixFrom(workload.Gateway, 32)
)

// poolRef is a decoded pool ID: any pool, or a subnet inside one.
type poolRef struct {
	any    bool
	subnet netip.Prefix
}

func (p poolRef) id() string {
	if p.any {
		return poolAny
	}
	return poolPrefix + p.subnet.String()
}

func (p poolRef) cidr() netip.Prefix {
	if p.any {
		return anyNet
	}
	return p.subnet
}

func parsePoolID(id string) (poolRef, error) {
	if id == poolAny {
		return poolRef{any: true}, nil
	}
	s, ok := strings.CutPrefix(id, poolPrefix)
	if ok {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() && p.Masked() == p {
			return poolRef{subnet: p}, nil
		}
	}
	return poolRef{}, badf("pool ID %q is not one of margay-ipam's (is the network's IPAM driver margay-ipam?)", id)
}

func checkAddressSpace(as string) error {
	switch as {
	case LocalAddressSpace, GlobalAddressSpace:
		return nil
	}
	return badf("address space %q is not margay-ipam's (%s or %s)", as, LocalAddressSpace, GlobalAddressSpace)
}

// requestPool answers a network's pool: without --subnet every enabled Margay pool, else the
// subnet, which must lie inside an enabled Margay pool. Only IPv4; no --ip-range.
func (s *Server) requestPool(ctx context.Context, req requestPoolRequest) (requestPoolResponse, error) {
	if req.V6 {
		return requestPoolResponse{}, badf("IPv6 is not supported: create the network without --ipv6")
	}
	if err := checkAddressSpace(req.AddressSpace); err != nil {
		return requestPoolResponse{}, err
	}
	if req.SubPool != "" {
		return requestPoolResponse{}, badf("--ip-range is not supported: give --subnet (inside a Margay pool) only")
	}
	ref := poolRef{any: true}
	if req.Pool != "" {
		p, err := netip.ParsePrefix(req.Pool)
		if err != nil || !p.Addr().Is4() {
			return requestPoolResponse{}, badf("subnet %q: want an IPv4 CIDR", req.Pool)
		}
		if p.Masked() != p {
			return requestPoolResponse{}, badf("subnet %s has host bits set (%s)", p, p.Masked())
		}
		if err := s.insidePool(ctx, p); err != nil {
			return requestPoolResponse{}, err
		}
		ref = poolRef{subnet: p}
	}
	return requestPoolResponse{
		PoolID: ref.id(),
		Pool:   ref.cidr().String(),
		Data:   map[string]string{gatewayOption: gatewayNet.String()},
	}, nil
}

// insidePool checks that subnet lies inside an enabled pool.
func (s *Server) insidePool(ctx context.Context, subnet netip.Prefix) error {
	items, _, err := s.ds.Pools().List(ctx)
	if err != nil {
		return err
	}
	var names []string
	for _, it := range items {
		p := it.Value
		names = append(names, p.CIDR.String())
		if p.CIDR.Bits() <= subnet.Bits() && p.CIDR.Contains(subnet.Addr()) {
			if p.Disabled {
				return badf("subnet %s is inside pool %s (%s), which is disabled", subnet, p.Name, p.CIDR)
			}
			return nil
		}
	}
	slices.Sort(names)
	if len(names) == 0 {
		return badf("subnet %s: there is no Margay IP pool", subnet)
	}
	return badf("subnet %s is not inside a Margay IP pool (pools: %s)", subnet, strings.Join(names, ", "))
}

func (s *Server) releasePool(_ context.Context, req releasePoolRequest) (struct{}, error) {
	_, err := parsePoolID(req.PoolID)
	return struct{}{}, err
}

// requestAddress allocates a container's address under a new handle docker-<random>, which
// CreateEndpoint finds by the address and ReleaseAddress frees. A gateway request is answered
// 169.254.1.1 without allocating.
func (s *Server) requestAddress(ctx context.Context, req requestAddressRequest) (requestAddressResponse, error) {
	ref, err := parsePoolID(req.PoolID)
	if err != nil {
		return requestAddressResponse{}, err
	}
	if req.Options[requestAddressType] == gatewayOption {
		return requestAddressResponse{Address: gatewayNet.String()}, nil
	}
	var within netip.Prefix // the zero Prefix: any address of the pools
	if !ref.any {
		within = ref.subnet
	}
	if req.Address != "" {
		ip, err := parseAddress(req.Address)
		if err != nil {
			return requestAddressResponse{}, err
		}
		if !ref.cidr().Contains(ip) {
			return requestAddressResponse{}, badf("address %s is outside the network's subnet %s", ip, ref.cidr())
		}
		within = netip.PrefixFrom(ip, 32)
	}
	handle, err := newHandle()
	if err != nil {
		return requestAddressResponse{}, err
	}
	// No workload key: IPAM's garbage collection frees the handles whose workload record is
	// gone, and this one's record does not exist until CreateEndpoint, which is to key the
	// handle to it (docs/docker.md). Until then only ReleaseAddress frees it.
	a, err := s.ipam.Assign(ctx, ipam.Request{Handle: handle, Node: s.node, Within: within})
	switch {
	case errors.Is(err, ipam.ErrPoolExhausted) && req.Address != "":
		return requestAddressResponse{}, fmt.Errorf("address %s is in use, or in no enabled Margay pool: %w", req.Address, err)
	case errors.Is(err, ipam.ErrPoolExhausted) && within.IsValid():
		return requestAddressResponse{}, fmt.Errorf("no free address in the network's subnet %s: %w", within, err)
	case errors.Is(err, ipam.ErrPoolExhausted):
		return requestAddressResponse{}, fmt.Errorf("no free address in the Margay pools: %w", err)
	case err != nil:
		return requestAddressResponse{}, err
	}
	s.log.Info("docker address assigned", "ip", a.IP, "handle", handle, "block", a.Block, "borrowed", a.Borrowed)
	return requestAddressResponse{Address: netip.PrefixFrom(a.IP, 32).String()}, nil
}

// requestAddressType is the RequestAddress option saying what the address is for.
const requestAddressType = "RequestAddressType"

// releaseAddress frees the address's docker-… handle. An address that is free already is not an
// error (dockerd repeats releases after a crash); one held by a CNI workload, or by a container of
// another node, is refused; one whose endpoint still exists has the endpoint deleted first
// (deleteUndeleted).
func (s *Server) releaseAddress(ctx context.Context, req releaseAddressRequest) (struct{}, error) {
	ref, err := parsePoolID(req.PoolID)
	if err != nil {
		return struct{}{}, err
	}
	ip, err := parseAddress(req.Address)
	if err != nil {
		return struct{}{}, err
	}
	if ip == workload.Gateway {
		return struct{}{}, nil
	}
	if !ref.cidr().Contains(ip) {
		return struct{}{}, badf("address %s is outside the network's subnet %s", ip, ref.cidr())
	}
	loc, err := s.ipam.Locate(ctx, ip)
	if err != nil {
		return struct{}{}, err
	}
	if loc.Handle == "" {
		s.log.Info("docker address already free", "ip", ip)
		return struct{}{}, nil
	}
	if !strings.HasPrefix(loc.Handle, HandlePrefix) {
		return struct{}{}, fmt.Errorf("address %s belongs to %s, not to a Docker container; left alone", ip, loc.Handle)
	}
	h, err := s.ds.Handles().Get(ctx, loc.Handle)
	if err != nil && !errors.Is(err, datastore.ErrNotFound) {
		return struct{}{}, err
	}
	if err == nil && h.Value.Node != s.node {
		return struct{}{}, fmt.Errorf("address %s is held by a container of node %s, not %s; left alone", ip, h.Value.Node, s.node)
	}
	if eid, keyed := strings.CutPrefix(h.Value.Workload, s.node+"/"); err == nil && keyed {
		if _, rerr := s.ds.Workloads(s.node).Get(ctx, eid); rerr == nil {
			if err := s.deleteUndeleted(ctx, ip, eid); err != nil {
				return struct{}{}, err
			}
		} else if !errors.Is(rerr, datastore.ErrNotFound) && !errors.Is(rerr, datastore.ErrMalformed) {
			return struct{}{}, rerr
		}
	}
	freed, err := s.ipam.ReleaseHandle(ctx, loc.Handle)
	if err != nil {
		return struct{}{}, err
	}
	s.log.Info("docker address released", "ip", ip, "handle", loc.Handle, "freed", ipam.AddrList(freed))
	return struct{}{}, nil
}

// deleteUndeleted deletes the endpoint eid whose record still claims the address ip that dockerd
// releases: freeing the address first would hand it out twice. dockerd releases an address only
// for an endpoint it deletes, and normally calls DeleteEndpoint first; but its clean-up of stale
// sandboxes when it starts (after a crash, say) deletes their endpoints by force, and does not
// call a network driver it has not loaded yet, which the plugin's is then (the IPAM driver it
// does load): the endpoint's record, veth and address would stay until the agent's orphan
// collection, minutes later.
func (s *Server) deleteUndeleted(ctx context.Context, ip netip.Addr, eid string) error {
	s.log.Warn("address released of an endpoint dockerd did not delete through the plugin (its clean-up of stale sandboxes); deleting the endpoint",
		"ip", ip, "endpoint", eid)
	if err := s.removeEndpoint(ctx, eid); err != nil {
		return fmt.Errorf("address %s is still used by endpoint %s, which could not be deleted: %w", ip, eid, err)
	}
	return nil
}

// parseAddress takes an address as dockerd gives it: bare, or with a prefix length.
func parseAddress(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, badf("no address")
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		p, perr := netip.ParsePrefix(s)
		if perr != nil {
			return netip.Addr{}, badf("address %q: want an IPv4 address", s)
		}
		ip = p.Addr()
	}
	if !ip.Is4() {
		return netip.Addr{}, badf("address %s: want an IPv4 address", ip)
	}
	return ip, nil
}

func newHandle() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("new IPAM handle: %w", err)
	}
	return HandlePrefix + hex.EncodeToString(b), nil
}
