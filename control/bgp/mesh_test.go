package bgp

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/margaynet/margay/control/datastore"
)

func TestMesh(t *testing.T) {
	node := func(name, addr string, asn uint32, cluster string) datastore.Node {
		n := datastore.Node{Name: name, ASN: asn, RouteReflectorClusterID: cluster}
		if addr != "" {
			n.AddressV4 = netip.MustParsePrefix(addr + "/24")
		}
		return n
	}
	off := false
	a := node("a", "198.18.0.1", 0, "")
	b := node("b", "198.18.0.2", 0, "")
	c := node("c", "198.18.0.3", 65001, "")
	rr1 := node("rr1", "198.18.0.10", 0, "198.18.0.10")
	rr2 := node("rr2", "198.18.0.11", 0, "198.18.0.10")
	noAddr := node("d", "", 0, "")
	mesh := datastore.BGPConfig{ASN: 64512}
	meshOff := datastore.BGPConfig{ASN: 64512, NodeToNodeMesh: &off}
	gw := datastore.BGPPeer{Name: "gw", PeerIP: netip.MustParseAddr("198.18.0.254"), ASN: 65000, Password: "s3cret"}
	torA := datastore.BGPPeer{Name: "tor-a", PeerIP: netip.MustParseAddr("198.18.0.253"), ASN: 65002, Node: "a"}
	torB := datastore.BGPPeer{Name: "tor-b", PeerIP: netip.MustParseAddr("198.18.0.252"), ASN: 65003, Node: "b"}
	p := func(addr string, asn uint32, typ PeerType, rrc bool, pw string) Peer {
		return Peer{Address: netip.MustParseAddr(addr), ASN: asn, Type: typ, RouteReflectorClient: rrc, Password: pw}
	}

	tests := []struct {
		name  string
		self  datastore.Node
		nodes []datastore.Node
		cfg   datastore.BGPConfig
		peers []datastore.BGPPeer
		want  []Peer
	}{
		{
			name:  "full mesh skips self and nodes without address, node ASN overrides",
			self:  a,
			nodes: []datastore.Node{a, b, c, noAddr},
			cfg:   mesh,
			want:  []Peer{p("198.18.0.2", 64512, PeerMesh, false, ""), p("198.18.0.3", 65001, PeerMesh, false, "")},
		},
		{
			name:  "zero cluster ASN means the default",
			self:  a,
			nodes: []datastore.Node{a, b},
			cfg:   datastore.BGPConfig{},
			want:  []Peer{p("198.18.0.2", datastore.DefaultASN, PeerMesh, false, "")},
		},
		{
			name:  "mesh off and no reflectors: no peers",
			self:  a,
			nodes: []datastore.Node{a, b, c},
			cfg:   meshOff,
		},
		{
			name:  "mesh off: a client peers with the reflectors only",
			self:  a,
			nodes: []datastore.Node{a, b, rr1, rr2},
			cfg:   meshOff,
			want:  []Peer{p("198.18.0.10", 64512, PeerMesh, false, ""), p("198.18.0.11", 64512, PeerMesh, false, "")},
		},
		{
			name:  "reflector: clients marked, other reflectors not, mesh setting ignored",
			self:  rr1,
			nodes: []datastore.Node{a, b, rr1, rr2},
			cfg:   meshOff,
			want: []Peer{
				p("198.18.0.1", 64512, PeerMesh, true, ""),
				p("198.18.0.2", 64512, PeerMesh, true, ""),
				p("198.18.0.11", 64512, PeerMesh, false, ""),
			},
		},
		{
			name:  "reflector with mesh on behaves the same",
			self:  rr2,
			nodes: []datastore.Node{a, rr1, rr2},
			cfg:   mesh,
			want:  []Peer{p("198.18.0.1", 64512, PeerMesh, true, ""), p("198.18.0.10", 64512, PeerMesh, false, "")},
		},
		{
			name:  "explicit peers: global and ours, not another node's",
			self:  a,
			nodes: []datastore.Node{a, b},
			cfg:   mesh,
			peers: []datastore.BGPPeer{gw, torA, torB},
			want: []Peer{
				p("198.18.0.2", 64512, PeerMesh, false, ""),
				p("198.18.0.253", 65002, PeerNodeSpecific, false, ""),
				p("198.18.0.254", 65000, PeerGlobal, false, "s3cret"),
			},
		},
		{
			name:  "explicit peer replaces the mesh peer at its address; own address skipped",
			self:  a,
			nodes: []datastore.Node{a, b},
			cfg:   mesh,
			peers: []datastore.BGPPeer{
				{Name: "b-ebgp", PeerIP: netip.MustParseAddr("198.18.0.2"), ASN: 65009},
				{Name: "me", PeerIP: netip.MustParseAddr("198.18.0.1"), ASN: 65009},
			},
			want: []Peer{p("198.18.0.2", 65009, PeerGlobal, false, "")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Mesh(tt.self, tt.nodes, tt.cfg, tt.peers)
			if !slices.EqualFunc(got, tt.want, func(x, y Peer) bool {
				return x.Address == y.Address && x.ASN == y.ASN && x.Type == y.Type &&
					x.RouteReflectorClient == y.RouteReflectorClient && x.Password == y.Password
			}) {
				t.Errorf("Mesh() =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}
