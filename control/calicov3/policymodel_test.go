package calicov3

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/resource"
)

// PolicyModel is control/resource/testdata/policy-model/manifests.yaml: two tiers, policies in
// them (global and namespaced), one in the default tier and a profile.
var PolicyModel = mustRead("../resource/testdata/policy-model/manifests.yaml")

func mustDecode(t *testing.T, input string, action Action) []Doc {
	t.Helper()
	docs, err := Decode([]byte(input), action)
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

func names(items []resource.Resource) string {
	var out []string
	for _, r := range items {
		m := r.Metadata()
		if m.Namespace != "" {
			out = append(out, m.Namespace+"/"+m.Name)
		} else {
			out = append(out, m.Name)
		}
	}
	return strings.Join(out, " ")
}

// Tiers, namespaced and tiered policies and profiles apply, read back as applied, list as
// calicoctl lists them and delete in Calico's order: a tier after its policies.
func TestPolicyModel(t *testing.T) {
	ctx := context.Background()
	c := datastoretest.New(t)
	docs := mustDecode(t, PolicyModel, ActionApply)
	if res, err := Apply(ctx, c, docs); err != nil || res.String() != "Successfully applied 7 resource(s)" {
		t.Fatalf("Apply = %q, %v", res, err)
	}
	for _, d := range docs {
		ref := RefOf(d.Resource)
		got, err := Get(ctx, c, ref.Kind, ref.Name, ref.Namespace)
		if err != nil {
			t.Fatalf("Get %s: %v", ref, err)
		}
		if g, w := encode(t, got), encode(t, d.Resource); g != w {
			t.Errorf("%s read back:\n got %s\nwant %s", ref, g, w)
		}
	}
	// Stored as the datastore has them: a namespaced policy under its namespace, the tier by
	// name, the default tier as none.
	if p, err := c.Policies().Get(ctx, "shop/platform.api"); err != nil || p.Value.Tier != "platform" || p.Value.Namespace != "shop" {
		t.Errorf("stored shop/platform.api = %+v, %v", p.Value, err)
	}
	if p, err := c.Policies().Get(ctx, "default/default-deny"); err != nil || p.Value.Tier != "" {
		t.Errorf("stored default/default-deny = %+v, %v", p.Value, err)
	}
	if tr, err := c.Tiers().Get(ctx, "security"); err != nil || tr.Value.DefaultAction != datastore.TierPass {
		t.Errorf("stored tier security = %+v, %v", tr.Value, err)
	}
	if pr, err := c.Profiles().Get(ctx, "dev-apps"); err != nil || pr.Value.LabelsToApply["stage"] != "development" {
		t.Errorf("stored profile dev-apps = %+v, %v", pr.Value, err)
	}

	for _, l := range []struct {
		kind      resource.Kind
		namespace string
		want      string
	}{
		{resource.KindNetworkPolicy, "", "default/default-deny shop/platform.api"},
		{resource.KindNetworkPolicy, "shop", "shop/platform.api"},
		{resource.KindNetworkPolicy, "prod", ""},
		{resource.KindGlobalNetworkPolicy, "", "block-bad-networks security.quarantine"},
		// By order, as calicoctl get tier; the default tier without a record of its own.
		{resource.KindTier, "", "security platform default"},
		{resource.KindProfile, "", "dev-apps"},
	} {
		items, _, err := List(ctx, c, l.kind, l.namespace)
		if err != nil || names(items) != l.want {
			t.Errorf("List %s in %q = %q, %v; want %q", l.kind, l.namespace, names(items), err, l.want)
		}
	}
	if tr, err := Get(ctx, c, resource.KindTier, "default", ""); err != nil || *tr.(*resource.Tier).Spec.Order != resource.DefaultTierOrder {
		t.Errorf("Get tier default = %+v, %v", tr, err)
	}
	if _, err := Get(ctx, c, resource.KindNetworkPolicy, "platform.api", "default"); !errors.Is(err, ErrNotExist) {
		t.Errorf("Get NetworkPolicy platform.api in default: %v, want ErrNotExist (it is in shop)", err)
	}
	if _, err := Get(ctx, c, resource.KindGlobalNetworkPolicy, "platform.api", ""); !errors.Is(err, ErrNotExist) {
		t.Errorf("Get GlobalNetworkPolicy platform.api: %v, want ErrNotExist (it is a NetworkPolicy)", err)
	}

	// Applied again: the same.
	if res, err := Apply(ctx, c, mustDecode(t, PolicyModel, ActionApply)); err != nil || len(res.Done) != 7 {
		t.Fatalf("Apply again = %q, %v", res, err)
	}

	// A tier with policies, and the default tier, are not deleted.
	before := revision(t, c)
	if _, err := DeleteRefs(ctx, c, []Ref{{Kind: resource.KindTier, Name: "security"}}); !errors.Is(err, ErrTierInUse) ||
		!strings.Contains(err.Error(), "Tier(security) still holds GlobalNetworkPolicy(block-bad-networks), GlobalNetworkPolicy(security.quarantine)") {
		t.Errorf("delete tier security: %v", err)
	}
	if _, err := DeleteRefs(ctx, c, []Ref{{Kind: resource.KindTier, Name: "default"}}); err == nil || !strings.Contains(err.Error(), "the default tier cannot be deleted") {
		t.Errorf("delete tier default: %v", err)
	}
	// The file deletes its tiers before their policies: refused as a whole.
	if res, err := Delete(ctx, c, mustDecode(t, PolicyModel, ActionDelete)); !errors.Is(err, ErrTierInUse) || !errors.Is(err, ErrInvalid) ||
		len(res.Done) != 0 || !strings.Contains(err.Error(), `document 1 (Tier "security", line 1): metadata.name: cannot delete a non-empty tier: Tier(security) still holds GlobalNetworkPolicy(block-bad-networks)`) ||
		!strings.Contains(err.Error(), `document 2 (Tier "platform", line 10): metadata.name: cannot delete a non-empty tier: Tier(platform) still holds NetworkPolicy(shop/platform.api)`) {
		t.Errorf("delete -f, tiers first = %q, %v", res, err)
	}
	if revision(t, c) != before {
		t.Error("a refused deletion wrote")
	}
	// In the reverse order, the policies go first: then their tiers.
	split := strings.Split(PolicyModel, "\n---\n")
	slices.Reverse(split)
	if res, err := Delete(ctx, c, mustDecode(t, strings.Join(split, "\n---\n"), ActionDelete)); err != nil || len(res.Done) != 7 {
		t.Fatalf("delete -f, policies first = %q, %v", res, err)
	}
	if items, _, err := List(ctx, c, resource.KindTier, ""); err != nil || names(items) != "default" {
		t.Errorf("tiers after delete: %q, %v", names(items), err)
	}
	if items, _, err := c.Policies().List(ctx); err != nil || len(items) != 0 {
		t.Errorf("policies after delete: %v, %v", items, err)
	}
}

// A policy's tier must exist when it is written: stored, or created earlier in the same input.
func TestTierOfPolicy(t *testing.T) {
	ctx := context.Background()
	c := datastoretest.New(t)
	const tier = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 100}\n"
	const np = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: allow-dns, namespace: prod}\nspec: {tier: security, selector: all()}\n"
	const gnp = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.deny}\nspec: {tier: security, ingress: [{action: Deny}]}\n"
	for _, action := range []Action{ActionApply, ActionCreate} {
		before := revision(t, c)
		// Before its tier in the file: refused, the whole file.
		res, err := write(ctx, c, action, mustDecode(t, np+"---\n"+gnp+"---\n"+tier, action))
		if !errors.Is(err, ErrNotExist) || !errors.Is(err, ErrInvalid) || len(res.Done) != 0 ||
			!strings.Contains(err.Error(), "2 of 3 documents refused, nothing written") ||
			!strings.Contains(err.Error(), `document 1 (NetworkPolicy "allow-dns", line 1): spec.tier: resource does not exist: Tier(security): document 3 creates it, after this one; put the Tier first`) ||
			!strings.Contains(err.Error(), `document 2 (GlobalNetworkPolicy "security.deny", line 6): spec.tier: resource does not exist: Tier(security)`) {
			t.Errorf("%s, tier last: %q, %v", action, res, err)
		}
		if revision(t, c) != before {
			t.Errorf("%s: a refused file wrote", action)
		}
	}
	// Without it: refused, saying so.
	if _, err := Apply(ctx, c, mustDecode(t, gnp, ActionApply)); !errors.Is(err, ErrNotExist) ||
		!strings.Contains(err.Error(), "spec.tier: resource does not exist: Tier(security): create the Tier first") {
		t.Errorf("apply without the tier: %v", err)
	}
	// The tier first: created, then its policies.
	if res, err := Create(ctx, c, mustDecode(t, tier+"---\n"+np+"---\n"+gnp, ActionCreate)); err != nil || len(res.Done) != 3 {
		t.Fatalf("create, tier first = %q, %v", res, err)
	}
	// Now stored, the tier serves policies of later inputs.
	more := strings.ReplaceAll(np, "allow-dns", "allow-ntp")
	if _, err := Apply(ctx, c, mustDecode(t, more, ActionApply)); err != nil {
		t.Errorf("apply into a stored tier: %v", err)
	}
	// Deleted by name: the policies first, then the tier; one at a time, as calicoctl.
	if res, err := DeleteRefs(ctx, c, []Ref{{Kind: resource.KindNetworkPolicy, Namespace: "prod", Name: "allow-dns"},
		{Kind: resource.KindNetworkPolicy, Namespace: "prod", Name: "allow-ntp"}, {Kind: resource.KindTier, Name: "security"}}); !errors.Is(err, ErrTierInUse) ||
		len(res.Done) != 2 || !strings.Contains(err.Error(), "still holds GlobalNetworkPolicy(security.deny); delete or move them first") {
		t.Errorf("delete two policies and the tier = %q, %v", res, err)
	}
	if _, err := DeleteRefs(ctx, c, []Ref{{Kind: resource.KindGlobalNetworkPolicy, Name: "security.deny"}, {Kind: resource.KindTier, Name: "security"}}); err != nil {
		t.Errorf("delete the last policy and the tier: %v", err)
	}
	if _, err := DeleteRefs(ctx, c, []Ref{{Kind: resource.KindProfile, Name: "nope"}}); !errors.Is(err, ErrNotExist) {
		t.Errorf("delete a missing profile: %v", err)
	}
}

