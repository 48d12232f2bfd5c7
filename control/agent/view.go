package agent

import (
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
	tiers     map[string]datastore.Tier
	profiles  map[string]datastore.Profile
	revisions map[string]map[string]int64 // kind -> name -> ModRevision, for kinds that ask for it
	// changed are the items put or deleted since the policy engine last took them, for the kinds
	// it follows (workloads, policies); changedAll says a snapshot replaced them all.
	changed    map[string]map[string]bool
	changedAll map[string]bool
	learned    []bgp.Route // best paths from the BGP speaker, before the import policy
	taken      int         // how many of them the import policy took at the last derivation
	learnedAt  time.Time   // when the oldest learned change not yet programmed arrived
	bgp        bool        // remote routes come from BGP, not from the datastore's blocks
	synced     map[string]bool

	// What the next pass must derive again (see state): everything (dirty), the workload records
	// put or deleted (by key), the BGP routes; der is what the last pass derived.
	dirty          bool
	dirtyWorkloads map[string]bool
	dirtyRemote    bool
	der            *derived
	// passKeys are the workload records the last derivation changed by; passAll says it was a
	// full one.
	passKeys []string
	passAll  bool

	// retained are the remote routes found in the kernel at start, kept (beside what BGP
	// delivers) until BGP has every peer's table again or the deferral ends; nil after that.
	retained []dataplane.RemoteRoute
}

func newView(node string, withBGP bool) *view {
	return &view{node: node, workloads: map[string]datastore.Workload{}, blocks: map[string]datastore.Block{},
		nodes: map[string]datastore.Node{}, pools: map[string]datastore.Pool{}, bgpConfig: map[string]datastore.BGPConfig{},
		bgpPeers: map[string]datastore.BGPPeer{}, policies: map[string]datastore.Policy{},
		tiers: map[string]datastore.Tier{}, profiles: map[string]datastore.Profile{},
		revisions: map[string]map[string]int64{kindPolicies: {}, kindTiers: {}, kindProfiles: {}, kindWorkloads: {}},
		changed:   map[string]map[string]bool{kindPolicies: {}, kindTiers: {}, kindProfiles: {}, kindWorkloads: {}}, changedAll: map[string]bool{},
		bgp: withBGP, synced: map[string]bool{}, dirtyWorkloads: map[string]bool{}}
}

// touch records that item name of kind was put or deleted; structural says the change may
// matter to more than the item's own entries (see state).
func (v *view) touch(kind, name string, structural bool) {
	if c := v.changed[kind]; c != nil {
		c[name] = true
	}
	switch kind {
	case kindWorkloads:
		v.dirtyWorkloads[name] = true
	case kindBlocks, kindNodes, kindPools:
		v.dirty = v.dirty || structural
	case kindBGPPeers, kindBGPConfig:
		v.dirtyRemote = true // the import policy's Accept lists
	}
}

// touchAll records that a snapshot replaced every item of kind.
func (v *view) touchAll(kind string) {
	if c := v.changed[kind]; c != nil {
		clear(c)
		v.changedAll[kind] = true
	}
	switch kind {
	case kindWorkloads, kindBlocks, kindNodes, kindPools:
		v.dirty = true
	case kindBGPPeers, kindBGPConfig:
		v.dirtyRemote = true
	}
}

// derived is the desired state of the host as the view last derived it, with what an event
// needs to change it in place: which record put which entry in, and which records claim which
// address.
type derived struct {
	st      dataplane.State
	claims  map[netip.Addr]int      // how many records claim each address
	claimOf map[string]netip.Addr   // the address each record (by key) claims
	owner   map[netip.Addr]string   // the record whose claim counts: the first by key
	ifs     map[string]int          // how many of those records want each interface
	ifOf    map[string]string       // the interface each of them wants
	local   map[string]string       // record -> the interface it put in st.Workloads
	remote  map[string]netip.Prefix // record -> the borrowed /32 it put in st.Remote
	lent    map[string]netip.Prefix // local record -> its /32, borrowed from another node's block
	// lentChanged says update added or removed a borrowed /32: an advertisement, which the
	// import policy refuses to take from a peer.
	lentChanged bool
	byCIDR      map[netip.Prefix]datastore.Block
	bits        []int // the block sizes byCIDR has
}

