package calicov3

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/k8s"
	"github.com/margaynet/margay/control/resource"
	"github.com/margaynet/margay/control/resource/convert"
)

// Manifest is a Calico manifest of every kind Margay stores: the GlobalNetworkPolicy and the
// BGPPeer of Calico's documentation, a pool and the cluster's BGP configuration.
var Manifest = mustRead("../resource/testdata/calico-docs/globalnetworkpolicy.yaml") + "---\n" + `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: pool-1
spec:
  cidr: 198.19.0.0/16
  blockSize: 26
---
` + mustRead("../resource/testdata/calico-docs/bgppeer.yaml") + `---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  asNumber: 64513
  nodeToNodeMeshEnabled: true
`

func ptr[T any](v T) *T { return &v }

func mustRead(name string) string {
	b, err := os.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// revision is etcd's current revision: a write anywhere moves it.
func revision(t *testing.T, c *datastore.Client) int64 {
	t.Helper()
	resp, err := c.Raw().Get(context.Background(), "revision-probe")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func encode(t *testing.T, r resource.Resource) string {
	t.Helper()
	r = resource.Defaulted(r)
	r.Metadata().ResourceVersion = ""
	b, err := resource.Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestApplyGetReplaceDelete(t *testing.T) {
	ctx := context.Background()
	c := datastoretest.New(t)

	docs, err := Decode([]byte(Manifest), ActionApply)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Apply(ctx, c, docs)
	if err != nil || res.String() != "Successfully applied 4 resource(s)" {
		t.Fatalf("Apply = %q, %v", res, err)
	}
	for _, d := range docs {
		ref := RefOf(d.Resource)
		got, err := Get(ctx, c, ref.Kind, ref.Name, "")
		if err != nil {
			t.Fatalf("Get %s: %v", ref, err)
		}
		if got.Metadata().ResourceVersion == "" {
			t.Errorf("%s has no resourceVersion", ref)
		}
		if g, w := encode(t, got), encode(t, d.Resource); g != w {
			t.Errorf("%s read back:\n got %s\nwant %s", ref, g, w)
		}
	}
	if p, err := c.Policies().Get(ctx, "allow-tcp-6379"); err != nil || len(p.Value.Types) != 2 || p.Value.Ingress[0].Annotations["from"] != "frontend" {
		t.Errorf("stored policy = %+v, %v", p.Value, err)
	}
	if b, err := c.BGPConfig().Get(ctx); err != nil || b.Value.ASN != 64513 {
		t.Errorf("stored BGP config = %+v, %v", b.Value, err)
	}

	// Applied again: replaced, the same.
	if res, err := Apply(ctx, c, docs); err != nil || len(res.Done) != 4 {
		t.Fatalf("Apply again = %q, %v", res, err)
	}

	// Create stops at the first existing one; nothing of it is written.
	before := revision(t, c)
	if res, err := Create(ctx, c, docs); !errors.Is(err, ErrExists) || res.String() != "Failed to create any resources" ||
		!strings.Contains(err.Error(), `document 1 (GlobalNetworkPolicy "allow-tcp-6379", line 1)`) {
		t.Errorf("Create of existing = %q, %v", res, err)
	}
	if revision(t, c) != before {
		t.Error("a failed create wrote")
	}

	// Replace: the policy without its egress rule; types stay as given.
	gnp := `apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: allow-tcp-6379}
spec:
  selector: role == 'database'
  egress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: not-there}
spec: {selector: all()}
`
	rdocs, err := Decode([]byte(gnp), ActionReplace)
	if err != nil {
		t.Fatal(err)
	}
	res, err = Replace(ctx, c, rdocs)
	if !errors.Is(err, ErrNotExist) || len(res.Done) != 1 || !strings.Contains(res.String(), "Partial success: replaced the first 1 out of 2 resources") {
		t.Errorf("Replace = %q, %v", res, err)
	}
	if p, _ := c.Policies().Get(ctx, "allow-tcp-6379"); len(p.Value.Types) != 1 || p.Value.Types[0] != datastore.PolicyEgress {
		t.Errorf("replaced policy: types %v, want [Egress] (Calico's default for egress rules only)", p.Value.Types)
	}

	// A resourceVersion that is not the stored one: refused.
	got, _ := Get(ctx, c, resource.KindIPPool, "pool-1", "")
	got.Metadata().ResourceVersion = "1"
	stale := encode(t, got)
	stale = strings.Replace(stale, `"metadata":{`, `"metadata":{"resourceVersion":"1",`, 1)
	sdocs, err := Decode([]byte(stale), ActionApply)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(ctx, c, sdocs); !errors.Is(err, ErrStale) {
		t.Errorf("apply at a stale revision: %v", err)
	}

	// Delete removes what the documents name; then they are missing.
	ddocs, err := Decode([]byte(Manifest), ActionDelete)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := Delete(ctx, c, ddocs); err != nil || res.String() != "Successfully deleted 4 resource(s)" {
		t.Fatalf("Delete = %q, %v", res, err)
	}
	if res, err := Delete(ctx, c, ddocs); !errors.Is(err, ErrNotExist) || !strings.Contains(err.Error(), "resource does not exist: GlobalNetworkPolicy(allow-tcp-6379)") {
		t.Errorf("Delete again = %q, %v", res, err)
	}
	if items, _, err := List(ctx, c, resource.KindGlobalNetworkPolicy, ""); err != nil || len(items) != 0 {
		t.Errorf("List after delete = %v, %v", items, err)
	}
	if _, err := DeleteRefs(ctx, c, []Ref{{Kind: resource.KindBGPPeer, Name: "some.name"}}); !errors.Is(err, ErrNotExist) {
		t.Errorf("DeleteRefs of a missing peer: %v", err)
	}
}

// A wrong document anywhere: an error naming it and its field, and nothing written.
func TestBadInputWritesNothing(t *testing.T) {
	c := datastoretest.New(t)
	for _, bad := range []struct{ name, doc, want string }{
		{"unknown field", "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p2}\nspec: {cidr: 198.18.128.0/24, blocksize: 26, colour: red}\n",
			`document 5 (IPPool "p2", line 52): spec.colour: unknown field`},
		{"ipVersion", "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: v4}\nspec: {ingress: [{action: Log, ipVersion: 4}]}\n",
			`document 5 (GlobalNetworkPolicy "v4", line 52): spec.ingress[0].ipVersion: not supported by Margay yet`},
		{"read-only Node", mustRead("../resource/testdata/calico-docs/node.yaml"), "is read-only"},
		{"the same twice", "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-1}\nspec: {cidr: 198.19.0.0/16}\n",
			"IPPool(pool-1) again (also document 2)"},
	} {
		t.Run(bad.name, func(t *testing.T) {
			before := revision(t, c)
			_, err := Decode([]byte(Manifest+"---\n"+bad.doc), ActionApply)
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), "nothing written") {
				t.Fatalf("Decode: %v\nwant ErrInvalid naming %q", err, bad.want)
			}
			if revision(t, c) != before {
				t.Error("the etcd revision moved")
			}
		})
	}
}

func TestWriteChecks(t *testing.T) {
	ctx := context.Background()
	c := datastoretest.New(t)
	apply := func(doc string) error {
		t.Helper()
		docs, err := Decode([]byte(doc), ActionApply)
		if err != nil {
			t.Fatal(err)
		}
		_, err = Apply(ctx, c, docs)
		return err
	}
	datastoretest.RegisterNodes(t, c, "host-1")
	node, _ := c.Nodes().Get(ctx, "host-1")
	sub := node.Value.AddressV4.Masked()
	if err := apply(`{"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "hosts"}, "spec": {"cidr": "` + sub.String() + `"}}`); err == nil ||
		!strings.Contains(err.Error(), "uplink subnet") {
		t.Errorf("a pool over the hosts' subnet: %v", err)
	}
	if err := apply(`{"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "a"}, "spec": {"cidr": "198.19.0.0/16"}}`); err != nil {
		t.Fatal(err)
	}
	if err := apply(`{"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "b"}, "spec": {"cidr": "198.19.64.0/18"}}`); err == nil ||
		!strings.Contains(err.Error(), "overlaps pool a (198.19.0.0/16)") {
		t.Errorf("overlapping pools: %v", err)
	}
	if err := apply(`{"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "a"}, "spec": {"cidr": "198.19.0.0/16", "blockSize": 28}}`); err == nil ||
		!strings.Contains(err.Error(), "block size cannot change") {
		t.Errorf("a changed block size: %v", err)
	}

	// A peer added with margayctl bgp peer add, with a password: a BGPPeer would drop it.
	peer := datastore.BGPPeer{Version: 1, Name: "gw", PeerIP: netip.MustParseAddr("198.18.0.254"), ASN: 65001, Password: "secret"}
	if _, err := c.BGPPeers().Create(ctx, "gw", peer); err != nil {
		t.Fatal(err)
	}
	if err := apply(`{"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "gw"}, "spec": {"peerIP": "198.18.0.254", "asNumber": 65001}}`); !errors.Is(err, ErrPeerExtra) {
		t.Errorf("a BGPPeer over a peer with a password: %v", err)
	}
}

func TestReadOnlyKinds(t *testing.T) {
	ctx := context.Background()
	c := datastoretest.New(t)
	datastoretest.RegisterNodes(t, c, "host-1")
	w := datastore.Workload{Version: 1, ID: "prod.web-0", Name: "web-0", Namespace: "prod", Node: "host-1",
		IfName: "cali0123456789a", MAC: "02:42:c6:13:00:02", IPv4: []netip.Prefix{netip.MustParsePrefix("198.19.0.5/32")}}
	if _, err := c.Workloads("host-1").Create(ctx, w.ID, w); err != nil {
		t.Fatal(err)
	}
	nodes, _, err := List(ctx, c, resource.KindNode, "")
	if err != nil || len(nodes) != 1 || nodes[0].Metadata().Name != "host-1" {
		t.Errorf("List nodes = %v, %v", nodes, err)
	}
	for _, ns := range []string{"prod", ""} {
		weps, _, err := List(ctx, c, resource.KindWorkloadEndpoint, ns)
		if err != nil || len(weps) != 1 || weps[0].Metadata().Name != "host--1-k8s-web--0-eth0" {
			t.Errorf("List weps in %q = %v, %v", ns, weps, err)
		}
	}
	if weps, _, _ := List(ctx, c, resource.KindWorkloadEndpoint, "default"); len(weps) != 0 {
		t.Errorf("weps in default: %v", weps)
	}
	if _, err := Get(ctx, c, resource.KindWorkloadEndpoint, "host--1-k8s-web--0-eth0", "prod"); err != nil {
		t.Errorf("Get wep: %v", err)
	}
	if _, err := Get(ctx, c, resource.KindWorkloadEndpoint, "host--1-k8s-web--0-eth0", ""); !errors.Is(err, ErrNotExist) {
		t.Errorf("Get wep in default: %v", err)
	}
	if _, err := DeleteRefs(ctx, c, []Ref{{Kind: resource.KindNode, Name: "host-1"}}); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("delete a node: %v", err)
	}
}

