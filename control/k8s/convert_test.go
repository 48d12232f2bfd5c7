package k8s

import (
	"encoding/json"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/margaynet/margay/control/datastore"
)

// np reads a NetworkPolicy from YAML, as kubectl would take it.
func np(t testing.TB, y string) *networkingv1.NetworkPolicy {
	t.Helper()
	var p networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict([]byte(y), &p); err != nil {
		t.Fatalf("NetworkPolicy YAML: %v\n%s", err, y)
	}
	return &p
}

// policyJSON reads the expected policy as margayctl policy apply would.
func policyJSON(t testing.TB, j string) datastore.Policy {
	t.Helper()
	p, err := datastore.DecodePolicy([]byte(j))
	if err != nil {
		t.Fatalf("expected policy: %v\n%s", err, j)
	}
	return p
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func TestPolicyFromNetworkPolicy(t *testing.T) {
	for _, c := range []struct {
		name, np, want string
	}{
		{"default deny ingress", `
metadata: {name: deny, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress]`,
			`{"name": "knp.default.prod.deny", "order": 1000, "selector": "projectcalico.org/namespace == 'prod'", "types": ["Ingress"]}`},
		{"default deny both", `
metadata: {name: deny-all, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]`,
			`{"name": "knp.default.prod.deny-all", "order": 1000, "selector": "projectcalico.org/namespace == 'prod'", "types": ["Ingress", "Egress"]}`},
		{"types default to ingress", `
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{}]`,
			`{"name": "knp.default.prod.p", "order": 1000, "selector": "projectcalico.org/namespace == 'prod' && app == 'web'",
			  "types": ["Ingress"], "ingress": [{"action": "allow"}]}`},
		{"types default to both with egress rules", `
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  egress: [{}]`,
			`{"name": "knp.default.prod.p", "order": 1000, "selector": "projectcalico.org/namespace == 'prod'",
			  "types": ["Ingress", "Egress"], "egress": [{"action": "allow"}]}`},
		{"rules of a type left out are ignored", `
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress: [{}]`,
			`{"name": "knp.default.prod.p", "order": 1000, "selector": "projectcalico.org/namespace == 'prod'", "types": ["Egress"]}`},
		{"pod selector expressions", `
metadata: {name: p, namespace: prod}
spec:
  podSelector:
    matchLabels: {tier: be, app: db}
    matchExpressions:
    - {key: env, operator: In, values: [a, b]}
    - {key: env, operator: NotIn, values: [c]}
    - {key: example.com/canary, operator: Exists}
    - {key: legacy, operator: DoesNotExist}
  policyTypes: [Ingress]`,
			`{"name": "knp.default.prod.p", "order": 1000, "types": ["Ingress"], "selector":
			  "projectcalico.org/namespace == 'prod' && app == 'db' && tier == 'be' && env in {'a', 'b'} && env not in {'c'} && has(example.com/canary) && !has(legacy)"}`},
		{"ingress peers", `
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: fe}}
    - podSelector: {}
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchExpressions: [{key: role, operator: In, values: [fe]}]}
    - namespaceSelector: {}
    - namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}
    - ipBlock: {cidr: 10.1.2.3/16, except: [10.1.9.0/24, "fd00::/8"]}
    - ipBlock: {cidr: "fd00::/8"}`,
			`{"name": "knp.default.prod.p", "order": 1000, "selector": "projectcalico.org/namespace == 'prod' && app == 'db'", "types": ["Ingress"],
			  "ingress": [
			    {"action": "allow", "source": {"selector": "projectcalico.org/namespace == 'prod' && role == 'fe'"}},
			    {"action": "allow", "source": {"selector": "projectcalico.org/namespace == 'prod'"}},
			    {"action": "allow", "source": {"selector": "has(projectcalico.org/namespace) && pcns.team == 'a' && role in {'fe'}"}},
			    {"action": "allow", "source": {"selector": "has(projectcalico.org/namespace)"}},
			    {"action": "allow", "source": {"selector": "has(projectcalico.org/namespace) && !has(pcns.team)"}},
			    {"action": "allow", "source": {"nets": ["10.1.0.0/16"], "notNets": ["10.1.9.0/24"]}}
			  ]}`},
		{"ports", `
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 80
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 8000, endPort: 8080}
    - {protocol: SCTP, port: 9000}
    - {protocol: UDP}
    from:
    - podSelector: {matchLabels: {role: fe}}
    - ipBlock: {cidr: 192.0.2.0/24}`,
			`{"name": "knp.default.prod.p", "order": 1000, "selector": "projectcalico.org/namespace == 'prod'", "types": ["Ingress"],
			  "ingress": [
			    {"action": "allow", "protocol": "tcp", "source": {"selector": "projectcalico.org/namespace == 'prod' && role == 'fe'"}, "destination": {"ports": [80, "8000:8080"]}},
			    {"action": "allow", "protocol": "udp", "source": {"selector": "projectcalico.org/namespace == 'prod' && role == 'fe'"}},
			    {"action": "allow", "protocol": "sctp", "source": {"selector": "projectcalico.org/namespace == 'prod' && role == 'fe'"}, "destination": {"ports": [9000]}},
			    {"action": "allow", "protocol": "tcp", "source": {"nets": ["192.0.2.0/24"]}, "destination": {"ports": [80, "8000:8080"]}},
			    {"action": "allow", "protocol": "udp", "source": {"nets": ["192.0.2.0/24"]}},
			    {"action": "allow", "protocol": "sctp", "source": {"nets": ["192.0.2.0/24"]}, "destination": {"ports": [9000]}}
			  ]}`},
		{"egress", `
metadata: {name: p, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
  - to: [{ipBlock: {cidr: "::/0"}}]
  - ports: [{port: 443}]`,
			`{"name": "knp.default.prod.p", "order": 1000, "selector": "projectcalico.org/namespace == 'prod' && app == 'web'", "types": ["Egress"],
			  "egress": [
			    {"action": "allow", "protocol": "udp", "destination": {"selector": "has(projectcalico.org/namespace) && pcns.kubernetes.io/metadata.name == 'kube-system' && k8s-app == 'kube-dns'", "ports": [53]}},
			    {"action": "allow", "protocol": "tcp", "destination": {"selector": "has(projectcalico.org/namespace) && pcns.kubernetes.io/metadata.name == 'kube-system' && k8s-app == 'kube-dns'", "ports": [53]}},
			    {"action": "allow", "protocol": "tcp", "destination": {"ports": [443]}}
			  ]}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := PolicyFromNetworkPolicy(np(t, c.np))
			if err != nil {
				t.Fatal(err)
			}
			want := policyJSON(t, c.want)
			if !got.Same(want) {
				t.Errorf("got  %s\nwant %s", mustJSON(got), mustJSON(want))
			}
			// Margay's own check, through the JSON margayctl and the agent read.
			again, err := datastore.DecodePolicy([]byte(mustJSON(got)))
			if err != nil {
				t.Fatalf("converted policy fails Margay's validation: %v", err)
			}
			if !again.Same(got) {
				t.Errorf("converted policy is not in stored form:\n%s\n%s", mustJSON(got), mustJSON(again))
			}
		})
	}
}

// Named ports become named destination ports of the rule, grouped with the numeric ones by
// protocol: for ingress they name the selected pod's ports, for egress the peer's, and in both
// the destination is the end that has them.
func TestPolicyFromNetworkPolicyNamedPorts(t *testing.T) {
	for _, c := range []struct{ name, np, want string }{
		{"ingress", `
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: http}, {port: 8443}, {protocol: TCP, port: 8080-http}]
  - ports: [{protocol: UDP, port: dns}, {protocol: SCTP, port: assoc}]
    from: [{podSelector: {}}]`,
			`{"name": "knp.default.prod.web", "order": 1000, "selector": "projectcalico.org/namespace == 'prod' && app == 'web'", "types": ["Ingress"],
			  "ingress": [
			    {"action": "allow", "protocol": "tcp", "destination": {"ports": ["http", 8443, "8080-http"]}},
			    {"action": "allow", "protocol": "udp", "source": {"selector": "projectcalico.org/namespace == 'prod'"}, "destination": {"ports": ["dns"]}},
			    {"action": "allow", "protocol": "sctp", "source": {"selector": "projectcalico.org/namespace == 'prod'"}, "destination": {"ports": ["assoc"]}}
			  ]}`},
		{"egress", `
metadata: {name: client, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}, {namespaceSelector: {matchLabels: {team: a}}}]
    ports: [{port: postgres}, {protocol: UDP, port: 9p}]
  - ports: [{port: https}]`,
			`{"name": "knp.default.prod.client", "order": 1000, "selector": "projectcalico.org/namespace == 'prod' && app == 'client'", "types": ["Egress"],
			  "egress": [
			    {"action": "allow", "protocol": "tcp", "destination": {"selector": "projectcalico.org/namespace == 'prod' && app == 'db'", "ports": ["postgres"]}},
			    {"action": "allow", "protocol": "udp", "destination": {"selector": "projectcalico.org/namespace == 'prod' && app == 'db'", "ports": ["9p"]}},
			    {"action": "allow", "protocol": "tcp", "destination": {"selector": "has(projectcalico.org/namespace) && pcns.team == 'a'", "ports": ["postgres"]}},
			    {"action": "allow", "protocol": "udp", "destination": {"selector": "has(projectcalico.org/namespace) && pcns.team == 'a'", "ports": ["9p"]}},
			    {"action": "allow", "protocol": "tcp", "destination": {"ports": ["https"]}}
			  ]}`},
		{"a whole protocol takes in its named ports", `
metadata: {name: p, namespace: prod}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}, {protocol: TCP}, {protocol: UDP, port: dns}]}]`,
			`{"name": "knp.default.prod.p", "order": 1000, "selector": "projectcalico.org/namespace == 'prod'", "types": ["Ingress"],
			  "ingress": [
			    {"action": "allow", "protocol": "tcp"},
			    {"action": "allow", "protocol": "udp", "destination": {"ports": ["dns"]}}
			  ]}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := PolicyFromNetworkPolicy(np(t, c.np))
			if err != nil {
				t.Fatal(err)
			}
			want := policyJSON(t, c.want)
			if !got.Same(want) {
				t.Errorf("got  %s\nwant %s", mustJSON(got), mustJSON(want))
			}
			for _, r := range append(append([]datastore.Rule(nil), got.Ingress...), got.Egress...) {
				for _, pr := range r.Destination.Ports {
					if pr.Named() && (pr.Lo != 0 || pr.Hi != 0) {
						t.Errorf("named port %q with numbers %d-%d", pr.Name, pr.Lo, pr.Hi)
					}
				}
				if len(r.Source.Ports)+len(r.Source.NotPorts)+len(r.Destination.NotPorts) > 0 {
					t.Errorf("rule %s: ports outside destination.ports", mustJSON(r))
				}
			}
			again, err := datastore.DecodePolicy([]byte(mustJSON(got)))
			if err != nil || !again.Same(got) {
				t.Errorf("converted policy does not read back the same: %v\n%s", err, mustJSON(got))
			}
		})
	}
}