// A Margay policy record (margayctl policy apply's format before Calico's manifests) goes the
// way of the resource it is.
func TestPolicyRecords(t *testing.T) {
	ctx := context.Background()
	c := datastoretest.New(t)
	input := `name: web
order: 100
selector: app == "web"
ingress:
  - action: allow
    protocol: tcp
    source: {selector: app == "frontend"}
    destination: {ports: [80, "8000:8080"]}
---
` + mustRead("../resource/testdata/calico-docs/globalnetworkpolicy.yaml") + `---
name: db
namespace: prod
egress: [{action: deny}]
`
	if _, err := Decode([]byte(input), ActionApply); err == nil || !strings.Contains(err.Error(), "document 1 (line 1):\n    apiVersion: required") {
		t.Errorf("Decode of a record: %v, want apiVersion required", err)
	}
	docs, err := DecodeWithPolicyRecords([]byte(input), ActionApply)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := Apply(ctx, c, docs); err != nil || res.String() != "Successfully applied 3 resource(s)" {
		t.Fatalf("Apply = %q, %v", res, err)
	}
	web, err := Get(ctx, c, resource.KindGlobalNetworkPolicy, "web", "")
	if err != nil {
		t.Fatal(err)
	}
	if s := web.(*resource.GlobalNetworkPolicy).Spec; s.Ingress[0].Action != resource.Allow || s.Ingress[0].Protocol.String() != "TCP" ||
		s.Ingress[0].Destination.Ports[1].String() != "8000:8080" || len(s.Types) != 1 || s.Types[0] != resource.PolicyTypeIngress {
		t.Errorf("web read back as %+v", s)
	}
	if p, err := c.Policies().Get(ctx, "prod/db"); err != nil || p.Value.Egress[0].Action != datastore.ActionDeny {
		t.Errorf("stored prod/db = %+v, %v", p.Value, err)
	}
	// Errors name the document as a Margay policy, and the field.
	_, err = DecodeWithPolicyRecords([]byte("name: a\ningress: [{action: maybe}]\n---\nname: Bad_Name\n"), ActionApply)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `document 1 (Margay policy "a", line 1): ingress[0]: action "maybe": want allow, deny, log or pass`) ||
		!strings.Contains(err.Error(), `document 2 (Margay policy "Bad_Name", line 4): metadata.name: "Bad_Name" is not a valid GlobalNetworkPolicy name`) {
		t.Errorf("bad records: %v", err)
	}
}
