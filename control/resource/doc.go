// Package resource reads, checks and writes Calico's own projectcalico.org/v3 resources, so
// that a Calico user's manifests apply to Margay unchanged and margayctl prints what calicoctl
// prints.
//
// # Kinds
//
// NetworkPolicy (namespaced), GlobalNetworkPolicy, Profile, Tier, IPPool, BGPPeer and
// BGPConfiguration, which users apply, and Node and WorkloadEndpoint (namespaced), which Margay
// writes itself and users only read (Kind.ReadOnly). Their Go types have the fields of
// Calico's (github.com/projectcalico/calico, api/pkg/apis/projectcalico/v3 and, for Node and
// WorkloadEndpoint, libcalico-go/lib/apis/internalapi) with the same JSON names and the same
// omitempty rules, but for the status of IPPool and Tier, which Calico's controllers write,
// and IPPool's deprecated ipip and nat-outgoing, which Calico refuses. Port, Protocol,
// ASNumber and Duration are Calico's int-or-string forms.
//
// # Decoding
//
// Decode takes one JSON document (the YAML and multi-document handling is the caller's) and
// reads it as calicoctl apply -f does, strictly: an unknown apiVersion or kind, a field the
// kind does not have, a value of the wrong type and a field given twice are errors, each
// naming the field's path:
//
//	spec.ingress[0].destination.prots: unknown field (did you mean "ports"?)
//
// Field names match exactly or, as in calicoctl (which decodes with encoding/json), ignoring
// case; Encode writes them in Calico's case. metadata.name is required. A NetworkPolicy or
// WorkloadEndpoint without a namespace gets "default", as calicoctl gives it; other kinds must
// have none.
//
// # Names
//
// Names are checked as Calico's validator checks them: a DNS-1123 subdomain for most kinds, a
// DNS-1123 label for a Tier. A GlobalNetworkPolicy name is a label or two labels joined by a
// dot; a NetworkPolicy name is the same or knp.default.<name> (or ossg.default.<name>).
// Calico up to v3.31 also required a policy in a tier other than default to be named
// <tier>.<name>; Calico v3.32 dropped that rule (projectcalico/calico#11232), and Margay
// follows the current behaviour: the name and the tier are independent, so both
// tier: security with name: security.allow-dns (the old form) and name: allow-dns are
// accepted.
//
// # Validation
//
// Validate checks a resource as Calico does (libcalico-go/lib/validator/v3 and the CEL rules
// of Calico's CRDs): selectors (with Margay's own parser, control/policy/selector), actions,
// protocols, ports only with TCP, UDP or SCTP, ICMP type (0-254) and code (0-255, and only
// with a type) only with protocol ICMP or ICMPv6, strictly masked CIDRs of one IP version per
// rule, policy types, pool CIDRs and block sizes, BGP peer addresses, the fields that exclude
// or require each other, labels and annotations as Kubernetes has them. It reports every
// problem of a resource at once (errors.Join of *FieldError), each with its path and reason.
//
// Margay is stricter than Calico in four places: a notICMP match, like icmp, needs protocol
// ICMP or ICMPv6; a BGPConfiguration's asNumber must not be 0 (reserved, RFC 7607); a
// namespace must be a DNS-1123 label, as Kubernetes requires; and a named port in a rule must
// be a name an endpoint's port can have (a Kubernetes port name, an IANA service name: 1 to 15
// lowercase letters, digits and inner single hyphens, with a letter), where Calico takes any
// name and then matches no port with it.
//
// # Defaults
//
// DefaultTypes gives the policy types Calico assumes when a policy names none: Ingress when it
// has no egress rules (also when it has no rules), Egress when it has only egress rules, both
// when it has both. Defaulted (and the Defaulted method of each kind) fills in what Calico
// stores: a policy's tier (default), types and projectcalico.org/tier label, a Tier's default
// action (Deny), an IPPool's block size (26), nodeSelector (all()), allowed uses, assignment
// mode and encapsulation modes (Never), a BGPConfiguration's log level (Info) and load
// balancer aggregation (Enabled).
//
// # What Margay does not support
//
// Some fields Calico accepts ask for what Margay cannot do. Validate never ignores them: it
// reports each with an error that names the field, says "not supported by Margay" and why,
// and wraps ErrUnsupported. A field set to Calico's default, or to the value that turns the
// feature off, is accepted (ipipMode: Never, nodeSelector: all(), logSeverityScreen: Info,
// listenPort: 179, ...), so that what calicoctl get prints applies. Rejected are:
//
//   - IPv6 anywhere: ipVersion 6, protocol or notProtocol ICMPv6 (58), IPv6 CIDRs in nets and
//     notNets, IPv6 pools and peers;
//   - in rules: http (application layer policy), services (Kubernetes Services);
//   - in Profile: the action Pass (a profile's rules come after every tier);
//   - in GlobalNetworkPolicy: doNotTrack, preDNAT and applyOnForward (host endpoints);
//   - in IPPool: ipipMode and vxlanMode other than Never, natOutgoing, disableBGPExport,
//     nodeSelector other than all(), namespaceSelector, allowedUses LoadBalancer,
//     assignmentMode Manual;
//   - in BGPPeer: nodeSelector, peerSelector, localWorkloadSelector, a port in peerIP,
//     localASNumber, keepOriginalNextHop, nextHopMode other than Auto, password (a Kubernetes
//     secret), sourceAddress None, maxRestartTime, keepaliveTime, numAllowedLocalASNumbers,
//     ttlSecurity, reachableBy, filters, reversePeering Manual;
//   - in BGPConfiguration: any name but default (per-node configurations),
//     logSeverityScreen other than Info, serviceClusterIPs, serviceExternalIPs,
//     serviceLoadBalancerIPs, serviceLoadBalancerAggregation Disabled, communities,
//     prefixAdvertisements, listenPort other than 179, nodeMeshPassword, nodeMeshMaxRestartTime, bindMode,
//     ignoredInterfaces, localWorkloadPeeringIPV4 and IPV6, ipv4NormalRoutePriority and
//     ipv6NormalRoutePriority, programClusterRoutes Disabled and EnabledIPIPOnly;
//   - the kinds Margay does not read (HostEndpoint, NetworkSet, FelixConfiguration, ...),
//     which Decode reports.
//
// Everything else belongs to the policy model Margay takes from Calico (DESIGN.md): the actions
// Allow, Deny, Log and Pass, tiers, profiles, notProtocol and notICMP, a rule's and a
// GlobalNetworkPolicy's namespaceSelector (Margay's workloads carry their namespace's labels
// as pcns.<key>), serviceAccounts (names: the projectcalico.org/serviceaccount label; selector,
// and a policy's serviceAccountSelector: the service account's labels, as pcsa.<key>), named
// ports (the ports of the endpoint at that end), and performanceHints, which never change what
// a policy allows. What of it Margay's datastore cannot hold yet, control/resource/convert
// refuses by field. Node and WorkloadEndpoint are
// validated as Calico does; they are read-only, so nothing in them is marked unsupported.
//
// # Encoding
//
// Encode writes canonical JSON with Calico's field names and order; Decode(Encode(r)) is r
// for every r that Decode returned (empty lists and maps decode as nil for that reason).
package resource
