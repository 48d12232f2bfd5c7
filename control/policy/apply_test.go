package policy_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/manifest"
	"github.com/margaynet/margay/control/policy"
)

func TestDecodeDocs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		names []string // the policies decoded
		errs  []string // each error's beginning
	}{
		{name: "two documents", in: "name: web\norder: 100\nselector: app == \"web\"\n---\nname: deny-egress\ntypes: [Egress]\n",
			names: []string{"web", "deny-egress"}},
		{name: "second malformed", in: "name: db\nselector: app == \"db\"\n---\nname: web2\ningress:\n  - action: allow\n    source:\n      selector: app ==\n",
			names: []string{"db"},
			errs:  []string{`document 2 (policy "web2"): ingress[0]: source: selector: selector "app ==": position`}},
		{name: "unknown field", in: "name: x\nselectr: all()\n",
			errs: []string{`document 1 (policy "x"): json: unknown field "selectr"`}},
		{name: "every bad document", in: "name: a\ningress: [{action: maybe}]\n---\nname: ok\n---\nname: a..b\n",
			names: []string{"ok"},
			errs:  []string{`document 1 (policy "a"): ingress[0]: action`, `document 3 (policy "a..b"): name`}},
		{name: "duplicate name", in: "name: a\n---\nname: a\n",
			names: []string{"a"},
			errs:  []string{`document 2 (policy "a"): same name as document 1`}},
		{name: "yaml syntax", in: "name: a\n---\n\nname: [b\n",
			names: []string{"a"},
			errs:  []string{"document 2 (starting at line 4): invalid YAML: "}},
		{name: "not a mapping", in: "hello\n",
			errs: []string{`document 1 (starting at line 1): want a policy (a mapping with name, selector, ingress, …), found a string "hello"`}},
		{name: "a list in a list", in: `[{"name": "k1"}, [{"name": "k2"}]]`,
			names: []string{"k1"},
			errs:  []string{"document 2: want a policy (a mapping with name, selector, ingress, …), found a list"}},
		{name: "yaml boolean", in: "name: b\ningress:\n  - action: yes\n",
			errs: []string{`document 1 (policy "b"): json: cannot unmarshal bool into Go struct field Rule.ingress.action of type string (YAML reads unquoted y, n, yes, no, on, off, true and false as booleans: quote the value)`}},
		{name: "json boolean: no YAML hint", in: `{"name": "b", "ingress": [{"action": true}]}`,
			errs: []string{`document 1 (policy "b"): json: cannot unmarshal bool into Go struct field Rule.ingress.action of type string`}},
		{name: "json array malformed element", in: `[{"name": "k1"}, {"name": "k2", "types": ["Sideways"]}]`,
			names: []string{"k1"},
			errs:  []string{`document 2 (policy "k2"): types[0]: "Sideways", want Ingress or Egress`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs, err := manifest.Split([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			ps, errs := policy.DecodeDocs(docs)
			var names []string
			for _, p := range ps {
				names = append(names, p.Name)
				if p.Version != datastore.CurrentVersion {
					t.Errorf("policy %s: version %d, want the defaults applied", p.Name, p.Version)
				}
			}
			if !slices.Equal(names, tc.names) {
				t.Errorf("policies %q, want %q", names, tc.names)
			}
			if len(errs) != len(tc.errs) {
				t.Fatalf("errors %q, want %d: %q", errs, len(tc.errs), tc.errs)
			}
			for i, err := range errs {
				if !strings.HasPrefix(err.Error(), tc.errs[i]) {
					t.Errorf("error %d: %q, want it to begin with %q", i, err, tc.errs[i])
				}
			}
			for _, err := range errs {
				if hint := strings.HasSuffix(err.Error(), "quote the value)"); hint != (tc.name == "yaml boolean") {
					t.Errorf("YAML hint %v in %q", hint, err)
				}
			}
		})
	}
}

func decode(t *testing.T, doc string) datastore.Policy {
	t.Helper()
	p, err := datastore.DecodePolicy([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestApply(t *testing.T) {
	ctx := context.Background()
	c := datastoretest.New(t)
	store := c.Policies()
	web := decode(t, `{"name": "web", "order": 100, "selector": "app == 'web'", "ingress": [{"action": "allow", "protocol": "tcp", "destination": {"ports": [80]}}]}`)
	deny := decode(t, `{"name": "deny-egress", "types": ["Egress"]}`)

	apply := func(t *testing.T, ps []datastore.Policy, want ...policy.Applied) {
		t.Helper()
		got, err := policy.Apply(ctx, store, ps)
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("Apply = %+v, %v; want %+v", got, err, want)
		}
	}
	stored := func(t *testing.T, name string) datastore.Item[datastore.Policy] {
		t.Helper()
		it, err := store.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return it
	}

	apply(t, []datastore.Policy{web, deny}, policy.Applied{Name: "web", Result: policy.ApplyCreated},
		policy.Applied{Name: "deny-egress", Result: policy.ApplyCreated})
	if it := stored(t, "web"); it.Value.Order == nil || *it.Value.Order != 100 || len(it.Value.Ingress) != 1 {
		t.Errorf("stored web = %+v", it.Value)
	}
	rev := stored(t, "web").ModRevision

	// The same again: nothing written.
	apply(t, []datastore.Policy{web, deny}, policy.Applied{Name: "web", Result: policy.ApplyUnchanged},
		policy.Applied{Name: "deny-egress", Result: policy.ApplyUnchanged})
	if got := stored(t, "web").ModRevision; got != rev {
		t.Errorf("unchanged web written again: revision %d, was %d", got, rev)
	}

	// An empty list and a missing one are alike as stored.
	empty := deny
	empty.Ingress = []datastore.Rule{}
	apply(t, []datastore.Policy{empty}, policy.Applied{Name: "deny-egress", Result: policy.ApplyUnchanged})

	// A changed policy replaces the stored one as a whole.
	apply(t, []datastore.Policy{decode(t, `{"name": "web", "selector": "app == 'web'"}`)},
		policy.Applied{Name: "web", Result: policy.ApplyConfigured})
	if it := stored(t, "web"); it.Value.Order != nil || len(it.Value.Ingress) != 0 {
		t.Errorf("web not replaced as a whole: %+v", it.Value)
	}

	// A stored value nothing can read is replaced.
	if _, err := c.Raw().Put(ctx, store.Key("broken"), "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Get(ctx, "broken"); !errors.Is(err, datastore.ErrMalformed) {
		t.Fatalf("Get of the broken value: %v, want ErrMalformed", err)
	}
	apply(t, []datastore.Policy{decode(t, `{"name": "broken"}`)}, policy.Applied{Name: "broken", Result: policy.ApplyConfigured})
	if it := stored(t, "broken"); it.Value.Name != "broken" {
		t.Errorf("stored broken = %+v", it.Value)
	}

	// An error stops Apply; it says how many policies it applied before.
	bad := decode(t, `{"name": "x"}`)
	bad.Name = "a..b" // a name nothing can be stored under
	got, err := policy.Apply(ctx, store, []datastore.Policy{bad, web})
	if err == nil || !strings.HasSuffix(err.Error(), " (nothing applied)") || len(got) != 0 || got == nil {
		t.Errorf("Apply of a bad first policy = %+v, %v; want no results and (nothing applied)", got, err)
	}
	got, err = policy.Apply(ctx, store, []datastore.Policy{decode(t, `{"name": "p1"}`), decode(t, `{"name": "p2"}`), bad, web})
	if err == nil || !strings.HasSuffix(err.Error(), " (2 of 4 policies applied before it; run the command again)") ||
		!slices.Equal(got, []policy.Applied{{Name: "p1", Result: policy.ApplyCreated}, {Name: "p2", Result: policy.ApplyCreated}}) {
		t.Errorf("Apply with a bad third policy = %+v, %v; want p1 and p2 created and 2 of 4 applied", got, err)
	}
	if !errors.Is(err, datastore.ErrInvalid) {
		t.Errorf("Apply's error %v does not wrap datastore.ErrInvalid", err)
	}

	// A datastore that fails: nothing applied.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if got, err := policy.Apply(cctx, store, []datastore.Policy{web}); !errors.Is(err, context.Canceled) || len(got) != 0 {
		t.Errorf("Apply with a canceled context = %+v, %v", got, err)
	}
}
