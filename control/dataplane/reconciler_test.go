package dataplane

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

type testHost struct {
	ns   *netns.NS
	peer *netns.NS
	dp   *loader.Dataplane
	r    *Reconciler
	set  *maps.Set
}

func newTestHost(t *testing.T, opts ...Option) *testHost {
	t.Helper()
	h := &testHost{ns: netns.New(t, "mgyrc-"), peer: netns.New(t, "mgyrcp-")}
	netns.Veth(t, h.ns, "ens32", h.peer, "ens32")
	h.ns.AddAddr(t, "ens32", "198.18.0.1/24")
	dp, err := loader.Load(loader.WithRoot(netns.BPFFS(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	h.dp, h.set = dp, maps.FromDataplane(dp)
	h.do(t, func() (err error) { h.r, err = New(dp, opts...); return err })
	t.Cleanup(h.r.Close)
	return h
}

func (h *testHost) do(t *testing.T, fn func() error) {
	t.Helper()
	if err := h.ns.Do(fn); err != nil {
		t.Fatal(err)
	}
}

func (h *testHost) apply(t *testing.T, s State) Result {
	t.Helper()
	var res Result
	h.do(t, func() (err error) { res, err = h.r.Apply(s); return err })
	return res
}

// addWorkloadVeth creates the veth pair the CNI plugin would: cali… here, eth0 in a workload.
func (h *testHost) addWorkloadVeth(t *testing.T, cali string) net.HardwareAddr {
	t.Helper()
	w := netns.New(t, "mgyrcw-")
	_, eth0 := netns.Veth(t, h.ns, cali, w, "eth0")
	return eth0.Attrs().HardwareAddr
}

func (h *testHost) sysctl(t *testing.T, key string) string {
	t.Helper()
	var v string
	h.do(t, func() (err error) { v, err = hostconv.ReadSysctl(hostconv.SysctlRoot, key); return err })
	return v
}

func (h *testHost) kernelRoutes(t *testing.T) map[netip.Prefix]netlink.Route {
	t.Helper()
	rs, err := h.ns.Netlink().RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: hostconv.RouteProtocol},
		netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Prefix]netlink.Route{}
	for _, r := range rs {
		out[prefixOf(r.Dst)] = r
	}
	return out
}

func TestReconcile(t *testing.T) {
	h := newTestHost(t, WithXDP(true)) // the uplink is a veth: XDP only when asked for
	mac1 := h.addWorkloadVeth(t, "cali00000000001")
	mac2 := h.addWorkloadVeth(t, "cali00000000002")
	pool := netip.MustParsePrefix("198.19.0.0/16")
	s := State{
		Uplink: "ens32",
		Workloads: WorkloadsOf(
			Workload{IfName: "cali00000000001", IPv4: netip.MustParseAddr("198.19.0.1"), MAC: mac1},
			Workload{IfName: "cali00000000002", IPv4: netip.MustParseAddr("198.19.0.2"), MAC: mac2},
			Workload{IfName: "cali0000000000f", IPv4: netip.MustParseAddr("198.19.0.3"), MAC: mac2}, // veth not there yet
		),
		Blocks: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/26")},
		Remote: RemoteOf(
			RemoteRoute{Prefix: netip.MustParsePrefix("198.19.0.64/26"), NextHop: netip.MustParseAddr("198.18.0.2")},
			RemoteRoute{Prefix: netip.MustParsePrefix("198.19.0.10/32"), NextHop: netip.MustParseAddr("198.18.0.3"), Workload: true},
		),
		Pools: []netip.Prefix{pool},
	}

	res := h.apply(t, s)
	if res.Changes == 0 || !slices.Equal(res.Pending, []string{"cali0000000000f"}) {
		t.Fatalf("first apply: %+v", res)
	}
	check := func() {
		t.Helper()
		cali1 := uint32(h.ns.Link(t, "cali00000000001").Attrs().Index)
		uplink := uint32(h.ns.Link(t, "ens32").Attrs().Index)
		routes, err := h.set.Routes.List()
		if err != nil {
			t.Fatal(err)
		}
		want := []maps.Route{
			{Prefix: netip.MustParsePrefix("198.19.0.0/26"), Flags: maps.LocalBlock | maps.InPool},
			{Prefix: netip.MustParsePrefix("198.19.0.1/32"), Flags: maps.LocalWorkload | maps.InPool, Ifindex: cali1},
			{Prefix: netip.MustParsePrefix("198.19.0.2/32"), Flags: maps.LocalWorkload | maps.InPool,
				Ifindex: uint32(h.ns.Link(t, "cali00000000002").Attrs().Index)},
			{Prefix: netip.MustParsePrefix("198.19.0.10/32"), Flags: maps.RemoteWorkload | maps.InPool, Ifindex: uplink,
				NextHop: netip.MustParseAddr("198.18.0.3")},
			{Prefix: netip.MustParsePrefix("198.19.0.64/26"), Flags: maps.RemoteBlock | maps.InPool, Ifindex: uplink,
				NextHop: netip.MustParseAddr("198.18.0.2")},
		}
		if !slices.Equal(routes, want) {
			t.Errorf("routes map:\n got %+v\nwant %+v", routes, want)
		}
		ep, err := h.set.Endpoints.Get(cali1)
		if err != nil || ep.IPv4 != netip.MustParseAddr("198.19.0.1") || ep.MAC.String() != mac1.String() {
			t.Errorf("endpoint of cali1 = %+v, %v", ep, err)
		}
		kr := h.kernelRoutes(t)
		if len(kr) != 5 {
			t.Errorf("kernel routes of proto margay: %d, want 5: %+v", len(kr), kr)
		}
		if r := kr[netip.MustParsePrefix("198.19.0.1/32")]; r.LinkIndex != int(cali1) || r.Scope != netlink.SCOPE_LINK {
			t.Errorf("workload route: %+v", r)
		}
		if r := kr[netip.MustParsePrefix("198.19.0.0/26")]; r.Type != unix.RTN_BLACKHOLE {
			t.Errorf("block route is not a blackhole: %+v", r)
		}
		if r := kr[netip.MustParsePrefix("198.19.0.64/26")]; !r.Gw.Equal(net.ParseIP("198.18.0.2")) || r.LinkIndex != int(uplink) {
			t.Errorf("remote block route: %+v", r)
		}
		for _, kv := range [][2]string{
			{"ipv4/conf/cali00000000001/proxy_arp", "1"},
			{"ipv4/neigh/cali00000000001/proxy_delay", "0"},
			{"ipv4/conf/cali00000000001/forwarding", "1"},
			{"ipv4/ip_forward", "1"},
		} {
			if got := h.sysctl(t, kv[0]); got != kv[1] {
				t.Errorf("%s = %s, want %s", kv[0], got, kv[1])
			}
		}
		if got := h.ns.Link(t, "cali00000000001").Attrs().HardwareAddr.String(); got != "ee:ee:ee:ee:ee:ee" {
			t.Errorf("cali MAC %s", got)
		}
		for _, hk := range []struct {
			ifname string
			hook   loader.Hook
		}{{"cali00000000001", loader.HookFromWep}, {"cali00000000002", loader.HookToWep}, {"ens32", loader.HookFromNet}, {"ens32", loader.HookXDPFromNet}} {
			h.do(t, func() error {
				_, err := h.dp.Attached(hk.ifname, hk.hook)
				return err
			})
		}
		// from_net leaves the source checks to XDP only while XDP runs.
		if changed, err := h.set.Config.SetPrefilter(true); err != nil || changed {
			t.Errorf("the XDP prefilter flag was not set (%v)", err)
		}
	}
	check()

	if res := h.apply(t, s); res.Changes != 0 {
		t.Errorf("second apply changed %d things, want none", res.Changes)
	}

	// Hand-made damage and leftovers are repaired.
	nl := h.ns.Netlink()
	if err := nl.RouteDel(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("198.19.0.64/26")), Protocol: hostconv.RouteProtocol}); err != nil {
		t.Fatal(err)
	}
	stale := &netlink.Route{LinkIndex: h.ns.Link(t, "ens32").Attrs().Index, Dst: ipNet(netip.MustParsePrefix("198.19.9.0/26")),
		Gw: net.ParseIP("198.18.0.9"), Protocol: hostconv.RouteProtocol}
	if err := nl.RouteAdd(stale); err != nil {
		t.Fatal(err)
	}
	foreign := &netlink.Route{LinkIndex: h.ns.Link(t, "ens32").Attrs().Index, Dst: ipNet(netip.MustParsePrefix("198.19.8.0/26")),
		Gw: net.ParseIP("198.18.0.9"), Protocol: unix.RTPROT_STATIC}
	if err := nl.RouteAdd(foreign); err != nil {
		t.Fatal(err)
	}
	h.do(t, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/conf/cali00000000001/proxy_arp", []byte("0"), 0o644)
	})
	if err := h.set.Routes.Delete(netip.MustParsePrefix("198.19.0.1/32")); err != nil {
		t.Fatal(err)
	}
	if err := h.set.Routes.Put(maps.Route{Prefix: netip.MustParsePrefix("198.19.7.0/26"), Flags: maps.RemoteBlock, Ifindex: 1}); err != nil {
		t.Fatal(err)
	}
	if err := h.set.Endpoints.Put(maps.Endpoint{Ifindex: 4242, IPv4: netip.MustParseAddr("198.19.0.99"), MAC: mac1}); err != nil {
		t.Fatal(err)
	}
	h.do(t, func() error { return h.dp.Detach("cali00000000001", loader.HookFromWep) })

	if res := h.apply(t, s); res.Changes < 6 {
		t.Errorf("repair apply reported %d changes, want at least 6", res.Changes)
	}
	check()
	if _, err := h.set.Endpoints.Get(4242); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("stale endpoint survived: %v", err)
	}
	// Routes of other protocols are not ours to remove.
	if rs, _ := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: unix.RTPROT_STATIC}, netlink.RT_FILTER_PROTOCOL); len(rs) != 1 {
		t.Errorf("a static route was touched: %+v", rs)
	}

	// A removed workload loses its programs, routes and endpoint.
	cali2 := uint32(h.ns.Link(t, "cali00000000002").Attrs().Index)
	delete(s.Workloads, "cali00000000002")
	h.apply(t, s)
	if _, err := h.set.Routes.Get(netip.MustParsePrefix("198.19.0.2/32")); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("route of the removed workload survived: %v", err)
	}
	if _, err := h.set.Endpoints.Get(cali2); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("endpoint of the removed workload survived: %v", err)
	}
	if _, ok := h.kernelRoutes(t)[netip.MustParsePrefix("198.19.0.2/32")]; ok {
		t.Error("kernel route of the removed workload survived")
	}
	h.do(t, func() error {
		if _, err := h.dp.Attached("cali00000000002", loader.HookFromWep); !errors.Is(err, loader.ErrNotAttached) {
			t.Errorf("from_wep still on the removed workload's veth: %v", err)
		}
		return nil
	})
}

