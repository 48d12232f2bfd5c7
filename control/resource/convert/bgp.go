package convert

import (
	"strings"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/resource"
)

// PeerFromV3 converts a BGPPeer into a peer record: node, peerIP and asNumber. The settings
// that name Calico's default (nextHopMode Auto, sourceAddress UseNodeIP, reversePeering Auto)
// are accepted and not kept; every other field is an error.
func PeerFromV3(p *resource.BGPPeer) (datastore.BGPPeer, error) {
	var e fieldErrs
	checkMeta(&e, &p.ObjectMeta, nil)
	s := &p.Spec
	out := datastore.BGPPeer{Version: datastore.CurrentVersion, Name: p.Name, Node: s.Node, ASN: uint32(s.ASNumber)}
	if s.PeerIP == "" {
		e.addf("spec.peerIP", "required: Margay peers by address")
	} else if addr, port, err := resource.ParsePeerIP(s.PeerIP); err != nil {
		e.addf("spec.peerIP", "%s", err)
	} else if port != 0 {
		e.notYet("spec.peerIP", "Margay's peers are reached on port 179")
	} else {
		out.PeerIP = addr
	}
	if s.ASNumber == 0 {
		e.addf("spec.asNumber", "required")
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"nodeSelector", s.NodeSelector != ""},
		{"peerSelector", s.PeerSelector != ""},
		{"localASNumber", s.LocalASNumber != nil},
		{"keepOriginalNextHop", s.KeepOriginalNextHop},
		{"nextHopMode", s.NextHopMode != nil && *s.NextHopMode != resource.NextHopAuto},
		{"password", s.Password != nil},
		{"sourceAddress", s.SourceAddress != "" && s.SourceAddress != resource.SourceAddressUseNodeIP},
		{"maxRestartTime", s.MaxRestartTime != nil},
		{"keepaliveTime", s.KeepaliveTime != nil},
		{"numAllowedLocalASNumbers", s.NumAllowedLocalASNumbers != nil},
		{"ttlSecurity", s.TTLSecurity != nil},
		{"reachableBy", s.ReachableBy != ""},
		{"filters", len(s.Filters) > 0},
		{"localWorkloadSelector", s.LocalWorkloadSelector != ""},
		{"reversePeering", s.ReversePeering != nil && *s.ReversePeering != resource.ReversePeeringAuto},
	} {
		if f.set {
			e.notYet("spec."+f.name, whyPeers)
		}
	}
	return finish(&e, out)
}

// PeerToV3 is the BGPPeer of a peer record. A record's password and accept list (set with
// margayctl bgp peer add) have no place in it and are left out (PeerExtras names them).
func PeerToV3(p datastore.BGPPeer) *resource.BGPPeer {
	return &resource.BGPPeer{ObjectMeta: resource.ObjectMeta{Name: p.Name},
		Spec: resource.BGPPeerSpec{Node: p.Node, PeerIP: p.PeerIP.String(), ASNumber: resource.ASNumber(p.ASN)}}
}

// PeerExtras names what a peer record holds that a BGPPeer cannot ("password", "accept"), so
// that a BGPPeer applied over it does not drop them unnoticed.
func PeerExtras(p datastore.BGPPeer) []string {
	var extras []string
	if p.Password != "" {
		extras = append(extras, "password")
	}
	if len(p.Accept) > 0 {
		extras = append(extras, "accept")
	}
	return extras
}

// BGPConfigFromV3 converts the BGPConfiguration named default into the cluster's BGP record:
// asNumber and nodeToNodeMeshEnabled. Settings at Calico's default values are accepted; every
// other field is an error.
func BGPConfigFromV3(c *resource.BGPConfiguration) (datastore.BGPConfig, error) {
	c = c.Defaulted()
	var e fieldErrs
	checkMeta(&e, &c.ObjectMeta, nil)
	if c.Name != resource.DefaultBGPConfigurationName {
		e.notYet("metadata.name", "Margay has one cluster-wide BGP configuration, named default")
	}
	s := &c.Spec
	out := datastore.BGPConfig{Version: datastore.CurrentVersion}
	if s.ASNumber != nil {
		out.ASN = uint32(*s.ASNumber)
	}
	if s.NodeToNodeMeshEnabled != nil {
		out.NodeToNodeMesh = ptr(*s.NodeToNodeMeshEnabled)
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"logSeverityScreen", !strings.EqualFold(s.LogSeverityScreen, "Info")},
		{"serviceLoadBalancerIPs", len(s.ServiceLoadBalancerIPs) > 0},
		{"serviceExternalIPs", len(s.ServiceExternalIPs) > 0},
		{"serviceClusterIPs", len(s.ServiceClusterIPs) > 0},
		{"serviceLoadBalancerAggregation", *s.ServiceLoadBalancerAggregation != resource.AggregationEnabled},
		{"communities", len(s.Communities) > 0},
		{"prefixAdvertisements", len(s.PrefixAdvertisements) > 0},
		{"listenPort", s.ListenPort != 0 && s.ListenPort != 179},
		{"nodeMeshPassword", s.NodeMeshPassword != nil},
		{"nodeMeshMaxRestartTime", s.NodeMeshMaxRestartTime != nil},
		{"bindMode", s.BindMode != nil},
		{"ignoredInterfaces", len(s.IgnoredInterfaces) > 0},
		{"localWorkloadPeeringIPV4", s.LocalWorkloadPeeringIPV4 != ""},
		{"localWorkloadPeeringIPV6", s.LocalWorkloadPeeringIPV6 != ""},
		{"programClusterRoutes", s.ProgramClusterRoutes != nil && *s.ProgramClusterRoutes != "Enabled" && *s.ProgramClusterRoutes != "EnabledNoEncapOnly"},
		{"ipv4NormalRoutePriority", s.IPv4NormalRoutePriority != nil},
		{"ipv6NormalRoutePriority", s.IPv6NormalRoutePriority != nil},
	} {
		if f.set {
			e.notYet("spec."+f.name, whyBGPConfig)
		}
	}
	return finish(&e, out)
}

// BGPConfigToV3 is the BGPConfiguration default of the cluster's BGP record, with Calico's
// defaults. asNumber and nodeToNodeMeshEnabled are written out as Margay stores them (AS 64512
// and the mesh on when the record sets neither).
func BGPConfigToV3(c datastore.BGPConfig) *resource.BGPConfiguration {
	asn := c.ASN
	if asn == 0 {
		asn = datastore.DefaultASN
	}
	out := &resource.BGPConfiguration{ObjectMeta: resource.ObjectMeta{Name: resource.DefaultBGPConfigurationName},
		Spec: resource.BGPConfigurationSpec{ASNumber: ptr(resource.ASNumber(asn)), NodeToNodeMeshEnabled: ptr(c.MeshEnabled())}}
	return out.Defaulted()
}
