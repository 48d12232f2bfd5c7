package resource

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// BGPPeer is a BGP neighbour of some or all nodes: a top-of-rack router, a gateway, a route
// reflector.
type BGPPeer struct {
	ObjectMeta `json:"metadata"`
	Spec       BGPPeerSpec `json:"spec"`
}

// BGPPeerSpec is the spec of a BGPPeer.
type BGPPeerSpec struct {
	// Node is the node that peers; with neither Node nor NodeSelector, every node does.
	Node         string `json:"node,omitempty"`
	NodeSelector string `json:"nodeSelector,omitempty"`
	// PeerIP is the peer's address, optionally with a port: 192.0.2.1, 192.0.2.1:1179 or
	// [2001:db8::1]:1179 (see ParsePeerIP).
	PeerIP                   string          `json:"peerIP,omitempty"`
	ASNumber                 ASNumber        `json:"asNumber,omitempty"`
	LocalASNumber            *ASNumber       `json:"localASNumber,omitempty"`
	PeerSelector             string          `json:"peerSelector,omitempty"`
	KeepOriginalNextHop      bool            `json:"keepOriginalNextHop,omitempty"`
	NextHopMode              *NextHopMode    `json:"nextHopMode,omitempty"`
	Password                 *BGPPassword    `json:"password,omitempty"`
	SourceAddress            SourceAddress   `json:"sourceAddress,omitempty"`
	MaxRestartTime           *Duration       `json:"maxRestartTime,omitempty"`
	KeepaliveTime            *Duration       `json:"keepaliveTime,omitempty"`
	NumAllowedLocalASNumbers *int32          `json:"numAllowedLocalASNumbers,omitempty"`
	TTLSecurity              *uint8          `json:"ttlSecurity,omitempty"`
	ReachableBy              string          `json:"reachableBy,omitempty"`
	Filters                  []string        `json:"filters,omitempty"`
	LocalWorkloadSelector    string          `json:"localWorkloadSelector,omitempty"`
	ReversePeering           *ReversePeering `json:"reversePeering,omitempty"`
}

// BGPPassword says where a BGP password (TCP MD5 secret) comes from.
type BGPPassword struct {
	SecretKeyRef *SecretKeySelector `json:"secretKeyRef,omitempty"`
}

// SecretKeySelector names a key of a Kubernetes secret, as Kubernetes' core/v1 type does.
type SecretKeySelector struct {
	Name     string `json:"name,omitempty"`
	Key      string `json:"key"`
	Optional *bool  `json:"optional,omitempty"`
}

// NextHopMode says how the next hop of routes sent to a peer is chosen.
type NextHopMode string

// The next hop modes.
const (
	NextHopAuto NextHopMode = "Auto"
	NextHopSelf NextHopMode = "Self"
	NextHopKeep NextHopMode = "Keep"
)

// SourceAddress says which source address BGP sessions use.
type SourceAddress string

// The source address choices.
const (
	SourceAddressUseNodeIP SourceAddress = "UseNodeIP"
	SourceAddressNone      SourceAddress = "None"
)

// ReversePeering says whether the nodes a peerSelector picks peer back by themselves.
type ReversePeering string

// The reverse peering choices.
const (
	ReversePeeringAuto   ReversePeering = "Auto"
	ReversePeeringManual ReversePeering = "Manual"
)

// Kind returns KindBGPPeer.
func (*BGPPeer) Kind() Kind { return KindBGPPeer }

