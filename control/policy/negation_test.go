package policy

import (
	"net/netip"
	"testing"

	"github.com/margaynet/margay/control/datastore"
)

// notProtocol and notICMP as Calico documents them: the rule takes every protocol but the one
// named, and every ICMP packet but those of the type (and code) named.
func TestNegatedProtocolAndICMP(t *testing.T) {
	proto := func(p uint8) *datastore.Protocol { q := datastore.Protocol(p); return &q }
	u8 := func(v uint8) *uint8 { return &v }
	ep := &Endpoint{Key: "n/a", Node: "n", Addr: netip.MustParseAddr("198.19.0.1"), Labels: map[string]string{"app": "a"}}
	peer := netip.MustParseAddr("198.19.0.2")
	for _, tc := range []struct {
		name  string
		rule  datastore.Rule
		allow map[Flow]bool
	}{{
		name: "notProtocol udp",
		rule: datastore.Rule{Action: "allow", NotProtocol: proto(17)},
		allow: map[Flow]bool{
			{Proto: 6, DstPort: 80}: true, {Proto: 1, DstPort: 8 << 8}: true, {Proto: 47}: true,
			{Proto: 17, DstPort: 53}: false,
		},
	}, {
		name: "notICMP echo request, any code",
		rule: datastore.Rule{Action: "allow", Protocol: proto(1), NotICMP: &datastore.ICMPMatch{Type: u8(8)}},
		allow: map[Flow]bool{
			{Proto: 1, DstPort: 0 << 8}: true, {Proto: 1, DstPort: 3<<8 | 1}: true,
			{Proto: 1, DstPort: 8 << 8}: false, {Proto: 1, DstPort: 8<<8 | 5}: false, {Proto: 6, DstPort: 8 << 8}: false,
		},
	}, {
		name: "notICMP type and code",
		rule: datastore.Rule{Action: "allow", Protocol: proto(1), NotICMP: &datastore.ICMPMatch{Type: u8(3), Code: u8(4)}},
		allow: map[Flow]bool{
			{Proto: 1, DstPort: 3<<8 | 4}: false, {Proto: 1, DstPort: 3<<8 | 3}: true, {Proto: 1, DstPort: 8 << 8}: true,
		},
	}, {
		name: "icmp type and notICMP code of it",
		rule: datastore.Rule{Action: "allow", Protocol: proto(1), ICMP: &datastore.ICMPMatch{Type: u8(3)},
			NotICMP: &datastore.ICMPMatch{Type: u8(3), Code: u8(4)}},
		allow: map[Flow]bool{
			{Proto: 1, DstPort: 3<<8 | 4}: false, {Proto: 1, DstPort: 3<<8 | 1}: true, {Proto: 1, DstPort: 8 << 8}: false,
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewSet([]datastore.Policy{{Version: 1, Name: "p", Selector: `app == "a"`,
				Types: []datastore.PolicyType{datastore.PolicyIngress}, Ingress: []datastore.Rule{tc.rule}}})
			if err != nil {
				t.Fatal(err)
			}
			for f, want := range tc.allow {
				f.Src, f.Dst = peer, ep.Addr
				if got := s.Decide(ep, Ingress, peer, nil, f).Allow; got != want {
					t.Errorf("%+v: allowed %v, want %v", f, got, want)
				}
			}
		})
	}
}
