package resource

import (
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// WorkloadEndpoint is the interface of a workload (a pod, a container) on its host. It is
// read-only: Margay's CNI plugin and Docker driver write it.
type WorkloadEndpoint struct {
	ObjectMeta `json:"metadata"`
	Spec       WorkloadEndpointSpec `json:"spec"`
}

// WorkloadEndpointSpec is the spec of a WorkloadEndpoint.
type WorkloadEndpointSpec struct {
	Orchestrator       string `json:"orchestrator,omitempty"`
	Workload           string `json:"workload,omitempty"`
	Node               string `json:"node,omitempty"`
	ContainerID        string `json:"containerID,omitempty"`
	Pod                string `json:"pod,omitempty"`
	Endpoint           string `json:"endpoint,omitempty"`
	ServiceAccountName string `json:"serviceAccountName,omitempty"`
	// IPNetworks are the endpoint's addresses, each a /32 (or /128).
	IPNetworks  []string `json:"ipNetworks,omitempty"`
	IPNATs      []IPNAT  `json:"ipNATs,omitempty"`
	IPv4Gateway string   `json:"ipv4Gateway,omitempty"`
	IPv6Gateway string   `json:"ipv6Gateway,omitempty"`
	// Profiles are applied after all policies, in this order.
	Profiles []string `json:"profiles,omitempty"`
	// InterfaceName is the host side of the endpoint's veth (cali...).
	InterfaceName              string                 `json:"interfaceName,omitempty"`
	MAC                        string                 `json:"mac,omitempty"`
	Ports                      []WorkloadEndpointPort `json:"ports,omitempty"`
	AllowSpoofedSourcePrefixes []string               `json:"allowSpoofedSourcePrefixes,omitempty"`
	QoSControls                *QoSControls           `json:"qosControls,omitempty"`
}

// WorkloadEndpointPort is a named port of an endpoint, or a port mapped from the host.
type WorkloadEndpointPort struct {
	Name     string   `json:"name"`
	Protocol Protocol `json:"protocol"`
	Port     uint16   `json:"port"`
	HostPort uint16   `json:"hostPort"`
	HostIP   string   `json:"hostIP"`
}

// IPNAT maps an external address to one of the endpoint's, one to one.
type IPNAT struct {
	InternalIP string `json:"internalIP"`
	ExternalIP string `json:"externalIP"`
}

// QoSControls are an endpoint's bandwidth, packet rate and connection limits.
type QoSControls struct {
	IngressBandwidth      int64 `json:"ingressBandwidth,omitempty"`
	IngressBurst          int64 `json:"ingressBurst,omitempty"`
	IngressPeakrate       int64 `json:"ingressPeakrate,omitempty"`
	IngressMinburst       int64 `json:"ingressMinburst,omitempty"`
	EgressBandwidth       int64 `json:"egressBandwidth,omitempty"`
	EgressBurst           int64 `json:"egressBurst,omitempty"`
	EgressPeakrate        int64 `json:"egressPeakrate,omitempty"`
	EgressMinburst        int64 `json:"egressMinburst,omitempty"`
	IngressPacketRate     int64 `json:"ingressPacketRate,omitempty"`
	IngressPacketBurst    int64 `json:"ingressPacketBurst,omitempty"`
	EgressPacketRate      int64 `json:"egressPacketRate,omitempty"`
	EgressPacketBurst     int64 `json:"egressPacketBurst,omitempty"`
	IngressMaxConnections int64 `json:"ingressMaxConnections,omitempty"`
	EgressMaxConnections  int64 `json:"egressMaxConnections,omitempty"`
	DSCP                  *DSCP `json:"dscp,omitempty"`
}

// Kind returns KindWorkloadEndpoint.
func (*WorkloadEndpoint) Kind() Kind { return KindWorkloadEndpoint }

// Validate checks w as Calico does.
func (w *WorkloadEndpoint) Validate() error {
	var errs errList
	validateMeta(&errs, KindWorkloadEndpoint, &w.ObjectMeta)
	const at path = "spec"
	s := &w.Spec
	for _, n := range []struct{ field, name string }{
		{"orchestrator", s.Orchestrator}, {"workload", s.Workload}, {"node", s.Node}, {"pod", s.Pod},
		{"endpoint", s.Endpoint}, {"serviceAccountName", s.ServiceAccountName},
	} {
		if n.name != "" {
			checkName(&errs, at.child(n.field), n.name)
		}
	}
	if s.ContainerID != "" && !containerIDRe.MatchString(s.ContainerID) {
		errs.addf(at.child("containerID"), "%q is not a container ID: letters, digits and '-', starting and ending with a letter or digit", s.ContainerID)
	}
	for i, n := range s.IPNetworks {
		if p, err := parseNet(n); err != nil {
			errs.addf(at.child("ipNetworks").index(i), "%s", err)
		} else if !p.IsSingleIP() {
			errs.addf(at.child("ipNetworks").index(i), "%s holds more than one address: want a /32 or /128", n)
		}
	}
	for i, nat := range s.IPNATs {
		checkIPNAT(&errs, at.child("ipNATs").index(i), nat, s.IPNetworks)
	}
	optional(&errs, at.child("ipv4Gateway"), s.IPv4Gateway, checkIPv4)
	optional(&errs, at.child("ipv6Gateway"), s.IPv6Gateway, checkIPv6)
	for i, p := range s.Profiles {
		checkName(&errs, at.child("profiles").index(i), p)
	}
	if s.InterfaceName == "" {
		errs.addf(at.child("interfaceName"), "required")
	} else if s.InterfaceName != "*" && !interfaceNameRe.MatchString(s.InterfaceName) {
		errs.addf(at.child("interfaceName"), "%q is not an interface name (1 to 15 letters, digits, '_', '.' and '-')", s.InterfaceName)
	}
	optional(&errs, at.child("mac"), s.MAC, checkMAC)
	for i, p := range s.Ports {
		checkEndpointPort(&errs, at.child("ports").index(i), p)
	}
	for i, p := range s.AllowSpoofedSourcePrefixes {
		if _, err := parseCIDROrIP(p); err != nil {
			errs.addf(at.child("allowSpoofedSourcePrefixes").index(i), "%s", err)
		}
	}
	if q := s.QoSControls; q != nil && q.DSCP != nil {
		if err := q.DSCP.check(); err != nil {
			errs.addf(at.child("qosControls").child("dscp"), "%s", err)
		}
	}
	return errs.err()
}

func checkIPNAT(errs *errList, at path, nat IPNAT, networks []string) {
	internal, err1 := parseIP(nat.InternalIP)
	if err1 != nil {
		errs.addf(at.child("internalIP"), "%s", err1)
	}
	external, err2 := parseIP(nat.ExternalIP)
	if err2 != nil {
		errs.addf(at.child("externalIP"), "%s", err2)
	}
	if err1 != nil || err2 != nil {
		return
	}
	if internal.Is4() != external.Is4() {
		errs.addf(at, "internalIP and externalIP are of different IP versions")
	}
	for _, n := range networks {
		if p, err := parseNet(n); err == nil && p.Contains(internal) {
			return
		}
	}
	errs.addf(at.child("internalIP"), "%s is not one of the endpoint's ipNetworks", internal)
}

func checkEndpointPort(errs *errList, at path, p WorkloadEndpointPort) {
	switch {
	case p.Name != "":
		if msgs := validation.IsValidPortName(p.Name); len(msgs) > 0 {
			errs.addf(at.child("name"), "%q is not a port name: %s", p.Name, strings.Join(msgs, "; "))
		}
	case p.HostPort == 0:
		errs.addf(at.child("name"), "required when hostPort is not set")
	}
	if !p.Protocol.SupportsPorts() {
		errs.addf(at.child("protocol"), "%s has no ports: want TCP, UDP or SCTP", p.Protocol)
	}
	if p.Port == 0 {
		errs.addf(at.child("port"), "required (1 to 65535)")
	}
	if p.HostIP != "" {
		if _, err := parseNet(p.HostIP); err != nil {
			errs.addf(at.child("hostIP"), "%s", err)
		}
	}
}
