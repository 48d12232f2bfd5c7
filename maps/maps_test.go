package maps_test

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

func loadSet(tb testing.TB) (*maps.Set, string) {
	tb.Helper()
	root := netns.BPFFS(tb)
	d, err := loader.Load(loader.WithRoot(root))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return maps.FromDataplane(d), root
}

func TestRoutes(t *testing.T) {
	set, _ := loadSet(t)
	routes := []maps.Route{
		{Prefix: netip.MustParsePrefix("198.19.0.0/26"), Flags: maps.LocalBlock | maps.InPool},
		{Prefix: netip.MustParsePrefix("198.19.0.1/32"), Flags: maps.LocalWorkload | maps.InPool, Ifindex: 11},
		{Prefix: netip.MustParsePrefix("198.19.0.64/26"), Flags: maps.RemoteBlock | maps.InPool, Ifindex: 2,
			NextHop: netip.MustParseAddr("198.18.0.2")},
		{Prefix: netip.MustParsePrefix("198.19.0.70/32"), Flags: maps.RemoteWorkload | maps.InPool, Ifindex: 2,
			NextHop: netip.MustParseAddr("198.18.0.3")},
	}
	for _, r := range routes {
		if err := set.Routes.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := set.Routes.List()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, routes) {
		t.Fatalf("List() = %+v\nwant %+v", got, routes)
	}

	for _, tc := range []struct {
		addr string
		want maps.Route
	}{
		{"198.19.0.1", routes[1]},
		{"198.19.0.2", routes[0]},
		{"198.19.0.70", routes[3]},
		{"198.19.0.71", routes[2]},
	} {
		m, err := set.Routes.Match(netip.MustParseAddr(tc.addr))
		if err != nil || m != tc.want {
			t.Errorf("Match(%s) = %+v, %v; want %+v", tc.addr, m, err, tc.want)
		}
	}
	if _, err := set.Routes.Match(netip.MustParseAddr("198.18.5.5")); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("Match outside every prefix: %v, want ErrNotFound", err)
	}

	if err := set.Routes.Delete(routes[1].Prefix); err != nil {
		t.Fatal(err)
	}
	if _, err := set.Routes.Get(routes[1].Prefix); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := set.Routes.Delete(routes[1].Prefix); err != nil {
		t.Errorf("deleting a missing route: %v, want nil", err)
	}
	if r, err := set.Routes.Get(routes[2].Prefix); err != nil || r != routes[2] {
		t.Errorf("Get(%v) = %+v, %v", routes[2].Prefix, r, err)
	}
}

// PutAll and DeleteAll write and remove many routes in batches: more than one batch, a delete
// list with missing routes among them, and an invalid route refused before anything is written.
func TestRoutesBatch(t *testing.T) {
	set, _ := loadSet(t)
	var routes []maps.Route
	for i := range 10000 {
		routes = append(routes, maps.Route{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i / 256), byte(i)}), 32),
			Flags: maps.RemoteWorkload | maps.InPool, Ifindex: 2, NextHop: netip.AddrFrom4([4]byte{198, 18, 0, byte(i % 7)})})
	}
	if err := set.Routes.PutAll(routes); err != nil {
		t.Fatal(err)
	}
	got, err := set.Routes.List()
	if err != nil || !slices.Equal(got, routes) {
		t.Fatalf("List after PutAll: %d routes, %v; want %d", len(got), err, len(routes))
	}
	if r, err := set.Routes.Longest(routes[4321].Prefix); err != nil || r.NextHop != routes[4321].NextHop || r.Kind() != maps.RemoteWorkload {
		t.Errorf("Longest(%v) = %+v, %v", routes[4321].Prefix, r, err)
	}
	// Every other route, and 100 that were never there.
	var del []netip.Prefix
	for i := 0; i < len(routes); i += 2 {
		del = append(del, routes[i].Prefix)
	}
	for i := range 100 {
		del = append(del, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 200, byte(i)}), 32))
	}
	slices.Reverse(del[len(del)/3:]) // missing ones in the middle of a batch too
	if err := set.Routes.DeleteAll(del); err != nil {
		t.Fatal(err)
	}
	all, err := set.Routes.All()
	if err != nil || len(all) != len(routes)/2 {
		t.Fatalf("All after DeleteAll: %d routes, %v; want %d", len(all), err, len(routes)/2)
	}
	for _, r := range all {
		if i := slices.Index(routes, r); i < 0 || i%2 == 0 {
			t.Fatalf("route %+v should not be left", r)
		}
	}
	bad := []maps.Route{{Prefix: netip.MustParsePrefix("198.18.100.0/24"), Flags: maps.RemoteBlock | maps.InPool, Ifindex: 2},
		{Prefix: netip.MustParsePrefix("198.18.101.1/24"), Flags: maps.RemoteBlock, Ifindex: 2}}
	if err := set.Routes.PutAll(bad); err == nil {
		t.Error("PutAll took a prefix with host bits set")
	}
	if _, err := set.Routes.Get(bad[0].Prefix); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("PutAll wrote part of a refused list: %v", err)
	}
}

