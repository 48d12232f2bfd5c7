package convert

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/manifest"
	"github.com/margaynet/margay/control/resource"
)

// decode reads one resource from YAML: a file of control/resource/testdata/calico-docs (a name
// ending in .yaml) or the text itself.
func decode(t *testing.T, src string) resource.Resource {
	t.Helper()
	input := []byte(src)
	if strings.HasSuffix(src, ".yaml") {
		var err error
		if input, err = os.ReadFile(filepath.Join("..", "testdata", "calico-docs", src)); err != nil {
			t.Fatal(err)
		}
	}
	docs, err := manifest.Split(input)
	if err != nil || len(docs) != 1 || docs[0].Err != nil {
		t.Fatalf("split %s: %v, %d documents", src, err, len(docs))
	}
	r, err := resource.Decode(docs[0].Data)
	if err != nil {
		t.Fatalf("decode %s: %v", src, err)
	}
	return r
}

// toV3 is the way back of FromV3.
func toV3(t *testing.T, rec any) resource.Resource {
	t.Helper()
	switch rec := rec.(type) {
	case datastore.Policy:
		return PolicyToV3(rec)
	case datastore.Pool:
		return PoolToV3(rec)
	case datastore.BGPPeer:
		return PeerToV3(rec)
	case datastore.BGPConfig:
		return BGPConfigToV3(rec)
	}
	t.Fatalf("no way back from %T", rec)
	return nil
}

func encode(t *testing.T, r resource.Resource) string {
	t.Helper()
	b, err := resource.Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Every supported resource comes back from its record as it went in, Calico's defaults filled.
func TestRoundTrip(t *testing.T) {
	for _, c := range []struct {
		name, src string
		check     func(t *testing.T, rec any)
	}{
		{name: "docs GlobalNetworkPolicy", src: "globalnetworkpolicy.yaml"},
		{name: "docs ICMP type and code", src: "allow-host-unreachable.yaml"},
		{name: "egress rules only: types Egress, written out", src: `
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: egress-only}
spec:
  order: 10.5
  selector: app == "web"
  egress:
    - action: Deny
      protocol: UDP
      destination: {nets: [198.19.0.0/16], notPorts: [53, "1000:2000"]}
    - action: Allow
      protocol: 47
      source: {notNets: [198.18.0.1/32], notSelector: has(x)}
`, check: func(t *testing.T, rec any) {
			p := rec.(datastore.Policy)
			if len(p.Types) != 1 || p.Types[0] != datastore.PolicyEgress {
				t.Errorf("types = %v, want [Egress] (Calico's default)", p.Types)
			}
		}},
		{name: "notProtocol and notICMP", src: `
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: negations}
spec:
  ingress:
    - action: Allow
      notProtocol: UDP
    - action: Deny
      protocol: ICMP
      notICMP: {type: 3, code: 4}
`, check: func(t *testing.T, rec any) {
			p := rec.(datastore.Policy)
			if r := p.Ingress; len(r) != 2 || r[0].NotProtocol == nil || *r[0].NotProtocol != 17 || r[1].NotICMP == nil ||
				*r[1].NotICMP.Type != 3 || *r[1].NotICMP.Code != 4 {
				t.Errorf("rules = %+v", r)
			}
		}},
		{name: "docs BGPPeer", src: "bgppeer.yaml"},
		{name: "IPPool", src: `
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-1}
spec: {cidr: 198.19.0.0/16, blockSize: 28, disabled: true, ipipMode: Never, nodeSelector: all()}
`},
		{name: "IPPool with defaults", src: `{"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p"}, "spec": {"cidr": "198.19.0.0/16"}}`,
			check: func(t *testing.T, rec any) {
				if p := rec.(datastore.Pool); p.BlockSize != 26 || p.CIDR != netip.MustParsePrefix("198.19.0.0/16") {
					t.Errorf("pool = %+v", p)
				}
			}},
		{name: "BGPConfiguration", src: `
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {asNumber: 64513, nodeToNodeMeshEnabled: false, logSeverityScreen: Info, listenPort: 179}
`},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := decode(t, c.src)
			if err := r.Validate(); err != nil {
				t.Fatalf("validate: %v", err)
			}
			rec, err := FromV3(r)
			if err != nil {
				t.Fatalf("FromV3: %v", err)
			}
			if err := rec.(interface{ Validate() error }).Validate(); err != nil {
				t.Errorf("record does not validate: %v", err)
			}
			if c.check != nil {
				c.check(t, rec)
			}
			back := toV3(t, rec)
			want := resource.Defaulted(r)
			if r.Kind() == resource.KindIPPool || r.Kind() == resource.KindBGPConfiguration {
				want.Metadata().Labels = nil
			}
			// listenPort 179 is Margay's only port: accepted, not kept.
			if b, ok := want.(*resource.BGPConfiguration); ok {
				b.Spec.ListenPort = 0
			}
			if got, w := encode(t, back), encode(t, want); got != w {
				t.Errorf("round trip:\n got %s\nwant %s", got, w)
			}
		})
	}
}