func TestPolicyFromNetworkPolicyErrors(t *testing.T) {
	long := strings.Repeat("n", 250)
	for _, c := range []struct{ name, np, want string }{
		{"no namespace", `{metadata: {name: p}, spec: {podSelector: {}}}`, `namespace ""`},
		{"bad operator", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {matchExpressions: [{key: a, operator: Gt, values: ["1"]}]}}`, `spec.podSelector: matchExpressions[0]: operator "Gt"`},
		{"In without values", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}`, "operator In needs values"},
		{"Exists with values", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}`, "operator Exists takes no values"},
		{"bad label key", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {matchLabels: {"a b": x}}}`, `label key "a b"`},
		{"bad label value", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {matchLabels: {a: "x'y"}}}`, `value "x'y"`},
		{"bad cidr", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}`, `ingress[0].from[0]: ipBlock.cidr "10.0.0.0/33"`},
		{"bad except", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [nope]}}]}]}`, `egress[0].to[0]: ipBlock.except[0] "nope"`},
		{"ipBlock with selector", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}`, "ipBlock together with"},
		{"empty peer", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, ingress: [{from: [{}]}]}`, "a peer needs podSelector, namespaceSelector or ipBlock"},
		{"icmp", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}`, `ingress[0].ports[0]: protocol "ICMP"`},
		{"endPort before port", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, ingress: [{ports: [{port: 90, endPort: 80}]}]}`, "endPort 80: want 90-65535"},
		{"endPort without port", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, ingress: [{ports: [{endPort: 80}]}]}`, "endPort without port"},
		{"named port with endPort", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, ingress: [{ports: [{port: http, endPort: 90}]}]}`, `ingress[0].ports[0]: endPort with the named port "http"`},
		{"bad port name", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, egress: [{ports: [{port: HTTP}]}]}`, `egress[0].ports[0]: port "HTTP"`},
		{"port 0", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}`, "port 0 outside 1-65535"},
		{"bad policy type", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, policyTypes: [Sideways]}`, `spec.policyTypes[0]: "Sideways"`},
		{"name too long", `
metadata: {name: ` + long + `, namespace: prod}
spec: {podSelector: {}}`, "limit 253"},
		{"namespace label too long as pcns", `
metadata: {name: p, namespace: prod}
spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {` + strings.Repeat("k", 60) + `: x}}}]}]}`, "cannot be matched as pcns."},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := PolicyFromNetworkPolicy(np(t, c.np))
			if err == nil {
				t.Fatalf("converted to %s, want an error with %q", mustJSON(p), c.want)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "NetworkPolicy prod/p") && c.name != "no namespace" && c.name != "name too long" {
				t.Errorf("error %q, want it to name the policy and say %q", err, c.want)
			}
			if p.Name != "" {
				t.Errorf("policy %q returned with the error", p.Name)
			}
		})
	}
	if _, err := PolicyFromNetworkPolicy(nil); err == nil {
		t.Error("nil NetworkPolicy converted")
	}
}

func TestNetworkPolicyOf(t *testing.T) {
	for _, c := range []struct {
		name, ns, np string
		ok           bool
	}{
		{PolicyName("prod", "web.v2"), "prod", "web.v2", true},
		{"knp.default.prod", "", "", false},
		{"knp.default..x", "", "", false},
		{"web", "", "", false},
	} {
		ns, name, ok := networkPolicyOf(c.name)
		if ns != c.ns || name != c.np || ok != c.ok {
			t.Errorf("networkPolicyOf(%q) = %q, %q, %v; want %q, %q, %v", c.name, ns, name, ok, c.ns, c.np, c.ok)
		}
	}
}