func TestRouteValidation(t *testing.T) {
	set, _ := loadSet(t)
	for _, r := range []maps.Route{
		{},
		{Prefix: netip.MustParsePrefix("2001:db8::/64"), Flags: maps.RemoteBlock, Ifindex: 1},
		{Prefix: netip.MustParsePrefix("198.19.0.1/26"), Flags: maps.LocalBlock},
		{Prefix: netip.MustParsePrefix("198.19.0.0/26"), Flags: maps.InPool},
		{Prefix: netip.MustParsePrefix("198.19.0.0/26"), Flags: maps.LocalBlock | maps.RemoteBlock, Ifindex: 1},
		{Prefix: netip.MustParsePrefix("198.19.0.1/32"), Flags: maps.LocalWorkload},
		{Prefix: netip.MustParsePrefix("198.19.0.64/26"), Flags: maps.RemoteBlock, Ifindex: 2, NextHop: netip.MustParseAddr("2001:db8::1")},
		{Prefix: netip.MustParsePrefix("198.19.0.64/26"), Flags: maps.RemoteBlock | 1<<20, Ifindex: 2},
	} {
		if err := set.Routes.Put(r); err == nil {
			t.Errorf("Put(%+v) accepted an invalid route", r)
		}
	}
	if got, _ := set.Routes.List(); len(got) != 0 {
		t.Errorf("invalid routes reached the map: %+v", got)
	}
}

