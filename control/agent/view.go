package agent

import (
	"cmp"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/margaynet/margay/control/bgp"
	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
)

// view is the owner goroutine's copy of the datastore: replaced on every snapshot, patched by
// every event.
type view struct {
	node      string
	workloads map[string]datastore.Workload // "<node>/<id>"
	blocks    map[string]datastore.Block
	nodes     map[string]datastore.Node
	pools     map[string]datastore.Pool
	bgpConfig map[string]datastore.BGPConfig // the config/bgp singleton, when BGP is on
	bgpPeers  map[string]datastore.BGPPeer
	policies  map[string]datastore.Policy
	revisions map[string]map[string]int64 // kind -> name -> ModRevision, for kinds that ask for it
	// changed are the items put or deleted since the policy engine last took them, for the kinds
	// it follows (workloads, policies); changedAll says a snapshot replaced them all.
	changed    map[string]map[string]bool
	changedAll map[string]bool
	learned    []bgp.Route // best paths from the BGP speaker
	learnedAt  time.Time   // when the oldest learned change not yet programmed arrived
	bgp        bool        // remote routes come from BGP, not from the datastore's blocks
	synced     map[string]bool

	// retained are the remote routes found in the kernel at start, kept (beside what BGP
	// delivers) until BGP has every peer's table again or the deferral ends; nil after that.
	retained []dataplane.RemoteRoute
}

func newView(node string, withBGP bool) *view {
	return &view{node: node, workloads: map[string]datastore.Workload{}, blocks: map[string]datastore.Block{},
		nodes: map[string]datastore.Node{}, pools: map[string]datastore.Pool{}, bgpConfig: map[string]datastore.BGPConfig{},
		bgpPeers: map[string]datastore.BGPPeer{}, policies: map[string]datastore.Policy{}, revisions: map[string]map[string]int64{kindPolicies: {}, kindWorkloads: {}},
		changed: map[string]map[string]bool{kindPolicies: {}, kindWorkloads: {}}, changedAll: map[string]bool{},
		bgp: withBGP, synced: map[string]bool{}}
}

// touch records that item name of kind was put or deleted.
func (v *view) touch(kind, name string) {
	if c := v.changed[kind]; c != nil {
		c[name] = true
	}
}

// touchAll records that a snapshot replaced every item of kind.
func (v *view) touchAll(kind string) {
	if c := v.changed[kind]; c != nil {
		clear(c)
		v.changedAll[kind] = true
	}
}

// state derives what this host should look like. Remote routes come from BGP, or without it from
// the datastore: every block another node owns is reached through that node, and a workload that
// borrowed an address from someone else's block gets a /32 of its own. Only next hops on the
// uplink's subnet are used.
func (v *view) state(uplink string) dataplane.State {
	s := dataplane.State{Uplink: uplink}
	if v.bgp {
		s.Remote = v.withRetained(v.learnedRoutes())
	}
	self := v.nodes[v.node].AddressV4
	reachable := func(node string) (netip.Addr, bool) {
		n, ok := v.nodes[node]
		if !ok || node == v.node || !self.IsValid() {
			return netip.Addr{}, false
		}
		a := n.AddressV4.Addr()
		return a, self.Masked().Contains(a) && a != self.Addr()
	}

	for _, p := range v.pools {
		s.Pools = append(s.Pools, p.CIDR)
	}
	for _, name := range sortedKeys(v.nodes) {
		if a := v.nodes[name].AddressV4.Addr(); a.Is4() {
			s.Hosts = append(s.Hosts, a)
			if name == v.node {
				s.Self = a
			}
		}
	}
	// The block of an address by a lookup per block size (one, /26, as a rule), not a walk over
	// every block of the cluster for every workload of the cluster.
	byCIDR := make(map[netip.Prefix]datastore.Block, len(v.blocks))
	var blockBits []int
	for _, b := range v.blocks {
		byCIDR[b.CIDR] = b
		if !slices.Contains(blockBits, b.CIDR.Bits()) {
			blockBits = append(blockBits, b.CIDR.Bits())
		}
	}
	blockOf := func(ip netip.Addr) (datastore.Block, bool) {
		for _, bits := range blockBits {
			if b, ok := byCIDR[netip.PrefixFrom(ip, bits).Masked()]; ok {
				return b, true
			}
		}
		return datastore.Block{}, false
	}
	for _, b := range v.blocks {
		switch owner := b.Node(); {
		case owner == v.node:
			s.Blocks = append(s.Blocks, b.CIDR)
		case v.bgp:
		default:
			if nh, ok := reachable(owner); ok {
				s.Remote = append(s.Remote, dataplane.RemoteRoute{Prefix: b.CIDR, NextHop: nh})
			}
		}
	}
	seenIP := map[netip.Addr]bool{}
	for _, key := range sortedKeys(v.workloads) {
		w := v.workloads[key]
		if len(w.IPv4) == 0 {
			continue
		}
		ip := w.IPv4[0].Addr()
		if seenIP[ip] {
			continue // two records claim one address: the first (by key) wins until IPAM sorts it out
		}
		seenIP[ip] = true
		if w.Node == v.node {
			mac, err := net.ParseMAC(w.MAC)
			if err != nil {
				continue // validated on read; cannot happen
			}
			s.Workloads = append(s.Workloads, dataplane.Workload{IfName: w.IfName, IPv4: ip, MAC: mac})
			continue
		}
		if b, ok := blockOf(ip); ok && b.Node() != w.Node && !v.bgp {
			if nh, ok := reachable(w.Node); ok {
				s.Remote = append(s.Remote, dataplane.RemoteRoute{Prefix: netip.PrefixFrom(ip, 32), NextHop: nh, Workload: true})
			}
		}
	}
	// By address on one integer each: at 100k BGP routes comparing netip values costs more.
	slices.SortFunc(s.Remote, func(a, b dataplane.RemoteRoute) int {
		return cmp.Compare(addrKey(a.Prefix.Addr()), addrKey(b.Prefix.Addr()))
	})
	return s
}