func TestParseKind(t *testing.T) {
	for in, want := range map[string]resource.Kind{
		"gnp": resource.KindGlobalNetworkPolicy, "GlobalNetworkPolicies": resource.KindGlobalNetworkPolicy,
		"pool": resource.KindIPPool, "IPPOOL": resource.KindIPPool, "bgppeers": resource.KindBGPPeer,
		"bgpconfig": resource.KindBGPConfiguration, "nodes": resource.KindNode, "wep": resource.KindWorkloadEndpoint,
		"np": resource.KindNetworkPolicy, "profile": resource.KindProfile, "tier": resource.KindTier,
	} {
		if got, err := ParseKind(in); err != nil || got != want {
			t.Errorf("ParseKind(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseKind("hostendpoint"); err == nil {
		t.Error("hostendpoint accepted")
	}
}

func TestEncodeListAndTable(t *testing.T) {
	pool := convert.PoolToV3(datastore.Pool{Name: "p", CIDR: netip.MustParsePrefix("198.19.0.0/16"), BlockSize: 26})
	b, err := EncodeList(resource.KindIPPool, []resource.Resource{pool}, 7)
	if err != nil || !strings.HasPrefix(string(b), `{"apiVersion":"projectcalico.org/v3","kind":"IPPoolList","items":[{"kind":"IPPool"`) ||
		!strings.HasSuffix(string(b), `"metadata":{"resourceVersion":"7"}}`) {
		t.Errorf("EncodeList = %s, %v", b, err)
	}
	h, rows := Table(resource.KindIPPool, []resource.Resource{pool}, false, false)
	if strings.Join(h, " ") != "NAME CIDR SELECTOR" || strings.Join(rows[0], " ") != "p 198.19.0.0/16 all()" {
		t.Errorf("Table = %v %v", h, rows)
	}
	// As calicoctl's: a NetworkPolicy's tier (its order and selector with -o wide), NAMESPACE
	// first with -n or -A; a tier's order; a profile's labels with -o wide.
	np := convert.NetworkPolicyToV3(datastore.Policy{Name: "api", Namespace: "shop", Tier: "platform", Order: ptr(100.0), Selector: "app == 'api'"})
	for _, c := range []struct {
		kind            resource.Kind
		r               resource.Resource
		wide, namespace bool
		header, row     string
	}{
		{resource.KindNetworkPolicy, np, false, false, "NAME TIER", "api platform"},
		{resource.KindNetworkPolicy, np, true, true, "NAMESPACE NAME TIER ORDER SELECTOR", "shop api platform 100 app == 'api'"},
		{resource.KindTier, convert.DefaultTierV3(), false, true, "NAME ORDER", "default 1000000"},
		{resource.KindProfile, convert.ProfileToV3(datastore.Profile{Name: "dev", LabelsToApply: map[string]string{"team": "web", "stage": "dev"}}), true, false,
			"NAME LABELS", "dev stage=dev,team=web"},
	} {
		h, rows := Table(c.kind, []resource.Resource{c.r}, c.wide, c.namespace)
		if strings.Join(h, " ") != c.header || strings.Join(rows[0], " ") != c.row {
			t.Errorf("Table(%s, wide %v, namespace %v) = %q %q; want %q %q", c.kind, c.wide, c.namespace, h, rows[0], c.header, c.row)
		}
	}
}

// As calicoctl: a resourceVersion (say, from another cluster's calicoctl get) does not stop a
// creation; an update is conditional on it.
func TestResourceVersion(t *testing.T) {
	ctx := context.Background()
	c := datastoretest.New(t)
	doc := `{"apiVersion": "projectcalico.org/v3", "kind": "BGPPeer", "metadata": {"name": "gw", "resourceVersion": "4711", "uid": "x", "creationTimestamp": "2024-01-02T03:04:05Z"}, "spec": {"peerIP": "198.18.0.254", "asNumber": 65001}}`
	docs, err := Decode([]byte(doc), ActionApply)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(ctx, c, docs); err != nil {
		t.Fatalf("apply with a foreign resourceVersion: %v", err)
	}
	if _, err := Apply(ctx, c, docs); !errors.Is(err, ErrStale) {
		t.Errorf("update at a stale resourceVersion: %v", err)
	}
	got, err := Get(ctx, c, resource.KindBGPPeer, "gw", "")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := resource.Encode(got)
	if docs, err = Decode(b, ActionReplace); err != nil {
		t.Fatal(err)
	}
	if _, err := Replace(ctx, c, docs); err != nil {
		t.Errorf("replace at the revision read: %v", err)
	}
}

// The policies of Kubernetes NetworkPolicies are not GlobalNetworkPolicies: not listed, not
// deleted.
func TestKubernetesPolicies(t *testing.T) {
	ctx := context.Background()
	c := datastoretest.New(t)
	name := k8s.PolicyPrefix + "prod.web"
	if _, err := c.Policies().Create(ctx, name, datastore.Policy{Version: 1, Name: name, Types: []datastore.PolicyType{datastore.PolicyIngress}}); err != nil {
		t.Fatal(err)
	}
	if items, _, err := List(ctx, c, resource.KindGlobalNetworkPolicy, ""); err != nil || len(items) != 0 {
		t.Errorf("List = %v, %v; want none", items, err)
	}
	if _, err := Get(ctx, c, resource.KindGlobalNetworkPolicy, name, ""); !errors.Is(err, ErrNotExist) {
		t.Errorf("Get: %v", err)
	}
	if _, err := DeleteRefs(ctx, c, []Ref{{Kind: resource.KindGlobalNetworkPolicy, Name: name}}); !errors.Is(err, ErrNotExist) {
		t.Errorf("DeleteRefs: %v", err)
	}
	if _, err := c.Policies().Get(ctx, name); err != nil {
		t.Errorf("the policy is gone: %v", err)
	}
}