func TestValidateState(t *testing.T) {
	mac := net.HardwareAddr{0, 1, 2, 3, 4, 5}
	for _, s := range []State{
		{},
		{Uplink: "ens32", Workloads: WorkloadsOf(Workload{IfName: "eth0", IPv4: netip.MustParseAddr("198.19.0.1"), MAC: mac})},
		{Uplink: "ens32", Workloads: WorkloadsOf(Workload{IfName: "cali00000000001", IPv4: netip.MustParseAddr("::1"), MAC: mac})},
		{Uplink: "ens32", Workloads: WorkloadsOf(Workload{IfName: "cali00000000001", IPv4: netip.MustParseAddr("198.19.0.1")})},
		{Uplink: "ens32", Workloads: WorkloadsOf(
			Workload{IfName: "cali00000000001", IPv4: netip.MustParseAddr("198.19.0.1"), MAC: mac},
			Workload{IfName: "cali00000000002", IPv4: netip.MustParseAddr("198.19.0.1"), MAC: mac})},
		{Uplink: "ens32", Workloads: map[string]Workload{
			"cali00000000002": {IfName: "cali00000000001", IPv4: netip.MustParseAddr("198.19.0.1"), MAC: mac}}},
		{Uplink: "ens32", Blocks: []netip.Prefix{netip.MustParsePrefix("198.19.0.1/26")}},
		{Uplink: "ens32", Remote: RemoteOf(RemoteRoute{Prefix: netip.MustParsePrefix("198.19.0.64/26")})},
		{Uplink: "ens32", Remote: map[netip.Prefix]RemoteRoute{netip.MustParsePrefix("198.19.0.128/26"): {
			Prefix: netip.MustParsePrefix("198.19.0.64/26"), NextHop: netip.MustParseAddr("198.18.0.2")}}},
	} {
		if err := s.Validate(); err == nil {
			t.Errorf("Validate accepted %+v", s)
		}
	}
}

