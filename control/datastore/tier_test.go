package datastore_test

import (
	"context"
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
)

// TestCalicoRecords: tiers, profiles, namespaced policies and the new rule and workload fields are
// checked as Calico checks them, each error naming its field.
func TestCalicoRecords(t *testing.T) {
	order := func(f float64) *float64 { return &f }
	for _, c := range []struct {
		what string
		v    interface{ Validate() error }
		err  string // "" when valid
	}{
		{"tier", datastore.Tier{Version: 1, Name: "sec", Order: order(10), DefaultAction: "Pass"}, ""},
		{"tier without order", datastore.Tier{Version: 1, Name: "sec", DefaultAction: "Deny"}, ""},
		{"tier action", datastore.Tier{Version: 1, Name: "sec", DefaultAction: "Allow"}, `defaultAction "Allow"`},
		{"default tier moved", datastore.Tier{Version: 1, Name: "default", Order: order(5), DefaultAction: "Deny"}, "the default tier has order 1e+06"},
		{"default tier", datastore.Tier{Version: 1, Name: "default", Order: order(1e6), DefaultAction: "Deny"}, ""},
		{"profile pass", datastore.Profile{Version: 1, Name: "p", Egress: []datastore.Rule{{Action: "pass"}}}, "egress[0]: action pass"},
		{"profile labels", datastore.Profile{Version: 1, Name: "p", LabelsToApply: map[string]string{"": "c"}}, "labelsToApply"},
		{"namespaced", datastore.Policy{Version: 1, Name: "web", Namespace: "prod", Types: []datastore.PolicyType{"Ingress"}}, ""},
		{"bad namespace", datastore.Policy{Version: 1, Name: "web", Namespace: "Prod", Types: []datastore.PolicyType{"Ingress"}}, "namespace"},
		{"namespaced nsSelector", datastore.Policy{Version: 1, Name: "web", Namespace: "prod", NamespaceSelector: "all()",
			Types: []datastore.PolicyType{"Ingress"}}, "namespaceSelector: only a global policy"},
		{"sa selector", datastore.Policy{Version: 1, Name: "web", ServiceAccountSelector: "role ==", Types: []datastore.PolicyType{"Ingress"}},
			"serviceAccountSelector"},
		{"actions", datastore.Rule{Action: "log"}, ""},
		{"action", datastore.Rule{Action: "next-tier"}, "want allow, deny, log or pass"},
		{"empty sa", datastore.Rule{Action: "allow", Source: datastore.EntityRule{ServiceAccounts: &datastore.ServiceAccountMatch{}}},
			"source: serviceAccounts: give names, a selector or both"},
		{"rule nsSelector", datastore.Rule{Action: "allow", Destination: datastore.EntityRule{NamespaceSelector: "team in {"}},
			"destination: namespaceSelector"},
		{"named port without protocol", datastore.Rule{Action: "allow", Destination: datastore.EntityRule{
			Ports: []datastore.PortRange{{Name: "http"}}}}, "ports need protocol"},
	} {
		err := c.v.Validate()
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.what, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: %v, want an error with %q", c.what, err, c.err)
		}
	}

	for _, c := range []struct {
		in   string
		want datastore.PortRange
		err  bool
	}{
		{"http", datastore.PortRange{Name: "http"}, false},
		{"web-8080", datastore.PortRange{Name: "web-8080"}, false},
		{"80", datastore.PortRange{Lo: 80, Hi: 80}, false},
		{"HTTP", datastore.PortRange{}, true},
		{"a--b", datastore.PortRange{}, true},
		{"-a", datastore.PortRange{}, true},
		{"0123", datastore.PortRange{Lo: 123, Hi: 123}, false},
		{"averyveryverylongname", datastore.PortRange{}, true},
		{"http:80", datastore.PortRange{}, true},
	} {
		got, err := datastore.ParsePortRange(c.in)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("ParsePortRange(%q) = %+v, %v; want %+v, error %v", c.in, got, err, c.want, c.err)
		}
	}

	// A workload's own labels win over its profiles'; a later profile over an earlier one.
	profiles := map[string]datastore.Profile{"a": {LabelsToApply: map[string]string{"x": "a", "y": "a"}},
		"b": {LabelsToApply: map[string]string{"y": "b", "z": "b"}}}
	got := datastore.ProfileLabels(map[string]string{"z": "own"}, []string{"a", "b", "missing"}, profiles)
	if want := map[string]string{"x": "a", "y": "b", "z": "own"}; !maps.Equal(got, want) {
		t.Errorf("ProfileLabels = %v, want %v", got, want)
	}
}

// TestCalicoStores: namespaced policies live beside global ones under policies/, by Key; tiers and
// profiles have stores of their own; a namespaced record under a key that disagrees is refused.
func TestCalicoStores(t *testing.T) {
	ctx := context.Background()
	ds := datastoretest.New(t)
	types := []datastore.PolicyType{datastore.PolicyIngress}
	for _, p := range []datastore.Policy{
		{Version: 1, Name: "web", Types: types},
		{Version: 1, Name: "web", Namespace: "prod", Types: types},
		{Version: 1, Name: "web", Namespace: "dev", Tier: "sec", Types: types},
	} {
		if _, err := ds.Policies().Create(ctx, p.Key(), p); err != nil {
			t.Fatal(err)
		}
	}
	items, _, err := ds.Policies().List(ctx)
	if err != nil || len(items) != 3 {
		t.Fatalf("List = %+v, %v", items, err)
	}
	for _, it := range items {
		if it.Name != it.Value.Key() {
			t.Errorf("item %q holds %q", it.Name, it.Value.Key())
		}
	}
	if it, err := ds.Policies().Get(ctx, "prod/web"); err != nil || it.Value.Namespace != "prod" || it.Value.Name != "web" {
		t.Errorf("Get(prod/web) = %+v, %v", it, err)
	}
	if _, err := ds.Policies().Put(ctx, "prod/web", datastore.Policy{Version: 1, Name: "web", Namespace: "dev", Types: types}); err == nil ||
		!strings.Contains(err.Error(), `namespace "dev" does not match key name "prod"`) {
		t.Errorf("a namespaced policy under another namespace's key: %v", err)
	}
	if _, err := ds.Policies().Put(ctx, "Prod/web", datastore.Policy{Version: 1, Name: "web", Types: types}); err == nil {
		t.Error("an invalid namespace in a key name was taken")
	}
	if _, err := ds.Tiers().Create(ctx, "sec", datastore.Tier{Version: 1, Order: new(100.0)}); err != nil {
		t.Fatal(err)
	}
	if it, err := ds.Tiers().Get(ctx, "sec"); err != nil || it.Value.DefaultAction != datastore.TierDeny || it.Value.Name != "sec" {
		t.Errorf("tier = %+v, %v: want the default action Deny filled in", it, err)
	}
	if _, err := ds.Profiles().Create(ctx, "net1", datastore.Profile{Version: 1, LabelsToApply: map[string]string{"net": "one"}}); err != nil {
		t.Fatal(err)
	}
	// A malformed profile written by other means is skipped, named and counted.
	if _, err := ds.Raw().Put(ctx, ds.Profiles().Key("bad"), `{"version":1,"ingress":[{"action":"pass"}]}`); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Profiles().Get(ctx, "bad"); !errors.Is(err, datastore.ErrMalformed) || !strings.Contains(err.Error(), "action pass") {
		t.Errorf("Get of a malformed profile: %v", err)
	}
	if items, _, err := ds.Profiles().List(ctx); err != nil || len(items) != 1 {
		t.Errorf("profiles listed: %+v, %v; want net1 alone", items, err)
	}
}