// What a record cannot hold is refused, each field by its path; Margay never drops it.
func TestNotYet(t *testing.T) {
	for _, c := range []struct {
		name, src string
		want      []string // paths, each refused with ErrNotYet
	}{
		{"docs IPPool: IPIP and NAT", "ippool.yaml", []string{"spec.ipipMode", "spec.natOutgoing"}},
		{"docs BGPConfiguration", "bgpconfig.yaml", []string{"spec.serviceClusterIPs", "spec.serviceExternalIPs",
			"spec.communities", "spec.prefixAdvertisements", "spec.listenPort", "spec.nodeMeshMaxRestartTime", "spec.bindMode"}},
		{"docs tiered policy: tier and Pass", "tiered-policy.yaml", []string{"spec.tier", "spec.ingress[1].action", "spec.egress[1].action"}},
		{"docs namespace selectors", "restrict-development-access.yaml", []string{"spec.namespaceSelector",
			"spec.ingress[0].source.namespaceSelector", "spec.egress[0].destination.namespaceSelector"}},
		{"service account names", `
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p}
spec:
  ingress:
    - action: Allow
      source: {serviceAccounts: {names: [api]}}
`, []string{"spec.ingress[0].source.serviceAccounts"}},
		{"docs host endpoint policy", "ip-protect.yaml", []string{"spec.doNotTrack", "spec.applyOnForward"}},
		{"docs NetworkPolicy", "allow-egress-external.yaml", []string{"kind"}},
		{"docs Profile", "profile.yaml", []string{"kind"}},
		{"docs Tier", "tier.yaml", []string{"kind"}},
		{"Log, ipVersion", `
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: p, labels: {team: a}, annotations: {note: b}}
spec:
  ingress:
    - action: Log
    - action: Deny
      ipVersion: 4
      notProtocol: TCP
      protocol: ICMP
      notICMP: {type: 8}
`, []string{"spec.ingress[0].action", "spec.ingress[1].ipVersion", `metadata.labels["team"]`, `metadata.annotations["note"]`}},
		{"IPPool: allowed uses", `{"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p"}, "spec": {"cidr": "198.19.0.0/16", "allowedUses": ["Workload"]}}`,
			[]string{"spec.allowedUses"}},
		{"BGPPeer: keepalive, TTL security", `{"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "p"}, "spec": {"peerIP": "198.18.0.9", "asNumber": 65001, "keepaliveTime": "10s", "ttlSecurity": 1}}`,
			[]string{"spec.keepaliveTime", "spec.ttlSecurity"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := FromV3(decode(t, c.src))
			if !errors.Is(err, ErrNotYet) || !errors.Is(err, resource.ErrUnsupported) {
				t.Fatalf("FromV3 = %v, want ErrNotYet", err)
			}
			for _, p := range c.want {
				if !strings.Contains(err.Error(), p+": not supported by Margay yet") {
					t.Errorf("error does not name %s:\n%v", p, err)
				}
			}
		})
	}
}

