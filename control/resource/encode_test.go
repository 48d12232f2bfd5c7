package resource

import (
	"bytes"
	"path/filepath"
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"
)

// Manifests that set every field of their kind (valid or not: only the form matters here).
var everyField = map[Kind]string{
	KindNetworkPolicy: `
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: security.np
  namespace: prod
  uid: 0b5c7b5e-8a0e-4a57-9d0e-3f3e5b5c1a2b
  resourceVersion: "42"
  creationTimestamp: "2025-01-02T03:04:05Z"
  labels: {app: web, projectcalico.org/tier: security}
  annotations: {note: "x: y"}
spec:
  tier: security
  order: 10.5
  selector: app == 'web' && !has(canary)
  types: [Ingress, Egress]
  serviceAccountSelector: all()
  performanceHints: [AssumeNeededOnEveryNode]
  ingress:
    - action: Allow
      ipVersion: 4
      protocol: "6"
      notProtocol: UDPLite
      icmp: {type: 8, code: 0}
      notICMP: {type: 3}
      source:
        nets: [198.18.0.0/24]
        notNets: [198.18.0.1/32]
        selector: role in {'a', 'b'}
        notSelector: has(x)
        namespaceSelector: global()
        ports: ["80", 443, "8000:8080", http]
        notPorts: [22]
        serviceAccounts: {names: [api, web], selector: team == 'x'}
      destination:
        services: {name: svc, namespace: prod}
      http:
        methods: [GET, PUT]
        paths: [{exact: /a}, {prefix: /b}]
      metadata: {annotations: {rule: one}}
  egress:
    - action: Log
    - action: Pass
      destination: {nets: [10.0.0.0/8]}
`,
	KindGlobalNetworkPolicy: `
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: gnp}
spec:
  tier: default
  order: 0
  selector: all()
  namespaceSelector: kubernetes.io/metadata.name == 'prod'
  serviceAccountSelector: has(x)
  types: [Ingress]
  doNotTrack: true
  preDNAT: true
  applyOnForward: true
  performanceHints: [AssumeNeededOnEveryNode]
  ingress: [{action: Deny, protocol: 132, destination: {ports: [9]}}]
`,
	KindProfile: `
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.prod, labels: {a: b}}
spec:
  ingress: [{action: Allow}]
  egress: [{action: Deny, protocol: ICMP, icmp: {type: 0}}]
  labelsToApply: {pcns.team: blue, stage: dev}
`,
	KindTier: `
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100, defaultAction: Pass}
`,
	KindIPPool: `
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec:
  cidr: 198.19.0.0/16
  vxlanMode: Never
  ipipMode: CrossSubnet
  natOutgoing: true
  disabled: true
  disableBGPExport: true
  blockSize: 28
  nodeSelector: zone == 'a'
  namespaceSelector: has(x)
  allowedUses: [Workload, Tunnel]
  assignmentMode: Manual
`,
	KindBGPPeer: `
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec:
  node: node1
  nodeSelector: rack == 'a'
  peerIP: "198.18.0.254:1179"
  asNumber: "1.10"
  localASNumber: 65001
  peerSelector: has(rr)
  keepOriginalNextHop: true
  nextHopMode: Keep
  password: {secretKeyRef: {name: bgp, key: tor, optional: true}}
  sourceAddress: None
  maxRestartTime: 120s
  keepaliveTime: 1m30s
  numAllowedLocalASNumbers: 2
  ttlSecurity: 1
  reachableBy: 198.18.0.1
  filters: [f1, f2]
  localWorkloadSelector: has(bgp)
  reversePeering: Manual
`,
	KindBGPConfiguration: `
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  logSeverityScreen: Debug
  nodeToNodeMeshEnabled: false
  asNumber: 64512
  serviceLoadBalancerIPs: [{cidr: 198.51.100.0/24}]
  serviceExternalIPs: [{cidr: 203.0.113.7}]
  serviceClusterIPs: [{cidr: 10.96.0.0/12}]
  serviceLoadBalancerAggregation: Disabled
  communities: [{name: c, value: "64512:100"}]
  prefixAdvertisements: [{cidr: 198.19.0.0/26, communities: [c, "1:2:3"]}]
  listenPort: 1179
  nodeMeshPassword: {secretKeyRef: {name: s, key: k}}
  nodeMeshMaxRestartTime: 2m
  bindMode: NodeIP
  ignoredInterfaces: [docker*]
  localWorkloadPeeringIPV4: 169.254.0.179
  localWorkloadPeeringIPV6: "fd00::179"
  programClusterRoutes: Enabled
  ipv4NormalRoutePriority: 1024
  ipv6NormalRoutePriority: 1024
`,
	KindNode: `
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node1, labels: {kubernetes.io/hostname: node1}}
spec:
  bgp: {asNumber: 64512, ipv4Address: 198.18.0.11/24, ipv6Address: "fd00::11/64", ipv4IPIPTunnelAddr: 198.19.0.1, routeReflectorClusterID: 224.0.0.1}
  ipv4VXLANTunnelAddr: 198.19.0.2
  vxlanTunnelMACAddr: "66:aa:bb:cc:dd:ee"
  ipv6VXLANTunnelAddr: "fd00::2"
  vxlanTunnelMACAddrV6: "66:aa:bb:cc:dd:ef"
  orchRefs: [{nodeName: node1, orchestrator: k8s}]
  wireguard: {interfaceIPv4Address: 198.19.0.3, interfaceIPv6Address: "fd00::3"}
  addresses: [{address: 198.18.0.11, type: InternalIP}]
  interfaces: [{name: ens32, addresses: [198.18.0.11]}]
status:
  wireguardPublicKey: jlkVyQYooZYzI2wFfNhSZez5eWh44yfq1wKVjLvSXgY=
  podCIDRs: [198.19.1.0/24]
`,
	KindWorkloadEndpoint: `
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node1-k8s-web-eth0, namespace: prod}
spec:
  orchestrator: k8s
  workload: web
  node: node1
  containerID: abc123
  pod: web
  endpoint: eth0
  serviceAccountName: default
  ipNetworks: [198.19.0.5/32]
  ipNATs: [{internalIP: 198.19.0.5, externalIP: 203.0.113.5}]
  ipv4Gateway: 169.254.1.1
  ipv6Gateway: "fe80::1"
  profiles: [kns.prod, ksa.prod.default]
  interfaceName: cali0123456789a
  mac: "ee:ee:ee:ee:ee:ee"
  ports: [{name: http, protocol: TCP, port: 80, hostPort: 8080, hostIP: 198.18.0.11}]
  allowSpoofedSourcePrefixes: [198.51.100.0/24]
  qosControls: {ingressBandwidth: 1000000, egressBurst: 4294967296, ingressPacketRate: 100, dscp: AF11}
`,
}