// state is what this host should look like, for the next pass. Remote routes come from BGP, or
// without it from the datastore: every block another node owns is reached through that node,
// and a workload that borrowed an address from someone else's block gets a /32 of its own. Only
// next hops on the uplink's subnet are used.
//
// With rebuild, or after a change of nodes, pools, block owners or a snapshot, it derives
// everything again (s.Changed nil). Otherwise it changes the last state by the workload records
// and BGP routes that changed since, and s.Changed names what it changed: an event costs in
// proportion to what it changed, not to the cluster.
func (v *view) state(uplink string, rebuild bool) dataplane.State {
	if !rebuild && !v.dirty && v.der != nil && v.der.st.Uplink == uplink {
		ch := &dataplane.Changed{Workloads: map[string]bool{}, Remote: map[netip.Prefix]bool{}}
		if v.der.update(v, v.dirtyWorkloads, ch) {
			// After update: a borrowed /32 it added or removed is one the import policy
			// refuses or takes again.
			if v.bgp && (v.dirtyRemote || v.der.lentChanged) {
				v.der.setLearned(v, ch)
			}
			v.der.lentChanged = false
			v.clean(false)
			s := v.der.st
			s.Changed = ch
			return s
		}
		// Two records claim one address, or one interface: the full derivation sorts it out.
	}
	v.der = v.derive(uplink)
	v.clean(true)
	return v.der.st
}

// clean records that the derived state is up to date, and which workload records the pass
// that takes it looks at (all of them after a full derivation).
func (v *view) clean(all bool) {
	v.passAll = all
	v.passKeys = v.passKeys[:0]
	for key := range v.dirtyWorkloads {
		v.passKeys = append(v.passKeys, key)
	}
	v.dirty, v.dirtyRemote = false, false
	clear(v.dirtyWorkloads)
}

// reachable is the next hop of node: its address, when on this node's uplink subnet.
func (v *view) reachable(node string) (netip.Addr, bool) {
	self := v.nodes[v.node].AddressV4
	n, ok := v.nodes[node]
	if !ok || node == v.node || !self.IsValid() {
		return netip.Addr{}, false
	}
	a := n.AddressV4.Addr()
	return a, self.Masked().Contains(a) && a != self.Addr()
}

// derive derives the desired state from the whole view.
func (v *view) derive(uplink string) *derived {
	d := &derived{claims: map[netip.Addr]int{}, claimOf: map[string]netip.Addr{}, owner: map[netip.Addr]string{}, ifs: map[string]int{}, ifOf: map[string]string{}, local: map[string]string{},
		remote: map[string]netip.Prefix{}, lent: map[string]netip.Prefix{}, byCIDR: make(map[netip.Prefix]datastore.Block, len(v.blocks))}
	s := &d.st
	s.Uplink = uplink
	s.Workloads, s.Remote = map[string]dataplane.Workload{}, map[netip.Prefix]dataplane.RemoteRoute{}
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
	for _, b := range v.blocks {
		d.byCIDR[b.CIDR] = b
		if !slices.Contains(d.bits, b.CIDR.Bits()) {
			d.bits = append(d.bits, b.CIDR.Bits())
		}
		switch owner := b.Node(); {
		case owner == v.node:
			s.Blocks = append(s.Blocks, b.CIDR)
		case v.bgp:
		default:
			if nh, ok := v.reachable(owner); ok {
				s.Remote[b.CIDR] = dataplane.RemoteRoute{Prefix: b.CIDR, NextHop: nh}
			}
		}
	}
	slices.SortFunc(s.Blocks, netip.Prefix.Compare)
	for _, key := range sortedKeys(v.workloads) {
		w := v.workloads[key]
		ip, ok := w.Addr()
		if !ok {
			continue
		}
		d.claimOf[key] = ip
		if d.claims[ip]++; d.claims[ip] > 1 {
			continue // two records claim one address: the first (by key) wins until IPAM sorts it out
		}
		d.owner[ip] = key
		d.add(v, key, w, nil)
	}
	if v.bgp {
		// After the workloads: the import policy refuses the /32s they borrowed.
		for _, r := range v.withRetained(v.learnedRoutes(d)) {
			s.Remote[r.Prefix] = r
		}
	}
	d.lentChanged = false
	return d
}

