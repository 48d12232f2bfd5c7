// Package policytest holds a table of Calico's documented policy semantics as worked examples:
// tiers with Pass and their default action, Log, namespaced isolation, namespaceSelector,
// service accounts, named ports, egress-only defaulting and profiles. Each example is a set of
// policies, tiers and profiles over one fixed world of workloads, and the verdicts Calico's
// documentation gives for flows between them. The reference evaluator's tests
// (control/policy) and the end-to-end tests across hosts (tests/cluster) both run the table.
package policytest

import (
	"encoding/json"
	"fmt"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
)

// Workload is a workload of the fixed world.
type Workload struct {
	Name      string
	Namespace string // "" for a workload in no namespace
	Host      int    // 0, 1 or 2
	Labels    map[string]string
	Profiles  []string
	Ports     []datastore.EndpointPort
}

// The namespaces' labels (Kubernetes' namespace labels, as the CNI plugin gives them to pods
// with the pcns. prefix) and the service accounts'.
var (
	namespaceLabels = map[string]map[string]string{"prod": {"team": "a"}, "dev": {"team": "b"}}
	accountLabels   = map[string]map[string]string{"web-sa": {"role": "frontend"}, "client-sa": {"role": "client"}}
)

func workload(name, ns string, host int, sa string, labels map[string]string, profiles []string, ports ...datastore.EndpointPort) Workload {
	l := map[string]string{}
	for k, v := range labels {
		l[k] = v
	}
	for k, v := range namespaceLabels[ns] {
		l[policy.NamespacePrefix+k] = v
	}
	if sa != "" {
		l[policy.ServiceAccountLabel] = sa
		for k, v := range accountLabels[sa] {
			l[policy.ServiceAccountPrefix+k] = v
		}
	}
	return Workload{Name: name, Namespace: ns, Host: host, Labels: l, Profiles: profiles, Ports: ports}
}

var tcp = datastore.Protocol(6)

// World is the fixed world every example runs over.
var World = []Workload{
	workload("prod-web", "prod", 0, "web-sa", map[string]string{"app": "web"}, []string{"net1"},
		datastore.EndpointPort{Name: "http", Protocol: tcp, Port: 8080}),
	workload("prod-client", "prod", 1, "client-sa", map[string]string{"role": "client"}, nil),
	workload("dev-client", "dev", 2, "client-sa", map[string]string{"role": "client"}, nil),
	workload("dev-db", "dev", 1, "", map[string]string{"app": "db"}, nil,
		datastore.EndpointPort{Name: "pg", Protocol: tcp, Port: 5432}, datastore.EndpointPort{Name: "http", Protocol: tcp, Port: 8081}),
	workload("vm", "", 2, "", map[string]string{"role": "client"}, []string{"net1"}),
}

// Ports are the TCP ports the examples' flows use; end-to-end tests listen on all of them.
var Ports = []uint16{22, 80, 5432, 8080, 8081}

// Flow is a TCP connection from one workload to a port of another, and whether it gets through.
type Flow struct {
	From, To string
	Port     uint16
	Allow    bool
}

// Logged says that a flow, besides its verdict, is counted and reported by a Log rule.
type Logged struct {
	From, To string
	Port     uint16
}

// Example is a documented behaviour: what is written, and what flows do.
type Example struct {
	Name string
	// Doc says which part of Calico's documentation the example follows.
	Doc      string
	Tiers    []datastore.Tier
	Profiles []datastore.Profile
	Policies []datastore.Policy
	Flows    []Flow
	// Logged are flows a Log rule reports (only in the examples about Log).
	Logged []Logged
}

// net1 is the profile of prod-web and vm unless an example gives its own: it lets everything
// in and out, as a Docker network's profile lets its members talk, and labels its members.
var net1 = datastore.Profile{Version: 1, Name: "net1", LabelsToApply: map[string]string{"net": "one"},
	Ingress: []datastore.Rule{{Action: "allow"}}, Egress: []datastore.Rule{{Action: "allow"}}}

// decode reads a policy as the datastore does (its defaults applied), from JSON.
func decode(js string) datastore.Policy {
	p, err := datastore.DecodePolicy([]byte(js))
	if err != nil {
		panic(fmt.Sprintf("policytest: %s: %v", js, err))
	}
	return p
}

func tier(name string, order float64, defaultAction string) datastore.Tier {
	return datastore.Tier{Version: 1, Name: name, Order: &order, DefaultAction: defaultAction}
}

func profile(js string) datastore.Profile {
	var p datastore.Profile
	if err := json.Unmarshal([]byte(js), &p); err != nil {
		panic(err)
	}
	p.Version = 1
	return p
}