// roundTrip encodes r, decodes the result and checks that it is r again, and that encoding
// that gives the same bytes.
func roundTrip(tb testing.TB, r Resource) []byte {
	tb.Helper()
	b, err := Encode(r)
	if err != nil {
		tb.Fatalf("Encode: %v", err)
	}
	r2, err := Decode(b)
	if err != nil {
		tb.Fatalf("Decode(Encode(r)): %v\n%s", err, b)
	}
	if !reflect.DeepEqual(r, r2) {
		tb.Fatalf("Decode(Encode(r)) differs from r:\n%#v\n%#v", r, r2)
	}
	b2, err := Encode(r2)
	if err != nil || !bytes.Equal(b, b2) {
		tb.Fatalf("encoding again gives %s (%v), want %s", b2, err, b)
	}
	return b
}

func TestRoundTripEveryField(t *testing.T) {
	for _, k := range Kinds() {
		t.Run(string(k), func(t *testing.T) {
			r, err := decodeYAML(t, everyField[k])
			if err != nil {
				t.Fatal(err)
			}
			// Every field was set: the encoding has as many as the manifest.
			want, _ := yaml.YAMLToJSON([]byte(everyField[k]))
			if n, m := countLeaves(t, roundTrip(t, r)), countLeaves(t, want); n != m {
				t.Errorf("the encoding has %d values, the manifest %d:\n%s", n, m, roundTrip(t, r))
			}
		})
	}
}

