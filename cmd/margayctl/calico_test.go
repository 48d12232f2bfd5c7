package main

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/manifest"
	"github.com/margaynet/margay/control/resource"
)

func calicoDoc(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../control/resource/testdata/calico-docs/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// decodeOne reads the one resource of a YAML document, as apply -f would.
func decodeOne(t *testing.T, y string) resource.Resource {
	t.Helper()
	docs, err := manifest.Split([]byte(y))
	if err != nil || len(docs) != 1 || docs[0].Err != nil {
		t.Fatalf("split: %v, %d documents:\n%s", err, len(docs), y)
	}
	r, err := resource.Decode(docs[0].Data)
	if err != nil {
		t.Fatalf("decode: %v\n%s", err, y)
	}
	return r
}

// canonical is r with Calico's defaults, as JSON, without the revision it was read at.
func canonical(t *testing.T, r resource.Resource) string {
	t.Helper()
	r = resource.Defaulted(r)
	r.Metadata().ResourceVersion = ""
	b, err := resource.Encode(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (e *dsEnv) revision(t *testing.T) int64 {
	t.Helper()
	resp, err := e.c.Raw().Get(context.Background(), "revision-probe")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func TestCalicoManifests(t *testing.T) {
	e := newDSEnv(t)
	pool := "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata:\n  name: pool-1\nspec:\n  cidr: 198.19.0.0/16\n"
	bgpConfig := "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata:\n  name: default\nspec:\n  asNumber: 64513\n  nodeToNodeMeshEnabled: true\n"
	docs := []string{calicoDoc(t, "globalnetworkpolicy.yaml"), pool, calicoDoc(t, "bgppeer.yaml"), bgpConfig}
	all := writeFile(t, "all.yaml", strings.Join(docs, "---\n"))
	replaced := writeFile(t, "replace.yaml", `apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: allow-tcp-6379
spec:
  selector: role == 'database'
  order: 10
  ingress:
    - action: Allow
      protocol: TCP
      destination:
        ports: [6379, "7000:7010"]
`)

	// Each bad document comes after good ones: the file changes nothing.
	bad := func(name, doc string) string { return writeFile(t, name, pool+"---\n"+doc) }
	unchanged := func(t *testing.T, before *int64) {
		if rev := e.revision(t); rev != *before {
			t.Errorf("etcd revision moved from %d to %d: something was written", *before, rev)
		}
	}
	var before int64
	remember := func(t *testing.T) { before = e.revision(t) }
	getsBack := func(kind, name, doc string) dsStep {
		return dsStep{name: "get " + kind + " " + name + " -o yaml", args: []string{"get", kind, name, "-o", "yaml"},
			check: func(t *testing.T, out string) {
				if got, want := canonical(t, decodeOne(t, out)), canonical(t, decodeOne(t, doc)); got != want {
					t.Errorf("read back:\n got %s\nwant %s", got, want)
				}
			}}
	}
	e.run(t, []dsStep{
		{name: "apply four kinds", args: []string{"apply", "-f", all}, want: []string{"Successfully applied 4 resource(s)"}},
		getsBack("gnp", "allow-tcp-6379", docs[0]),
		getsBack("IPPool", "pool-1", docs[1]),
		getsBack("bgppeers", "some.name", docs[2]),
		getsBack("bgpconfig", "default", docs[3]),
		{name: "get pools", args: []string{"get", "pool"}, want: []string{"NAME", "CIDR", "SELECTOR", "pool-1", "198.19.0.0/16", "all()"}},
		{name: "get pools -o wide", args: []string{"get", "ippools", "-o", "wide"}, want: []string{"IPIPMODE", "VXLANMODE", "Never"}},
		{name: "get gnp list -o yaml", args: []string{"get", "globalnetworkpolicies", "-o", "yaml"},
			want: []string{"apiVersion: projectcalico.org/v3", "kind: GlobalNetworkPolicyList", "items:", "name: allow-tcp-6379", "resourceVersion:"}},
		{name: "get -o json", args: []string{"get", "bgppeer", "some.name", "-o", "json"}, want: []string{`"kind": "BGPPeer"`, `"peerIP": "192.168.1.1"`}},
		{name: "get bgp peers", args: []string{"get", "bgppeer"}, want: []string{"PEERIP", "192.168.1.1", "rack1-host1", "63400"}},
		{name: "the old commands see them", args: []string{"pool", "list"}, want: []string{"pool-1", "198.19.0.0/16"}},
		{name: "replace", args: []string{"replace", "-f", replaced}, want: []string{"Successfully replaced 1 'GlobalNetworkPolicy' resource(s)"}},
		getsBack("gnp", "allow-tcp-6379", strings.Replace(mustReadFile(t, replaced), "order: 10", "order: 10\n  types: [Ingress]", 1)),
		{name: "create what exists", setup: remember, args: []string{"create", "-f", all}, wantErr: "resource already exists: GlobalNetworkPolicy(allow-tcp-6379)",
			check: func(t *testing.T, _ string) { unchanged(t, &before) }},
		{name: "unknown field", setup: remember, args: []string{"apply", "-f", bad("unknown.yaml", strings.Replace(docs[2], "peerIP:", "peerIp: 1.2.3.4\n  peerIPs:", 1))},
			wantErr: `document 2 (BGPPeer "some.name", line 8): spec.peerIPs: unknown field (did you mean "peerIP"?)`,
			check:   func(t *testing.T, _ string) { unchanged(t, &before) }},
		{name: "ipVersion", setup: remember, args: []string{"apply", "-f", bad("v4.yaml", strings.Replace(docs[0], "action: Allow\n      metadata", "action: Log\n      ipVersion: 4\n      metadata", 1))},
			wantErr: "spec.ingress[0].ipVersion: not supported by Margay yet",
			check:   func(t *testing.T, _ string) { unchanged(t, &before) }},
		{name: "a tier that does not exist", setup: remember, args: []string{"apply", "-f", bad("tiered.yaml", calicoDoc(t, "tiered-policy.yaml"))},
			wantErr: `document 2 (GlobalNetworkPolicy "devops.stage-env", line 8): spec.tier: resource does not exist: Tier(devops)`,
			check:   func(t *testing.T, _ string) { unchanged(t, &before) }},
		{name: "read-only Node", setup: remember, args: []string{"create", "-f", bad("node.yaml", calicoDoc(t, "node.yaml"))},
			wantErr: "kind: Node is read-only",
			check:   func(t *testing.T, _ string) { unchanged(t, &before) }},
		{name: "delete -f", args: []string{"delete", "-f", all}, want: []string{"Successfully deleted 4 resource(s)"}},
		{name: "delete what is gone", args: []string{"delete", "gnp", "allow-tcp-6379"}, wantErr: "resource does not exist: GlobalNetworkPolicy(allow-tcp-6379)"},
		{name: "get what is gone", args: []string{"get", "ippool", "pool-1"}, wantErr: "resource does not exist: IPPool(pool-1)"},
		{name: "get an unknown kind", args: []string{"get", "hostendpoints"}, wantErr: `resource type "hostendpoints" is not supported`},
		{name: "-o on apply", args: []string{"apply", "-f", all, "-o", "yaml"}, wantErr: "only reports what it wrote"},
	})
	if _, err := e.c.Pools().Get(context.Background(), "pool-1"); err == nil {
		t.Error("pool-1 still stored after delete -f")
	}
}

func mustReadFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCalicoGetReadOnly(t *testing.T) {
	e := newDSEnv(t)
	datastoretest.RegisterNodes(t, e.c, "vm1")
	w := datastore.Workload{Version: datastore.CurrentVersion, ID: "prod.web-0", Name: "web-0", Namespace: "prod", Node: "vm1",
		IfName: "cali0123456789a", MAC: "02:42:c6:13:00:02", IPv4: []netip.Prefix{netip.MustParsePrefix("198.19.0.5/32")}}
	if _, err := e.c.Workloads("vm1").Create(context.Background(), w.ID, w); err != nil {
		t.Fatal(err)
	}
	e.run(t, []dsStep{
		{name: "nodes", args: []string{"get", "nodes", "-o", "wide"}, want: []string{"NAME", "ASN", "IPV4", "vm1", "198.18.0.1/24"}},
		{name: "weps in default", args: []string{"get", "wep"}, check: func(t *testing.T, out string) {
			if strings.Contains(out, "web-0") {
				t.Errorf("a workload of namespace prod listed in default:\n%s", out)
			}
		}},
		{name: "weps in prod", args: []string{"get", "workloadendpoints", "-n", "prod"}, want: []string{"WORKLOAD", "web-0", "vm1", "198.19.0.5/32", "cali0123456789a"}},
		{name: "every wep, wide", args: []string{"get", "wep", "-A", "-o", "wide"}, want: []string{"NAMESPACE", "prod", "vm1-k8s-web--0-eth0"}},
		{name: "one wep as YAML", args: []string{"get", "wep", "vm1-k8s-web--0-eth0", "-n", "prod", "-o", "yaml"},
			want: []string{"kind: WorkloadEndpoint", "namespace: prod", "orchestrator: k8s", "pod: web-0"}},
		{name: "a node cannot be deleted", args: []string{"delete", "node", "vm1"}, wantErr: "Node is read-only"},
	})
}

func policyModel(t *testing.T) string {
	t.Helper()
	return mustReadFile(t, "../../control/resource/testdata/policy-model/manifests.yaml")
}

// rows are the lines of a table, each with its columns joined by one space.
func rows(out string) []string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return lines
}

func wantRows(want ...string) func(t *testing.T, out string) {
	return func(t *testing.T, out string) {
		t.Helper()
		if got := rows(out); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("table:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
}

// Tiers, namespaced policies and profiles: written with apply, read with get as calicoctl
// prints them, deleted by name (-n for a NetworkPolicy's namespace).
func TestCalicoPolicyModel(t *testing.T) {
	e := newDSEnv(t)
	model := policyModel(t)
	docs := strings.Split(model, "\n---\n")
	e.run(t, []dsStep{
		{name: "apply", args: []string{"apply", "-f", writeFile(t, "model.yaml", model)}, want: []string{"Successfully applied 7 resource(s)"}},
		{name: "get tier", args: []string{"get", "tier"}, check: wantRows("NAME ORDER", "security 100", "platform 200", "default 1000000")},
		{name: "get tier -o yaml", args: []string{"get", "tier", "security", "-o", "yaml"}, check: func(t *testing.T, out string) {
			if got, want := canonical(t, decodeOne(t, out)), canonical(t, decodeOne(t, docs[0])); got != want {
				t.Errorf("read back:\n got %s\nwant %s", got, want)
			}
		}},
		{name: "get networkpolicy: namespace default", args: []string{"get", "networkpolicy"}, check: wantRows("NAME TIER", "default-deny default")},
		{name: "get policy -A", args: []string{"get", "policy", "-A"},
			check: wantRows("NAMESPACE NAME TIER", "default default-deny default", "shop platform.api platform")},
		{name: "get np -n shop -o wide", args: []string{"get", "np", "-n", "shop", "-o", "wide"},
			check: wantRows("NAMESPACE NAME TIER ORDER SELECTOR", `shop platform.api platform 100 app == "api"`)},
		{name: "get np NAME -n shop -o yaml", args: []string{"get", "np", "platform.api", "-n", "shop", "-o", "yaml"}, check: func(t *testing.T, out string) {
			if got, want := canonical(t, decodeOne(t, out)), canonical(t, decodeOne(t, docs[4])); got != want {
				t.Errorf("read back:\n got %s\nwant %s", got, want)
			}
		}},
		{name: "get np NAME in another namespace", args: []string{"get", "np", "platform.api"}, wantErr: "resource does not exist: NetworkPolicy(default/platform.api)"},
		{name: "get gnp -o wide", args: []string{"get", "gnp", "-o", "wide"},
			check: wantRows("NAME ORDER SELECTOR", "block-bad-networks 20 all()", `security.quarantine 10 quarantine == "true"`)},
		{name: "get profile -o wide", args: []string{"get", "profiles", "-o", "wide"}, check: wantRows("NAME LABELS", "dev-apps stage=development,team=web")},
		{name: "get -n and -A", args: []string{"get", "np", "-n", "shop", "-A"}, wantErr: "give -n NAMESPACE or -A, not both"},
		{name: "delete a tier with policies", args: []string{"delete", "tier", "platform"},
			wantErr: "cannot delete a non-empty tier: Tier(platform) still holds NetworkPolicy(shop/platform.api)"},
		{name: "delete the default tier", args: []string{"delete", "tier", "default"}, wantErr: "the default tier cannot be deleted"},
		{name: "delete np -n", args: []string{"delete", "np", "platform.api", "-n", "shop"}, want: []string{"Successfully deleted 1 'NetworkPolicy' resource(s)"}},
		{name: "delete np in default", args: []string{"delete", "networkpolicies", "platform.api"}, wantErr: "resource does not exist: NetworkPolicy(default/platform.api)"},
		{name: "then the tier", args: []string{"delete", "tier", "platform"}, want: []string{"Successfully deleted 1 'Tier' resource(s)"}},
		{name: "-n of a kind without namespaces", args: []string{"delete", "tier", "security", "-n", "shop"}, wantErr: "-n NAMESPACE: Tier is not namespaced"},
		{name: "-n with -f", args: []string{"delete", "-f", writeFile(t, "x.yaml", docs[0]), "-n", "shop"}, wantErr: "-n NAMESPACE goes with KIND NAME"},
		{name: "get profile", args: []string{"get", "profile", "dev-apps", "-o", "json"}, want: []string{`"labelsToApply": {`, `"stage": "development"`}},
	})
}