// localAt is the interface of the local workload at address a.
func (v *view) localAt(a netip.Addr) (string, bool) {
	if v.der == nil {
		return "", false
	}
	name, ok := v.der.local[v.der.owner[a]]
	return name, ok
}

func (d *derived) blockOf(ip netip.Addr) (datastore.Block, bool) {
	for _, bits := range d.bits {
		if b, ok := d.byCIDR[netip.PrefixFrom(ip, bits).Masked()]; ok {
			return b, true
		}
	}
	return datastore.Block{}, false
}

// add puts in what record key, the only one claiming its address, contributes: the workload of a
// local record, the /32 of another node's record whose address is borrowed. It reports false
// when another record has the interface or the route already, which only derive sorts out.
func (d *derived) add(v *view, key string, w datastore.Workload, ch *dataplane.Changed) bool {
	ip, _ := w.Addr() // callers skip records without one
	b, inBlock := d.blockOf(ip)
	if w.Node == v.node {
		mac, err := net.ParseMAC(w.MAC)
		if err != nil {
			return true // validated on read; cannot happen
		}
		d.ifOf[key] = w.IfName
		if d.ifs[w.IfName]++; d.ifs[w.IfName] > 1 {
			return ch == nil // another record's interface: the first by key keeps it
		}
		d.st.Workloads[w.IfName] = dataplane.Workload{IfName: w.IfName, IPv4: ip, MAC: mac}
		d.local[key] = w.IfName
		if ch != nil {
			ch.Workloads[w.IfName] = true
		}
		if inBlock && b.Node() != v.node {
			d.lent[key] = netip.PrefixFrom(ip, 32)
			d.lentChanged = true
		}
		return true
	}
	if !inBlock || b.Node() == w.Node || v.bgp {
		return true
	}
	nh, ok := v.reachable(w.Node)
	if !ok {
		return true
	}
	p := netip.PrefixFrom(ip, 32)
	if _, taken := d.st.Remote[p]; taken {
		return ch == nil
	}
	d.st.Remote[p] = dataplane.RemoteRoute{Prefix: p, NextHop: nh, Workload: true}
	d.remote[key] = p
	if ch != nil {
		ch.Remote[p] = true
	}
	return true
}

// update changes d by the workload records keys, noting in ch what it changed. It reports false
// where only a full derivation knows the answer: an address or interface that more than one
// record claims.
func (d *derived) update(v *view, keys map[string]bool, ch *dataplane.Changed) bool {
	for key := range keys {
		oldIP, had := d.claimOf[key]
		w, ok := v.workloads[key]
		ip, hasIP := w.Addr()
		ok = ok && hasIP
		if had && d.claims[oldIP] > 1 || ok && d.claims[ip]-btoi(had && ip == oldIP) > 0 {
			return false
		}
		oldIf, hadIf := d.ifOf[key]
		if hadIf && d.ifs[oldIf] > 1 || ok && w.Node == v.node && d.ifs[w.IfName]-btoi(hadIf && oldIf == w.IfName) > 0 {
			return false
		}
		if had {
			if name, ok := d.local[key]; ok {
				delete(d.st.Workloads, name)
				ch.Workloads[name] = true
			}
			if p, ok := d.remote[key]; ok {
				delete(d.st.Remote, p)
				ch.Remote[p] = true
			}
			if hadIf {
				delete(d.ifs, oldIf)
				delete(d.ifOf, key)
			}
			if _, ok := d.lent[key]; ok {
				d.lentChanged = true
			}
			delete(d.local, key)
			delete(d.remote, key)
			delete(d.lent, key)
			delete(d.claimOf, key)
			delete(d.claims, oldIP)
			delete(d.owner, oldIP)
		}
		if ok {
			d.claimOf[key] = ip
			d.claims[ip] = 1
			d.owner[ip] = key
			if !d.add(v, key, w, ch) {
				return false
			}
		}
	}
	return true
}

// setLearned replaces the remote routes by what BGP delivered (and what is retained), noting in
// ch the prefixes that came, went or changed.
func (d *derived) setLearned(v *view, ch *dataplane.Changed) {
	next := make(map[netip.Prefix]dataplane.RemoteRoute, len(d.st.Remote))
	for _, r := range v.withRetained(v.learnedRoutes(d)) {
		next[r.Prefix] = r
	}
	for p, r := range next {
		if cur, ok := d.st.Remote[p]; !ok || cur != r {
			ch.Remote[p] = true
		}
	}
	for p := range d.st.Remote {
		if _, ok := next[p]; !ok {
			ch.Remote[p] = true
		}
	}
	d.st.Remote = next
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
	kindTiers     = "tiers"
	kindProfiles  = "profiles"

	bgpConfigName = "bgp" // the name of the config/bgp singleton's only item
)

