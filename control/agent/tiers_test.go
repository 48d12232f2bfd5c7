package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/margaynet/margay/control/agentapi"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

// TestAgentTiersAndProfiles: tiers, profiles, namespaced policies and named ports in etcd become
// the maps' answers; a profile's labels are its workloads' (a change of them moves workloads in
// and out of policies); a malformed tier keeps its last good version in force; /policy names
// the tiers and profiles in force.
func TestAgentTiersAndProfiles(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	ds := datastoretest.New(t, datastore.WithRegisterer(reg))
	h, set := startAgent(t, reg, ds)

	wns := netns.New(t, "mgyagttp-")
	cali := "cali0123456789c"
	_, eth0 := netns.Veth(t, h.ns, cali, wns, "eth0")
	web := netip.MustParseAddr("198.19.0.71")
	tcp := datastore.Protocol(6)
	if _, err := ds.Profiles().Create(ctx, "net1", datastore.Profile{Version: 1, Name: "net1",
		LabelsToApply: map[string]string{"team": "a"},
		Ingress:       []datastore.Rule{{Action: "allow", Source: datastore.EntityRule{Selector: "has(team)"}}},
		Egress:        []datastore.Rule{{Action: "allow"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Workloads("vm100").Create(ctx, "web", datastore.Workload{Version: 1, ID: "web", Name: "web",
		Namespace: "prod", Node: "vm100", IfName: cali, MAC: eth0.Attrs().HardwareAddr.String(),
		IPv4: []netip.Prefix{netip.PrefixFrom(web, 32)}, Labels: map[string]string{"app": "web"},
		Profiles: []string{"net1"}, Ports: []datastore.EndpointPort{{Name: "http", Protocol: tcp, Port: 8080}}}); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddr("198.19.0.6") // on vm101, in prod
	if _, err := ds.Workloads("vm101").Create(ctx, "client", datastore.Workload{Version: 1, ID: "client", Name: "client",
		Namespace: "prod", Node: "vm101", IfName: "cali0000000000d", MAC: "0a:58:00:00:00:06",
		IPv4: []netip.Prefix{netip.PrefixFrom(client, 32)}, Labels: map[string]string{"role": "client", "team": "x"}}); err != nil {
		t.Fatal(err)
	}
	stranger := netip.MustParseAddr("198.19.0.7") // on vm101, in dev, also a client
	if _, err := ds.Workloads("vm101").Create(ctx, "stranger", datastore.Workload{Version: 1, ID: "stranger", Name: "stranger",
		Namespace: "dev", Node: "vm101", IfName: "cali0000000000e", MAC: "0a:58:00:00:00:07",
		IPv4: []netip.Prefix{netip.PrefixFrom(stranger, 32)}, Labels: map[string]string{"role": "client"}}); err != nil {
		t.Fatal(err)
	}
	idx := uint32(h.ns.Link(t, cali).Attrs().Index)

	// Only the profile: from workloads with a team, anything; from others, nothing.
	eventually(t, "the profile's program", func() error {
		ep, err := set.Endpoints.Get(idx)
		if err != nil || ep.IngressProgram == 0 || ep.EgressProgram == 0 {
			return fmt.Errorf("endpoint %+v, %v: want the profile's programs", ep, err)
		}
		if v, err := decide(set, ep.EgressProgram, stranger, 17, 53); err != nil || v.Action != maps.ActionAllow {
			return fmt.Errorf("egress: %+v, %v; want the profile's allow", v, err)
		}
		for _, c := range []struct {
			peer  netip.Addr
			allow bool
		}{{client, true}, {stranger, false}} {
			if v, err := decide(set, ep.IngressProgram, c.peer, 6, 22); err != nil || (v.Action == maps.ActionAllow) != c.allow {
				return fmt.Errorf("from %v: %+v, %v; want allow %v", c.peer, v, err, c.allow)
			}
		}
		return nil
	})

	// A tier before the default one: for team a (the profile's label), log what comes from
	// clients and pass it on, deny the rest. In the default tier, a namespaced policy lets the
	// clients of its namespace reach the port named http.
	secOrder, webOrder := 10.0, 1.0
	if _, err := ds.Tiers().Create(ctx, "sec", datastore.Tier{Version: 1, Name: "sec", Order: &secOrder}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Policies().Create(ctx, "sec.gate", datastore.Policy{Version: 1, Name: "sec.gate", Tier: "sec",
		Selector: `team == "a"`, Ingress: []datastore.Rule{
			{Action: "log", Source: datastore.EntityRule{Selector: `role == "client"`}},
			{Action: "pass", Source: datastore.EntityRule{Selector: `role == "client"`}},
		}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Policies().Create(ctx, "prod/web", datastore.Policy{Version: 1, Name: "web", Namespace: "prod",
		Order: &webOrder, Selector: `app == "web"`, Ingress: []datastore.Rule{{Action: "allow", Protocol: &tcp,
			Source:      datastore.EntityRule{Selector: `role == "client"`},
			Destination: datastore.EntityRule{Ports: []datastore.PortRange{{Name: "http"}}}}}}); err != nil {
		t.Fatal(err)
	}
	type want struct {
		peer   netip.Addr
		port   uint16
		allow  bool
		logged bool
	}
	check := func(what string, wants []want) {
		t.Helper()
		eventually(t, what, func() error {
			ep, err := set.Endpoints.Get(idx)
			if err != nil || ep.IngressProgram == 0 {
				return fmt.Errorf("endpoint %+v, %v", ep, err)
			}
			for _, w := range wants {
				v, err := decide(set, ep.IngressProgram, w.peer, 6, w.port)
				if err != nil || (v.Action == maps.ActionAllow) != w.allow || (v.Log != 0) != w.logged {
					return fmt.Errorf("from %v to port %d: %+v, %v; want allow %v, logged %v", w.peer, w.port, v, err, w.allow, w.logged)
				}
			}
			return nil
		})
	}
	check("tier sec, then the namespaced policy", []want{
		{client, 8080, true, true},      // logged, passed, allowed by prod/web on the port named http
		{client, 80, false, true},       // logged, passed, not on the named port: prod/web's default deny
		{stranger, 8080, false, true},   // a client, but of namespace dev: prod/web does not see it
		{client, 8080 + 1, false, true}, //
	})

	// The profile's labels move: team b. Tier sec selects the workload no more; prod/web alone
	// decides, and logs nothing.
	pr, err := ds.Profiles().Get(ctx, "net1")
	if err != nil {
		t.Fatal(err)
	}
	pr.Value.LabelsToApply = map[string]string{"team": "b"}
	if _, err := ds.Profiles().Update(ctx, "net1", pr.Value, pr.ModRevision); err != nil {
		t.Fatal(err)
	}
	check("the profile's labels changed", []want{{client, 8080, true, false}, {client, 80, false, false}})

	// A tier made malformed by hand keeps its last good version; the status names what is in force.
	if _, err := ds.Raw().Put(ctx, ds.Tiers().Key("sec"), `{"version":1,"name":"sec","defaultAction":"Maybe"}`); err != nil {
		t.Fatal(err)
	}
	pr.Value.LabelsToApply = map[string]string{"team": "a"}
	if _, err := ds.Profiles().Put(ctx, "net1", pr.Value); err != nil {
		t.Fatal(err)
	}
	check("the malformed tier kept", []want{{client, 8080, true, true}, {stranger, 8080, false, true}})
	eventually(t, "/policy names tiers and profiles", func() error {
		_, body, err := h.get("/policy")
		if err != nil {
			return err
		}
		var st PolicyStatus
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return err
		}
		if st.Tiers["sec"] == 0 || st.Profiles["net1"] == 0 || st.Policies["prod/web"] == 0 || st.Policies["sec.gate"] == 0 {
			return fmt.Errorf("status %s", body)
		}
		return nil
	})
	// The rule ids of the maps have names: the Log rule's is what a policy log event carries.
	eventually(t, "/policy/rules names the Log rule", func() error {
		ep, err := set.Endpoints.Get(idx)
		if err != nil {
			return err
		}
		v, err := decide(set, ep.IngressProgram, client, 6, 8080)
		if err != nil || v.Log == 0 {
			return fmt.Errorf("no Log rule: %+v, %v", v, err)
		}
		_, body, err := h.get(agentapi.PathPolicyRules)
		if err != nil {
			return err
		}
		var rules map[uint32]agentapi.Rule
		if err := json.Unmarshal([]byte(body), &rules); err != nil {
			return err
		}
		if got := rules[v.Log].String(); got != "sec.gate/ingress/0" {
			return fmt.Errorf("rule %d is %q, want sec.gate/ingress/0 (%s)", v.Log, got, body)
		}
		if got := rules[v.Rule].String(); got != "prod/web/ingress/0" {
			return fmt.Errorf("rule %d is %q, want prod/web/ingress/0", v.Rule, got)
		}
		return nil
	})
}
