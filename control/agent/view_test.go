package agent

import (
	"fmt"
	stdmaps "maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/margaynet/margay/control/bgp"
	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
)

// viewFixture is a three-node view, as the watchers fill it: vm100 (this node), vm101 and vm102
// on one segment, a pool, and a block of each node.
func viewFixture(withBGP bool) *view {
	v := newView("vm100", withBGP)
	for i, name := range []string{"vm100", "vm101", "vm102"} {
		v.nodes[name] = datastore.Node{Name: name, AddressV4: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(100 + i)}), 24)}
		cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 0, byte(64 * i)}), 26)
		v.blocks[cidr.String()] = datastore.Block{CIDR: cidr, Affinity: "host:" + name}
	}
	v.pools["p"] = datastore.Pool{CIDR: netip.MustParsePrefix("198.19.0.0/16")}
	return v
}

// put and del change the view as follow does for a datastore event.
func put[T any](v *view, kind string, m map[string]T, name string, val T, same func(a, b T) bool) {
	old, had := m[name]
	m[name] = val
	v.touch(kind, name, !had || same == nil || !same(old, val))
}

func del[T any](v *view, kind string, m map[string]T, name string) {
	delete(m, name)
	v.touch(kind, name, true)
}

// The desired state the view keeps up to date event by event is the one it derives from
// scratch, after every batch of random events: workloads that come, go, move, borrow addresses
// and clash over addresses and interfaces, blocks that change owner or only their allocations,
// BGP routes. Changed names every entry that differs from the last pass's, and most passes
// take the incremental path.
func TestStateIncremental(t *testing.T) {
	for _, withBGP := range []bool{false, true} {
		t.Run(fmt.Sprintf("bgp=%v", withBGP), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(18, 19))
			v := viewFixture(withBGP)
			nodes := []string{"vm100", "vm101", "vm102"}
			s := v.state("ens32", false)
			prevW, prevR := stdmaps.Clone(s.Workloads), stdmaps.Clone(s.Remote)
			incremental := 0
			const passes = 400
			for pass := range passes {
				for range 1 + rng.IntN(3) {
					switch r := rng.IntN(20); {
					case r < 12: // a workload put: 30 keys, 200 addresses; an interface of its own, or now and then another's
						n := rng.IntN(30)
						node := nodes[rng.IntN(3)]
						if rng.IntN(4) > 0 {
							node = "vm100"
						}
						key := fmt.Sprintf("%s/w%d", node, n)
						ip := netip.AddrFrom4([4]byte{198, 19, 0, byte(rng.IntN(200))})
						if rng.IntN(4) == 0 {
							ip = netip.AddrFrom4([4]byte{198, 19, 0, byte(64 + rng.IntN(16))}) // borrowed from vm101's block
						}
						ifname := fmt.Sprintf("cali%011x", n)
						if rng.IntN(10) == 0 {
							ifname = fmt.Sprintf("cali%011x", rng.IntN(30))
						}
						put(v, kindWorkloads, v.workloads, key, datastore.Workload{Version: 1, ID: fmt.Sprintf("w%d", n), Node: node,
							IfName: ifname, MAC: fmt.Sprintf("02:00:00:00:00:%02x", rng.IntN(256)),
							IPv4: []netip.Prefix{netip.PrefixFrom(ip, 32)}}, nil)
					case r < 16: // a workload deleted
						keys := slices.Sorted(stdmaps.Keys(v.workloads))
						if len(keys) > 0 {
							del(v, kindWorkloads, v.workloads, keys[rng.IntN(len(keys))])
						}
					case r < 18: // an address given out: the block's allocations change
						name := slices.Sorted(stdmaps.Keys(v.blocks))[rng.IntN(len(v.blocks))]
						b := v.blocks[name]
						b.Allocations = append(slices.Clone(b.Allocations), datastore.Allocation{Handle: fmt.Sprint(pass)})
						put(v, kindBlocks, v.blocks, name, b, sameBlockRoutes)
					case r < 19: // a block changes owner
						name := slices.Sorted(stdmaps.Keys(v.blocks))[rng.IntN(len(v.blocks))]
						b := v.blocks[name]
						b.Affinity = "host:" + nodes[rng.IntN(3)]
						put(v, kindBlocks, v.blocks, name, b, sameBlockRoutes)
					default: // BGP delivers a new table
						if withBGP {
							v.learned = nil
							for i := range 4 {
								if rng.IntN(2) == 0 {
									v.learned = append(v.learned, bgp.Route{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 1, byte(i)}), 32),
										NextHop: netip.AddrFrom4([4]byte{198, 18, 0, byte(101 + rng.IntN(2))})})
								}
							}
							// Mostly, /32s of the workloads' range too: one a local workload
							// borrowed, and advertises, is refused, and taken again once it goes.
							if rng.IntN(4) > 0 {
								for i := range 16 {
									v.learned = append(v.learned, bgp.Route{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 0, byte(64 + i)}), 32),
										NextHop: netip.MustParseAddr("198.18.0.101")})
								}
							}
							v.dirtyRemote = true
						}
					}
				}
				s := v.state("ens32", false)
				want := v.derive("ens32").st
				if !stdmaps.EqualFunc(s.Workloads, want.Workloads, sameWorkload) || !stdmaps.Equal(s.Remote, want.Remote) ||
					!slices.Equal(s.Hosts, want.Hosts) || !slices.Equal(s.Blocks, want.Blocks) || s.Self != want.Self {
					t.Fatalf("pass %d: the state kept up to date\n%+v\n%+v\ndiffers from the one derived again\n%+v\n%+v",
						pass, s.Workloads, s.Remote, want.Workloads, want.Remote)
				}
				if s.Changed != nil {
					incremental++
					for name, w := range s.Workloads {
						if old, ok := prevW[name]; (!ok || !sameWorkload(old, w)) && !s.Changed.Workloads[name] {
							t.Fatalf("pass %d: workload %s changed, Changed does not say so", pass, name)
						}
					}
					for name := range prevW {
						if _, ok := s.Workloads[name]; !ok && !s.Changed.Workloads[name] {
							t.Fatalf("pass %d: workload %s went, Changed does not say so", pass, name)
						}
					}
					for p, r := range s.Remote {
						if old, ok := prevR[p]; (!ok || old != r) && !s.Changed.Remote[p] {
							t.Fatalf("pass %d: remote route %v changed, Changed does not say so", pass, p)
						}
					}
					for p := range prevR {
						if _, ok := s.Remote[p]; !ok && !s.Changed.Remote[p] {
							t.Fatalf("pass %d: remote route %v went, Changed does not say so", pass, p)
						}
					}
				}
				prevW, prevR = stdmaps.Clone(s.Workloads), stdmaps.Clone(s.Remote)

				// What the node advertises: its blocks, and the /32 of each local workload whose
				// address is in another node's block.
				var wantAds []bgp.Advertisement
				for _, b := range v.blocks {
					if b.Node() == "vm100" {
						wantAds = append(wantAds, bgp.Advertisement{Prefix: b.CIDR})
					}
				}
				for _, w := range want.Workloads {
					for _, b := range v.blocks {
						if b.CIDR.Contains(w.IPv4) && b.Node() != "vm100" {
							wantAds = append(wantAds, bgp.Advertisement{Prefix: netip.PrefixFrom(w.IPv4, 32)})
						}
					}
				}
				slices.SortFunc(wantAds, func(a, b bgp.Advertisement) int { return a.Prefix.Compare(b.Prefix) })
				if got := v.advertisements(); !slices.Equal(got, wantAds) {
					t.Fatalf("pass %d: advertisements %v, want %v", pass, got, wantAds)
				}
			}
			if incremental < passes/2 {
				t.Errorf("%d of %d passes incremental", incremental, passes)
			}
			t.Logf("%d of %d passes incremental", incremental, passes)
		})
	}
}