func TestReadOnlyKinds(t *testing.T) {
	for _, src := range []string{"node.yaml", "workloadendpoint.yaml"} {
		if _, err := FromV3(decode(t, src)); err == nil || !strings.Contains(err.Error(), "read-only") {
			t.Errorf("FromV3(%s) = %v, want read-only", src, err)
		}
	}
}

func TestWorkloadEndpointName(t *testing.T) {
	for _, c := range []struct {
		ids  WorkloadEndpointIDs
		want string
	}{
		{WorkloadEndpointIDs{Node: "node-1", Orchestrator: "k8s", Pod: "web-0", Endpoint: "eth0"}, "node--1-k8s-web--0-eth0"},
		{WorkloadEndpointIDs{Node: "rack1-host1", Orchestrator: "cni", ContainerID: "abc123", Endpoint: "eth0"}, "rack1--host1-cni-abc123-eth0"},
		{WorkloadEndpointIDs{Node: "h", Orchestrator: "libnetwork", Endpoint: "ep-1"}, "h-libnetwork-libnetwork-ep--1"},
		{WorkloadEndpointIDs{Node: "h", Orchestrator: "openstack", Workload: "vm", Endpoint: "tap0"}, "h-openstack-vm-tap0"},
	} {
		if got, err := c.ids.Name(); err != nil || got != c.want {
			t.Errorf("%+v: %q, %v; want %q", c.ids, got, err, c.want)
		}
	}
	if _, err := (WorkloadEndpointIDs{Node: "h-", Orchestrator: "k8s", Pod: "p", Endpoint: "eth0"}).Name(); err == nil {
		t.Error("a part ending in '-' accepted")
	}
}

func TestReadOnlyToV3(t *testing.T) {
	w := datastore.Workload{Version: 1, ID: "prod.web-0", Name: "web-0", Namespace: "prod", Node: "host-1",
		IfName: "cali0123456789a", MAC: "02:42:c6:13:00:02", ContainerID: "c1",
		IPv4: []netip.Prefix{netip.MustParsePrefix("198.19.0.5/32")}, Labels: map[string]string{"app": "web"}}
	wep, err := WorkloadToV3(w)
	if err != nil {
		t.Fatal(err)
	}
	if wep.Name != "host--1-k8s-web--0-eth0" || wep.Namespace != "prod" || wep.Spec.Pod != "web-0" ||
		wep.Spec.IPNetworks[0] != "198.19.0.5/32" || wep.Spec.InterfaceName != w.IfName || wep.Labels["app"] != "web" {
		t.Errorf("WorkloadToV3 = %+v", wep)
	}
	if err := wep.Validate(); err != nil {
		t.Errorf("WorkloadEndpoint does not validate: %v", err)
	}
	if w.Labels["projectcalico.org/namespace"] != "" {
		t.Error("WorkloadToV3 changed the record's labels")
	}
	w.Namespace = ""
	if wep, err = WorkloadToV3(w); err != nil || wep.Name != "host--1-cni-c1-eth0" || wep.Namespace != "default" || wep.Spec.Workload != "web-0" {
		t.Errorf("CNI workload: %+v, %v", wep, err)
	}

	n := NodeToV3(datastore.Node{Version: 1, Name: "host-1", AddressV4: netip.MustParsePrefix("198.18.0.1/24"), Uplink: "ens32", ASN: 64513})
	if n.Spec.BGP == nil || n.Spec.BGP.IPv4Address != "198.18.0.1/24" || *n.Spec.BGP.ASNumber != 64513 || n.Spec.Interfaces[0].Name != "ens32" {
		t.Errorf("NodeToV3 = %+v", n)
	}
	if err := n.Validate(); err != nil {
		t.Errorf("Node does not validate: %v", err)
	}
}