// Update applies just the difference to the last pass, with the same result as a full Apply.
func TestUpdate(t *testing.T) {
	h := newTestHost(t)
	mac1 := h.addWorkloadVeth(t, "cali00000000001")
	mac2 := h.addWorkloadVeth(t, "cali00000000002")
	w1 := Workload{IfName: "cali00000000001", IPv4: netip.MustParseAddr("198.19.0.1"), MAC: mac1}
	w2 := Workload{IfName: "cali00000000002", IPv4: netip.MustParseAddr("198.19.0.2"), MAC: mac2}
	base := State{Uplink: "ens32", Workloads: WorkloadsOf(w1), Blocks: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/26")},
		Remote: RemoteOf(RemoteRoute{Prefix: netip.MustParsePrefix("198.19.0.64/26"), NextHop: netip.MustParseAddr("198.18.0.2")})}

	update := func(s State) Result {
		t.Helper()
		var res Result
		h.do(t, func() (err error) { res, err = h.r.Update(s); return err })
		return res
	}
	// Without a baseline Update is a full Apply.
	if res := update(base); res.Changes == 0 {
		t.Fatal("first Update did nothing")
	}
	if res := update(base); res.Changes != 0 {
		t.Errorf("Update without change made %d changes", res.Changes)
	}

	more := base
	more.Workloads = WorkloadsOf(w1, w2)
	more.Remote = nil
	if res := update(more); res.Changes == 0 {
		t.Fatal("Update with a new workload did nothing")
	}
	// The result is what a full pass wants: a full Apply finds nothing to do.
	if res := h.apply(t, more); res.Changes != 0 {
		t.Errorf("Apply after Update made %d changes: Update left the host off", res.Changes)
	}
	cali2 := uint32(h.ns.Link(t, "cali00000000002").Attrs().Index)
	if ep, err := h.set.Endpoints.Get(cali2); err != nil || ep.IPv4 != w2.IPv4 {
		t.Errorf("endpoint of the new workload: %+v, %v", ep, err)
	}
	if _, err := h.set.Routes.Get(netip.MustParsePrefix("198.19.0.64/26")); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("removed remote route still in the map: %v", err)
	}
	if _, ok := h.kernelRoutes(t)[netip.MustParsePrefix("198.19.0.64/26")]; ok {
		t.Error("removed remote route still in the kernel")
	}

	update(base)
	if _, err := h.set.Endpoints.Get(cali2); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("endpoint of the removed workload: %v", err)
	}
	h.do(t, func() error {
		if _, err := h.dp.Attached("cali00000000002", loader.HookFromWep); !errors.Is(err, loader.ErrNotAttached) {
			t.Errorf("from_wep still on the removed workload: %v", err)
		}
		return nil
	})
	if res := h.apply(t, base); res.Changes != 0 {
		t.Errorf("Apply after removing Update made %d changes", res.Changes)
	}
}

