package benchrules_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/margaynet/margay/control/policy"
	"github.com/margaynet/margay/tests/benchrules"
)

// TestTiered holds the tiered rule sets against the reference walk: the measured flow is allowed
// by the last rule (so it passed every tier), a flow from the same client to a port no rule
// allows is denied at the end, and the client's egress is allowed by the last profile's rule.
func TestTiered(t *testing.T) {
	client, server := netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("198.19.0.2")
	const basePort, deniedPort = 1000, 999
	for _, n := range []int{1, 10, 1000} {
		for _, tiers := range []int{1, 2, 3, 10, 50} {
			for _, profiles := range []int{0, 1, 5} {
				t.Run(fmt.Sprintf("rules=%d/tiers=%d/profiles=%d", n, tiers, profiles), func(t *testing.T) {
					port := uint16(basePort + n - 1)
					r := benchrules.Tiered{Rules: benchrules.Rules{N: n, Base: netip.MustParseAddr("198.18.0.0"), BasePort: basePort,
						LastNet: netip.MustParsePrefix("198.19.0.0/28"), LastLo: port, LastHi: port}, Tiers: tiers, Profiles: profiles}
					in := r.Input()
					if len(in.Tiers) != tiers || len(in.Policies) != tiers || len(in.Profiles) != profiles {
						t.Fatalf("%d tiers, %d policies, %d profiles", len(in.Tiers), len(in.Policies), len(in.Profiles))
					}
					rules := 0
					for _, p := range in.Policies {
						rules += len(p.Ingress) + len(p.Egress)
					}
					for _, p := range in.Profiles {
						rules += len(p.Ingress)
					}
					if want := n + r.PassRules(); rules != want {
						t.Errorf("%d ingress rules, want %d (n) + %d (pass)", rules, n, r.PassRules())
					}
					s, err := policy.Build(in)
					if err != nil {
						t.Fatal(err)
					}
					ep := func(a netip.Addr) *policy.Endpoint {
						return &policy.Endpoint{Key: "bench/" + a.String(), Node: "bench", Addr: a, Labels: map[string]string{}, Profiles: r.ProfileNames()}
					}
					cep, sep := ep(client), ep(server)
					flow := policy.Flow{Src: client, Dst: server, Proto: 6, SrcPort: 40000, DstPort: port}
					d := s.Decide(sep, policy.Ingress, client, cep, flow)
					if last := r.Last(); !d.Allow || d.Rule == nil || *d.Rule != last {
						t.Errorf("measured flow: %+v (rule %v), want allowed by %v", d, d.Rule, last)
					}
					flow.DstPort = deniedPort
					if d := s.Decide(sep, policy.Ingress, client, cep, flow); d.Allow || d.Rule != nil {
						t.Errorf("denied flow: %+v (rule %v), want denied at the end of the walk", d, d.Rule)
					}
					flow.DstPort = port
					d = s.Decide(cep, policy.Egress, server, sep, flow)
					ref, ok := r.LastEgress()
					switch {
					case !d.Allow:
						t.Errorf("client egress denied: %+v", d)
					case ok && (d.Rule == nil || *d.Rule != ref):
						t.Errorf("client egress allowed by %v, want %v", d.Rule, ref)
					case !ok && d.Selected:
						t.Errorf("client egress: a policy governs it without profiles")
					}
				})
			}
		}
	}
}
