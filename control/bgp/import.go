package bgp

import (
	"net/netip"
	"slices"
)

// Import is a node's import policy, the one place that decides which of the routes its peers
// sent the node uses. The speaker hands out every best path its peers sent; a route is taken
// when
//   - it is IPv4 and its next hop lies on the node's own subnet and is not the node (BGP between
//     hosts of one segment, or a gateway on it: no recursive next hops);
//   - it is not a prefix the node originates (its blocks, its borrowed /32s, what a restarting
//     reflector re-advertises), which a peer may send back and which must never win here;
//   - it lies inside a pool (a block, a borrowed /32, the pool itself), or it is on the sending
//     peer's Accept list (exactly: 0.0.0.0/0 allows the default route, not everything).
type Import struct {
	self   netip.Prefix
	pools  []netip.Prefix
	accept map[netip.Addr][]netip.Prefix
	own    map[netip.Prefix]bool
}

// NewImport returns the import policy of a node at self (its address with the uplink's prefix
// length) with these pools, peers (their Accept lists) and originated prefixes.
func NewImport(self netip.Prefix, pools []netip.Prefix, peers []Peer, own []netip.Prefix) Import {
	im := Import{self: self, accept: make(map[netip.Addr][]netip.Prefix, len(peers)), own: make(map[netip.Prefix]bool, len(own))}
	for _, p := range pools {
		im.pools = append(im.pools, p.Masked())
	}
	for _, p := range peers {
		if len(p.Accept) > 0 {
			im.accept[p.Address] = p.Accept
		}
	}
	for _, p := range own {
		im.own[p.Masked()] = true
	}
	return im
}

// Takes says whether the node uses r.
func (im Import) Takes(r Route) bool {
	if !r.Prefix.Addr().Is4() || !im.self.IsValid() || !im.self.Masked().Contains(r.NextHop) || r.NextHop == im.self.Addr() {
		return false
	}
	if im.own[r.Prefix] {
		return false
	}
	if slices.Contains(im.accept[r.Peer], r.Prefix) {
		return true
	}
	for _, pool := range im.pools {
		if pool.Bits() <= r.Prefix.Bits() && pool.Contains(r.Prefix.Addr()) {
			return true
		}
	}
	return false
}
