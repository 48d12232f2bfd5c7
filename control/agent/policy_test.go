package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

func TestParseFailsafe(t *testing.T) {
	fs, err := ParseFailsafe(DefaultFailsafeInbound, DefaultFailsafeOutbound)
	if err != nil {
		t.Fatal(err)
	}
	if fs[maps.FailsafeKey{Protocol: 6, Port: 22}] != maps.FailsafeInbound ||
		fs[maps.FailsafeKey{Protocol: 17, Port: 53}] != maps.FailsafeOutbound ||
		fs[maps.FailsafeKey{Protocol: 6, Port: 179}] != maps.FailsafeInbound|maps.FailsafeOutbound {
		t.Fatalf("defaults parsed as %v", fs)
	}
	for _, bad := range []string{"tcp", "icmp:1", "tcp:70000", "tcp:x"} {
		if _, err := ParseFailsafe(bad, ""); err == nil {
			t.Errorf("ParseFailsafe(%q) accepted", bad)
		}
	}
	to, err := ParseConntrackTimeouts("udp=5s, tcp-established=1h")
	if err != nil || to.Udp != 5 || to.TcpEstablished != 3600 || to.Icmp != 0 {
		t.Fatalf("ParseConntrackTimeouts = %+v, %v", to, err)
	}
	for _, bad := range []string{"udp", "udp=0s", "tcp=5s", "udp=five"} {
		if _, err := ParseConntrackTimeouts(bad); err == nil {
			t.Errorf("ParseConntrackTimeouts(%q) accepted", bad)
		}
	}
}

// decide is what the BPF programs look up for a peer of a program.
func decide(set *maps.Set, program uint32, peer netip.Addr, proto uint8, port uint16) (maps.PolicyValue, error) {
	ips, err := set.PolicyIPs.List()
	if err != nil {
		return maps.PolicyValue{}, err
	}
	best, id := -1, uint32(0)
	for p, v := range ips {
		if p.Contains(peer) && p.Bits() > best {
			best, id = p.Bits(), v
		}
	}
	return set.Policy.Lookup(program, id, proto, port)
}