// On a veth uplink, XDP stays off unless asked for: veth would turn TSO off for it. from_net
// then makes the source checks itself (the prefilter flag is clear).
func TestXDPAutoSkipsVeth(t *testing.T) {
	for _, tc := range []struct {
		mode XDPMode
		want bool
	}{{XDPAuto, false}, {XDPOn, true}, {XDPOff, false}} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			h := newTestHost(t, WithXDPMode(tc.mode))
			h.apply(t, State{Uplink: "ens32"})
			var err error
			h.do(t, func() error { _, err = h.dp.Attached("ens32", loader.HookXDPFromNet); return nil })
			if got := err == nil; got != tc.want {
				t.Errorf("XDP attached: %v (%v), want %v", got, err, tc.want)
			}
			if changed, err := h.set.Config.SetPrefilter(tc.want); err != nil || changed {
				t.Errorf("the prefilter flag is not %v (%v)", tc.want, err)
			}
		})
	}
	if m, err := ParseXDPMode("true"); err != nil || m != XDPOn {
		t.Errorf("ParseXDPMode(true) = %v, %v", m, err)
	}
	if _, err := ParseXDPMode("sometimes"); err == nil {
		t.Error("ParseXDPMode accepted sometimes")
	}
}

// Update spells out the policy entries only when the policy comes from another compilation than
// the last pass's: passes for other changes (routes, say) leave the policy maps alone.
func TestUpdateSamePolicy(t *testing.T) {
	h := newTestHost(t)
	calls := 0
	entries := func(map[uint32]bool, map[uint32]bool) map[maps.PolicyKey]maps.PolicyValue {
		calls++
		return map[maps.PolicyKey]maps.PolicyValue{{Program: 1, Identity: 1, AllProtocols: true}: {Action: maps.ActionAllow, Rule: 1}}
	}
	pol := Policy{Programs: map[uint32]bool{1: true}, Identities: map[uint32]bool{1: true}, Tables: EntriesFunc(entries), Compiled: 1}
	base := State{Uplink: "ens32", Blocks: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/26")}, Policy: pol}
	update := func(s State) {
		t.Helper()
		h.do(t, func() error { _, err := h.r.Update(s); return err })
	}
	update(base) // a full pass
	before := calls
	routed := base
	routed.Remote = RemoteOf(RemoteRoute{Prefix: netip.MustParsePrefix("198.19.0.64/26"), NextHop: netip.MustParseAddr("198.18.0.2")})
	update(routed)
	if calls != before {
		t.Errorf("Update with the same compilation spelled out the entries %d times", calls-before)
	}
	if _, err := h.set.Routes.Get(netip.MustParsePrefix("198.19.0.64/26")); err != nil {
		t.Errorf("the route of that Update: %v", err)
	}
	recompiled := routed
	recompiled.Policy.Compiled = 2
	update(recompiled)
	if calls == before {
		t.Error("Update with a new compilation did not spell out the entries")
	}
	if res := h.apply(t, recompiled); res.Changes != 0 {
		t.Errorf("Apply after the Updates made %d changes", res.Changes)
	}
}

// Update with Changed looks at the workloads and remote routes it names (and the pending ones)
// only, and leaves the host as a full Apply wants it, through additions, removals, new programs,
// an address swap, an interface that appears and a changed frame.
func TestUpdateChanged(t *testing.T) {
	h := newTestHost(t)
	ws := map[string]Workload{}
	for i, name := range []string{"cali00000000001", "cali00000000002", "cali00000000003"} {
		ws[name] = Workload{IfName: name, IPv4: netip.AddrFrom4([4]byte{198, 19, 0, byte(i + 1)}), MAC: h.addWorkloadVeth(t, name)}
	}
	w4 := Workload{IfName: "cali00000000004", IPv4: netip.MustParseAddr("198.19.0.4"), MAC: net.HardwareAddr{2, 0, 0, 0, 0, 4}}
	r1 := RemoteRoute{Prefix: netip.MustParsePrefix("198.19.0.64/26"), NextHop: netip.MustParseAddr("198.18.0.2")}
	r2 := RemoteRoute{Prefix: netip.MustParsePrefix("198.19.1.7/32"), NextHop: netip.MustParseAddr("198.18.0.3"), Workload: true}
	s := State{Uplink: "ens32", Workloads: WorkloadsOf(ws["cali00000000001"], ws["cali00000000002"]), Remote: RemoteOf(r1, r2),
		Blocks: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/26")}, Pools: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/16")},
		Hosts: []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")}, Self: netip.MustParseAddr("198.18.0.1")}
	update := func(what string, changed Changed) Result {
		t.Helper()
		s.Changed = &changed
		var res Result
		if err := h.ns.Do(func() (err error) { res, err = h.r.Update(s); return err }); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return res
	}
	// check: what the Update left is what a full pass wants (Apply then makes no change).
	check := func(what string) {
		t.Helper()
		if res := h.apply(t, s); res.Changes != 0 {
			t.Fatalf("%s: Apply after the Update made %d changes", what, res.Changes)
		}
	}
	names := func(n ...string) map[string]bool {
		m := map[string]bool{}
		for _, name := range n {
			m[name] = true
		}
		return m
	}
	prefixes := func(p ...netip.Prefix) map[netip.Prefix]bool {
		m := map[netip.Prefix]bool{}
		for _, pfx := range p {
			m[pfx] = true
		}
		return m
	}
	update("first", Changed{}) // a full pass: no baseline yet
	check("first")

	s.Workloads["cali00000000003"] = ws["cali00000000003"]
	if res := update("add", Changed{Workloads: names("cali00000000003")}); res.Changes == 0 {
		t.Fatal("an added workload made no change")
	}
	check("add")

	delete(s.Workloads, "cali00000000001")
	update("remove", Changed{Workloads: names("cali00000000001")})
	check("remove")
	if _, err := h.set.Routes.Get(netip.MustParsePrefix("198.19.0.1/32")); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("the removed workload's route: %v", err)
	}

	w2 := s.Workloads["cali00000000002"]
	w2.IngressProgram, w2.EgressProgram = 7, 8
	s.Workloads[w2.IfName] = w2
	update("programs", Changed{Workloads: names(w2.IfName)})
	check("programs")

	r1.NextHop = netip.MustParseAddr("198.18.0.4")
	r3 := RemoteRoute{Prefix: netip.MustParsePrefix("198.19.0.128/26"), NextHop: netip.MustParseAddr("198.18.0.2")}
	s.Remote = RemoteOf(r1, r3)
	update("remote", Changed{Remote: prefixes(r1.Prefix, r2.Prefix, r3.Prefix)})
	check("remote")

	// A workload whose interface is not there yet stays pending, and is looked at in every
	// Update until it is.
	s.Workloads[w4.IfName] = w4
	if res := update("pending", Changed{Workloads: names(w4.IfName)}); !slices.Equal(res.Pending, []string{w4.IfName}) {
		t.Fatalf("pending: %v", res.Pending)
	}
	w4.MAC = h.addWorkloadVeth(t, w4.IfName)
	s.Workloads[w4.IfName] = w4
	if res := update("appeared", Changed{}); len(res.Pending) != 0 || res.Changes == 0 {
		t.Fatalf("the interface that appeared: %+v", res)
	}
	check("appeared")

	// Two workloads swap addresses in one pass.
	w2, w3 := s.Workloads["cali00000000002"], s.Workloads["cali00000000003"]
	w2.IPv4, w3.IPv4 = w3.IPv4, w2.IPv4
	s.Workloads[w2.IfName], s.Workloads[w3.IfName] = w2, w3
	update("swap", Changed{Workloads: names(w2.IfName, w3.IfName)})
	check("swap")

	// What Changed does not name is not looked at: the cost is in what changed.
	w3.IPv4 = netip.MustParseAddr("198.19.0.33")
	s.Workloads[w3.IfName] = w3
	if res := update("unnamed", Changed{}); res.Changes != 0 {
		t.Errorf("an Update naming nothing made %d changes", res.Changes)
	}
	// A changed frame (a new block) makes Update look at everything.
	s.Blocks = append(s.Blocks, netip.MustParsePrefix("198.19.0.192/26"))
	update("frame", Changed{})
	check("frame")
	if rt, err := h.set.Routes.Get(netip.MustParsePrefix("198.19.0.33/32")); err != nil || rt.Flags&maps.LocalWorkload == 0 {
		t.Errorf("the moved workload's route after a full look: %+v, %v", rt, err)
	}

	// A conflict Changed brings in is refused, and the next pass is a full one.
	w4.IPv4 = w2.IPv4
	s.Workloads[w4.IfName] = w4
	s.Changed = &Changed{Workloads: names(w4.IfName)}
	if err := h.ns.Do(func() error { _, err := h.r.Update(s); return err }); err == nil {
		t.Error("Update accepted two workloads with one address")
	}
}

