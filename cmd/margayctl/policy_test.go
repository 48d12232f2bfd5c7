package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
)

// twoPolicies is in Margay's own policy format, which policy apply still takes.
const twoPolicies = `# the web tier
name: web
order: 100
selector: app == "web"
ingress:
  - action: Allow
    protocol: tcp
    source:
      selector: app == "frontend"
    destination:
      ports: [80, 8000:8080]
  - action: deny
---
name: deny-egress
selector: all()
types: [Egress]
`

const secondMalformed = `name: db
selector: app == "db"
ingress:
  - action: allow
---
name: web2
ingress:
  - action: allow
    source:
      selector: app ==
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *dsEnv) policy(t *testing.T, name string) (datastore.Policy, bool) {
	t.Helper()
	it, err := e.c.Policies().Get(context.Background(), name)
	if errors.Is(err, datastore.ErrNotFound) {
		return datastore.Policy{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return it.Value, true
}

// The policy commands are aliases of the Calico forms: what they write, read and delete is what
// apply, get gnp and delete gnp do; policy apply also takes Margay's own format.
func TestPolicyCommands(t *testing.T) {
	e := newDSEnv(t)
	two := writeFile(t, "two.yaml", twoPolicies)
	steps := []dsStep{
		{name: "apply two documents in Margay's format", args: []string{"policy", "apply", "-f", two},
			want: []string{"Successfully applied 2 'GlobalNetworkPolicy' resource(s)"},
			check: func(t *testing.T, _ string) {
				p, ok := e.policy(t, "web")
				if !ok || p.Order == nil || *p.Order != 100 || p.Selector != `app == "web"` || len(p.Ingress) != 2 ||
					p.Ingress[0].Action != "allow" || len(p.Ingress[0].Destination.Ports) != 2 ||
					p.Ingress[0].Destination.Ports[1] != (datastore.PortRange{Lo: 8000, Hi: 8080}) ||
					len(p.Types) != 1 || p.Types[0] != datastore.PolicyIngress || p.Version != datastore.CurrentVersion {
					t.Errorf("stored web = %+v, %v", p, ok)
				}
				if p, ok := e.policy(t, "deny-egress"); !ok || len(p.Types) != 1 || p.Types[0] != datastore.PolicyEgress {
					t.Errorf("stored deny-egress = %+v, %v", p, ok)
				}
			}},
		{name: "apply again", args: []string{"policy", "apply", "-f", two}, want: []string{"Successfully applied 2 'GlobalNetworkPolicy' resource(s)"}},
		{name: "apply changed", args: []string{"policy", "apply", "-f", writeFile(t, "web.yaml", "name: web\nselector: app == 'web'\n")},
			want: []string{"Successfully applied 1 'GlobalNetworkPolicy' resource(s)"},
			check: func(t *testing.T, _ string) {
				if p, _ := e.policy(t, "web"); len(p.Ingress) != 0 || p.Order != nil {
					t.Errorf("web not replaced as a whole: %+v", p)
				}
			}},
		{name: "apply a Calico manifest", args: []string{"policy", "apply", "-f", writeFile(t, "gnp.yaml", calicoDoc(t, "globalnetworkpolicy.yaml"))},
			want: []string{"Successfully applied 1 'GlobalNetworkPolicy' resource(s)"}},
		{name: "apply restore", args: []string{"policy", "apply", "-f", two}, want: []string{"Successfully applied 2"}},

		{name: "list: get gnp -o wide", args: []string{"policy", "list"},
			check: wantRows("NAME ORDER SELECTOR", "allow-tcp-6379 role == 'database'", "deny-egress all()", `web 100 app == "web"`)},
		{name: "list -o yaml", args: []string{"policy", "list", "-o", "yaml"},
			want: []string{"kind: GlobalNetworkPolicyList", "name: deny-egress", "name: web"}},
		{name: "get: get gnp NAME -o yaml", args: []string{"policy", "get", "web"},
			want: []string{"kind: GlobalNetworkPolicy", "name: web\n", "order: 100\n", `selector: app == "web"`, "- action: Allow\n", "- 8000:8080\n", "- Ingress\n"},
			check: func(t *testing.T, out string) {
				// What get prints, apply takes back.
				got, err := margayctl(t, "--etcd-endpoints", e.endpoint, "policy", "apply", "-f", writeFile(t, "get.yaml", out))
				if err != nil || !strings.Contains(got, "Successfully applied 1 'GlobalNetworkPolicy' resource(s)") {
					t.Errorf("apply of get's output: %v\n%s", err, got)
				}
			}},
		{name: "get json", args: []string{"policy", "get", "deny-egress", "-o", "json"}, want: []string{`"kind": "GlobalNetworkPolicy"`, `"selector": "all()"`}},
		{name: "get missing", args: []string{"policy", "get", "nope"}, wantErr: "resource does not exist: GlobalNetworkPolicy(nope)"},
		{name: "get bad output", args: []string{"policy", "get", "web", "-o", "xml"}, wantErr: "unknown output format"},
		{name: "apply -o refused", args: []string{"policy", "apply", "-f", two, "-o", "json"}, wantErr: "only reports what it wrote"},

		{name: "second document malformed", args: []string{"policy", "apply", "-f", writeFile(t, "bad.yaml", secondMalformed)},
			wantErr: `document 2 (Margay policy "web2", line 6): ingress[0]: source: selector: selector "app ==": position`,
			check: func(t *testing.T, _ string) {
				if _, ok := e.policy(t, "db"); ok {
					t.Error("first document written although the second is malformed")
				}
			}},
		{name: "unknown field", args: []string{"policy", "apply", "-f", writeFile(t, "unknown.yaml", "name: x\nselectr: all()\n")},
			wantErr: `document 1 (Margay policy "x", line 1): json: unknown field "selectr"`},
		{name: "every bad document reported",
			args:    []string{"policy", "apply", "-f", writeFile(t, "bad2.yaml", "name: a\ningress: [{action: maybe}]\n---\nname: ok\n---\nname: a..b\n")},
			wantErr: "2 of 3 documents wrong, nothing written",
			check: func(t *testing.T, _ string) {
				if _, ok := e.policy(t, "ok"); ok {
					t.Error("valid document written although others are malformed")
				}
			}},
		{name: "duplicate name", args: []string{"policy", "apply", "-f", writeFile(t, "dup.yaml", "name: a\n---\nname: a\n")},
			wantErr: `document 2 (Margay policy "a", line 3): metadata.name: GlobalNetworkPolicy(a) again (also document 1)`},
		{name: "yaml syntax", args: []string{"policy", "apply", "-f", writeFile(t, "syntax.yaml", "name: a\n---\n\nname: [b\n")},
			wantErr: "invalid YAML"},
		{name: "no file", args: []string{"policy", "apply"}, wantErr: "-f FILE is required"},
		{name: "missing file", args: []string{"policy", "apply", "-f", "/nonexistent/p.yaml"}, wantErr: "no such file"},

		{name: "json array", args: []string{"policy", "apply", "-f", writeFile(t, "a.json",
			`[{"name": "j1", "selector": "has(app)", "egress": [{"action": "allow", "protocol": "udp", "destination": {"ports": [53]}}]},
			  {"name": "j2", "version": 1, "order": 5}]`)},
			check: func(t *testing.T, out string) {
				// Egress rules only and no types: Egress alone, as Calico defaults it.
				if p, ok := e.policy(t, "j1"); !ok || !slices.Equal(p.Types, []datastore.PolicyType{datastore.PolicyEgress}) || len(p.Egress) != 1 {
					t.Errorf("stored j1 = %+v, %v", p, ok)
				}
			}},
		{name: "json array malformed element", args: []string{"policy", "apply", "-f", writeFile(t, "c.json",
			`[{"name": "k1"}, {"name": "k2", "types": ["Sideways"]}]`)},
			wantErr: `document 2 (Margay policy "k2"): types[0]: "Sideways", want Ingress or Egress`,
			check: func(t *testing.T, _ string) {
				if _, ok := e.policy(t, "k1"); ok {
					t.Error("k1 written although k2 is malformed")
				}
			}},

		{name: "delete: delete gnp, one after the other", args: []string{"policy", "delete", "j1", "nope", "j2"},
			wantErr: "resource does not exist: GlobalNetworkPolicy(nope)",
			want:    []string{"Partial success: deleted the first 1 out of 3 resources", "GlobalNetworkPolicy(j1)"},
			check: func(t *testing.T, _ string) {
				if _, ok := e.policy(t, "j2"); !ok {
					t.Error("j2 deleted after the missing one")
				}
			}},
		{name: "delete", args: []string{"policy", "delete", "j2", "web"}, want: []string{"Successfully deleted 2 'GlobalNetworkPolicy' resource(s)"},
			check: func(t *testing.T, _ string) {
				for _, n := range []string{"j1", "j2", "web"} {
					if _, ok := e.policy(t, n); ok {
						t.Errorf("policy %s still stored", n)
					}
				}
			}},
		{name: "delete none", args: []string{"policy", "delete"}, wantErr: "requires at least 1 arg"},
	}
	e.run(t, steps)
}

func TestPolicyApplyStdin(t *testing.T) {
	e := newDSEnv(t)
	cmd := newRoot()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetIn(strings.NewReader(`{"name": "s1"}` + "\n" + `{"name": "s2", "selector": "!has(x)"}`))
	cmd.SetArgs([]string{"--etcd-endpoints", e.endpoint, "policy", "apply", "-f", "-"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("apply -f -: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "Successfully applied 2 'GlobalNetworkPolicy' resource(s)") {
		t.Errorf("apply -f - printed:\n%s", out.String())
	}
	if p, ok := e.policy(t, "s2"); !ok || p.Selector != "!has(x)" {
		t.Errorf("stored s2 = %+v, %v", p, ok)
	}
}

// The aliases say what they are aliases of.
func TestAliasesHelp(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"policy", "--help"}, []string{"margayctl policy apply -f FILE     margayctl apply -f FILE", "margayctl delete globalnetworkpolicy NAME..."}},
		{[]string{"policy", "list", "--help"}, []string{"Alias of margayctl get globalnetworkpolicy -o wide"}},
		{[]string{"pool", "--help"}, []string{"margayctl delete ippool NAME", "margayctl replace -f", "no Calico form shows"}},
		{[]string{"pool", "add", "--help"}, []string{"Alias of margayctl create -f with an IPPool"}},
		{[]string{"bgp", "peer", "--help"}, []string{"alias of margayctl create -f with a BGPPeer", "no Calico form", "alias of margayctl delete bgppeer NAME"}},
	} {
		out, err := margayctl(t, c.args...)
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("margayctl %s lacks %q:\n%s", strings.Join(c.args, " "), w, out)
			}
		}
	}
}
