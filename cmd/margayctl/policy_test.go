package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
)

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

func TestPolicyCommands(t *testing.T) {
	e := newDSEnv(t)
	two := writeFile(t, "two.yaml", twoPolicies)
	steps := []dsStep{
		{name: "apply two documents", args: []string{"policy", "apply", "-f", two},
			want: []string{`policy "web" created`, `policy "deny-egress" created`},
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
		{name: "apply again", args: []string{"policy", "apply", "-f", two},
			want: []string{`policy "web" unchanged`, `policy "deny-egress" unchanged`}},
		{name: "apply changed", args: []string{"policy", "apply", "-f", writeFile(t, "web.yaml", "name: web\nselector: app == 'web'\n")},
			want: []string{`policy "web" configured`},
			check: func(t *testing.T, _ string) {
				if p, _ := e.policy(t, "web"); len(p.Ingress) != 0 || p.Order != nil {
					t.Errorf("web not replaced as a whole: %+v", p)
				}
			}},
		{name: "apply restore", args: []string{"policy", "apply", "-f", two}, want: []string{`policy "web" configured`}},

		{name: "list", args: []string{"policy", "list"},
			want: []string{"NAME", "ORDER", "SELECTOR", "TYPES", "INGRESS", "EGRESS"},
			check: func(t *testing.T, out string) {
				lines := strings.Split(strings.TrimSpace(out), "\n")
				if len(lines) != 3 || strings.Join(strings.Fields(lines[1]), " ") != "deny-egress - all() Egress 0 0" ||
					strings.Join(strings.Fields(lines[2]), " ") != `web 100 app == "web" Ingress 2 0` {
					t.Errorf("policy list:\n%s", out)
				}
			}},
		{name: "list json", args: []string{"policy", "list", "-o", "json"},
			check: func(t *testing.T, out string) {
				var got []datastore.Policy
				if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 2 || got[1].Name != "web" || len(got[1].Ingress) != 2 {
					t.Errorf("policy list -o json = %s (%v)", out, err)
				}
			}},
		{name: "get yaml", args: []string{"policy", "get", "web"},
			want: []string{"name: web\n", "order: 100\n", `selector: app == "web"`, "- action: allow\n", "- 8000:8080\n", "- Ingress\n"},
			check: func(t *testing.T, out string) {
				// What get prints, apply takes back unchanged.
				got, err := margayctl(t, "--etcd-endpoints", e.endpoint, "policy", "apply", "-f", writeFile(t, "get.yaml", out))
				if err != nil || !strings.Contains(got, `policy "web" unchanged`) {
					t.Errorf("apply of get's output: %v\n%s", err, got)
				}
			}},
		{name: "get json", args: []string{"policy", "get", "deny-egress", "-o", "json"},
			check: func(t *testing.T, out string) {
				p, err := datastore.DecodePolicy([]byte(out))
				if err != nil || p.Name != "deny-egress" || p.Selector != "all()" {
					t.Errorf("policy get -o json = %s (%v)", out, err)
				}
			}},
		{name: "get missing", args: []string{"policy", "get", "nope"}, wantErr: `policy "nope" not found`},
		{name: "get bad output", args: []string{"policy", "get", "web", "-o", "xml"}, wantErr: "want table, json or yaml"},
		{name: "apply yaml output refused", args: []string{"policy", "apply", "-f", two, "-o", "yaml"}, wantErr: "unknown output format"},

		{name: "second document malformed", args: []string{"policy", "apply", "-f", writeFile(t, "bad.yaml", secondMalformed)},
			wantErr: `document 2 (policy "web2"): ingress[0]: source: selector: selector "app ==": position`,
			check: func(t *testing.T, _ string) {
				if _, ok := e.policy(t, "db"); ok {
					t.Error("first document written although the second is malformed")
				}
			}},
		{name: "unknown field", args: []string{"policy", "apply", "-f", writeFile(t, "unknown.yaml", "name: x\nselectr: all()\n")},
			wantErr: `document 1 (policy "x"): json: unknown field "selectr"`},
		{name: "every bad document reported",
			args:    []string{"policy", "apply", "-f", writeFile(t, "bad2.yaml", "name: a\ningress: [{action: maybe}]\n---\nname: ok\n---\nname: a..b\n")},
			wantErr: "2 of 3 documents are invalid, nothing applied",
			check: func(t *testing.T, _ string) {
				if _, ok := e.policy(t, "ok"); ok {
					t.Error("valid document written although others are malformed")
				}
			}},
		{name: "duplicate name", args: []string{"policy", "apply", "-f", writeFile(t, "dup.yaml", "name: a\n---\nname: a\n")},
			wantErr: `document 2 (policy "a"): same name as document 1`},
		{name: "yaml syntax", args: []string{"policy", "apply", "-f", writeFile(t, "syntax.yaml", "name: a\n---\n\nname: [b\n")},
			wantErr: "document 2 (starting at line 4): invalid YAML"},
		{name: "not a mapping", args: []string{"policy", "apply", "-f", writeFile(t, "scalar.yaml", "hello\n")},
			wantErr: "document 1 (starting at line 1): want a policy (a mapping"},
		{name: "empty file", args: []string{"policy", "apply", "-f", writeFile(t, "empty.yaml", "# nothing\n---\n")},
			wantErr: "holds no policy"},
		{name: "no file", args: []string{"policy", "apply"}, wantErr: "-f FILE is required"},
		{name: "missing file", args: []string{"policy", "apply", "-f", "/nonexistent/p.yaml"}, wantErr: "no such file"},

		{name: "json array", args: []string{"policy", "apply", "-o", "json", "-f", writeFile(t, "a.json",
			`[{"name": "j1", "selector": "has(app)", "egress": [{"action": "allow", "protocol": "udp", "destination": {"ports": [53]}}]},
			  {"name": "j2", "version": 1, "order": 5}]`)},
			check: func(t *testing.T, out string) {
				var got []policyApplyJSON
				if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 2 ||
					got[0] != (policyApplyJSON{"j1", "created"}) || got[1] != (policyApplyJSON{"j2", "created"}) {
					t.Errorf("apply -o json = %s (%v)", out, err)
				}
				// Egress rules only and no types: Egress alone, as Calico defaults it.
				if p, ok := e.policy(t, "j1"); !ok || !slices.Equal(p.Types, []datastore.PolicyType{datastore.PolicyEgress}) || len(p.Egress) != 1 {
					t.Errorf("stored j1 = %+v, %v", p, ok)
				}
			}},
		{name: "json syntax error", args: []string{"policy", "apply", "-f", writeFile(t, "b.json", "{\"name\": \"x\",\n  \"order\": }")},
			wantErr: "invalid JSON at line 2"},
		{name: "json array malformed element", args: []string{"policy", "apply", "-f", writeFile(t, "c.json",
			`[{"name": "k1"}, {"name": "k2", "types": ["Sideways"]}]`)},
			wantErr: `document 2 (policy "k2"): types[0]: "Sideways", want Ingress or Egress`,
			check: func(t *testing.T, _ string) {
				if _, ok := e.policy(t, "k1"); ok {
					t.Error("k1 written although k2 is malformed")
				}
			}},

		{name: "delete missing", args: []string{"policy", "delete", "j1", "nope"},
			wantErr: `policy "nope" not found (margayctl policy list shows the policies); nothing deleted`,
			check: func(t *testing.T, _ string) {
				if _, ok := e.policy(t, "j1"); !ok {
					t.Error("j1 deleted although another name was missing")
				}
			}},
		{name: "delete", args: []string{"policy", "delete", "j1", "j2", "web"},
			want: []string{`policy "j1" deleted`, `policy "j2" deleted`, `policy "web" deleted`},
			check: func(t *testing.T, _ string) {
				for _, n := range []string{"j1", "j2", "web"} {
					if _, ok := e.policy(t, n); ok {
						t.Errorf("policy %s still stored", n)
					}
				}
			}},
		{name: "list after delete", args: []string{"policy", "list", "-o", "yaml"},
			check: func(t *testing.T, out string) {
				if !strings.Contains(out, "name: deny-egress") || strings.Contains(out, "name: web") {
					t.Errorf("policy list -o yaml:\n%s", out)
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
	if !strings.Contains(out.String(), `policy "s1" created`) || !strings.Contains(out.String(), `policy "s2" created`) {
		t.Errorf("apply -f - printed:\n%s", out.String())
	}
	if p, ok := e.policy(t, "s2"); !ok || p.Selector != "!has(x)" {
		t.Errorf("stored s2 = %+v, %v", p, ok)
	}
}