func countLeaves(tb testing.TB, doc []byte) int {
	var errs errList
	v, err := parseJSON(doc, &errs)
	if err != nil {
		tb.Fatal(err)
	}
	var count func(*jsonValue) int
	count = func(v *jsonValue) int {
		n := 0
		switch v.kind {
		case jsonArray:
			for _, item := range v.items {
				n += count(item)
			}
		case jsonObject:
			for _, m := range v.members {
				n += count(m.value)
			}
		default:
			n = 1
		}
		return n
	}
	return count(v)
}

func TestRoundTripCalicoDocs(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "calico-docs", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			r, err := decodeYAML(t, readTestdata(t, filepath.Base(f)))
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, r)
			roundTrip(t, Defaulted(r))
		})
	}
}

// What margayctl get -o yaml prints for the NetworkPolicy of Calico's reference page, stored
// with Calico's defaults: what calicoctl get -o yaml prints, but for the fields the datastore
// sets (uid, resourceVersion, creationTimestamp).
func TestEncodeAsCalicoctlPrints(t *testing.T) {
	r, err := decodeYAML(t, readTestdata(t, "networkpolicy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encode(Defaulted(r))
	if err != nil {
		t.Fatal(err)
	}
	const wantJSON = `{"kind":"NetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"allow-tcp-6379",` +
		`"namespace":"production","labels":{"projectcalico.org/tier":"default"}},"spec":{"tier":"default","ingress":` +
		`[{"action":"Allow","protocol":"TCP","source":{"selector":"role == 'frontend'"},"destination":{"ports":[6379]},` +
		`"metadata":{"annotations":{"from":"frontend","to":"database"}}}],"egress":[{"action":"Allow"}],` +
		`"selector":"role == 'database'","types":["Ingress","Egress"]}}`
	if string(b) != wantJSON {
		t.Errorf("Encode:\n%s\nwant:\n%s", b, wantJSON)
	}
	y, err := yaml.JSONToYAML(b)
	if err != nil {
		t.Fatal(err)
	}
	const wantYAML = `apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  labels:
    projectcalico.org/tier: default
  name: allow-tcp-6379
  namespace: production
spec:
  egress:
  - action: Allow
  ingress:
  - action: Allow
    destination:
      ports:
      - 6379
    metadata:
      annotations:
        from: frontend
        to: database
    protocol: TCP
    source:
      selector: role == 'frontend'
  selector: role == 'database'
  tier: default
  types:
  - Ingress
  - Egress
`
	if string(y) != wantYAML {
		t.Errorf("as YAML:\n%s\nwant:\n%s", y, wantYAML)
	}
}

// Calico's int-or-string values take their canonical forms.
func TestEncodeCanonicalValues(t *testing.T) {
	r, err := decodeYAML(t, `
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: p
  creationTimestamp: "2025-06-07T10:11:12.345+02:00"
spec:
  ingress:
    - action: Allow
      protocol: "17"
      destination: {ports: ["53", "1000:1000", "1000:2000", dns]}
`)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"p",` +
		`"creationTimestamp":"2025-06-07T08:11:12Z"},"spec":{"ingress":[{"action":"Allow","protocol":17,` +
		`"destination":{"ports":[53,1000,"1000:2000","dns"]}}]}}`
	if string(b) != want {
		t.Errorf("Encode:\n%s\nwant:\n%s", b, want)
	}

	peer, err := decodeYAML(t, `
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: p}
spec: {peerIP: 198.18.0.1, asNumber: "1.10", maxRestartTime: 120s}
`)
	if err != nil {
		t.Fatal(err)
	}
	b, err = Encode(peer)
	if err != nil {
		t.Fatal(err)
	}
	const wantPeer = `{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},` +
		`"spec":{"peerIP":"198.18.0.1","asNumber":65546,"maxRestartTime":"2m0s"}}`
	if string(b) != wantPeer {
		t.Errorf("Encode:\n%s\nwant:\n%s", b, wantPeer)
	}
}

func TestEncodeNil(t *testing.T) {
	var p *NetworkPolicy
	if _, err := Encode(p); err == nil {
		t.Error("Encode of a nil *NetworkPolicy: no error")
	}
	if _, err := Encode(nil); err == nil {
		t.Error("Encode(nil): no error")
	}
}
