package docker

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/workload"
)

// ContainerIfPrefix is Join's DstPrefix: dockerd names the container's interface cali0, as
// Calico's Docker plugin did (the walkthrough's `docker exec … ip a` shows cali0); CNI pods keep
// the runtime's eth0.
const ContainerIfPrefix = "cali"

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

// deleteNetwork removes the network's record (its name), not its profile: that is shared with the
// same-named networks of the other hosts (docs/docker.md).
func (s *Server) deleteNetwork(ctx context.Context, req networkRequest) (struct{}, error) {
	if err := checkNetworkID(req.NetworkID); err != nil {
		return struct{}{}, err
	}
	if err := s.forgetNetwork(ctx, req.NetworkID); err != nil {
		return struct{}{}, err
	}
	s.log.Info("docker network deleted", "network", req.NetworkID)
	return struct{}{}, nil
}

func (s *Server) swarmOnly(_ context.Context, _ networkRequest) (struct{}, error) {
	return struct{}{}, badf("swarm networks are not supported: margay is a local-scope driver")
}

// NetworkPrefix starts the Network field of the records of Docker endpoints: "docker:<name>".
const NetworkPrefix = "docker:"

// createEndpoint makes the endpoint a workload: the address must be one RequestAddress gave out
// on this node; the network's profile is ensured (and its name recorded, networkNameOf); workload.AddHost makes the veth pair in the host
// namespace (container side TempVethName) and the record, with the network's profile; last the
// address's handle is keyed to the record, so IPAM's garbage collection frees it with the record.
func (s *Server) createEndpoint(ctx context.Context, req createEndpointRequest) (createEndpointResponse, error) {
	var none createEndpointResponse
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return none, err
	}
	if req.Interface == nil || req.Interface.Address == "" {
		return none, badf("no Interface.Address: create the network with --ipam-driver margay-ipam")
	}
	if req.Interface.AddressIPv6 != "" {
		return none, badf("IPv6 is not supported")
	}
	if req.Interface.MacAddress != "" {
		return none, badf("--mac-address is not supported: the kernel chooses the container's MAC")
	}
	ip, err := parseAddress(req.Interface.Address)
	if err != nil {
		return none, err
	}
	loc, err := s.ipam.Locate(ctx, ip)
	if err != nil {
		return none, err
	}
	if !strings.HasPrefix(loc.Handle, HandlePrefix) {
		return none, fmt.Errorf("address %s was not given out by margay-ipam (holder %q)", ip, loc.Handle)
	}
	h, err := s.ds.Handles().Get(ctx, loc.Handle)
	if err != nil {
		return none, fmt.Errorf("address %s: %w", ip, err)
	}
	key := s.node + "/" + req.EndpointID
	if h.Value.Node != s.node || (h.Value.Workload != "" && h.Value.Workload != key) {
		return none, fmt.Errorf("address %s belongs to %q on node %s, not to endpoint %s here", ip, h.Value.Workload, h.Value.Node, req.EndpointID)
	}
	name, recorded, err := s.networkNameOf(ctx, req.NetworkID)
	if err != nil {
		return none, fmt.Errorf("network %s: %w", req.NetworkID, err)
	}
	if err := s.ensureProfile(ctx, name); err != nil {
		return none, err
	}
	if !recorded {
		s.recordNetworkName(ctx, req.NetworkID, name)
	}
	spec := workload.HostSpec{ID: req.EndpointID, Node: s.node, Network: NetworkPrefix + name, PeerName: TempVethName(req.EndpointID),
		IP: netip.PrefixFrom(ip, 32), Profiles: []string{name}, Log: s.log}
	if err := s.do(func() error {
		_, err := workload.AddHost(ctx, s.ds, spec)
		return err
	}); err != nil {
		return none, err
	}
	// Again, now that the record names the profile: another host's DeleteEndpoint may have
	// collected it in between (collectProfile).
	if err := s.ensureProfile(ctx, name); err != nil {
		s.log.Warn("ensure the network's profile after the endpoint's record", "profile", name, "err", err)
	}
	if h.Value.Workload == "" {
		h.Value.Workload = key
		if _, err := s.ds.Handles().Update(ctx, h.Name, h.Value, h.ModRevision); err != nil {
			err = fmt.Errorf("key address %s's handle to the endpoint: %w", ip, err)
			// dockerd does not delete an endpoint whose creation failed: undo the workload.
			if derr := s.do(func() error {
				return workload.Del(context.WithoutCancel(ctx), s.ds, s.ipam, workload.Spec{ID: req.EndpointID, Node: s.node, Log: s.log})
			}); derr != nil {
				err = errors.Join(err, fmt.Errorf("roll back: %w", derr))
			}
			return none, err
		}
	}
	return none, nil
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

// deleteEndpoint removes the endpoint (removeEndpoint); its address is ReleaseAddress's. An
// endpoint that does not exist is deleted already.
func (s *Server) deleteEndpoint(ctx context.Context, req endpointRequest) (struct{}, error) {
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return struct{}{}, err
	}
	return struct{}{}, s.removeEndpoint(ctx, req.EndpointID)
}

// removeEndpoint removes the endpoint's veth and record (workload.Del), then its network's
// profile if no member is left (collectProfile).
func (s *Server) removeEndpoint(ctx context.Context, eid string) error {
	var profiles []string
	if it, err := s.ds.Workloads(s.node).Get(ctx, eid); err == nil && strings.HasPrefix(it.Value.Network, NetworkPrefix) {
		profiles = it.Value.Profiles
	}
	if err := s.do(func() error {
		return workload.Del(ctx, s.ds, s.ipam, workload.Spec{ID: eid, Node: s.node, Log: s.log})
	}); err != nil {
		return err
	}
	for _, p := range profiles {
		if err := s.collectProfile(ctx, p); err != nil {
			s.log.Warn("collect the network's profile", "profile", p, "err", err)
		}
	}
	return nil
}