func sameWorkload(a, b dataplane.Workload) bool {
	return a.IfName == b.IfName && a.IPv4 == b.IPv4 && slices.Equal(a.MAC, b.MAC) && a.IngressProgram == b.IngressProgram &&
		a.EgressProgram == b.EgressProgram
}

// A full pass derives everything again, and a structural change (a node, a pool, a block that
// changes owner) does too; an address given out in a block does not.
func TestStateRebuilds(t *testing.T) {
	v := viewFixture(false)
	v.state("ens32", false)
	if s := v.state("ens32", true); s.Changed != nil {
		t.Error("a full pass's state names changes")
	}
	b := v.blocks["198.19.0.64/26"]
	b.Allocations = []datastore.Allocation{{Handle: "h"}}
	put(v, kindBlocks, v.blocks, "198.19.0.64/26", b, sameBlockRoutes)
	if s := v.state("ens32", false); s.Changed == nil {
		t.Error("an address given out derived everything again")
	}
	b.Affinity = "host:vm102"
	put(v, kindBlocks, v.blocks, "198.19.0.64/26", b, sameBlockRoutes)
	s := v.state("ens32", false)
	if s.Changed != nil {
		t.Error("a block's new owner did not derive everything again")
	}
	if r := s.Remote[b.CIDR]; r.NextHop != netip.MustParseAddr("198.18.0.102") {
		t.Errorf("the block's route after the new owner: %+v", r)
	}
	put(v, kindNodes, v.nodes, "vm103", datastore.Node{Name: "vm103", AddressV4: netip.MustParsePrefix("198.18.0.103/24")}, nil)
	if s := v.state("ens32", false); s.Changed != nil || !slices.Contains(s.Hosts, netip.MustParseAddr("198.18.0.103")) {
		t.Errorf("a new node: changed %v, hosts %v", s.Changed, s.Hosts)
	}
}