func TestEndpoints(t *testing.T) {
	set, _ := loadSet(t)
	mac, _ := net.ParseMAC("0a:58:c6:13:00:01")
	ep := maps.Endpoint{Ifindex: 42, IPv4: netip.MustParseAddr("198.19.0.1"), MAC: mac}
	if err := set.Endpoints.Put(ep); err != nil {
		t.Fatal(err)
	}
	got, err := set.Endpoints.Get(42)
	if err != nil || got.IPv4 != ep.IPv4 || got.MAC.String() != ep.MAC.String() || got.Ifindex != 42 {
		t.Fatalf("Get(42) = %+v, %v; want %+v", got, err, ep)
	}
	for _, bad := range []maps.Endpoint{
		{IPv4: ep.IPv4, MAC: mac},
		{Ifindex: 1, IPv4: netip.MustParseAddr("::1"), MAC: mac},
		{Ifindex: 1, IPv4: ep.IPv4, MAC: mac[:4]},
	} {
		if err := set.Endpoints.Put(bad); err == nil {
			t.Errorf("Put(%+v) accepted an invalid endpoint", bad)
		}
	}
	if err := set.Endpoints.Delete(42); err != nil {
		t.Fatal(err)
	}
	if _, err := set.Endpoints.Get(42); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if l, _ := set.Endpoints.List(); len(l) != 0 {
		t.Errorf("List after Delete = %+v", l)
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct {
		got, want string
	}{
		{maps.Reason(loader.MargayReasonREASON_FWD_LOCAL).String(), "FWD_LOCAL"},
		{maps.Reason(loader.MargayReasonREASON_DROP_SPOOFED).String(), "DROP_SPOOFED"},
		{maps.Reason(999).String(), "reason(999)"},
		{maps.HookFromWep.String(), "from_wep"},
		{maps.HookXDPFromNet.String(), "xdp_from_net"},
		{(maps.LocalWorkload | maps.InPool).String(), "LOCAL_WEP|IN_POOL"},
		{maps.RouteFlags(0).String(), "NONE"},
		{(maps.RemoteBlock | 1<<30).String(), "REMOTE_BLOCK|0x40000000"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	if !maps.Reason(loader.MargayReasonREASON_DROP_MALFORMED).Drop() || maps.Reason(loader.MargayReasonREASON_PASS_TTL).Drop() {
		t.Error("Drop() misclassifies")
	}
	f, err := maps.ParseRouteFlags("remote_block|IN_POOL")
	if err != nil || f != maps.RemoteBlock|maps.InPool {
		t.Errorf("ParseRouteFlags = %v, %v", f, err)
	}
	if _, err := maps.ParseRouteFlags("LOCAL_WEP|BOGUS"); err == nil {
		t.Error("ParseRouteFlags accepted an unknown flag")
	}
	// Every reason has a name of its own.
	seen := map[string]bool{}
	for _, r := range maps.Reasons() {
		if seen[r.String()] || strings.HasPrefix(r.String(), "reason(") {
			t.Errorf("reason %d has name %q", r, r)
		}
		seen[r.String()] = true
	}
}

// Operators inspect the pinned maps with bpftool: BTF must give it the field names of every map,
// and every pinned map but the ring buffer (which has no key or value) must carry BTF.
// TestPolicyLog: a policy value's Log rule goes into the map's 24 bits and comes back from Lookup
// and List, beside the action and the deciding rule; a Log that does not fit is refused and leaves
// the entry as it was.
func TestPolicyLog(t *testing.T) {
	set, _ := loadSet(t)
	k80 := maps.PolicyKey{Program: 1, Identity: 2, Protocol: 6, Port: 80, PortBits: 16}
	kTable := maps.PolicyKey{Program: maps.SourcePortTable | 1, Port: 1024, PortBits: 6}
	want := map[maps.PolicyKey]maps.PolicyValue{
		k80:    {Action: maps.ActionAllow, Rule: 7, Log: 0x123456},
		kTable: {Action: maps.ActionDeny, Rule: 9, Log: maps.MaxPolicyLog},
		{Program: 1, Identity: 2, AllProtocols: true}: {Action: maps.ActionDeny, Log: 1},
		{Program: 1, Identity: 3, AllProtocols: true}: {Action: maps.ActionAllow, Rule: 4},
	}
	for k, v := range want {
		if err := set.Policy.Put(k, v); err != nil {
			t.Fatalf("Put(%v, %+v): %v", k, v, err)
		}
	}
	if got, err := set.Policy.Lookup(1, 2, 6, 80); err != nil || got != want[k80] {
		t.Errorf("Lookup(1, 2, tcp, 80) = %+v, %v; want %+v", got, err, want[k80])
	}
	if got, err := set.Policy.Lookup(maps.SourcePortTable|1, 0, 0, 1030); err != nil || got != want[kTable] {
		t.Errorf("Lookup(table, 1030) = %+v, %v; want %+v", got, err, want[kTable])
	}
	got, err := set.Policy.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("List() = %+v, want %+v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("List()[%v] = %+v, want %+v", k, got[k], v)
		}
	}

	for _, log := range []uint32{1 << 24, 1<<32 - 1} {
		err := set.Policy.Put(k80, maps.PolicyValue{Action: maps.ActionDeny, Rule: 8, Log: log})
		if err == nil || !strings.Contains(err.Error(), "24 bits") {
			t.Errorf("Put with Log %d: %v, want an error about its 24 bits", log, err)
		}
	}
	if v, err := set.Policy.Lookup(1, 2, 6, 80); err != nil || v != want[k80] {
		t.Errorf("after the refused Puts, Lookup = %+v, %v; want %+v unchanged", v, err, want[k80])
	}
}

func TestBPFToolShowsFieldNames(t *testing.T) {
	bpftool, err := exec.LookPath("bpftool")
	if err != nil {
		t.Fatal("bpftool is not installed: run make deps")
	}
	set, root := loadSet(t)
	if err := set.Routes.Put(maps.Route{Prefix: netip.MustParsePrefix("198.19.0.64/26"), Flags: maps.RemoteBlock,
		Ifindex: 2, NextHop: netip.MustParseAddr("198.18.0.2")}); err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("0a:58:c6:13:00:01")
	if err := set.Endpoints.Put(maps.Endpoint{Ifindex: 9, IPv4: netip.MustParseAddr("198.19.0.1"), MAC: mac}); err != nil {
		t.Fatal(err)
	}
	// One entry in each hash and trie; arrays always hold theirs.
	if err := set.Policy.Put(maps.PolicyKey{Program: 1, Identity: 2, Protocol: 6, Port: 80, PortBits: 16},
		maps.PolicyValue{Action: maps.ActionAllow, Rule: 7, Log: 5}); err != nil {
		t.Fatal(err)
	}
	if err := set.PolicyIPs.Put(netip.MustParsePrefix("0.0.0.0/0"), 2); err != nil {
		t.Fatal(err)
	}
	if _, err := set.Failsafe.Sync(map[maps.FailsafeKey]maps.FailsafeDirection{{Protocol: 6, Port: 22}: maps.FailsafeInbound}); err != nil {
		t.Fatal(err)
	}
	pinned := func(name string) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(filepath.Join(root, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	if err := pinned("conntrack").Put(&loader.MargayCtKey{AddrA: 1, AddrB: 2, Protocol: 6},
		&loader.MargayCtValue{State: loader.MargayCtStateCT_TCP_ESTABLISHED, Verdict: loader.MargayCtVerdictCT_VERDICT_ALLOW}); err != nil {
		t.Fatal(err)
	}
	if err := pinned("frags").Put(&loader.MargayFragKey{Saddr: 1, Daddr: 2, Id: 3, Protocol: 17},
		&loader.MargayFragValue{Sport: 4, Dport: 5}); err != nil {
		t.Fatal(err)
	}
	counter := loader.MargayCounterKey{Ifindex: 1, Hook: loader.MargayHookHOOK_FROM_WEP, Reason: loader.MargayReasonREASON_FWD_LOCAL}
	perCPU := make([]loader.MargayCounterValue, ebpf.MustPossibleCPU())
	if err := pinned("counters").Put(&counter, perCPU); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		m      string
		fields []string
		key    []string // for arrays: look this key up rather than dump them all
	}{
		{"routes", []string{"prefixlen", "addr", "flags", "ifindex", "next_hop", "ROUTE_REMOTE_BLOCK"}, nil},
		{"endpoints", []string{"ipv4", "mac", "ingress_program", "egress_program"}, nil},
		{"counters", []string{"ifindex", "hook", "reason", "HOOK_FROM_WEP", "REASON_FWD_LOCAL", "packets", "bytes"}, nil},
		{"conntrack", []string{"addr_a", "port_b", "protocol", "last_seen", "generation", "rule_ingress", "CT_TCP_ESTABLISHED", "CT_VERDICT_ALLOW"}, nil},
		{"policy", []string{"program", "identity", "protocol", "port", "rule", "POLICY_ALLOW", "log"}, nil},
		{"policy_ips", []string{"prefixlen", "addr"}, nil},
		{"failsafe", []string{"protocol", "port", "FAILSAFE_INBOUND"}, nil},
		{"frags", []string{"saddr", "daddr", "id", "sport", "dport"}, nil},
		{"rule_hits", []string{"packets", "bytes"}, []string{"0", "0", "0", "0"}},
		{"config", []string{"policy_generation", "ct_timeouts", "tcp_established", "udp", "flags"}, []string{"0", "0", "0", "0"}},
	} {
		args := []string{"-j", "map", "dump", "pinned", filepath.Join(root, tc.m)}
		if tc.key != nil {
			args = append([]string{"-j", "map", "lookup", "pinned", filepath.Join(root, tc.m), "key"}, tc.key...)
		}
		out, err := exec.Command(bpftool, args...).CombinedOutput()
		if tc.key != nil {
			out = append(append([]byte("["), out...), ']')
		}
		if err != nil {
			t.Fatalf("bpftool map dump %s: %v\n%s", tc.m, err, out)
		}
		var entries []map[string]json.RawMessage
		if err := json.Unmarshal(out, &entries); err != nil || len(entries) != 1 {
			t.Fatalf("bpftool output of %s: %v\n%s", tc.m, err, out)
		}
		if _, ok := entries[0]["formatted"]; !ok {
			t.Fatalf("bpftool shows %s without BTF formatting:\n%s", tc.m, out)
		}
		for _, f := range tc.fields {
			if !strings.Contains(string(entries[0]["formatted"]), `"`+f+`"`) {
				t.Errorf("bpftool dump of %s lacks %q:\n%s", tc.m, f, out)
			}
		}
	}

	files, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		if f.IsDir() {
			continue
		}
		out, err := exec.Command(bpftool, "-j", "map", "show", "pinned", filepath.Join(root, f.Name())).CombinedOutput()
		if err != nil {
			t.Fatalf("bpftool map show %s: %v\n%s", f.Name(), err, out)
		}
		var info struct {
			Type  string `json:"type"`
			BTFID int    `json:"btf_id"`
		}
		if err := json.Unmarshal(out, &info); err == nil && info.Type == "ringbuf" {
			continue // the kernel keeps no key or value types for a ring buffer; its records' are in the object's BTF
		}
		if err := json.Unmarshal(out, &info); err != nil || info.BTFID == 0 {
			t.Errorf("pinned map %s has no BTF: %s", f.Name(), out)
		}
		n++
	}
	if n < 12 {
		t.Errorf("only %d pinned maps under %s", n, root)
	}
}

func TestCounters(t *testing.T) {
	root := netns.BPFFS(t)
	d, err := loader.Load(loader.WithRoot(root))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	set := maps.FromDataplane(d)

	// to_wep counts a frame that is not IPv4 (all zeroes) under PASS_NOT_IPV4 on the interface it
	// runs on; without a context, test runs use lo (ifindex 1).
	frame := make([]byte, 64)
	for range 3 {
		if _, err := d.Programs().ToWep.Run(&ebpf.RunOptions{Data: frame}); err != nil {
			t.Fatal(err)
		}
	}
	deliver := maps.Reason(loader.MargayReasonREASON_PASS_NOT_IPV4)
	c, err := set.Counters.Get(1, maps.HookToWep, deliver)
	if err != nil || c.Packets != 3 || c.Bytes != 3*64 {
		t.Fatalf("Get = %+v, %v; want 3 packets, 192 bytes", c, err)
	}
	if l, err := set.Counters.List(); err != nil || len(l) != 1 || l[0] != c {
		t.Fatalf("List = %+v, %v", l, err)
	}
	if gone, err := set.Counters.Prune(func(ifindex uint32) bool { return ifindex != 1 }); err != nil || !slices.Equal(gone, []uint32{1}) {
		t.Fatalf("Prune = %v, %v", gone, err)
	}
	if l, _ := set.Counters.List(); len(l) != 0 {
		t.Errorf("counters left after Prune: %+v", l)
	}

	// margayctl and the agent open the same maps by their pins.
	pinned, err := maps.OpenPinned(root)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if _, err := d.Programs().ToWep.Run(&ebpf.RunOptions{Data: frame}); err != nil {
		t.Fatal(err)
	}
	if c, _ := pinned.Counters.Get(1, maps.HookToWep, deliver); c.Packets != 1 {
		t.Errorf("through the pin: %+v, want 1 packet", c)
	}
	if _, err := maps.OpenPinned(filepath.Join(root, "missing")); err == nil {
		t.Error("OpenPinned of an empty root succeeded")
	}
}

// Every write to the routes and endpoints maps bumps the route generation, which makes the
// routes conntrack entries keep stale; reads and deletes of what is not there do not. Wrappers
// made without the config map refuse to write.
func TestRouteGeneration(t *testing.T) {
	set, root := loadSet(t)
	gen := func() uint32 {
		t.Helper()
		g, err := set.Config.RouteGeneration()
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	mac, _ := net.ParseMAC("0a:58:c6:13:00:01")
	block, other := netip.MustParsePrefix("198.19.0.0/26"), netip.MustParsePrefix("198.19.0.64/26")
	ep := maps.Endpoint{Ifindex: 42, IPv4: netip.MustParseAddr("198.19.0.1"), MAC: mac}
	steps := []struct {
		name string
		do   func() error
		bump bool
	}{
		{"put a route", func() error { return set.Routes.Put(maps.Route{Prefix: block, Flags: maps.LocalBlock}) }, true},
		{"replace it", func() error { return set.Routes.Put(maps.Route{Prefix: block, Flags: maps.LocalBlock | maps.InPool}) }, true},
		{"read it", func() error { _, err := set.Routes.Get(block); return err }, false},
		{"delete it", func() error { return set.Routes.Delete(block) }, true},
		{"delete it again", func() error { return set.Routes.Delete(block) }, false},
		{"put an endpoint", func() error { return set.Endpoints.Put(ep) }, true},
		{"delete it", func() error { return set.Endpoints.Delete(42) }, true},
		{"delete it again", func() error { return set.Endpoints.Delete(42) }, false},
		{"bump the policy generation", func() error { _, err := set.Config.BumpGeneration(); return err }, false},
		{"put routes in a batch", func() error {
			return set.Routes.PutAll([]maps.Route{{Prefix: block, Flags: maps.LocalBlock}, {Prefix: other, Flags: maps.LocalBlock}})
		}, true},
		{"delete them in a batch", func() error { return set.Routes.DeleteAll([]netip.Prefix{block, other}) }, true},
		{"an empty batch", func() error { return set.Routes.PutAll(nil) }, false},
	}
	for _, s := range steps {
		before := gen()
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if after := gen(); (after != before) != s.bump || (s.bump && after != before+1) {
			t.Errorf("%s: route generation %d -> %d, want a bump: %v", s.name, before, after, s.bump)
		}
	}

	for _, name := range []string{"routes", "endpoints"} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(root, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		var err1, err2 error
		if name == "routes" {
			r := maps.NewRoutes(m, nil)
			err1, err2 = r.Put(maps.Route{Prefix: block, Flags: maps.LocalBlock}), r.Delete(block)
			if err := r.PutAll([]maps.Route{{Prefix: block, Flags: maps.LocalBlock}}); err == nil {
				t.Error("PutAll without the config map was not refused")
			}
			if err := r.DeleteAll([]netip.Prefix{block}); err == nil {
				t.Error("DeleteAll without the config map was not refused")
			}
		} else {
			e := maps.NewEndpoints(m, nil)
			err1, err2 = e.Put(ep), e.Delete(42)
		}
		if err1 == nil || err2 == nil {
			t.Errorf("%s without the config map: put %v, delete %v; want both refused", name, err1, err2)
		}
	}
	if _, err := set.Routes.Get(block); !errors.Is(err, maps.ErrNotFound) {
		t.Errorf("a refused put wrote the route: %v", err)
	}
}

// RestartRouteGeneration always moves the generation, whatever it was.
func TestRestartRouteGeneration(t *testing.T) {
	set, _ := loadSet(t)
	prev, err := set.Config.RouteGeneration()
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if err := set.Config.RestartRouteGeneration(); err != nil {
			t.Fatal(err)
		}
		g, err := set.Config.RouteGeneration()
		if err != nil {
			t.Fatal(err)
		}
		if g == prev {
			t.Fatalf("route generation stayed %d", g)
		}
		prev = g
	}
}
