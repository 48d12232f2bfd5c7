package resource

import (
	"encoding/base64"
	"reflect"
)

// Node is a host that runs Margay's agent. It is read-only: the agent writes it.
type Node struct {
	ObjectMeta `json:"metadata"`
	Spec       NodeSpec   `json:"spec"`
	Status     NodeStatus `json:"status"`
}

// NodeSpec is the spec of a Node.
type NodeSpec struct {
	BGP                  *NodeBGPSpec       `json:"bgp,omitempty"`
	IPv4VXLANTunnelAddr  string             `json:"ipv4VXLANTunnelAddr,omitempty"`
	VXLANTunnelMACAddr   string             `json:"vxlanTunnelMACAddr,omitempty"`
	IPv6VXLANTunnelAddr  string             `json:"ipv6VXLANTunnelAddr,omitempty"`
	VXLANTunnelMACAddrV6 string             `json:"vxlanTunnelMACAddrV6,omitempty"`
	OrchRefs             []OrchRef          `json:"orchRefs,omitempty"`
	Wireguard            *NodeWireguardSpec `json:"wireguard,omitempty"`
	Addresses            []NodeAddress      `json:"addresses,omitempty"`
	Interfaces           []NodeInterface    `json:"interfaces,omitempty"`
}

// NodeBGPSpec is the BGP identity of a node.
type NodeBGPSpec struct {
	// ASNumber is the node's AS number; nil means the cluster's.
	ASNumber *ASNumber `json:"asNumber,omitempty"`
	// IPv4Address is the node's address with its subnet (198.18.0.11/24): the next hop of its
	// routes.
	IPv4Address        string `json:"ipv4Address,omitempty"`
	IPv6Address        string `json:"ipv6Address,omitempty"`
	IPv4IPIPTunnelAddr string `json:"ipv4IPIPTunnelAddr,omitempty"`
	// RouteReflectorClusterID makes the node a route reflector of that cluster ID.
	RouteReflectorClusterID string `json:"routeReflectorClusterID,omitempty"`
}

// OrchRef ties a node to its name in an orchestrator.
type OrchRef struct {
	NodeName     string `json:"nodeName,omitempty"`
	Orchestrator string `json:"orchestrator"`
}

// NodeWireguardSpec holds the addresses of a node's WireGuard interfaces.
type NodeWireguardSpec struct {
	InterfaceIPv4Address string `json:"interfaceIPv4Address,omitempty"`
	InterfaceIPv6Address string `json:"interfaceIPv6Address,omitempty"`
}

// NodeAddress is an address of a node, of a type CalicoNodeIP, InternalIP or ExternalIP.
type NodeAddress struct {
	Address string `json:"address"`
	Type    string `json:"type,omitempty"`
}

// NodeInterface is an interface of a node and its addresses.
type NodeInterface struct {
	Name      string   `json:"name,omitempty"`
	Addresses []string `json:"addresses,omitempty"`
}

// NodeStatus is what a node reports about itself.
type NodeStatus struct {
	WireguardPublicKey   string   `json:"wireguardPublicKey,omitempty"`
	WireguardPublicKeyV6 string   `json:"wireguardPublicKeyV6,omitempty"`
	PodCIDRs             []string `json:"podCIDRs,omitempty"`
}

// Kind returns KindNode.
func (*Node) Kind() Kind { return KindNode }

// Validate checks n as Calico does.
func (n *Node) Validate() error {
	var errs errList
	validateMeta(&errs, KindNode, &n.ObjectMeta)
	const at path = "spec"
	s := &n.Spec
	if b := s.BGP; b != nil {
		at := at.child("bgp")
		if reflect.ValueOf(*b).IsZero() {
			errs.addf(at, "must not be empty")
		}
		if b.IPv4Address != "" {
			if p, err := parseCIDROrIP(b.IPv4Address); err != nil || !p.Addr().Is4() {
				errs.addf(at.child("ipv4Address"), "%q is not an IPv4 address or CIDR", b.IPv4Address)
			}
		}
		if b.IPv6Address != "" {
			if p, err := parseCIDROrIP(b.IPv6Address); err != nil || !p.Addr().Is6() {
				errs.addf(at.child("ipv6Address"), "%q is not an IPv6 address or CIDR", b.IPv6Address)
			}
		}
		optional(&errs, at.child("ipv4IPIPTunnelAddr"), b.IPv4IPIPTunnelAddr, checkIPv4)
		optional(&errs, at.child("routeReflectorClusterID"), b.RouteReflectorClusterID, checkIPv4)
	}
	optional(&errs, at.child("ipv4VXLANTunnelAddr"), s.IPv4VXLANTunnelAddr, checkIPv4)
	optional(&errs, at.child("vxlanTunnelMACAddr"), s.VXLANTunnelMACAddr, checkMAC)
	optional(&errs, at.child("ipv6VXLANTunnelAddr"), s.IPv6VXLANTunnelAddr, checkIPv6)
	optional(&errs, at.child("vxlanTunnelMACAddrV6"), s.VXLANTunnelMACAddrV6, checkMAC)
	if w := s.Wireguard; w != nil {
		optional(&errs, at.child("wireguard").child("interfaceIPv4Address"), w.InterfaceIPv4Address, checkIPv4)
		optional(&errs, at.child("wireguard").child("interfaceIPv6Address"), w.InterfaceIPv6Address, checkIPv6)
	}
	for i, a := range s.Addresses {
		at := at.child("addresses").index(i)
		if _, err := parseNet(a.Address); err != nil {
			errs.addf(at.child("address"), "%s", err)
		}
		if a.Type != "" {
			checkOneOf(&errs, at.child("type"), a.Type, "CalicoNodeIP", "InternalIP", "ExternalIP")
		}
	}
	for i, iface := range s.Interfaces {
		if iface.Name != "" {
			checkName(&errs, at.child("interfaces").index(i).child("name"), iface.Name)
		}
	}
	checkWireguardKey(&errs, "status.wireguardPublicKey", n.Status.WireguardPublicKey)
	checkWireguardKey(&errs, "status.wireguardPublicKeyV6", n.Status.WireguardPublicKeyV6)
	return errs.err()
}

// optional runs check on v unless v is empty.
func optional(errs *errList, at path, v string, check func(*errList, path, string)) {
	if v != "" {
		check(errs, at, v)
	}
}

func checkWireguardKey(errs *errList, at path, key string) {
	if key == "" {
		return
	}
	if b, err := base64.StdEncoding.DecodeString(key); err != nil || len(b) != 32 {
		errs.addf(at, "not a WireGuard key (32 bytes in base64)")
	}
}