// Examples is the table.
func Examples() []Example {
	return []Example{
		{
			Name: "no-policy",
			Doc:  "a workload no policy selects: its profiles decide (net1 allows), and one without profiles allows",
			Flows: []Flow{
				{"prod-client", "prod-web", 80, true}, {"dev-client", "dev-db", 5432, true}, {"prod-web", "vm", 22, true},
			},
		},
		{
			Name: "egress-only-defaulting",
			Doc:  "policy types: a policy with egress rules only and no types governs Egress alone, so ingress stays open",
			Policies: []datastore.Policy{decode(`{"name":"db-out","selector":"app == 'db'",
				"egress":[{"action":"allow","protocol":"TCP","destination":{"selector":"app == 'web'"}}]}`)},
			Flows: []Flow{
				{"prod-client", "dev-db", 5432, true}, // ingress not governed
				{"dev-db", "prod-web", 8080, true},
				{"dev-db", "prod-client", 80, false}, // egress governed: denied by default
			},
		},
		{
			Name: "namespaced-isolation",
			Doc: "NetworkPolicy: a namespaced policy selects in its namespace, and its rule selectors see its " +
				"namespace's workloads only",
			Policies: []datastore.Policy{decode(`{"name":"allow-clients","namespace":"prod","selector":"all()",
				"ingress":[{"action":"allow","source":{"selector":"role == 'client'"}}]}`)},
			Flows: []Flow{
				{"prod-client", "prod-web", 80, true},
				{"dev-client", "prod-web", 80, false}, // a client, but of dev
				{"vm", "prod-web", 80, false},         // a client, in no namespace
				{"prod-client", "dev-db", 5432, true}, // dev is not selected
			},
		},
		{
			Name: "rule-namespace-selector",
			Doc: "NetworkPolicy rule namespaceSelector: the rule's selector sees the workloads of the namespaces " +
				"whose labels match, instead of its own",
			Policies: []datastore.Policy{decode(`{"name":"from-team-b","namespace":"prod","selector":"app == 'web'",
				"ingress":[{"action":"allow","source":{"selector":"role == 'client'","namespaceSelector":"team == 'b'"}}]}`)},
			Flows: []Flow{
				{"dev-client", "prod-web", 80, true},
				{"prod-client", "prod-web", 80, false},
				{"vm", "prod-web", 80, false},
			},
		},
		{
			Name: "namespace-selector-all",
			Doc: "GlobalNetworkPolicy namespaceSelector all(): every workload in a namespace, and not those in " +
				"none; global() is those in none",
			Policies: []datastore.Policy{
				decode(`{"name":"namespaced-only","selector":"app == 'db'",
					"ingress":[{"action":"allow","source":{"namespaceSelector":"all()"}}]}`),
				decode(`{"name":"from-global","selector":"app == 'web'",
					"ingress":[{"action":"allow","source":{"namespaceSelector":"global()"}}]}`),
			},
			Flows: []Flow{
				{"prod-client", "dev-db", 5432, true}, {"vm", "dev-db", 5432, false},
				{"vm", "prod-web", 80, true}, {"prod-client", "prod-web", 80, false},
			},
		},
		{
			Name: "policy-namespace-selector",
			Doc:  "GlobalNetworkPolicy namespaceSelector: the policy applies to the workloads of the namespaces that match",
			Policies: []datastore.Policy{decode(`{"name":"team-b-closed","namespaceSelector":"team == 'b'",
				"ingress":[{"action":"deny"}]}`)},
			Flows: []Flow{
				{"prod-client", "dev-db", 5432, false}, {"prod-client", "dev-client", 80, false},
				{"dev-client", "prod-web", 80, true},
			},
		},
		{
			Name: "service-accounts",
			Doc: "rule serviceAccounts (names, selector) and a policy's serviceAccountSelector match the " +
				"workloads' service accounts and their labels",
			Policies: []datastore.Policy{
				decode(`{"name":"web","serviceAccountSelector":"role == 'frontend'",
					"ingress":[{"action":"allow","source":{"serviceAccounts":{"names":["client-sa"]}}}]}`),
				decode(`{"name":"db","selector":"app == 'db'",
					"ingress":[{"action":"allow","source":{"serviceAccounts":{"selector":"role == 'frontend'"}}}]}`),
			},
			Flows: []Flow{
				{"prod-client", "prod-web", 80, true}, {"dev-client", "prod-web", 80, true},
				{"vm", "prod-web", 80, false}, {"dev-db", "prod-web", 80, false},
				{"prod-web", "dev-db", 5432, true}, {"prod-client", "dev-db", 5432, false},
			},
		},
		{
			Name: "named-ports",
			Doc: "named ports: an ingress rule's destination port name is the selected workload's port; an egress " +
				"rule's, the peer's; a name a workload lacks matches nothing",
			Policies: []datastore.Policy{
				decode(`{"name":"web-http","selector":"app == 'web'",
					"ingress":[{"action":"allow","protocol":"TCP","destination":{"ports":["http"]}}]}`),
				decode(`{"name":"clients-out","selector":"role == 'client'","types":["Egress"],
					"egress":[{"action":"allow","protocol":"TCP","destination":{"ports":["http","pg"]}}]}`),
			},
			Flows: []Flow{
				{"prod-client", "prod-web", 8080, true}, // prod-web's http
				{"prod-client", "prod-web", 8081, false},
				{"prod-client", "dev-db", 8081, true}, // dev-db's http
				{"dev-client", "dev-db", 5432, true},  // dev-db's pg
				{"dev-client", "dev-db", 8080, false}, // not a named port of dev-db
				{"vm", "prod-web", 8080, true},
				{"vm", "dev-db", 22, false},
			},
		},
		{
			Name: "tiers-pass",
			Doc: "tiers: a Pass rule ends its tier and the next tier that selects the workload decides; a tier " +
				"that selects it and decides nothing denies",
			Tiers: []datastore.Tier{tier("security", 100, datastore.TierDeny)},
			Policies: []datastore.Policy{
				decode(`{"name":"security.quarantine","tier":"security","order":1,"selector":"all()",
					"ingress":[{"action":"deny","source":{"selector":"app == 'db'"}},
						{"action":"pass","source":{"selector":"role == 'client'"}}]}`),
				decode(`{"name":"web","selector":"app == 'web'","ingress":[{"action":"allow","protocol":"TCP",
					"destination":{"ports":[80]}}]}`),
			},
			Flows: []Flow{
				{"prod-client", "prod-web", 80, true},  // passed; allowed in default
				{"prod-client", "prod-web", 22, false}, // passed; default's end
				{"dev-db", "prod-web", 80, false},      // denied in security
				{"prod-web", "dev-db", 5432, false},    // not passed: security's end denies
				{"vm", "prod-client", 22, true},        // passed; no policy of default selects prod-client
			},
		},
		{
			Name:  "tier-default-pass",
			Doc:   "Tier defaultAction Pass: what no rule of the tier decides goes on to the next tier",
			Tiers: []datastore.Tier{tier("platform", 50, datastore.TierPass)},
			Policies: []datastore.Policy{
				decode(`{"name":"platform.ssh","tier":"platform","selector":"all()",
					"ingress":[{"action":"allow","protocol":"TCP","destination":{"ports":[22]}}]}`),
				decode(`{"name":"db","selector":"app == 'db'","ingress":[{"action":"allow","source":{"selector":"role == 'client'"}}]}`),
			},
			Flows: []Flow{
				{"prod-web", "dev-db", 22, true},     // platform allows ssh
				{"prod-web", "dev-db", 5432, false},  // passed by default; default tier denies
				{"dev-client", "dev-db", 5432, true}, // passed by default; allowed
				{"prod-web", "vm", 80, true},         // passed by default; vm's profile allows
			},
		},
		{
			Name: "log",
			Doc:  "Log: the rule counts and reports the flow, and the rules after it decide",
			Policies: []datastore.Policy{decode(`{"name":"audit","selector":"app == 'db'","ingress":[
				{"action":"log","source":{"selector":"role == 'client'"}},
				{"action":"allow","protocol":"TCP","destination":{"ports":[5432]}}]}`)},
			Flows: []Flow{
				{"prod-client", "dev-db", 5432, true}, {"prod-client", "dev-db", 80, false}, {"prod-web", "dev-db", 5432, true},
			},
			Logged: []Logged{{"prod-client", "dev-db", 5432}, {"prod-client", "dev-db", 80}},
		},
		{
			Name: "profiles",
			Doc: "profiles: labelsToApply label their workloads for every selector; their rules decide after the " +
				"tiers, when the walk reaches them (no policy, or Pass), and deny what they do not allow",
			Tiers: []datastore.Tier{tier("security", 100, datastore.TierDeny)},
			Profiles: []datastore.Profile{profile(`{"name":"net1","labelsToApply":{"net":"one"},
				"ingress":[{"action":"allow","source":{"selector":"net == 'one'"}}],"egress":[{"action":"allow"}]}`)},
			Policies: []datastore.Policy{
				decode(`{"name":"security.net1","tier":"security","selector":"net == 'one'",
					"ingress":[{"action":"deny","protocol":"TCP","destination":{"ports":[22]}},
						{"action":"pass"}]}`),
			},
			Flows: []Flow{
				{"vm", "prod-web", 80, true},           // passed; net1 allows its own
				{"vm", "prod-web", 22, false},          // denied in security
				{"prod-client", "prod-web", 80, false}, // passed; net1 does not allow it
				{"prod-web", "vm", 8080, true},
				{"prod-client", "dev-db", 5432, true}, // no tier, no profile: open
			},
		},
	}
}

// Profiles returns the example's profiles, with net1 unless it gives its own.
func (e Example) AllProfiles() []datastore.Profile {
	for _, p := range e.Profiles {
		if p.Name == net1.Name {
			return e.Profiles
		}
	}
	return append([]datastore.Profile{net1}, e.Profiles...)
}
