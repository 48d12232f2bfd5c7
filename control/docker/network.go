package docker

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/workload"
)

// TempVethName is the container side's name in the host namespace between CreateEndpoint and
// Join, when dockerd moves it into the container and renames it: "tmp" and 11 hex digits of the
// same hash as the host side's (workload.HostVethName), 14 bytes.
func TempVethName(endpointID string) string {
	sum := sha1.Sum([]byte(endpointID))
	return "tmp" + hex.EncodeToString(sum[:])[:11]
}

func checkNetworkID(id string) error {
	if id == "" {
		return badf("no NetworkID")
	}
	return nil
}

func checkEndpoint(nid, eid string) error {
	if err := checkNetworkID(nid); err != nil {
		return err
	}
	if eid == "" {
		return badf("no EndpointID")
	}
	if err := datastore.ValidateName(eid); err != nil {
		return badf("EndpointID: %v", err)
	}
	return nil
}

// createNetwork checks that the network's addresses are margay-ipam's; it writes nothing (the
// profile is written at the first CreateEndpoint, when the network's name can be asked of dockerd).
func (s *Server) createNetwork(_ context.Context, req createNetworkRequest) (struct{}, error) {
	if err := checkNetworkID(req.NetworkID); err != nil {
		return struct{}{}, err
	}
	if len(req.IPv6Data) > 0 {
		return struct{}{}, badf("IPv6 is not supported: create the network without --ipv6")
	}
	if len(req.IPv4Data) == 0 {
		return struct{}{}, badf("no IPv4 pool: create the network with --ipam-driver margay-ipam")
	}
	for _, d := range req.IPv4Data {
		if err := checkAddressSpace(d.AddressSpace); err != nil {
			return struct{}{}, fmt.Errorf("%w: create the network with --ipam-driver margay-ipam", err)
		}
		if _, err := netip.ParsePrefix(d.Pool); err != nil {
			return struct{}{}, badf("pool %q: %v", d.Pool, err)
		}
		if d.Gateway != "" && d.Gateway != gatewayNet.String() {
			return struct{}{}, badf("gateway %s: Margay's workloads route via %s; create the network without --gateway", d.Gateway, workload.Gateway)
		}
		if len(d.AuxAddresses) > 0 {
			return struct{}{}, badf("--aux-address is not supported")
		}
	}
	s.log.Info("docker network created", "network", req.NetworkID)
	return struct{}{}, nil
}

// deleteNetwork removes nothing: the network's profile is shared with the same-named networks of
// the other hosts (docs/docker.md).
func (s *Server) deleteNetwork(_ context.Context, req networkRequest) (struct{}, error) {
	if err := checkNetworkID(req.NetworkID); err != nil {
		return struct{}{}, err
	}
	s.log.Info("docker network deleted", "network", req.NetworkID)
	return struct{}{}, nil
}

func (s *Server) swarmOnly(_ context.Context, _ networkRequest) (struct{}, error) {
	return struct{}{}, badf("swarm networks are not supported: margay is a local-scope driver")
}

// createEndpoint is the host half of workload.Add; see docs/docker.md.
func (s *Server) createEndpoint(_ context.Context, req createEndpointRequest) (struct{}, error) {
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return struct{}{}, err
	}
	if req.Interface == nil || req.Interface.Address == "" {
		return struct{}{}, badf("no Interface.Address: create the network with --ipam-driver margay-ipam")
	}
	if req.Interface.AddressIPv6 != "" {
		return struct{}{}, badf("IPv6 is not supported")
	}
	if _, err := parseAddress(req.Interface.Address); err != nil {
		return struct{}{}, err
	}
	// TODO(issue 21): workload.AddHost (veth in the host namespace, peer TempVethName), the
	// profile of the network's name, the endpoint record with the docker-… handle.
	return struct{}{}, errors.New("creating endpoints is not implemented yet (issue 21)")
}

// endpoint returns the endpoint's record, or an error naming it when there is none.
func (s *Server) endpoint(ctx context.Context, eid string) (datastore.Workload, error) {
	it, err := s.ds.Workloads(s.node).Get(ctx, eid)
	if errors.Is(err, datastore.ErrNotFound) {
		return datastore.Workload{}, fmt.Errorf("endpoint %s not found on node %s", eid, s.node)
	}
	if err != nil {
		return datastore.Workload{}, err
	}
	return it.Value, nil
}

func (s *Server) endpointOperInfo(ctx context.Context, req endpointRequest) (operInfoResponse, error) {
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return operInfoResponse{}, err
	}
	if _, err := s.endpoint(ctx, req.EndpointID); err != nil {
		return operInfoResponse{}, err
	}
	return operInfoResponse{Value: map[string]any{}}, nil
}

// deleteEndpoint removes the endpoint's veth and record (workload.Del); its address is
// ReleaseAddress's. An endpoint that does not exist is deleted already.
func (s *Server) deleteEndpoint(ctx context.Context, req endpointRequest) (struct{}, error) {
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return struct{}{}, err
	}
	err := s.do(func() error {
		return workload.Del(ctx, s.ds, s.ipam, workload.Spec{ID: req.EndpointID, Node: s.node, Log: s.log})
	})
	return struct{}{}, err
}

// join answers where the container's interface is and how it routes: dockerd moves TempVethName
// into the sandbox, names it eth<n>, gives it its address, the connected route to 169.254.1.1 and
// the default route via it.
func (s *Server) join(ctx context.Context, req joinRequest) (joinResponse, error) {
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return joinResponse{}, err
	}
	if req.SandboxKey == "" {
		return joinResponse{}, badf("no SandboxKey")
	}
	if _, err := s.endpoint(ctx, req.EndpointID); err != nil {
		return joinResponse{}, err
	}
	return joinResponse{
		InterfaceName:         interfaceName{SrcName: TempVethName(req.EndpointID), DstPrefix: "eth"},
		Gateway:               workload.Gateway.String(),
		StaticRoutes:          []staticRoute{{Destination: gatewayNet.String(), RouteType: routeConnected}},
		DisableGatewayService: true,
	}, nil
}

func (s *Server) leave(ctx context.Context, req endpointRequest) (struct{}, error) {
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return struct{}{}, err
	}
	_, err := s.endpoint(ctx, req.EndpointID)
	return struct{}{}, err
}

func (s *Server) discover(_ context.Context, _ discoveryRequest) (struct{}, error) {
	return struct{}{}, nil
}

// programExternal is where the container's permanent neighbour entry for 169.254.1.1 is to be
// written (its interface is in the sandbox by then); TODO(issue 21).
func (s *Server) programExternal(ctx context.Context, req endpointRequest) (struct{}, error) {
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return struct{}{}, err
	}
	_, err := s.endpoint(ctx, req.EndpointID)
	return struct{}{}, err
}

func (s *Server) revokeExternal(_ context.Context, req endpointRequest) (struct{}, error) {
	return struct{}{}, checkEndpoint(req.NetworkID, req.EndpointID)
}
