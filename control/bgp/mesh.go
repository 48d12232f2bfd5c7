package bgp

import (
	"slices"

	"github.com/margaynet/margay/control/datastore"
)

// Mesh computes the peers self should have, as Calico does:
//   - node-to-node full mesh with every other node when the mesh is enabled and self is not a
//     route reflector;
//   - a route reflector (a node with a cluster ID) peers with every other node, marking the
//     non-reflectors as its clients; every node peers with every reflector;
//   - explicit peers with no node apply to every node (PeerGlobal), those naming self to self only
//     (PeerNodeSpecific). An explicit peer replaces a mesh peer at the same address.
//
// Nodes without an address, and anything at self's own address, are skipped. The result is
// sorted by address and never holds an address twice.
func Mesh(self datastore.Node, nodes []datastore.Node, cfg datastore.BGPConfig, peers []datastore.BGPPeer) []Peer {
	selfAddr := self.AddressV4.Addr()
	selfRR := self.RouteReflectorClusterID != ""

	byAddr := make(map[string]Peer)
	for _, n := range nodes {
		if n.Name == self.Name || !n.AddressV4.IsValid() {
			continue
		}
		addr := n.AddressV4.Addr()
		if addr == selfAddr {
			continue
		}
		nodeRR := n.RouteReflectorClusterID != ""
		if !selfRR && !nodeRR && !cfg.MeshEnabled() {
			continue
		}
		byAddr[addr.String()] = Peer{
			Address:              addr,
			ASN:                  datastore.EffectiveASN(n, cfg),
			Type:                 PeerMesh,
			RouteReflectorClient: selfRR && !nodeRR,
		}
	}
	for _, p := range peers {
		var typ PeerType
		switch p.Node {
		case "":
			typ = PeerGlobal
		case self.Name:
			typ = PeerNodeSpecific
		default:
			continue
		}
		if !p.PeerIP.IsValid() || p.PeerIP == selfAddr {
			continue
		}
		byAddr[p.PeerIP.String()] = Peer{Address: p.PeerIP, ASN: p.ASN, Type: typ, Password: p.Password,
			Accept: slices.Clone(p.Accept)}
	}

	out := make([]Peer, 0, len(byAddr))
	for _, p := range byAddr {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Peer) int { return a.Address.Compare(b.Address) })
	return out
}
