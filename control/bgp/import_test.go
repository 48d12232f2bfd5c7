package bgp

import (
	"net/netip"
	"testing"
)

func TestImport(t *testing.T) {
	gw, peer := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	self := netip.MustParsePrefix("198.18.0.10/24")
	im := NewImport(self, []netip.Prefix{pool}, []Peer{{Address: gw, Accept: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}, {Address: peer}},
		[]netip.Prefix{blocks[0], netip.MustParsePrefix("198.19.9.9/32")})
	tests := []struct {
		prefix  string
		from    netip.Addr
		nextHop string // "" = from
		want    bool
	}{
		{prefix: "198.19.0.64/26", from: peer, want: true},
		{prefix: "198.19.7.1/32", from: peer, want: true},
		{prefix: "198.19.0.0/16", from: peer, want: true},
		{prefix: "198.18.0.0/15", from: peer, want: false}, // covers the pool but is wider
		{prefix: "198.19.0.0/26", from: peer, want: false}, // ours
		{prefix: "198.19.0.0/26", from: gw, want: false},   // ours, whoever sends it
		{prefix: "198.19.9.9/32", from: peer, want: false}, // our borrowed /32
		{prefix: "10.0.0.0/8", from: peer, want: false},
		{prefix: "0.0.0.0/0", from: peer, want: false},
		{prefix: "0.0.0.0/0", from: gw, want: true},
		{prefix: "10.0.0.0/8", from: gw, want: false},                               // an Accept entry matches exactly
		{prefix: "198.19.0.64/26", from: peer, nextHop: "198.18.1.2", want: false},  // next hop off our subnet
		{prefix: "198.19.0.64/26", from: peer, nextHop: "198.18.0.10", want: false}, // next hop is us
		{prefix: "198.19.0.64/26", from: peer, nextHop: "198.18.0.3", want: true},   // a third party on the segment
		{prefix: "2001:db8::/64", from: peer, want: false},
	}
	for _, tt := range tests {
		nh := tt.from
		if tt.nextHop != "" {
			nh = netip.MustParseAddr(tt.nextHop)
		}
		t.Run(tt.prefix+" from "+tt.from.String()+" via "+nh.String(), func(t *testing.T) {
			r := Route{Prefix: netip.MustParsePrefix(tt.prefix), NextHop: nh, Peer: tt.from}
			if got := im.Takes(r); got != tt.want {
				t.Errorf("Takes(%+v) = %v, want %v", r, got, tt.want)
			}
		})
	}
	if (Import{}).Takes(Route{Prefix: blocks[1], NextHop: peer, Peer: peer}) {
		t.Error("a node without an address takes routes")
	}
}