// policyKinds are the kinds policy is made of, by their singular names.
var policyKinds = map[string]string{kindPolicies: "policy", kindTiers: "tier", kindProfiles: "profile"}

func (w *watchers) start(ctx context.Context, withBGP bool) {
	if withBGP {
		go follow(ctx, w, kindBGPConfig, w.ds.BGPConfig().Store(), func(v *view) map[string]datastore.BGPConfig { return v.bgpConfig })
		go follow(ctx, w, kindBGPPeers, w.ds.BGPPeers(), func(v *view) map[string]datastore.BGPPeer { return v.bgpPeers })
	}
	go follow(ctx, w, kindWorkloads, w.ds.AllWorkloads(), func(v *view) map[string]datastore.Workload { return v.workloads })
	// An address given out or freed changes a block's record, not what the host routes: only a
	// block that comes, goes or changes owner does.
	go follow(ctx, w, kindBlocks, w.ds.Blocks(), func(v *view) map[string]datastore.Block { return v.blocks },
		withSameRoutes(sameBlockRoutes))
	go follow(ctx, w, kindNodes, w.ds.Nodes(), func(v *view) map[string]datastore.Node { return v.nodes })
	go follow(ctx, w, kindPools, w.ds.Pools(), func(v *view) map[string]datastore.Pool { return v.pools })
	go follow(ctx, w, kindPolicies, w.ds.Policies(), func(v *view) map[string]datastore.Policy { return v.policies })
	go follow(ctx, w, kindTiers, w.ds.Tiers(), func(v *view) map[string]datastore.Tier { return v.tiers })
	go follow(ctx, w, kindProfiles, w.ds.Profiles(), func(v *view) map[string]datastore.Profile { return v.profiles })
}

// sameBlockRoutes says that block b routes as a did: the same CIDR and owner (its allocations
// may differ).
func sameBlockRoutes(a, b datastore.Block) bool { return a.CIDR == b.CIDR && a.Node() == b.Node() }

// followOption tunes follow for a kind.
type followOption[T any] func(*followConfig[T])

type followConfig[T any] struct {
	// sameRoutes says that a put of new over old leaves the derived state of the host as it is.
	sameRoutes func(old, new T) bool
}

func withSameRoutes[T any](f func(old, new T) bool) followOption[T] {
	return func(c *followConfig[T]) { c.sameRoutes = f }
}

// synced reports whether every kind delivered its first snapshot: reconciling earlier would
// remove what the missing kinds still want.
func (w *watchers) synced(v *view) bool {
	base := v.synced[kindWorkloads] && v.synced[kindBlocks] && v.synced[kindNodes] && v.synced[kindPools] &&
		v.synced[kindPolicies] && v.synced[kindTiers] && v.synced[kindProfiles]
	return base && (!v.bgp || v.synced[kindBGPConfig] && v.synced[kindBGPPeers])
}

func follow[T any](ctx context.Context, w *watchers, kind string, store datastore.Store[T], cache func(*view) map[string]T,
	opts ...followOption[T]) {
	var cfg followConfig[T]
	for _, o := range opts {
		o(&cfg)
	}
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
				m := cache(v)
				old, had := m[it.Name]
				m[it.Name] = it.Value
				if revs := v.revisions[kind]; revs != nil {
					revs[it.Name] = it.ModRevision
				}
				v.touch(kind, it.Name, !had || cfg.sameRoutes == nil || !cfg.sameRoutes(old, it.Value))
			}
		case datastore.EventDelete:
			name := ev.Name
			if what, ok := policyKinds[kind]; ok && ev.Malformed {
				// A policy, tier or profile made malformed by hand keeps its last good version in
				// force: dropping it would open (or close) everything it governed.
				w.log.Error("malformed "+what+"; its previous version stays in force", what, name)
				return
			}
			u = func(v *view) {
				delete(cache(v), name)
				delete(v.revisions[kind], name)
				v.touch(kind, name, true)
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