// TestAgentPolicy: policies in etcd become programs, identities and entries in the maps; a change
// bumps the generation; a malformed policy leaves the previous one in force; removal clears all.
func TestAgentPolicy(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	ds := datastoretest.New(t, datastore.WithRegisterer(reg))
	h, set := startAgent(t, reg, ds)

	wns := netns.New(t, "mgyagtpw-")
	cali := "cali0123456789b"
	_, eth0 := netns.Veth(t, h.ns, cali, wns, "eth0")
	web := netip.MustParseAddr("198.19.0.70")
	if _, err := ds.Workloads("vm100").Create(ctx, "web", datastore.Workload{Version: 1, ID: "web", Name: "web",
		Namespace: "prod", Node: "vm100", IfName: cali, MAC: eth0.Attrs().HardwareAddr.String(),
		IPv4: []netip.Prefix{netip.PrefixFrom(web, 32)}, Labels: map[string]string{"app": "web"}}); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddr("198.19.0.5") // on vm101
	if _, err := ds.Workloads("vm101").Create(ctx, "client", datastore.Workload{Version: 1, ID: "client", Name: "client",
		Node: "vm101", IfName: "cali0000000000c", MAC: "0a:58:00:00:00:05", IPv4: []netip.Prefix{netip.PrefixFrom(client, 32)},
		Labels: map[string]string{"role": "client"}}); err != nil {
		t.Fatal(err)
	}
	other := netip.MustParseAddr("198.19.0.9")
	idx := uint32(h.ns.Link(t, cali).Attrs().Index)
	eventually(t, "workload programmed without policy", func() error {
		ep, err := set.Endpoints.Get(idx)
		if err != nil || ep.IngressProgram != 0 || ep.EgressProgram != 0 {
			return fmt.Errorf("endpoint %+v, %v", ep, err)
		}
		if rt, err := set.Routes.Get(netip.MustParsePrefix("198.18.0.100/32")); err != nil || rt.Flags&maps.LocalHost == 0 {
			return fmt.Errorf("own host route %+v, %v", rt, err)
		}
		if rt, err := set.Routes.Get(netip.MustParsePrefix("198.18.0.101/32")); err != nil || rt.Flags != maps.Host {
			return fmt.Errorf("other host route %+v, %v", rt, err)
		}
		fs, err := set.Failsafe.List()
		if err != nil || fs[maps.FailsafeKey{Protocol: 6, Port: 22}] != maps.FailsafeInbound {
			return fmt.Errorf("failsafe ports %v, %v", fs, err)
		}
		return nil
	})
	gen0, err := set.Config.Generation()
	if err != nil {
		t.Fatal(err)
	}

	order := 10.0
	tcp := datastore.Protocol(6)
	if _, err := ds.Policies().Create(ctx, "web", datastore.Policy{Version: 1, Name: "web", Order: &order,
		Selector: `app == "web" && projectcalico.org/namespace == "prod"`,
		Ingress: []datastore.Rule{{Action: "allow", Protocol: &tcp, Source: datastore.EntityRule{Selector: `role == "client"`},
			Destination: datastore.EntityRule{Ports: []datastore.PortRange{{Lo: 80, Hi: 80}}}}}}); err != nil {
		t.Fatal(err)
	}
	var ingress uint32
	eventually(t, "ingress program compiled", func() error {
		ep, err := set.Endpoints.Get(idx)
		if err != nil || ep.IngressProgram == 0 || ep.EgressProgram != 0 {
			return fmt.Errorf("endpoint %+v, %v", ep, err)
		}
		ingress = ep.IngressProgram
		if v, err := decide(set, ingress, client, 6, 80); err != nil || v.Action != maps.ActionAllow || v.Rule == 0 {
			return fmt.Errorf("client to port 80: %+v, %v", v, err)
		}
		if v, err := decide(set, ingress, client, 6, 81); err != nil || v.Action != maps.ActionDeny {
			return fmt.Errorf("client to port 81: %+v, %v", v, err)
		}
		if v, err := decide(set, ingress, other, 6, 80); err != nil || v.Action != maps.ActionDeny {
			return fmt.Errorf("a non-client to port 80: %+v, %v", v, err)
		}
		if g, err := set.Config.Generation(); err != nil || g == gen0 {
			return fmt.Errorf("generation %d, %v: not bumped from %d", g, err, gen0)
		}
		return nil
	})

	// A malformed write of the policy keeps the good version in force; a later valid change of
	// another policy proves the agent went past it.
	if _, err := ds.Raw().Put(ctx, ds.Policies().Key("web"), `{"version":1,"name":"web","selector":"app ==","ingress":[]}`); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Policies().Create(ctx, "egress", datastore.Policy{Version: 1, Name: "egress", Selector: "has(app)",
		Types: []datastore.PolicyType{datastore.PolicyEgress},
		Egress: []datastore.Rule{{Action: "deny", Destination: datastore.EntityRule{Nets: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/24")}}},
			{Action: "allow"}}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "egress program compiled, ingress kept", func() error {
		ep, err := set.Endpoints.Get(idx)
		if err != nil || ep.EgressProgram == 0 || ep.IngressProgram != ingress {
			return fmt.Errorf("endpoint %+v (ingress was %d), %v", ep, ingress, err)
		}
		if v, err := decide(set, ep.EgressProgram, client, 17, 53); err != nil || v.Action != maps.ActionDeny || v.Rule == 0 {
			return fmt.Errorf("egress to the client: %+v, %v", v, err)
		}
		if v, err := decide(set, ep.EgressProgram, netip.MustParseAddr("198.19.1.1"), 17, 53); err != nil || v.Action != maps.ActionAllow {
			return fmt.Errorf("egress elsewhere: %+v, %v", v, err)
		}
		if v, err := decide(set, ingress, client, 6, 80); err != nil || v.Action != maps.ActionAllow {
			return fmt.Errorf("the malformed write changed the ingress policy: %+v, %v", v, err)
		}
		return nil
	})
	eventually(t, "policy metrics", func() error {
		_, body, err := h.get("/metrics")
		if err != nil {
			return err
		}
		for _, want := range []string{"margay_policy_policies 2", `margay_policy_rule_hits_packets_total{direction="ingress",policy="web",rule="0"} 0`,
			"margay_conntrack_entries"} {
			if !strings.Contains(body, want) {
				return fmt.Errorf("no %q in /metrics", want)
			}
		}
		return nil
	})

	// Removing the policies removes every trace of them.
	for _, name := range []string{"web", "egress"} {
		if err := ds.Policies().Delete(ctx, name, 0); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "policies removed", func() error {
		ep, err := set.Endpoints.Get(idx)
		if err != nil || ep.IngressProgram != 0 || ep.EgressProgram != 0 {
			return fmt.Errorf("endpoint %+v, %v", ep, err)
		}
		entries, err := set.Policy.List()
		if err != nil || len(entries) != 0 {
			return fmt.Errorf("policy map still holds %d entries (%v)", len(entries), err)
		}
		ips, err := set.PolicyIPs.List()
		if err != nil || len(ips) != 1 {
			return fmt.Errorf("policy_ips %v, %v: want only 0.0.0.0/0", ips, err)
		}
		if _, err := set.Policy.Lookup(ingress, 0, 6, 80); !errors.Is(err, maps.ErrNotFound) {
			return fmt.Errorf("lookup in the removed program: %v", err)
		}
		return nil
	})
}
