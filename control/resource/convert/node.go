package convert

import (
	"errors"
	"maps"
	"slices"
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy/selector"
	"github.com/margaynet/margay/control/resource"
)

// NodeToV3 is the Node of a node record, as calicoctl get node shows one: its BGP address and
// AS number (when the node has its own), its route reflector cluster ID, its address and
// uplink interface, its labels. Nodes are read-only: Margay's agent writes them.
func NodeToV3(n datastore.Node) *resource.Node {
	out := &resource.Node{ObjectMeta: resource.ObjectMeta{Name: n.Name, Labels: maps.Clone(n.Labels)}}
	s := &out.Spec
	bgp := &resource.NodeBGPSpec{RouteReflectorClusterID: n.RouteReflectorClusterID}
	if n.AddressV4.IsValid() {
		bgp.IPv4Address = n.AddressV4.String()
		s.Addresses = []resource.NodeAddress{{Address: n.AddressV4.Addr().String(), Type: "CalicoNodeIP"}}
		if n.Uplink != "" {
			s.Interfaces = []resource.NodeInterface{{Name: n.Uplink, Addresses: []string{n.AddressV4.Addr().String()}}}
		}
	}
	if n.ASN != 0 {
		bgp.ASNumber = ptr(resource.ASNumber(n.ASN))
	}
	if *bgp != (resource.NodeBGPSpec{}) {
		s.BGP = bgp
	}
	return out
}

// The orchestrators of workload endpoints, as Calico names them.
const (
	OrchestratorKubernetes = "k8s"
	OrchestratorCNI        = "cni"
)

// workloadInterface is the workload side's interface name in a WorkloadEndpoint: Margay's
// records do not keep it, and CNI's default is eth0.
const workloadInterface = "eth0"

// WorkloadToV3 is the WorkloadEndpoint of a workload record, named as Calico names it
// (WorkloadEndpointName), with the record's profiles and named ports. A record with a namespace is a Kubernetes pod (orchestrator k8s),
// any other a CNI container (orchestrator cni, in namespace default). Workload endpoints are
// read-only: the CNI plugin writes them.
func WorkloadToV3(w datastore.Workload) (*resource.WorkloadEndpoint, error) {
	ns, orch := w.Namespace, OrchestratorKubernetes
	if ns == "" {
		ns, orch = resource.DefaultNamespace, OrchestratorCNI
	}
	out := &resource.WorkloadEndpoint{ObjectMeta: resource.ObjectMeta{Namespace: ns, Labels: maps.Clone(w.Labels)}}
	s := &out.Spec
	s.Orchestrator, s.Node, s.ContainerID, s.Endpoint = orch, w.Node, w.ContainerID, workloadInterface
	s.InterfaceName, s.MAC = w.IfName, w.MAC
	ids := WorkloadEndpointIDs{Node: w.Node, Orchestrator: orch, Endpoint: workloadInterface}
	if orch == OrchestratorKubernetes {
		s.Pod, ids.Pod = w.Name, w.Name
	} else {
		s.Workload = w.Name
		ids.ContainerID = w.ContainerID
		if ids.ContainerID == "" {
			ids.ContainerID = w.ID
		}
	}
	for _, p := range w.IPv4 {
		s.IPNetworks = append(s.IPNetworks, p.String())
	}
	s.Profiles = slices.Clone(w.Profiles)
	for _, p := range w.Ports {
		s.Ports = append(s.Ports, resource.WorkloadEndpointPort{Name: p.Name, Protocol: ProtocolToV3(uint8(p.Protocol)), Port: p.Port})
	}
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	out.Labels[selector.NamespaceLabel] = ns
	out.Labels["projectcalico.org/orchestrator"] = orch
	name, err := ids.Name()
	if err != nil {
		return nil, err
	}
	out.Name = name
	return out, nil
}

// WorkloadEndpointIDs are the parts of a WorkloadEndpoint's name (libcalico-go's
// names.WorkloadEndpointIdentifiers).
type WorkloadEndpointIDs struct {
	Node, Orchestrator, Workload, Pod, ContainerID, Endpoint string
}

// Name is the WorkloadEndpoint name Calico requires: <node>-<orchestrator>-<x>-<endpoint>, where
// x is the pod (k8s), the container ID (cni), the orchestrator again (libnetwork) or the
// workload (any other); the dashes of each part doubled, so that the name splits back.
func (ids WorkloadEndpointIDs) Name() (string, error) {
	var x string
	switch ids.Orchestrator {
	case OrchestratorKubernetes:
		x = ids.Pod
	case OrchestratorCNI:
		x = ids.ContainerID
	case "libnetwork":
		x = ids.Orchestrator
	default:
		x = ids.Workload
	}
	parts := []string{ids.Node, ids.Orchestrator, x, ids.Endpoint}
	for i, p := range parts {
		if p == "" || p[0] == '-' || p[len(p)-1] == '-' {
			return "", errors.New("workload endpoint name: a part is empty or begins or ends with '-': " + strings.Join(parts, ", "))
		}
		parts[i] = strings.ReplaceAll(p, "-", "--")
	}
	return strings.Join(parts, "-"), nil
}