// An interface that a CNI DEL removes while a pass runs, between the pass's look-up and its
// changes, is no error of the pass (else every pass beside a DEL would fail and make the next
// one full); the pass for the workload's removal then cleans up after it.
func TestInterfaceVanishes(t *testing.T) {
	h := newTestHost(t)
	ws := map[string]Workload{}
	for i, name := range []string{"cali00000000001", "cali00000000002", "cali00000000003"} {
		ws[name] = Workload{IfName: name, IPv4: netip.AddrFrom4([4]byte{198, 19, 0, byte(i + 1)}), MAC: h.addWorkloadVeth(t, name)}
	}
	remove := func(name string) {
		h.r.afterDerive = func() {
			h.r.afterDerive = nil
			if err := h.ns.Netlink().LinkDel(h.ns.Link(t, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	s := State{Uplink: "ens32", Workloads: WorkloadsOf(ws["cali00000000001"], ws["cali00000000002"]),
		Blocks: []netip.Prefix{netip.MustParsePrefix("198.19.0.0/26")}}
	remove("cali00000000002")
	if err := h.ns.Do(func() error { _, err := h.r.Apply(s); return err }); err != nil {
		t.Fatalf("Apply with an interface gone mid-pass: %v", err)
	}
	if h.r.last == nil {
		t.Fatal("the pass left no baseline: the next one would be full")
	}
	s.Workloads["cali00000000003"] = ws["cali00000000003"]
	s.Changed = &Changed{Workloads: map[string]bool{"cali00000000003": true}}
	remove("cali00000000003")
	if err := h.ns.Do(func() error { _, err := h.r.Update(s); return err }); err != nil {
		t.Fatalf("Update with an interface gone mid-pass: %v", err)
	}
	// The records go, and the passes for that leave nothing behind.
	delete(s.Workloads, "cali00000000002")
	delete(s.Workloads, "cali00000000003")
	s.Changed = &Changed{Workloads: map[string]bool{"cali00000000002": true, "cali00000000003": true}}
	if err := h.ns.Do(func() error { _, err := h.r.Update(s); return err }); err != nil {
		t.Fatal(err)
	}
	if res := h.apply(t, s); res.Changes != 0 {
		t.Errorf("Apply after the removals made %d changes", res.Changes)
	}
	if eps, err := h.set.Endpoints.List(); err != nil || len(eps) != 1 {
		t.Errorf("endpoints: %+v, %v", eps, err)
	}
	// A failure on an interface that is still there is an error, as before: here its sysctls
	// cannot be read.
	h.r.sysctlRoot = t.TempDir()
	if err := h.ns.Do(func() error { _, err := h.r.Apply(s); return err }); err == nil {
		t.Error("Apply that could not read an existing interface's sysctls reported no error")
	}
}