// What the view derives for this node (vm100 on 198.18.0.100/24, blocks .0/26 of vm100, .64/26
// of vm101, .128/26 of vm102, a pool 198.19.0.0/16), case by case.
func TestStateTable(t *testing.T) {
	wl := func(node, id, ifname, ip string) datastore.Workload {
		return datastore.Workload{Version: 1, ID: id, Node: node, IfName: ifname, MAC: "02:00:00:00:00:01",
			IPv4: []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr(ip), 32)}}
	}
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	remote := func(p, nh string, workload bool) dataplane.RemoteRoute {
		return dataplane.RemoteRoute{Prefix: pfx(p), NextHop: addr(nh), Workload: workload}
	}
	others := []dataplane.RemoteRoute{remote("198.19.0.64/26", "198.18.0.101", false), remote("198.19.0.128/26", "198.18.0.102", false)}
	for _, tc := range []struct {
		name      string
		bgp       bool
		change    func(v *view)
		workloads map[string]netip.Addr // interface -> address
		remote    []dataplane.RemoteRoute
	}{{
		name:   "blocks of other nodes through them, none for our own",
		remote: others,
	}, {
		name: "a local workload, and another node's (covered by its block)",
		change: func(v *view) {
			v.workloads["vm100/a"] = wl("vm100", "a", "cali0000000000a", "198.19.0.5")
			v.workloads["vm101/b"] = wl("vm101", "b", "cali0000000000b", "198.19.0.70")
		},
		workloads: map[string]netip.Addr{"cali0000000000a": addr("198.19.0.5")},
		remote:    others,
	}, {
		name: "an address vm102 borrowed from vm101's block gets a /32 through vm102",
		change: func(v *view) {
			v.workloads["vm102/c"] = wl("vm102", "c", "cali0000000000c", "198.19.0.71")
		},
		remote: []dataplane.RemoteRoute{remote("198.19.0.64/26", "198.18.0.101", false), remote("198.19.0.71/32", "198.18.0.102", true),
			remote("198.19.0.128/26", "198.18.0.102", false)},
	}, {
		name: "a node off our uplink's subnet is not a next hop",
		change: func(v *view) {
			n := v.nodes["vm102"]
			n.AddressV4 = pfx("198.18.1.102/24")
			v.nodes["vm102"] = n
		},
		remote: []dataplane.RemoteRoute{remote("198.19.0.64/26", "198.18.0.101", false)},
	}, {
		name: "two records with one address: the first by key wins",
		change: func(v *view) {
			v.workloads["vm100/b"] = wl("vm100", "b", "cali0000000000b", "198.19.0.5")
			v.workloads["vm100/a"] = wl("vm100", "a", "cali0000000000a", "198.19.0.5")
		},
		workloads: map[string]netip.Addr{"cali0000000000a": addr("198.19.0.5")},
		remote:    others,
	}, {
		name: "two records with one interface: the first by key wins",
		change: func(v *view) {
			v.workloads["vm100/b"] = wl("vm100", "b", "cali0000000000a", "198.19.0.6")
			v.workloads["vm100/a"] = wl("vm100", "a", "cali0000000000a", "198.19.0.5")
		},
		workloads: map[string]netip.Addr{"cali0000000000a": addr("198.19.0.5")},
		remote:    others,
	}, {
		name: "BGP: routes from BGP only; our own block and next hops off the subnet are not used",
		bgp:  true,
		change: func(v *view) {
			v.workloads["vm102/c"] = wl("vm102", "c", "cali0000000000c", "198.19.0.71")
			v.learned = []bgp.Route{{Prefix: pfx("198.19.0.64/26"), NextHop: addr("198.18.0.101")},
				{Prefix: pfx("198.19.0.0/26"), NextHop: addr("198.18.0.101")},
				{Prefix: pfx("198.19.1.0/26"), NextHop: addr("198.18.7.1")},
				{Prefix: pfx("198.19.0.71/32"), NextHop: addr("198.18.0.102")}}
		},
		remote: []dataplane.RemoteRoute{remote("198.19.0.64/26", "198.18.0.101", false), remote("198.19.0.71/32", "198.18.0.102", true)},
	}, {
		name: "BGP: outside the pools only what the sending peer's Accept list names, exactly",
		bgp:  true,
		change: func(v *view) {
			v.bgpPeers["gw"] = datastore.BGPPeer{Name: "gw", PeerIP: addr("198.18.0.1"), ASN: 64513, Accept: []netip.Prefix{pfx("0.0.0.0/0")}}
			v.learned = []bgp.Route{{Prefix: pfx("0.0.0.0/0"), NextHop: addr("198.18.0.1"), Peer: addr("198.18.0.1")},
				{Prefix: pfx("10.0.0.0/8"), NextHop: addr("198.18.0.1"), Peer: addr("198.18.0.1")},
				{Prefix: pfx("198.20.0.0/26"), NextHop: addr("198.18.0.101"), Peer: addr("198.18.0.101")},
				{Prefix: pfx("198.19.0.64/26"), NextHop: addr("198.18.0.101"), Peer: addr("198.18.0.101")}}
		},
		remote: []dataplane.RemoteRoute{remote("0.0.0.0/0", "198.18.0.1", false), remote("198.19.0.64/26", "198.18.0.101", false)},
	}, {
		name: "BGP: a /32 this node borrowed and advertises is not taken from a peer",
		bgp:  true,
		change: func(v *view) {
			v.workloads["vm100/d"] = wl("vm100", "d", "cali0000000000d", "198.19.0.72")
			v.learned = []bgp.Route{{Prefix: pfx("198.19.0.64/26"), NextHop: addr("198.18.0.101")},
				{Prefix: pfx("198.19.0.72/32"), NextHop: addr("198.18.0.102")}}
		},
		workloads: map[string]netip.Addr{"cali0000000000d": addr("198.19.0.72")},
		remote:    []dataplane.RemoteRoute{remote("198.19.0.64/26", "198.18.0.101", false)},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			v := viewFixture(tc.bgp)
			if tc.change != nil {
				tc.change(v)
			}
			s := v.state("ens32", true)
			got := map[string]netip.Addr{}
			for name, w := range s.Workloads {
				got[name] = w.IPv4
			}
			if !stdmaps.Equal(got, tc.workloads) && (len(got) != 0 || len(tc.workloads) != 0) {
				t.Errorf("workloads %v, want %v", got, tc.workloads)
			}
			if want := dataplane.RemoteOf(tc.remote...); !stdmaps.Equal(s.Remote, want) {
				t.Errorf("remote routes %v, want %v", s.Remote, want)
			}
			if !slices.Equal(s.Blocks, []netip.Prefix{pfx("198.19.0.0/26")}) || s.Self != addr("198.18.0.100") ||
				!slices.Equal(s.Pools, []netip.Prefix{pfx("198.19.0.0/16")}) || len(s.Hosts) != 3 {
				t.Errorf("blocks %v, self %v, pools %v, hosts %v", s.Blocks, s.Self, s.Pools, s.Hosts)
			}
		})
	}
}
