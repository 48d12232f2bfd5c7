package resource

import (
	"errors"
	"strings"
	"testing"
)

// manifest returns a manifest of kind with metadata and spec given in YAML's flow style.
func manifest(kind, metadata, spec string) string {
	return "apiVersion: projectcalico.org/v3\nkind: " + kind + "\nmetadata: {" + metadata + "}\nspec: {" + spec + "}\n"
}

func np(spec string) string    { return manifest("NetworkPolicy", "name: p, namespace: ns", spec) }
func gnp(spec string) string   { return manifest("GlobalNetworkPolicy", "name: p", spec) }
func pool(spec string) string  { return manifest("IPPool", "name: pool", spec) }
func peer(spec string) string  { return manifest("BGPPeer", "name: peer", spec) }
func bgpcf(spec string) string { return manifest("BGPConfiguration", "name: default", spec) }
func tier(name, spec string) string {
	return manifest("Tier", "name: "+name, spec)
}

// rule returns a GlobalNetworkPolicy with one ingress rule, given in flow style.
func rule(r string) string { return gnp("ingress: [{" + r + "}]") }

// Bad manifests, each with the error that names what is wrong. Decode reports what makes a
// document unreadable; Validate the rest. Errors saying "not supported by Margay" must wrap
// ErrUnsupported.
var badManifests = []struct {
	name string
	doc  string // YAML, or JSON when json is set
	json bool
	want string
}{
	// Reading the document.
	{name: "unknown field", doc: rule(`action: Allow, protocol: TCP, destination: {prots: [80]}`),
		want: `spec.ingress[0].destination.prots: unknown field (did you mean "ports"?)`},
	{name: "unknown top-level field", doc: gnp("") + "status: {}\n", want: "status: unknown field"},
	{name: "unknown metadata field", doc: manifest("Tier", "name: t, generation: 3", ""),
		want: "metadata.generation: unknown field"},
	{name: "field given twice", json: true,
		doc:  `{"apiVersion":"projectcalico.org/v3","kind":"Tier","metadata":{"name":"t"},"spec":{"order":1,"order":2}}`,
		want: "spec.order: duplicate field"},
	{name: "field given twice in two cases", json: true,
		doc:  `{"apiVersion":"projectcalico.org/v3","kind":"Tier","metadata":{"name":"t"},"spec":{"order":1,"Order":2}}`,
		want: `spec.Order: duplicate field (also given as "order")`},
	{name: "not JSON", json: true, doc: `{"apiVersion": }`, want: "invalid JSON at byte"},
	{name: "empty document", json: true, doc: ``, want: "empty document"},
	{name: "two documents", json: true, doc: `{} {}`, want: "data after the JSON document"},
	{name: "a list", json: true, doc: `[{"kind":"Tier"}]`, want: "the document is a list, not a resource"},
	{name: "no apiVersion", doc: "kind: Tier\nmetadata: {name: t}\n", want: "apiVersion: required (projectcalico.org/v3)"},
	{name: "old apiVersion", doc: strings.Replace(gnp(""), "projectcalico.org/v3", "projectcalico.org/v2", 1),
		want: `apiVersion: "projectcalico.org/v2" is not supported: want projectcalico.org/v3`},
	{name: "storage apiVersion", doc: strings.Replace(gnp(""), "projectcalico.org/v3", "crd.projectcalico.org/v1", 1),
		want: `apiVersion: "crd.projectcalico.org/v1" is not supported`},
	{name: "no kind", doc: "apiVersion: projectcalico.org/v3\nmetadata: {name: t}\n", want: "kind: required (one of NetworkPolicy, "},
	{name: "unknown kind", doc: manifest("NetworkPolocy", "name: p", ""),
		want: `kind: "NetworkPolocy" is not a projectcalico.org/v3 kind`},
	{name: "kind Margay does not read", doc: manifest("HostEndpoint", "name: h", ""),
		want: "kind: not supported by Margay (HostEndpoint: Margay has no host endpoints)"},
	{name: "list kind", doc: manifest("NetworkPolicyList", "name: l", ""),
		want: `kind: "NetworkPolicyList": a list; give each resource as a document of its own`},
	{name: "kind not a string", doc: "apiVersion: projectcalico.org/v3\nkind: 3\n", want: "kind: expected a string, got the number 3"},
	{name: "wrong type", doc: gnp(`order: "100"`), want: "spec.order: expected a number, got a string"},
	{name: "fraction for an integer", doc: pool(`cidr: 198.19.0.0/16, blockSize: 26.5`),
		want: "spec.blockSize: expected an integer, got the number 26.5"},
	{name: "integer out of range", json: true,
		doc:  `{"apiVersion":"projectcalico.org/v3","kind":"BGPPeer","metadata":{"name":"p"},"spec":{"ttlSecurity":256}}`,
		want: "spec.ttlSecurity: 256 is out of range (0 to 255)"},
	{name: "integer out of any range", doc: rule(`action: Allow, protocol: ICMP, icmp: {type: 99999999999999999999}`),
		want: "spec.ingress[0].icmp.type: 100000000000000000000 is out of range"},
	{name: "listenPort out of range", doc: bgpcf(`listenPort: 70000`), want: "spec.listenPort: 70000 is out of range (0 to 65535)"},
	{name: "list expected", doc: gnp(`types: Ingress`), want: "spec.types: expected a list, got a string"},
	{name: "object expected", doc: manifest("Profile", "name: p", "labelsToApply: [a]"), want: "spec.labelsToApply: expected an object, got a list"},
	{name: "label value not a string", doc: manifest("Profile", "name: p, labels: {k: 1}", ""),
		want: `metadata.labels["k"]: expected a string, got the number 1`},
	{name: "YAML 1.1 boolean for a string", doc: manifest("Node", "name: n", ""),
		want: "metadata.name: expected a string, got false"},
	{name: "backwards port range", doc: rule(`action: Allow, protocol: TCP, destination: {ports: ["8080:80"]}`),
		want: `spec.ingress[0].destination.ports[0]: invalid port range "8080:80": 8080 is greater than 80`},
	{name: "port above 65535", doc: rule(`action: Allow, protocol: TCP, destination: {ports: [70000]}`),
		want: "spec.ingress[0].destination.ports[0]: invalid port 70000: want 1 to 65535"},
	{name: "port name with a blank", doc: rule(`action: Allow, protocol: TCP, destination: {ports: ["my port"]}`),
		want: `spec.ingress[0].destination.ports[0]: invalid named port "my port"`},
	{name: "empty protocol", doc: rule(`action: Allow, protocol: ""`), want: "spec.ingress[0].protocol: invalid protocol: an empty string"},
	{name: "nested too deep", json: true,
		doc:  `{"apiVersion":"projectcalico.org/v3","kind":"Tier","spec":` + strings.Repeat(`[`, 40) + strings.Repeat(`]`, 40) + `}`,
		want: "the document is nested more than 32 levels deep, at spec[0][0]"},
	{name: "protocol above 255", doc: rule(`action: Allow, protocol: 300`),
		want: "spec.ingress[0].protocol: invalid protocol: 300 is not a number from 0 to 255"},
	{name: "ICMP type with words, as in Calico's ICMP page", doc: "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n" +
		"metadata:\n  name: allow-ping-in-cluster\nspec:\n  ingress:\n    - action: Allow\n      protocol: ICMP\n" +
		"      icmp:\n        type: 8  Ping request\n",
		want: "spec.ingress[0].icmp.type: expected an integer, got a string"},
	{name: "AS number in dotted form with three parts", doc: peer(`peerIP: 198.18.0.1, asNumber: "1.2.3"`),
		want: `spec.asNumber: invalid AS number "1.2.3"`},
	{name: "duration without unit", doc: peer(`peerIP: 198.18.0.1, maxRestartTime: "10"`),
		want: `spec.maxRestartTime: invalid duration "10"`},
	{name: "bad timestamp", doc: manifest("Tier", "name: t, creationTimestamp: yesterday", ""),
		want: `metadata.creationTimestamp: not an RFC 3339 timestamp: "yesterday"`},

	// Metadata.
	{name: "no name", doc: manifest("IPPool", "labels: {a: b}", "cidr: 198.19.0.0/16"), want: "metadata.name: required"},
	{name: "name with upper case", doc: manifest("IPPool", "name: My_Pool", "cidr: 198.19.0.0/16"),
		want: `metadata.name: "My_Pool" is not a valid IPPool name: lower case letters, digits, '-' and '.'`},
	{name: "name too long", doc: manifest("Profile", "name: "+strings.Repeat("a", 254), ""), want: "metadata.name: 254 bytes long, more than 253"},
	{name: "policy name with two dots", doc: manifest("NetworkPolicy", "name: t.h.i.ng", ""),
		want: `metadata.name: "t.h.i.ng" is not a valid NetworkPolicy name`},
	{name: "global policy with a Kubernetes policy's name", doc: manifest("GlobalNetworkPolicy", "name: knp.default.thing", ""),
		want: `metadata.name: "knp.default.thing" is not a valid GlobalNetworkPolicy name`},
	{name: "tier name with a dot", doc: tier("a.b", ""), want: `metadata.name: "a.b" is not a valid Tier name`},
	{name: "tier name of 64 bytes", doc: tier(strings.Repeat("t", 64), ""), want: "metadata.name: 64 bytes long, more than 63"},
	{name: "namespace of a global resource", doc: manifest("GlobalNetworkPolicy", "name: p, namespace: default", ""),
		want: "metadata.namespace: must not be set: GlobalNetworkPolicy is not namespaced"},
	{name: "namespace with upper case", doc: manifest("NetworkPolicy", "name: p, namespace: Prod", ""),
		want: `metadata.namespace: "Prod" is not a valid namespace`},
	{name: "bad label key", doc: manifest("Tier", `name: t, labels: {"bad key": x}`, ""),
		want: `metadata.labels["bad key"]: invalid label key`},
	{name: "bad label value", doc: manifest("Tier", `name: t, labels: {k: "a b"}`, ""),
		want: `metadata.labels["k"]: invalid label value "a b"`},
	{name: "bad annotation key", doc: manifest("Tier", `name: t, annotations: {"/x": "y"}`, ""),
		want: `metadata.annotations["/x"]: invalid annotation key`},

	// Policies.
	{name: "rule without action", doc: rule(`protocol: TCP`), want: "spec.ingress[0].action: required (Allow, Deny, Log or Pass)"},
	{name: "action in lower case", doc: rule(`action: allow`), want: `spec.ingress[0].action: "allow" is not one of Allow, Deny, Log, Pass`},
	{name: "protocol in lower case", doc: rule(`action: Allow, protocol: tcp`), want: `spec.ingress[0].protocol: "tcp" is not a protocol`},
	{name: "protocol 0", doc: rule(`action: Allow, notProtocol: 0`), want: "spec.ingress[0].notProtocol: 0 is not a protocol"},
	{name: "port numbers without protocol", doc: rule(`action: Allow, destination: {ports: [80]}`),
		want: "spec.ingress[0].destination.ports: port numbers need protocol TCP, UDP or SCTP"},
	{name: "ports with ICMP", doc: rule(`action: Allow, protocol: ICMP, source: {notPorts: [80]}`),
		want: "spec.ingress[0].source.notPorts: ports need protocol TCP, UDP or SCTP, not ICMP"},
	{name: "ports with protocol 7", doc: rule(`action: Allow, protocol: 7, destination: {ports: ["1:2"]}`),
		want: "spec.ingress[0].destination.ports: ports need protocol TCP, UDP or SCTP, not 7"},
	{name: "port 0", doc: rule(`action: Allow, protocol: UDP, destination: {ports: ["0:10"]}`),
		want: "spec.ingress[0].destination.ports[0]: port 0: want 1 to 65535"},
	{name: "icmp without protocol", doc: rule(`action: Allow, icmp: {type: 8}`), want: "spec.ingress[0].icmp: needs protocol ICMP or ICMPv6"},
	{name: "notICMP with TCP", doc: rule(`action: Allow, protocol: TCP, notICMP: {type: 8}`),
		want: "spec.ingress[0].notICMP: needs protocol ICMP or ICMPv6"},
	{name: "icmp code without type", doc: rule(`action: Allow, protocol: ICMP, icmp: {code: 1}`),
		want: "spec.ingress[0].icmp.code: needs a type"},
	{name: "icmp type 255", doc: rule(`action: Allow, protocol: ICMP, icmp: {type: 255}`),
		want: "spec.ingress[0].icmp.type: 255 is not an ICMP type: want 0 to 254"},
	{name: "icmp code 256", doc: rule(`action: Allow, protocol: 1, icmp: {type: 3, code: 256}`),
		want: "spec.ingress[0].icmp.code: 256 is not an ICMP code: want 0 to 255"},
	{name: "ICMP for IPv6", doc: rule(`action: Allow, protocol: ICMP, ipVersion: 6`), want: "spec.ingress[0].protocol: ICMP needs ipVersion 4"},
	{name: "IP version 5", doc: rule(`action: Allow, ipVersion: 5`), want: "spec.ingress[0].ipVersion: 5 is not an IP version: want 4 or 6"},
	{name: "address in nets", doc: rule(`action: Allow, source: {nets: [10.0.0.1]}`),
		want: `spec.ingress[0].source.nets[0]: "10.0.0.1" is an address, not a CIDR: write 10.0.0.1/32`},
	{name: "unmasked CIDR in nets", doc: rule(`action: Allow, destination: {notNets: [10.0.0.1/8]}`),
		want: `spec.ingress[0].destination.notNets[0]: "10.0.0.1/8" is not strictly masked: did you mean 10.0.0.0/8?`},
	{name: "not a CIDR", doc: rule(`action: Allow, source: {nets: [garbage]}`), want: `spec.ingress[0].source.nets[0]: "garbage" is not a CIDR`},
	{name: "everything in notNets", doc: rule(`action: Allow, source: {notNets: [0.0.0.0/0]}`),
		want: "spec.ingress[0].source.notNets[0]: 0.0.0.0/0 matches every address, so the rule would match nothing"},
	{name: "IPv4 and IPv6 in one rule", doc: rule(`action: Allow, source: {nets: [10.0.0.0/8]}, destination: {nets: ["fd00::/8"]}`),
		want: "spec.ingress[0].destination.nets: a rule cannot mix IPv4 and IPv6 CIDRs"},
	{name: "nets of another IP version", doc: rule(`action: Allow, ipVersion: 4, source: {nets: ["fd00::/8"]}`),
		want: "spec.ingress[0].source.nets: CIDRs of another IP version than the rule's ipVersion 4"},
	{name: "bad selector", doc: gnp(`selector: "app = 'web'"`), want: `spec.selector: selector "app = 'web'": position`},
	{name: "bad selector in a rule", doc: rule(`action: Allow, source: {notSelector: "has(a"}`),
		want: `spec.ingress[0].source.notSelector: selector "has(a": position`},
	{name: "selector too long", doc: gnp(`selector: "has(` + strings.Repeat("a", 1100) + `)"`),
		want: "spec.selector: 1105 bytes long, more than 1024"},
	{name: "global() in the policy's selector", doc: gnp(`selector: "global()"`),
		want: "spec.selector: global() can only be used in a rule's namespaceSelector"},
	{name: "global() in a rule's selector", doc: rule(`action: Allow, source: {selector: "global()"}`),
		want: "spec.ingress[0].source.selector: global() can only be used in a rule's namespaceSelector"},
	{name: "global() in a GlobalNetworkPolicy's namespaceSelector", doc: gnp(`namespaceSelector: "global()"`),
		want: "spec.namespaceSelector: global() can only be used in a rule's namespaceSelector"},
	{name: "global() with more", doc: rule(`action: Allow, source: {namespaceSelector: "global() || has(a)"}`),
		want: "spec.ingress[0].source.namespaceSelector: global() cannot be combined with other selectors"},
	{name: "type in lower case", doc: gnp(`types: [ingress]`), want: `spec.types[0]: "ingress" is not one of Ingress, Egress`},
	{name: "type twice", doc: np(`types: [Egress, Egress]`), want: "spec.types[1]: Egress given more than once"},
	{name: "unknown performance hint", doc: np(`performanceHints: [Fast]`),
		want: `spec.performanceHints[0]: "Fast" is not one of AssumeNeededOnEveryNode`},
	{name: "tier with upper case", doc: np(`tier: Security`), want: `spec.tier: "Security" is not a valid Tier name`},
	{name: "bad rule annotation", doc: rule(`action: Allow, metadata: {annotations: {"a/b/c": x}}`),
		want: `spec.ingress[0].metadata.annotations["a/b/c"]: invalid annotation key`},
	{name: "preDNAT with doNotTrack", doc: gnp(`preDNAT: true, doNotTrack: true, applyOnForward: true`),
		want: "spec.preDNAT: preDNAT and doNotTrack cannot both be true"},
	{name: "preDNAT with egress rules", doc: gnp(`preDNAT: true, applyOnForward: true, egress: [{action: Allow}]`),
		want: "spec.preDNAT: a preDNAT policy cannot have egress rules"},
	{name: "doNotTrack without applyOnForward", doc: gnp(`doNotTrack: true`),
		want: "spec.applyOnForward: must be true when preDNAT or doNotTrack is"},
	{name: "bad profile label", doc: manifest("Profile", "name: p", `labelsToApply: {"my!label": x}`),
		want: `spec.labelsToApply["my!label"]: invalid label key`},

	// Tiers.
	{name: "tier default action Allow", doc: tier("t", `defaultAction: Allow`), want: `spec.defaultAction: "Allow" is not one of Deny, Pass`},
	{name: "default tier's order", doc: tier("default", `order: 100`), want: "spec.order: the default tier must have order 1000000"},
	{name: "default tier passing", doc: tier("default", `order: 1000000, defaultAction: Pass`),
		want: "spec.defaultAction: the default tier must have default action Deny"},
	{name: "kube-admin tier denying", doc: tier("kube-admin", `order: 1000`),
		want: "spec.defaultAction: the kube-admin tier must have default action Pass"},

	// IP pools.
	{name: "pool without CIDR", doc: pool(`blockSize: 26`), want: "spec.cidr: required"},
	{name: "pool CIDR not masked", doc: pool(`cidr: 198.19.0.1/16`), want: `spec.cidr: "198.19.0.1/16" is not strictly masked: did you mean 198.19.0.0/16?`},
	{name: "pool CIDR an address", doc: pool(`cidr: 198.19.0.1`), want: `spec.cidr: "198.19.0.1" is an address, not a CIDR`},
	{name: "pool smaller than a block", doc: pool(`cidr: 198.19.0.0/27`), want: "spec.cidr: a /27 pool is smaller than one of its /26 blocks"},
	{name: "block size 33", doc: pool(`cidr: 198.19.0.0/16, blockSize: 33`), want: "spec.blockSize: 33: want 20 to 32 for an IPv4 pool"},
	{name: "link-local pool", doc: pool(`cidr: 169.254.0.0/16`), want: "spec.cidr: 169.254.0.0/16 overlaps the link-local range"},
	{name: "IPIP mode in lower case", doc: pool(`cidr: 198.19.0.0/16, ipipMode: never`),
		want: `spec.ipipMode: "never" is not one of Never, Always, CrossSubnet`},
	{name: "IPIP and VXLAN", doc: pool(`cidr: 198.19.0.0/16, ipipMode: Always, vxlanMode: CrossSubnet`),
		want: "spec.vxlanMode: ipipMode and vxlanMode cannot both be enabled"},
	{name: "unknown use", doc: pool(`cidr: 198.19.0.0/16, allowedUses: [Workloads]`),
		want: `spec.allowedUses[0]: "Workloads" is not one of Workload, Tunnel, LoadBalancer`},
	{name: "LoadBalancer with Workload", doc: pool(`cidr: 198.19.0.0/16, allowedUses: [LoadBalancer, Workload]`),
		want: "spec.allowedUses: LoadBalancer cannot be combined with Workload or Tunnel"},
	{name: "empty assignment mode", doc: pool(`cidr: 198.19.0.0/16, assignmentMode: ""`),
		want: `spec.assignmentMode: "" is not one of Automatic, Manual`},
	{name: "global() in nodeSelector", doc: pool(`cidr: 198.19.0.0/16, nodeSelector: "global()"`),
		want: "spec.nodeSelector: global() is not valid in an IPPool's selectors"},

	// BGP peers.
	{name: "peer IP not an address", doc: peer(`peerIP: badpeerIP, asNumber: 64515`),
		want: `spec.peerIP: "badpeerIP" is not an IP address, <IPv4>:<port> or [<IPv6>]:<port>`},
	{name: "peer port 0", doc: peer(`peerIP: "198.18.0.1:0"`), want: `spec.peerIP: "198.18.0.1:0": port 0`},
	{name: "peer port above 65535", doc: peer(`peerIP: "198.18.0.1:65536"`), want: `spec.peerIP: "198.18.0.1:65536" is not an IP address`},
	{name: "node and nodeSelector", doc: peer(`node: n1, nodeSelector: "has(rack)", peerIP: 198.18.0.1`),
		want: "spec.nodeSelector: node and nodeSelector cannot both be set"},
	{name: "peerIP and peerSelector", doc: peer(`peerIP: 198.18.0.1, peerSelector: "has(rr)"`),
		want: "spec.peerSelector: peerIP and peerSelector cannot both be set"},
	{name: "peerSelector with asNumber", doc: peer(`peerSelector: "has(rr)", asNumber: 64512`),
		want: "spec.asNumber: must be empty when peerSelector is set"},
	{name: "localWorkloadSelector without asNumber", doc: peer(`localWorkloadSelector: "has(bgp)"`),
		want: "spec.asNumber: required when localWorkloadSelector is set"},
	{name: "keepOriginalNextHop and nextHopMode", doc: peer(`peerIP: 198.18.0.1, keepOriginalNextHop: true, nextHopMode: Keep`),
		want: "spec.keepOriginalNextHop: keepOriginalNextHop and nextHopMode cannot both be set"},
	{name: "reachableBy without peerIP", doc: peer(`reachableBy: 198.18.0.254`), want: "spec.reachableBy: must be empty when peerIP is"},
	{name: "reachableBy of another version", doc: peer(`peerIP: 198.18.0.1, reachableBy: "fd00::1"`),
		want: "spec.reachableBy: fd00::1 and peerIP 198.18.0.1 are of different IP versions"},
	{name: "unknown source address", doc: peer(`peerIP: 198.18.0.1, sourceAddress: rubbish`),
		want: `spec.sourceAddress: "rubbish" is not one of UseNodeIP, None`},
	{name: "secret without key", doc: peer(`peerIP: 198.18.0.1, password: {secretKeyRef: {name: s}}`),
		want: "spec.password.secretKeyRef.key: required"},
	{name: "bad filter name", doc: peer(`peerIP: 198.18.0.1, filters: [My_Filter]`), want: `spec.filters[0]: "My_Filter" is not a valid name`},

	// BGP configuration.
	{name: "unknown log level", doc: bgpcf(`logSeverityScreen: invalidLvl`),
		want: `spec.logSeverityScreen: "invalidLvl" is not one of Trace, Debug, Info, Warning, Error, Fatal`},
	{name: "AS 0", doc: bgpcf(`asNumber: 0`), want: "spec.asNumber: AS 0 is reserved (RFC 7607)"},
	{name: "bad service CIDR", doc: bgpcf(`serviceClusterIPs: [{cidr: x.x.x.x}]`), want: `spec.serviceClusterIPs[0].cidr: "x.x.x.x" is not an IP address`},
	{name: "community of 17 bits", doc: bgpcf(`communities: [{name: c, value: "65536:1"}], prefixAdvertisements: [{cidr: 198.19.0.0/26, communities: [c]}]`),
		want: `spec.communities[0].value: "65536:1": each part of a standard community is a 16-bit number`},
	{name: "community without a value", doc: bgpcf(`communities: [{name: c}], prefixAdvertisements: [{cidr: 198.19.0.0/26, communities: [c]}]`),
		want: "spec.communities[0].value: required"},
	{name: "community not defined", doc: bgpcf(`prefixAdvertisements: [{cidr: 198.19.0.0/26, communities: [nope]}]`),
		want: `spec.prefixAdvertisements[0].communities[0]: "nope" is no community value (aa:nn or aa:nn:mm) and no name in communities`},
	{name: "communities unused", doc: bgpcf(`communities: [{name: c, value: "1:1"}]`),
		want: "spec.communities: defined but used by no prefixAdvertisements"},
	{name: "mesh password without mesh", doc: bgpcf(`nodeToNodeMeshEnabled: false, nodeMeshPassword: {secretKeyRef: {name: s, key: k}}`),
		want: "spec.nodeMeshPassword: cannot be set when nodeToNodeMeshEnabled is false"},
	{name: "ignoring every interface", doc: bgpcf(`ignoredInterfaces: ["*"]`),
		want: `spec.ignoredInterfaces[0]: "*" is not an interface name or pattern`},
	{name: "bad local workload peering address", doc: bgpcf(`localWorkloadPeeringIPV4: "fd00::1"`),
		want: `spec.localWorkloadPeeringIPV4: "fd00::1" is not an IPv4 address`},
	{name: "route priority 0", doc: bgpcf(`ipv4NormalRoutePriority: 0`), want: "spec.ipv4NormalRoutePriority: 0: want 1 to 2147483646"},

	// Nodes and workload endpoints (read-only, but read as Calico reads them).
	{name: "node with empty BGP", doc: manifest("Node", "name: node1", "bgp: {}"), want: "spec.bgp: must not be empty"},
	{name: "node IPv6 address as IPv4", doc: manifest("Node", "name: node1", `bgp: {ipv4Address: "fd00::1/64"}`),
		want: `spec.bgp.ipv4Address: "fd00::1/64" is not an IPv4 address or CIDR`},
	{name: "node route reflector cluster ID", doc: manifest("Node", "name: node1", `bgp: {ipv4Address: 198.18.0.1/24, routeReflectorClusterID: abcdef}`),
		want: `spec.bgp.routeReflectorClusterID: "abcdef" is not an IPv4 address`},
	{name: "node WireGuard key", doc: manifest("Node", "name: node1", "") + "status: {wireguardPublicKey: foobar}\n",
		want: "status.wireguardPublicKey: not a WireGuard key"},
	{name: "endpoint without interface", doc: manifest("WorkloadEndpoint", "name: w", `ipNetworks: [198.19.0.1/32]`),
		want: "spec.interfaceName: required"},
	{name: "endpoint with a /24", doc: manifest("WorkloadEndpoint", "name: w", `interfaceName: cali1, ipNetworks: [198.19.0.0/24]`),
		want: "spec.ipNetworks[0]: 198.19.0.0/24 holds more than one address"},
	{name: "endpoint port without name", doc: manifest("WorkloadEndpoint", "name: w", `interfaceName: cali1, ports: [{protocol: TCP, port: 80}]`),
		want: "spec.ports[0].name: required when hostPort is not set"},
	{name: "endpoint port of protocol 123", doc: manifest("WorkloadEndpoint", "name: w", `interfaceName: cali1, ports: [{name: p, protocol: 123, port: 80}]`),
		want: "spec.ports[0].protocol: 123 has no ports: want TCP, UDP or SCTP"},

	// What Margay does not support.
	{name: "HTTP match", doc: rule(`action: Allow, http: {methods: [GET]}`),
		want: "spec.ingress[0].http: not supported by Margay (application layer policy needs a proxy"},
	{name: "service match", doc: gnp(`egress: [{action: Allow, destination: {services: {name: s, namespace: ns}}}]`),
		want: "spec.egress[0].destination.services: not supported by Margay (Margay does not follow Kubernetes Services)"},
	{name: "IPv6 rule", doc: rule(`action: Allow, ipVersion: 6`), want: "spec.ingress[0].ipVersion: not supported by Margay (Margay is IPv4-only)"},
	{name: "ICMPv6 as a number", doc: rule(`action: Allow, notProtocol: 58`), want: "spec.ingress[0].notProtocol: not supported by Margay (Margay is IPv4-only)"},
	{name: "IPv6 CIDR", doc: rule(`action: Allow, source: {nets: ["fd00::/8"]}`), want: "spec.ingress[0].source.nets[0]: not supported by Margay (Margay is IPv4-only)"},
	{name: "named port no endpoint port can have", doc: rule(`action: Allow, protocol: TCP, destination: {ports: [HTTP_alt]}`),
		want: `spec.ingress[0].destination.ports[0]: "HTTP_alt" names no port an endpoint can have`},
	{name: "named port too long", doc: rule(`action: Allow, protocol: TCP, destination: {ports: [metrics-endpoint-1]}`),
		want: `spec.ingress[0].destination.ports[0]: "metrics-endpoint-1" names no port an endpoint can have: must be no more than 15 characters`},
	{name: "Pass in a profile", doc: manifest("Profile", "name: p", "ingress: [{action: Allow}, {action: Pass}]"),
		want: "spec.ingress[1].action: not supported by Margay (a profile's rules come after every tier, so Pass has nothing to pass to: use Deny)"},
	{name: "preDNAT", doc: gnp(`preDNAT: true, applyOnForward: true`), want: "spec.preDNAT: not supported by Margay (it concerns host endpoints"},
	{name: "IPv6 pool", doc: pool(`cidr: "fd00::/48"`), want: "spec.cidr: not supported by Margay (Margay is IPv4-only)"},
	{name: "VXLAN", doc: pool(`cidr: 198.19.0.0/16, vxlanMode: Always`), want: "spec.vxlanMode: not supported by Margay (Margay routes without encapsulation)"},
	{name: "NAT", doc: pool(`cidr: 198.19.0.0/16, natOutgoing: true`), want: "spec.natOutgoing: not supported by Margay (Margay does no NAT)"},
	{name: "pool not exported", doc: pool(`cidr: 198.19.0.0/16, disableBGPExport: true`), want: "spec.disableBGPExport: not supported by Margay"},
	{name: "pool for some nodes", doc: pool(`cidr: 198.19.0.0/16, nodeSelector: "zone == 'a'"`), want: "spec.nodeSelector: not supported by Margay"},
	{name: "pool for some namespaces", doc: pool(`cidr: 198.19.0.0/16, namespaceSelector: "has(x)"`), want: "spec.namespaceSelector: not supported by Margay"},
	{name: "LoadBalancer pool", doc: pool(`cidr: 198.19.0.0/16, allowedUses: [LoadBalancer]`), want: "spec.allowedUses: not supported by Margay"},
	{name: "manual pool", doc: pool(`cidr: 198.19.0.0/16, assignmentMode: Manual`), want: "spec.assignmentMode: not supported by Margay"},
	{name: "peers by node selector", doc: peer(`nodeSelector: "has(rack)", peerIP: 198.18.0.1`), want: "spec.nodeSelector: not supported by Margay"},
	{name: "peers by peer selector", doc: peer(`peerSelector: "has(rr)"`), want: "spec.peerSelector: not supported by Margay"},
	{name: "peer with port", doc: peer(`peerIP: "198.18.0.1:1179"`), want: "spec.peerIP: not supported by Margay (Margay's peers are reached on port 179)"},
	{name: "IPv6 peer", doc: peer(`peerIP: "[fd00::1]:179"`), want: "spec.peerIP: not supported by Margay (Margay is IPv4-only)"},
	{name: "peer local AS", doc: peer(`peerIP: 198.18.0.1, localASNumber: 65001`), want: "spec.localASNumber: not supported by Margay"},
	{name: "next hop self", doc: peer(`peerIP: 198.18.0.1, nextHopMode: Self`), want: "spec.nextHopMode: not supported by Margay"},
	{name: "peer password", doc: peer(`peerIP: 198.18.0.1, password: {secretKeyRef: {name: s, key: k}}`),
		want: "spec.password.secretKeyRef: not supported by Margay (Margay cannot read Kubernetes secrets)"},
	{name: "no source address", doc: peer(`peerIP: 198.18.0.1, sourceAddress: None`), want: "spec.sourceAddress: not supported by Margay"},
	{name: "peer restart time", doc: peer(`peerIP: 198.18.0.1, maxRestartTime: 10s`),
		want: "spec.maxRestartTime: not supported by Margay (the agent's --bgp-hold-time, --bgp-keepalive and --bgp-restart-time"},
	{name: "peer keepalive", doc: peer(`peerIP: 198.18.0.1, keepaliveTime: 10s`), want: "spec.keepaliveTime: not supported by Margay"},
	{name: "TTL security", doc: peer(`peerIP: 198.18.0.1, ttlSecurity: 1`), want: "spec.ttlSecurity: not supported by Margay"},
	{name: "reachableBy", doc: peer(`peerIP: 198.18.0.1, reachableBy: 198.18.0.254`), want: "spec.reachableBy: not supported by Margay"},
	{name: "BGP filters", doc: peer(`peerIP: 198.18.0.1, filters: [f]`), want: "spec.filters: not supported by Margay"},
	{name: "manual reverse peering", doc: peer(`peerIP: 198.18.0.1, reversePeering: Manual`), want: "spec.reversePeering: not supported by Margay"},
	{name: "per-node BGP configuration", doc: manifest("BGPConfiguration", "name: node.n1", ""),
		want: "metadata.name: not supported by Margay (Margay has one cluster-wide BGP configuration, named default)"},
	{name: "BGP log level", doc: bgpcf(`logSeverityScreen: Debug`), want: "spec.logSeverityScreen: not supported by Margay (the agent's --log-level"},
	{name: "Service advertisement", doc: bgpcf(`serviceLoadBalancerIPs: [{cidr: 198.51.100.0/24}]`),
		want: "spec.serviceLoadBalancerIPs: not supported by Margay (Margay does not advertise Service addresses)"},
	{name: "listen port", doc: bgpcf(`listenPort: 178`), want: "spec.listenPort: not supported by Margay (the agent's --bgp-port"},
	{name: "bind mode", doc: bgpcf(`bindMode: NodeIP`), want: "spec.bindMode: not supported by Margay"},
	{name: "ignored interfaces", doc: bgpcf(`ignoredInterfaces: [docker0]`), want: "spec.ignoredInterfaces: not supported by Margay"},
	{name: "route priority", doc: bgpcf(`ipv4NormalRoutePriority: 1024`), want: "spec.ipv4NormalRoutePriority: not supported by Margay"},
	{name: "cluster routes left to Felix", doc: bgpcf(`programClusterRoutes: Disabled`),
		want: "spec.programClusterRoutes: not supported by Margay (Margay's agent programs the routes BGP learns)"},
	{name: "unknown cluster routes choice", doc: bgpcf(`programClusterRoutes: Sometimes`),
		want: `spec.programClusterRoutes: "Sometimes" is not one of Enabled, Disabled, EnabledIPIPOnly, EnabledNoEncapOnly`},
}