// ParsePeerIP reads a BGPPeer's peerIP as Calico does: an address, <IPv4>:<port> or
// [<IPv6>]:<port>. The port is 0 when none is given.
func ParsePeerIP(s string) (netip.Addr, uint16, error) {
	if a, err := parseIP(s); err == nil {
		return a, 0, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Addr().Zone() != "" || ap.Addr().Is6() && !strings.HasPrefix(s, "[") {
		return netip.Addr{}, 0, fmt.Errorf("%q is not an IP address, <IPv4>:<port> or [<IPv6>]:<port>", s)
	}
	if ap.Port() == 0 {
		return netip.Addr{}, 0, fmt.Errorf("%q: port 0", s)
	}
	return ap.Addr().Unmap(), ap.Port(), nil
}

// Validate checks p as Calico does, plus what Margay cannot enforce.
func (p *BGPPeer) Validate() error {
	var errs errList
	validateMeta(&errs, KindBGPPeer, &p.ObjectMeta)
	const at path = "spec"
	s := &p.Spec

	if s.Node != "" {
		checkName(&errs, at.child("node"), s.Node)
	}
	for _, sel := range []struct {
		name, value, why string
	}{
		{"nodeSelector", s.NodeSelector, whySelectedPeers},
		{"peerSelector", s.PeerSelector, whySelectedPeers},
		{"localWorkloadSelector", s.LocalWorkloadSelector, whyWorkloadPeers},
	} {
		if sel.value != "" {
			checkSelector(&errs, at.child(sel.name), sel.value)
			errs.unsupported(at.child(sel.name), sel.why)
		}
	}

	var peer netip.Addr
	if s.PeerIP != "" {
		addr, port, err := ParsePeerIP(s.PeerIP)
		switch {
		case err != nil:
			errs.addf(at.child("peerIP"), "%s", err)
		case addr.Is6():
			errs.unsupported(at.child("peerIP"), whyIPv6)
		case port != 0:
			errs.unsupported(at.child("peerIP"), whyPeerPort)
		}
		peer = addr
	}

	// Calico's rules for the fields that exclude or need each other.
	if s.Node != "" && s.NodeSelector != "" {
		errs.addf(at.child("nodeSelector"), "node and nodeSelector cannot both be set")
	}
	if s.PeerSelector != "" {
		if s.PeerIP != "" {
			errs.addf(at.child("peerSelector"), "peerIP and peerSelector cannot both be set")
		}
		if s.ASNumber != 0 {
			errs.addf(at.child("asNumber"), "must be empty when peerSelector is set")
		}
	}
	if s.LocalWorkloadSelector != "" {
		if s.PeerIP != "" {
			errs.addf(at.child("peerIP"), "must be empty when localWorkloadSelector is set")
		}
		if s.PeerSelector != "" {
			errs.addf(at.child("peerSelector"), "must be empty when localWorkloadSelector is set")
		}
		if s.ASNumber == 0 {
			errs.addf(at.child("asNumber"), "required when localWorkloadSelector is set")
		}
	}
	if s.KeepOriginalNextHop && s.NextHopMode != nil {
		errs.addf(at.child("keepOriginalNextHop"), "keepOriginalNextHop and nextHopMode cannot both be set (use nextHopMode)")
	}

	if s.LocalASNumber != nil {
		errs.unsupported(at.child("localASNumber"), whyBGPOption)
	}
	if s.KeepOriginalNextHop {
		errs.unsupported(at.child("keepOriginalNextHop"), whyBGPOption)
	}
	if m := s.NextHopMode; m != nil && checkOneOf(&errs, at.child("nextHopMode"), *m, NextHopAuto, NextHopSelf, NextHopKeep) && *m != NextHopAuto {
		errs.unsupported(at.child("nextHopMode"), whyBGPOption)
	}
	checkPassword(&errs, at.child("password"), s.Password)
	if s.SourceAddress != "" && checkOneOf(&errs, at.child("sourceAddress"), s.SourceAddress, SourceAddressUseNodeIP, SourceAddressNone) &&
		s.SourceAddress == SourceAddressNone {
		errs.unsupported(at.child("sourceAddress"), whyBGPOption)
	}
	if s.MaxRestartTime != nil {
		errs.unsupported(at.child("maxRestartTime"), whyBGPTimers)
	}
	if s.KeepaliveTime != nil {
		errs.unsupported(at.child("keepaliveTime"), whyBGPTimers)
	}
	if s.NumAllowedLocalASNumbers != nil {
		errs.unsupported(at.child("numAllowedLocalASNumbers"), whyBGPOption)
	}
	if s.TTLSecurity != nil {
		errs.unsupported(at.child("ttlSecurity"), whyBGPOption)
	}
	if s.ReachableBy != "" {
		switch gw, err := parseIP(s.ReachableBy); {
		case err != nil:
			errs.addf(at.child("reachableBy"), "%s", err)
		case s.PeerIP == "":
			errs.addf(at.child("reachableBy"), "must be empty when peerIP is")
		case peer.IsValid() && gw.Is4() != peer.Is4():
			errs.addf(at.child("reachableBy"), "%s and peerIP %s are of different IP versions", gw, peer)
		}
		errs.unsupported(at.child("reachableBy"), whyBGPOption)
	}
	for i, f := range s.Filters {
		checkName(&errs, at.child("filters").index(i), f)
	}
	if len(s.Filters) > 0 {
		errs.unsupported(at.child("filters"), whyBGPOption)
	}
	if m := s.ReversePeering; m != nil && checkOneOf(&errs, at.child("reversePeering"), *m, ReversePeeringAuto, ReversePeeringManual) &&
		*m == ReversePeeringManual {
		errs.unsupported(at.child("reversePeering"), whySelectedPeers)
	}
	return errs.err()
}

func checkPassword(errs *errList, at path, p *BGPPassword) {
	if p == nil || p.SecretKeyRef == nil {
		return
	}
	if p.SecretKeyRef.Key == "" {
		errs.addf(at.child("secretKeyRef").child("key"), "required")
	}
	errs.unsupported(at.child("secretKeyRef"), whySecrets)
}

// BGPConfiguration holds the BGP settings of the cluster (the one named default) or, in
// Calico, of one node (node.<name>).
type BGPConfiguration struct {
	ObjectMeta `json:"metadata"`
	Spec       BGPConfigurationSpec `json:"spec"`
}

// BGPConfigurationSpec is the spec of a BGPConfiguration.
type BGPConfigurationSpec struct {
	LogSeverityScreen string `json:"logSeverityScreen,omitempty"`
	// NodeToNodeMeshEnabled says whether every node peers with every other; nil means true.
	NodeToNodeMeshEnabled *bool `json:"nodeToNodeMeshEnabled,omitempty"`
	// ASNumber is the nodes' AS number; nil means DefaultASNumber.
	ASNumber                       *ASNumber                       `json:"asNumber,omitempty"`
	ServiceLoadBalancerIPs         []ServiceIPBlock                `json:"serviceLoadBalancerIPs,omitempty"`
	ServiceExternalIPs             []ServiceIPBlock                `json:"serviceExternalIPs,omitempty"`
	ServiceClusterIPs              []ServiceIPBlock                `json:"serviceClusterIPs,omitempty"`
	ServiceLoadBalancerAggregation *ServiceLoadBalancerAggregation `json:"serviceLoadBalancerAggregation,omitempty"`
	Communities                    []Community                     `json:"communities,omitempty"`
	PrefixAdvertisements           []PrefixAdvertisement           `json:"prefixAdvertisements,omitempty"`
	ListenPort                     uint16                          `json:"listenPort,omitempty"`
	NodeMeshPassword               *BGPPassword                    `json:"nodeMeshPassword,omitempty"`
	NodeMeshMaxRestartTime         *Duration                       `json:"nodeMeshMaxRestartTime,omitempty"`
	BindMode                       *BindMode                       `json:"bindMode,omitempty"`
	IgnoredInterfaces              []string                        `json:"ignoredInterfaces,omitempty"`
	LocalWorkloadPeeringIPV4       string                          `json:"localWorkloadPeeringIPV4,omitempty"`
	LocalWorkloadPeeringIPV6       string                          `json:"localWorkloadPeeringIPV6,omitempty"`
	ProgramClusterRoutes           *string                         `json:"programClusterRoutes,omitempty"`
	IPv4NormalRoutePriority        *int                            `json:"ipv4NormalRoutePriority,omitempty"`
	IPv6NormalRoutePriority        *int                            `json:"ipv6NormalRoutePriority,omitempty"`
}

// ServiceIPBlock is a range of Kubernetes Service addresses to advertise.
type ServiceIPBlock struct {
	CIDR string `json:"cidr,omitempty"`
}

// ServiceLoadBalancerAggregation says whether LoadBalancer addresses are advertised as their
// range or one by one.
type ServiceLoadBalancerAggregation string

// The aggregation choices.
const (
	AggregationEnabled  ServiceLoadBalancerAggregation = "Enabled"
	AggregationDisabled ServiceLoadBalancerAggregation = "Disabled"
)

// Community names a BGP community value (aa:nn or aa:nn:mm).
type Community struct {
	Name  string `json:"name,omitempty"`
	Value string `json:"value,omitempty"`
}

// PrefixAdvertisement attaches communities to the routes of a CIDR.
type PrefixAdvertisement struct {
	CIDR        string   `json:"cidr,omitempty"`
	Communities []string `json:"communities,omitempty"`
}

// BindMode says which addresses BGP listens on.
type BindMode string

// The bind modes.
const (
	BindModeNone   BindMode = "None"
	BindModeNodeIP BindMode = "NodeIP"
)

// DefaultASNumber is the AS number of the nodes when no BGPConfiguration names one.
const DefaultASNumber ASNumber = 64512

// DefaultBGPConfigurationName is the name of the cluster-wide BGPConfiguration.
const DefaultBGPConfigurationName = "default"

// Kind returns KindBGPConfiguration.
func (*BGPConfiguration) Kind() Kind { return KindBGPConfiguration }

// MeshEnabled reports whether the node-to-node mesh is on (it is unless turned off).
func (s *BGPConfigurationSpec) MeshEnabled() bool {
	return s.NodeToNodeMeshEnabled == nil || *s.NodeToNodeMeshEnabled
}

// AS returns the nodes' AS number: ASNumber, or DefaultASNumber.
func (s *BGPConfigurationSpec) AS() ASNumber {
	if s.ASNumber == nil {
		return DefaultASNumber
	}
	return *s.ASNumber
}

// Defaulted returns a copy of c with the defaults of Calico's schema filled in:
// logSeverityScreen Info and serviceLoadBalancerAggregation Enabled.
func (c *BGPConfiguration) Defaulted() *BGPConfiguration {
	out := clone(c)
	if out.Spec.LogSeverityScreen == "" {
		out.Spec.LogSeverityScreen = "Info"
	}
	if out.Spec.ServiceLoadBalancerAggregation == nil {
		enabled := AggregationEnabled
		out.Spec.ServiceLoadBalancerAggregation = &enabled
	}
	return out
}

var (
	logSeverityRe      = regexp.MustCompile(`^(?i)(Trace|Debug|Info|Warning|Error|Fatal)?$`)
	communityRe        = regexp.MustCompile(`^(\d+):(\d+)(:(\d+))?$`)
	ignoredInterfaceRe = regexp.MustCompile(`^[a-zA-Z0-9_.*-]{1,15}$`)
)

// defaultBGPPort is the port BGP listens on when nothing else is said, in Calico and Margay.
const defaultBGPPort = 179

// maxRoutePriority is the largest route priority Calico allows.
const maxRoutePriority = 2147483646

// Validate checks c as Calico does, plus what Margay cannot enforce.
func (c *BGPConfiguration) Validate() error {
	var errs errList
	validateMeta(&errs, KindBGPConfiguration, &c.ObjectMeta)
	if c.Name != "" && c.Name != DefaultBGPConfigurationName {
		errs.unsupported("metadata.name", whyBGPPerNode)
	}
	const at path = "spec"
	s := &c.Spec

	if !logSeverityRe.MatchString(s.LogSeverityScreen) {
		errs.addf(at.child("logSeverityScreen"), "%q is not one of Trace, Debug, Info, Warning, Error, Fatal", s.LogSeverityScreen)
	} else if s.LogSeverityScreen != "" && !strings.EqualFold(s.LogSeverityScreen, "Info") {
		errs.unsupported(at.child("logSeverityScreen"), whyBGPLogLevel)
	}
	if s.ASNumber != nil && *s.ASNumber == 0 {
		errs.addf(at.child("asNumber"), "AS 0 is reserved (RFC 7607)")
	}

	for _, blocks := range []struct {
		name   string
		blocks []ServiceIPBlock
	}{
		{"serviceLoadBalancerIPs", s.ServiceLoadBalancerIPs},
		{"serviceExternalIPs", s.ServiceExternalIPs},
		{"serviceClusterIPs", s.ServiceClusterIPs},
	} {
		for i, b := range blocks.blocks {
			if b.CIDR != "" {
				if _, err := parseNet(b.CIDR); err != nil {
					errs.addf(at.child(blocks.name).index(i).child("cidr"), "%s", err)
				}
			}
		}
		if len(blocks.blocks) > 0 {
			errs.unsupported(at.child(blocks.name), whyServiceRoutes)
		}
	}
	if a := s.ServiceLoadBalancerAggregation; a != nil &&
		checkOneOf(&errs, at.child("serviceLoadBalancerAggregation"), *a, AggregationEnabled, AggregationDisabled) && *a == AggregationDisabled {
		errs.unsupported(at.child("serviceLoadBalancerAggregation"), whyServiceRoutes)
	}

	checkCommunities(&errs, at, s)

	if s.ListenPort != 0 && s.ListenPort != defaultBGPPort {
		errs.unsupported(at.child("listenPort"), whyBGPListen)
	}
	if s.NodeMeshPassword != nil && !s.MeshEnabled() {
		errs.addf(at.child("nodeMeshPassword"), "cannot be set when nodeToNodeMeshEnabled is false")
	}
	checkPassword(&errs, at.child("nodeMeshPassword"), s.NodeMeshPassword)
	if s.NodeMeshMaxRestartTime != nil {
		if !s.MeshEnabled() {
			errs.addf(at.child("nodeMeshMaxRestartTime"), "cannot be set when nodeToNodeMeshEnabled is false")
		}
		errs.unsupported(at.child("nodeMeshMaxRestartTime"), whyBGPTimers)
	}
	if m := s.BindMode; m != nil && checkOneOf(&errs, at.child("bindMode"), *m, BindModeNone, BindModeNodeIP) {
		errs.unsupported(at.child("bindMode"), whyBGPListen)
	}
	for i, name := range s.IgnoredInterfaces {
		if name == "*" || !ignoredInterfaceRe.MatchString(name) {
			errs.addf(at.child("ignoredInterfaces").index(i), "%q is not an interface name or pattern (1 to 15 letters, digits, '_', '.', '-' and '*')", name)
		}
	}
	if len(s.IgnoredInterfaces) > 0 {
		errs.unsupported(at.child("ignoredInterfaces"), whyDeviceRoutes)
	}
	if s.LocalWorkloadPeeringIPV4 != "" {
		checkIPv4(&errs, at.child("localWorkloadPeeringIPV4"), s.LocalWorkloadPeeringIPV4)
		errs.unsupported(at.child("localWorkloadPeeringIPV4"), whyWorkloadPeers)
	}
	if s.LocalWorkloadPeeringIPV6 != "" {
		checkIPv6(&errs, at.child("localWorkloadPeeringIPV6"), s.LocalWorkloadPeeringIPV6)
		errs.unsupported(at.child("localWorkloadPeeringIPV6"), whyWorkloadPeers)
	}
	// For pools without encapsulation (Margay's only kind), Enabled and EnabledNoEncapOnly (the
	// default) have BGP program the cluster routes, as Margay's agent does; the other two leave
	// them to Felix.
	if r := s.ProgramClusterRoutes; r != nil &&
		checkOneOf(&errs, at.child("programClusterRoutes"), *r, "Enabled", "Disabled", "EnabledIPIPOnly", "EnabledNoEncapOnly") &&
		*r != "Enabled" && *r != "EnabledNoEncapOnly" {
		errs.unsupported(at.child("programClusterRoutes"), whyClusterRoutes)
	}
	for _, prio := range []struct {
		name string
		v    *int
	}{{"ipv4NormalRoutePriority", s.IPv4NormalRoutePriority}, {"ipv6NormalRoutePriority", s.IPv6NormalRoutePriority}} {
		if prio.v == nil {
			continue
		}
		if *prio.v < 1 || *prio.v > maxRoutePriority {
			errs.addf(at.child(prio.name), "%d: want 1 to %d", *prio.v, maxRoutePriority)
		}
		errs.unsupported(at.child(prio.name), whyRoutePriority)
	}
	return errs.err()
}

func checkCommunities(errs *errList, at path, s *BGPConfigurationSpec) {
	for i, c := range s.Communities {
		at := at.child("communities").index(i)
		if c.Name == "" {
			errs.addf(at.child("name"), "required")
		} else {
			checkName(errs, at.child("name"), c.Name)
		}
		if c.Value == "" {
			errs.addf(at.child("value"), "required")
		} else if err := checkCommunity(c.Value); err != nil {
			errs.addf(at.child("value"), "%s", err)
		}
	}
	if len(s.Communities) > 0 && len(s.PrefixAdvertisements) == 0 {
		errs.addf(at.child("communities"), "defined but used by no prefixAdvertisements")
	}
	for i, pa := range s.PrefixAdvertisements {
		at := at.child("prefixAdvertisements").index(i)
		if pa.CIDR == "" {
			errs.addf(at.child("cidr"), "required")
		} else if _, err := parseNet(pa.CIDR); err != nil {
			errs.addf(at.child("cidr"), "%s", err)
		}
		if len(pa.Communities) == 0 {
			errs.addf(at.child("communities"), "required")
		}
		for j, v := range pa.Communities {
			if communityRe.MatchString(v) {
				if err := checkCommunity(v); err != nil {
					errs.addf(at.child("communities").index(j), "%s", err)
				}
			} else if !slices.ContainsFunc(s.Communities, func(c Community) bool { return c.Name == v }) {
				errs.addf(at.child("communities").index(j), "%q is no community value (aa:nn or aa:nn:mm) and no name in communities", v)
			}
		}
	}
	if len(s.Communities) > 0 {
		errs.unsupported(at.child("communities"), whyCommunities)
	}
	if len(s.PrefixAdvertisements) > 0 {
		errs.unsupported(at.child("prefixAdvertisements"), whyCommunities)
	}
}

// checkCommunity checks a standard (aa:nn, 16-bit numbers) or large (aa:nn:mm, 32-bit
// numbers) BGP community.
func checkCommunity(v string) error {
	m := communityRe.FindStringSubmatch(v)
	if m == nil {
		return fmt.Errorf("%q is not a community value: want aa:nn or aa:nn:mm", v)
	}
	kind, bits, parts := "standard", 16, []string{m[1], m[2]}
	if m[4] != "" {
		kind, bits, parts = "large", 32, append(parts, m[4])
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, bits); err != nil {
			return fmt.Errorf("%q: each part of a %s community is a %d-bit number", v, kind, bits)
		}
	}
	return nil
}