// join answers where the container's interface is and how it routes: dockerd moves TempVethName
// into the sandbox, names it cali<n>, gives it its address, the connected route to 169.254.1.1 and
// the default route via it.
func (s *Server) join(ctx context.Context, req joinRequest) (joinResponse, error) {
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return joinResponse{}, err
	}
	if req.SandboxKey == "" {
		return joinResponse{}, badf("no SandboxKey")
	}
	if err := s.setNetns(ctx, req.EndpointID, req.SandboxKey); err != nil {
		return joinResponse{}, err
	}
	return joinResponse{
		InterfaceName:         interfaceName{SrcName: TempVethName(req.EndpointID), DstPrefix: ContainerIfPrefix},
		Gateway:               workload.Gateway.String(),
		StaticRoutes:          []staticRoute{{Destination: gatewayNet.String(), RouteType: routeConnected}},
		DisableGatewayService: true,
	}, nil
}

// leave forgets the sandbox; dockerd takes the interface out of it (or it goes with it).
func (s *Server) leave(ctx context.Context, req endpointRequest) (struct{}, error) {
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return struct{}{}, err
	}
	return struct{}{}, s.setNetns(ctx, req.EndpointID, "")
}

// setNetns records the endpoint's sandbox (its network namespace's path) in its record.
func (s *Server) setNetns(ctx context.Context, eid, netns string) error {
	store := s.ds.Workloads(s.node)
	return datastore.Retry(ctx, func() error {
		it, err := store.Get(ctx, eid)
		if errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("endpoint %s not found on node %s", eid, s.node)
		}
		if err != nil || it.Value.Netns == netns {
			return err
		}
		it.Value.Netns = netns
		_, err = store.Update(ctx, eid, it.Value, it.ModRevision)
		return err
	})
}

func (s *Server) discover(_ context.Context, _ discoveryRequest) (struct{}, error) {
	return struct{}{}, nil
}

// neighbourWait bounds how long the background retry of programExternal waits for the
// container's namespace and interface.
const neighbourWait = 30 * time.Second

// programExternal writes the container's permanent neighbour entry for 169.254.1.1, as
// workload.Add does for a CNI pod (a neighbour entry does not survive the interface's move into
// the container, so dockerd's move loses any written before). dockerd 20.10 calls it right after
// Join, before the container's namespace exists (the runtime makes it when the container starts,
// and dockerd moves the interface in then): when the namespace or the interface is not there yet,
// a background retry writes the entry once they are, for up to neighbourWait. Until then, and if
// that fails, proxy ARP on the host side answers for the gateway.
func (s *Server) programExternal(ctx context.Context, req endpointRequest) (struct{}, error) {
	if err := checkEndpoint(req.NetworkID, req.EndpointID); err != nil {
		return struct{}{}, err
	}
	w, err := s.endpoint(ctx, req.EndpointID)
	if err != nil {
		return struct{}{}, err
	}
	if w.Netns == "" {
		return struct{}{}, fmt.Errorf("endpoint %s has not joined a sandbox", req.EndpointID)
	}
	mac, err := net.ParseMAC(w.MAC)
	if err != nil {
		return struct{}{}, fmt.Errorf("endpoint %s: MAC %q: %w", req.EndpointID, w.MAC, err)
	}
	err = workload.SetGatewayNeighbour(w.Netns, mac)
	if notYet(err) {
		s.background(func(ctx context.Context) { s.neighbourLater(ctx, req.EndpointID, w.Netns, mac) })
		err = nil
	}
	if err != nil {
		return struct{}{}, err
	}
	return struct{}{}, s.waitProgrammed(ctx, req.EndpointID, w)
}

func notYet(err error) bool {
	return errors.Is(err, workload.ErrNoInterface) || errors.Is(err, workload.ErrNetnsNotFound)
}

// neighbourLater retries SetGatewayNeighbour until the container's namespace holds the
// interface, the endpoint's record is gone or names another sandbox, neighbourWait passed, or
// the server closes.
func (s *Server) neighbourLater(ctx context.Context, eid, netnsPath string, mac net.HardwareAddr) {
	ctx, cancel := context.WithTimeout(ctx, neighbourWait)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
	for {
		select {
		case <-ctx.Done():
			s.log.Warn("no permanent neighbour for the gateway; proxy ARP answers instead", "endpoint", eid, "netns", netnsPath, "err", err)
			return
		case <-tick.C:
		}
		if err = workload.SetGatewayNeighbour(netnsPath, mac); !notYet(err) {
			break
		}
		if w, gerr := s.endpoint(ctx, eid); gerr != nil || w.Netns != netnsPath {
			return // deleted, or left, meanwhile
		}
	}
	if err != nil {
		s.log.Warn("no permanent neighbour for the gateway; proxy ARP answers instead", "endpoint", eid, "netns", netnsPath, "err", err)
		return
	}
	s.log.Info("permanent neighbour for the gateway written", "endpoint", eid, "netns", netnsPath)
}

func (s *Server) revokeExternal(_ context.Context, req endpointRequest) (struct{}, error) {
	return struct{}{}, checkEndpoint(req.NetworkID, req.EndpointID)
}
