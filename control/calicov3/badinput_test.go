package calicov3

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
)

// keyspace is every key under the client's prefix with its value and revisions.
func keyspace(t *testing.T, c *datastore.Client) map[string]string {
	t.Helper()
	resp, err := c.Raw().Get(context.Background(), c.Prefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = fmt.Sprintf("%s (created %d, modified %d, version %d)", kv.Value, kv.CreateRevision, kv.ModRevision, kv.Version)
	}
	return out
}

func sameKeyspace(t *testing.T, before, after map[string]string) {
	t.Helper()
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s changed:\n was %s\n now %s", k, v, after[k])
		}
	}
	for k, v := range after {
		if _, ok := before[k]; !ok {
			t.Errorf("%s written: %s", k, v)
		}
	}
}

// A manifest with a wrong document anywhere changes nothing in etcd, and its error names the
// document (its index, kind, name and line), the field and the reason. Every bad document here
// comes third, after two good ones.
func TestBadManifestsChangeNothing(t *testing.T) {
	ctx := context.Background()
	c := datastoretest.New(t)
	if _, err := Apply(ctx, c, mustDecode(t, PolicyModel, ActionApply)); err != nil {
		t.Fatal(err)
	}
	// Two good documents: a new tier, and a policy in a stored tier.
	const good = `apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: audit}
spec: {order: 50, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  tier: platform
  selector: app == "web"
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [http]}}]
---
`
	np := func(name, spec string) string {
		return "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: " + name + ", namespace: shop}\nspec: {" + spec + "}\n"
	}
	gnp := func(name, spec string) string {
		return "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: " + name + "}\nspec: {" + spec + "}\n"
	}
	kind := func(kind, metadata, spec string) string {
		return "apiVersion: projectcalico.org/v3\nkind: " + kind + "\nmetadata: {" + metadata + "}\nspec: {" + spec + "}\n"
	}
	for _, c2 := range []struct {
		name   string
		action Action
		doc    string
		label  string // how the error names the document
		field  string
		reason string
	}{
		{"a tier that does not exist", ActionApply, np("np", "tier: nope, selector: all()"),
			`NetworkPolicy "np"`, "spec.tier", "resource does not exist: Tier(nope): create the Tier first"},
		{"a tier created after the policy", ActionCreate, np("np", "tier: late, selector: all()") + "---\n" + kind("Tier", "name: late", ""),
			`NetworkPolicy "np"`, "spec.tier", "resource does not exist: Tier(late): document 4 creates it, after this one; put the Tier first"},
		{"a NetworkPolicy's namespaceSelector (GlobalNetworkPolicy only)", ActionApply, np("np", "namespaceSelector: team == 'a'"),
			`NetworkPolicy "np"`, "spec.namespaceSelector", "unknown field"},
		{"Pass in a profile", ActionApply, kind("Profile", "name: pr", "egress: [{action: Allow}, {action: Pass}]"),
			`Profile "pr"`, "spec.egress[1].action", "not supported by Margay (a profile's rules come after every tier, so Pass has nothing to pass to: use Deny)"},
		{"a port name no endpoint can have", ActionApply, np("np", "ingress: [{action: Allow, protocol: TCP, destination: {ports: [Web_Port]}}]"),
			`NetworkPolicy "np"`, "spec.ingress[0].destination.ports[0]", `"Web_Port" names no port an endpoint can have`},
		{"a port name of 16 characters", ActionReplace, np("np", "egress: [{action: Allow, protocol: UDP, destination: {notPorts: [very-long-name-1]}}]"),
			`NetworkPolicy "np"`, "spec.egress[0].destination.notPorts[0]", `"very-long-name-1" names no port an endpoint can have: must be no more than 15 characters`},
		{"a named port without the rule's protocol", ActionApply, gnp("g", "ingress: [{action: Allow, source: {ports: [metrics]}}]"),
			`GlobalNetworkPolicy "g"`, "spec.ingress[0].source.ports[0]", "not supported by Margay (a named port needs the rule's protocol"},
		{"an unknown field", ActionApply, np("np", "tierr: platform"),
			`NetworkPolicy "np"`, "spec.tierr", `unknown field (did you mean "tier"?)`},
		{"a tier's default action Allow", ActionApply, kind("Tier", "name: t", "defaultAction: Allow"),
			`Tier "t"`, "spec.defaultAction", `"Allow" is not one of Deny, Pass`},
		{"the default tier moved", ActionApply, kind("Tier", "name: default", "order: 10"),
			`Tier "default"`, "spec.order", "the default tier must have order 1000000"},
		{"a tier name with capitals", ActionApply, kind("Tier", "name: Audit2", ""),
			`Tier "Audit2"`, "metadata.name", `"Audit2" is not a valid Tier name`},
		{"a policy's tier name with a dot", ActionApply, gnp("g", "tier: a.b"),
			`GlobalNetworkPolicy "g"`, "spec.tier", `"a.b" is not a valid Tier name`},
		{"a Kubernetes NetworkPolicy's name", ActionApply, np("knp.default.web", "selector: all()"),
			`NetworkPolicy "knp.default.web"`, "metadata.name", `"knp.default.web": knp.default.* names the policy of a Kubernetes NetworkPolicy, which is managed through the Kubernetes API`},
		{"performance hints", ActionApply, np("np", "performanceHints: [AssumeNeededOnEveryNode]"),
			`NetworkPolicy "np"`, "spec.performanceHints", "not supported by Margay yet (Margay's policy records hold no performance hints)"},
		{"a host endpoint's doNotTrack", ActionApply, gnp("g", "doNotTrack: true, applyOnForward: true"),
			`GlobalNetworkPolicy "g"`, "spec.doNotTrack", "not supported by Margay (it concerns host endpoints"},
		{"IPv6", ActionApply, gnp("g", "ingress: [{action: Log, ipVersion: 6}]"),
			`GlobalNetworkPolicy "g"`, "spec.ingress[0].ipVersion", "not supported by Margay (Margay is IPv4-only)"},
		{"labels on a profile", ActionApply, kind("Profile", "name: pr, labels: {team: a}", ""),
			`Profile "pr"`, `metadata.labels["team"]`, "not supported by Margay yet (Margay's records hold no labels or annotations for this kind)"},
		{"an empty service account match", ActionApply, np("np", "ingress: [{action: Allow, source: {serviceAccounts: {}}}]"),
			`NetworkPolicy "np"`, "spec.ingress[0].source.serviceAccounts", "empty: give names, a selector or both"},
		{"global() in a service account selector", ActionApply, np("np", "serviceAccountSelector: global()"),
			`NetworkPolicy "np"`, "spec.serviceAccountSelector", "global() can only be used in a rule's namespaceSelector"},
		{"a namespace with capitals", ActionApply, kind("NetworkPolicy", "name: np, namespace: Shop", ""),
			`NetworkPolicy "np"`, "metadata.namespace", `"Shop" is not a valid namespace`},
		{"the same NetworkPolicy twice", ActionApply, np("allow-web", "selector: all()"),
			`NetworkPolicy "allow-web"`, "metadata.name", "NetworkPolicy(shop/allow-web) again (also document 2)"},
		{"deleting the default tier", ActionDelete, kind("Tier", "name: default", ""),
			`Tier "default"`, "metadata.name", "the default tier cannot be deleted"},
		{"deleting a tier that holds policies", ActionDelete, kind("Tier", "name: security", ""),
			`Tier "security"`, "metadata.name", "cannot delete a non-empty tier: Tier(security) still holds GlobalNetworkPolicy(security.quarantine); delete or move them first"},
	} {
		t.Run(c2.name, func(t *testing.T) {
			prefix := good
			if c2.action == ActionDelete {
				// Two deletions that would do: a profile, and one of the tier's two policies.
				prefix = kind("Profile", "name: dev-apps", "") + "---\n" + kind("GlobalNetworkPolicy", "name: block-bad-networks", "") + "---\n"
			}
			before := keyspace(t, c)
			input := prefix + c2.doc
			docs, err := Decode([]byte(input), c2.action)
			if err == nil {
				_, err = write(ctx, c, c2.action, docs)
			}
			sameKeyspace(t, before, keyspace(t, c))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%s: %v, want ErrInvalid", c2.action, err)
			}
			msg := err.Error()
			line := strings.Count(prefix, "\n") + 1
			for _, want := range []string{"nothing written", fmt.Sprintf("document 3 (%s, line %d)", c2.label, line), c2.field + ": " + c2.reason} {
				if !strings.Contains(msg, want) {
					t.Errorf("error does not say %q:\n%s", want, msg)
				}
			}
			if strings.Contains(msg, "document 1 ") || strings.Contains(msg, "document 2 (") {
				t.Errorf("the good documents are reported:\n%s", msg)
			}
		})
	}
}