func TestBadManifests(t *testing.T) {
	for _, tt := range badManifests {
		t.Run(tt.name, func(t *testing.T) {
			var r Resource
			var err error
			if tt.json {
				r, err = Decode([]byte(tt.doc))
			} else {
				r, err = decodeYAML(t, tt.doc)
			}
			if err == nil {
				err = r.Validate()
			} else if r != nil {
				t.Errorf("Decode returned %v with its error", r)
			}
			if tt.want == "" {
				if err != nil {
					t.Fatalf("want no error, got:\n%v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			var matched *FieldError
			for _, fe := range fieldErrors(t, err) {
				if strings.Contains(fe.Error(), tt.want) {
					matched = fe
					break
				}
			}
			switch {
			case matched == nil:
				t.Fatalf("error:\n%v\nwant one containing %q", err, tt.want)
			case strings.Contains(tt.want, "not supported by Margay") != errors.Is(matched, ErrUnsupported):
				t.Errorf("errors.Is(%q, ErrUnsupported) = %v", matched, errors.Is(matched, ErrUnsupported))
			}
		})
	}
}

// Validate reports every problem of a resource, in the order of the document.
func TestValidateReportsAll(t *testing.T) {
	r, err := decodeYAML(t, `
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: p
spec:
  selector: "app =="
  types: [Ingress, Sideways]
  ingress:
    - action: Allow
      protocol: TCP
      destination: {ports: [0]}
    - action: Deny
      http: {methods: [GET]}
`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, fe := range fieldErrors(t, r.Validate()) {
		got = append(got, fe.Path)
	}
	want := []string{"spec.selector", "spec.types[1]", "spec.ingress[0].destination.ports[0]", "spec.ingress[1].http"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("errors at %q, want %q", got, want)
	}
}

// Decode reports every problem of a document too, in the order of the JSON document (which
// sigs.k8s.io/yaml writes with its keys sorted).
func TestDecodeReportsAll(t *testing.T) {
	_, err := decodeYAML(t, `
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: p, nmespace: x}
spec:
  order: high
  ingress: [{action: Allow, sorce: {}}]
`)
	var got []string
	for _, fe := range fieldErrors(t, err) {
		got = append(got, fe.Error())
	}
	want := []string{
		`metadata.nmespace: unknown field (did you mean "namespace"?)`,
		`spec.ingress[0].sorce: unknown field (did you mean "source"?)`,
		"spec.order: expected a number, got a string",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Manifests that Calico accepts and Margay supports, among them Calico's defaults given
// explicitly and the policy names of both Calico's rules (up to v3.31 and since v3.32).
var goodManifests = []struct {
	name string
	doc  string
}{
	{"policy in a tier, named without the tier (Calico v3.32 on)", manifest("GlobalNetworkPolicy", "name: allow-dns", "tier: security")},
	{"policy in a tier, named <tier>.<name> (Calico up to v3.31)", manifest("NetworkPolicy", "name: security.allow-dns", "tier: security")},
	{"policy in the default tier, named default.<name>", manifest("GlobalNetworkPolicy", "name: default.allow-dns", "")},
	{"policy converted from Kubernetes", manifest("NetworkPolicy", "name: knp.default.allow.dns", "")},
	{"name of 253 bytes", manifest("Profile", "name: "+strings.Repeat("a", 253), "")},
	{"tier name of 63 bytes", tier(strings.Repeat("t", 63), "")},
	{"the default tier as Calico creates it", tier("default", "order: 1000000, defaultAction: Deny")},
	{"the kube-admin tier as Calico creates it", tier("kube-admin", "order: 1000, defaultAction: Pass")},
	{"every action", gnp("ingress: [{action: Log}, {action: Pass}, {action: Deny}, {action: Allow}]")},
	{"protocols by name and number", gnp(`ingress: [{action: Allow, protocol: SCTP, destination: {ports: [9]}}, ` +
		`{action: Allow, protocol: "17", notProtocol: UDPLite, source: {ports: ["1:2"]}}, {action: Allow, protocol: 255}]`)},
	{"ICMP type and code at their limits", rule("action: Allow, protocol: 1, ipVersion: 4, icmp: {type: 254, code: 255}, notICMP: {type: 0}")},
	{"nets and notNets", rule("action: Allow, source: {nets: [198.18.0.0/15, 10.0.0.1/32], notNets: [198.18.0.0/24]}")},
	{"global() alone in a rule's namespaceSelector", rule(`action: Allow, source: {namespaceSelector: " global() ", selector: "has(a)"}`)},
	{"service account names", rule("action: Allow, source: {serviceAccounts: {names: [api]}}")},
	{"service account labels", np(`serviceAccountSelector: "role == 'x'", ingress: [{action: Allow, source: {serviceAccounts: {selector: "team == 'a'"}}}]`)},
	{"named ports", rule("action: Allow, protocol: TCP, source: {ports: [metrics]}, destination: {ports: [http, 8080, http-alt], notPorts: [admin]}")},
	{"profile with Log, Allow and Deny", manifest("Profile", "name: p", "ingress: [{action: Log}, {action: Allow}], egress: [{action: Deny}]")},
	{"explicit empty selectors", np(`selector: "", serviceAccountSelector: ""`)},
	{"performance hint", np("performanceHints: [AssumeNeededOnEveryNode]")},
	{"pool with Calico's defaults given", pool("cidr: 198.19.0.0/16, blockSize: 26, ipipMode: Never, vxlanMode: Never, " +
		"natOutgoing: false, nodeSelector: all(), allowedUses: [Workload, Tunnel], assignmentMode: Automatic")},
	{"disabled pool smaller than a block", pool("cidr: 198.19.0.0/27, disabled: true")},
	{"tunnel-only pool", pool("cidr: 198.19.0.0/16, blockSize: 20, allowedUses: [Tunnel]")},
	{"peer with Calico's defaults given", peer("peerIP: 198.18.0.254, asNumber: 64513, node: node1, sourceAddress: UseNodeIP, " +
		"nextHopMode: Auto, reversePeering: Auto, password: {}")},
	{"peer AS in dotted form", peer(`peerIP: 198.18.0.254, asNumber: "1.10"`)},
	{"BGP configuration with Calico's defaults given", bgpcf("logSeverityScreen: info, nodeToNodeMeshEnabled: true, asNumber: 64512, " +
		"serviceLoadBalancerAggregation: Enabled, listenPort: 179, programClusterRoutes: EnabledNoEncapOnly")},
	{"mesh off", bgpcf("nodeToNodeMeshEnabled: false")},
}

func TestGoodManifests(t *testing.T) {
	for _, tt := range goodManifests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := decodeYAML(t, tt.doc)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if err := r.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}
