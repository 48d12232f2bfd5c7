package policy_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
	"github.com/margaynet/margay/control/policy/policytest"
	"github.com/margaynet/margay/maps"
)

// TestCalicoExamples runs the table of Calico's documented behaviours through the reference
// evaluator and through the compiled maps as each host would enforce them: every flow's verdict,
// and which flows a Log rule reports.
func TestCalicoExamples(t *testing.T) {
	var (
		eps    []policy.Endpoint
		byName = map[string]*policy.Endpoint{}
	)
	for _, ex := range policytest.Examples() {
		t.Run(ex.Name, func(t *testing.T) {
			profiles := map[string]datastore.Profile{}
			for _, p := range ex.AllProfiles() {
				profiles[p.Name] = p
			}
			world := &policy.World{Endpoints: map[netip.Addr]*policy.Endpoint{}}
			eps = eps[:0]
			for i, w := range policytest.World {
				rec := datastore.Workload{ID: w.Name, Name: w.Name, Namespace: w.Namespace, Node: fmt.Sprintf("host%d", w.Host),
					IPv4:   []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(w.Host), byte(10 + i)}), 32)},
					Labels: w.Labels, Profiles: w.Profiles, Ports: w.Ports}
				ep, ok := policy.EndpointWith(rec, profiles)
				if !ok {
					t.Fatal("no address")
				}
				eps = append(eps, ep)
			}
			for i := range eps {
				byName[eps[i].Key[len(eps[i].Node)+1:]] = &eps[i]
				world.Endpoints[eps[i].Addr] = &eps[i]
			}
			set, err := policy.Build(policy.Input{Policies: ex.Policies, Tiers: ex.Tiers, Profiles: ex.AllProfiles()})
			if err != nil {
				t.Fatal(err)
			}
			// Each host's compiled maps, as its programs would look them up.
			type host struct {
				c   *policy.Compiler
				res *policy.Result
				ent map[maps.PolicyKey]maps.PolicyValue
			}
			hosts := map[string]host{}
			for h := range 3 {
				node := fmt.Sprintf("host%d", h)
				var local []policy.Endpoint
				for _, ep := range eps {
					if ep.Node == node {
						local = append(local, ep)
					}
				}
				c := policy.NewCompiler(1 << 16)
				res, err := c.Compile(set, eps, local)
				if err != nil {
					t.Fatal(err)
				}
				hosts[node] = host{c, res, c.Entries(res.Programs, res.Identities)}
			}
			// compiled is one direction's answer on the workload's host: allowed, and the Log rule.
			compiled := func(ep *policy.Endpoint, dir policy.Direction, peer netip.Addr, port uint16) (bool, string) {
				h := hosts[ep.Node]
				pg := h.res.Endpoints[ep.Addr]
				prog := pg.Ingress
				if dir == policy.Egress {
					prog = pg.Egress
				}
				if prog == 0 {
					return true, ""
				}
				ident, best := uint32(0), -1
				for p, id := range h.res.IPs {
					if p.Contains(peer) && p.Bits() > best {
						ident, best = id, p.Bits()
					}
				}
				v, ok := lookup(h.ent, prog, ident, 6, port)
				if ok && v.Action == maps.ActionSourcePort {
					v, ok = lookup(h.ent, v.Rule, 0, 0, 40000)
				}
				if !ok {
					return false, ""
				}
				log := ""
				if v.Log != 0 {
					log = h.c.Rules()[v.Log].String()
				}
				return v.Action == maps.ActionAllow, log
			}
			var logged []policytest.Logged
			for _, f := range ex.Flows {
				src, dst := byName[f.From], byName[f.To]
				fl := policy.Flow{Src: src.Addr, Dst: dst.Addr, Proto: 6, SrcPort: 40000, DstPort: f.Port}
				ref, _ := set.Allowed(world, fl)
				eg, egLog := compiled(src, policy.Egress, dst.Addr, f.Port)
				in, inLog := compiled(dst, policy.Ingress, src.Addr, f.Port)
				if ref != f.Allow || (eg && in) != f.Allow {
					t.Errorf("%s -> %s:%d: reference allows %v, compiled egress %v ingress %v; Calico: %v", f.From, f.To, f.Port,
						ref, eg, in, f.Allow)
				}
				d1 := set.Decide(src, policy.Egress, dst.Addr, dst, fl)
				d2 := set.Decide(dst, policy.Ingress, src.Addr, src, fl)
				refLog := d1.Log != nil || (d1.Allow && d2.Log != nil)
				if refLog != (egLog != "" || (eg && inLog != "")) {
					t.Errorf("%s -> %s:%d: reference logs %v (%v %v), compiled %q %q", f.From, f.To, f.Port, refLog, d1.Log, d2.Log, egLog, inLog)
				}
				if refLog {
					logged = append(logged, policytest.Logged{From: f.From, To: f.To, Port: f.Port})
				}
			}
			if !slices.Equal(logged, ex.Logged) {
				t.Errorf("logged %v, want %v", logged, ex.Logged)
			}
		})
	}
}

// lookup is the policy map's longest-prefix match.
func lookup(ent map[maps.PolicyKey]maps.PolicyValue, program, identity uint32, proto uint8, port uint16) (maps.PolicyValue, bool) {
	for bits := 16; bits >= 0; bits-- {
		k := maps.PolicyKey{Program: program, Identity: identity, Protocol: proto, PortBits: uint8(bits)}
		if bits > 0 {
			k.Port = port &^ (0xffff >> bits)
		}
		if v, ok := ent[k]; ok {
			return v, true
		}
	}
	v, ok := ent[maps.PolicyKey{Program: program, Identity: identity, AllProtocols: true}]
	return v, ok
}