func addrKey(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// watchers turn datastore watches into updates of the view, run by the owner goroutine.
type watchers struct {
	ds      *datastore.Client
	log     *slog.Logger
	updates chan<- func(*view)
}

const (
	kindWorkloads = "workloads"
	kindBlocks    = "blocks"
	kindNodes     = "nodes"
	kindPools     = "pools"
	kindBGPConfig = "bgpconfig"
	kindBGPPeers  = "bgppeers"
	kindPolicies  = "policies"

	bgpConfigName = "bgp" // the name of the config/bgp singleton's only item
)

func (w *watchers) start(ctx context.Context, withBGP bool) {
	if withBGP {
		go follow(ctx, w, kindBGPConfig, w.ds.BGPConfig().Store(), func(v *view) map[string]datastore.BGPConfig { return v.bgpConfig })
		go follow(ctx, w, kindBGPPeers, w.ds.BGPPeers(), func(v *view) map[string]datastore.BGPPeer { return v.bgpPeers })
	}
	go follow(ctx, w, kindWorkloads, w.ds.AllWorkloads(), func(v *view) map[string]datastore.Workload { return v.workloads })
	go follow(ctx, w, kindBlocks, w.ds.Blocks(), func(v *view) map[string]datastore.Block { return v.blocks })
	go follow(ctx, w, kindNodes, w.ds.Nodes(), func(v *view) map[string]datastore.Node { return v.nodes })
	go follow(ctx, w, kindPools, w.ds.Pools(), func(v *view) map[string]datastore.Pool { return v.pools })
	go follow(ctx, w, kindPolicies, w.ds.Policies(), func(v *view) map[string]datastore.Policy { return v.policies })
}

// synced reports whether every kind delivered its first snapshot: reconciling earlier would
// remove what the missing kinds still want.
func (w *watchers) synced(v *view) bool {
	base := v.synced[kindWorkloads] && v.synced[kindBlocks] && v.synced[kindNodes] && v.synced[kindPools] && v.synced[kindPolicies]
	return base && (!v.bgp || v.synced[kindBGPConfig] && v.synced[kindBGPPeers])
}

func follow[T any](ctx context.Context, w *watchers, kind string, store datastore.Store[T], cache func(*view) map[string]T) {
	err := store.Watch(ctx, func(ev datastore.Event[T]) {
		var u func(*view)
		switch ev.Type {
		case datastore.EventSnapshot:
			items := ev.Items
			u = func(v *view) {
				m := cache(v)
				clear(m)
				revs := v.revisions[kind]
				clear(revs)
				for _, it := range items {
					m[it.Name] = it.Value
					if revs != nil {
						revs[it.Name] = it.ModRevision
					}
				}
				v.touchAll(kind)
				v.synced[kind] = true
			}
		case datastore.EventPut:
			it := ev.Item
			u = func(v *view) {
				cache(v)[it.Name] = it.Value
				if revs := v.revisions[kind]; revs != nil {
					revs[it.Name] = it.ModRevision
				}
				v.touch(kind, it.Name)
			}
		case datastore.EventDelete:
			name := ev.Name
			if ev.Malformed && kind == kindPolicies {
				// A policy made malformed by hand keeps its last good version in force: dropping
				// it would open (or close) everything it governed.
				w.log.Error("malformed policy; its previous version stays in force", "policy", name)
				return
			}
			u = func(v *view) {
				delete(cache(v), name)
				delete(v.revisions[kind], name)
				v.touch(kind, name)
			}
		default:
			return
		}
		select {
		case w.updates <- u:
		case <-ctx.Done():
		}
	})
	if err != nil && ctx.Err() == nil {
		w.log.Error("watch ended", "kind", kind, "error", err)
	}
}
