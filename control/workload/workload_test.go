package workload_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

const node = "node-1"

// env is one test's world: an etcd with a pool, and a host namespace standing for the node.
type env struct {
	ds   *datastore.Client
	ipam *ipam.IPAM
	host *netns.NS
}

func newEnv(t *testing.T, pool string, blockSize int) *env {
	t.Helper()
	ds := datastoretest.New(t)
	ctx := t.Context()
	p := netip.MustParsePrefix(pool)
	if _, err := ds.Pools().Create(ctx, "test", datastore.Pool{Version: datastore.CurrentVersion, Name: "test", CIDR: p, BlockSize: blockSize}); err != nil {
		t.Fatal(err)
	}
	datastoretest.RegisterNodes(t, ds, node, "node-2")
	host := netns.New(t, "wlh")
	if err := host.Sysctl("ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	host.AddAddr(t, "lo", "198.18.0.1/32")
	return &env{ds: ds, ipam: ipam.New(ds, ipam.WithLogger(datastoretest.Logger(t))), host: host}
}

// add runs workload.Add with the calling thread in the host namespace, as the plugin runs.
func (e *env) add(spec workload.Spec) (workload.Result, error) {
	var res workload.Result
	err := e.host.Do(func() error {
		var err error
		res, err = workload.Add(context.Background(), e.ds, e.ipam, spec)
		return err
	})
	return res, err
}

func (e *env) del(spec workload.Spec) error {
	return e.host.Do(func() error { return workload.Del(context.Background(), e.ds, e.ipam, spec) })
}

func (e *env) check(spec workload.Spec) error {
	return e.host.Do(func() error { return workload.Check(context.Background(), e.ds, spec) })
}

// workloadNS creates a namespace as a runtime does: deleting it (the returned func, also run at
// cleanup) destroys it.
func workloadNS(t testing.TB) (string, func()) {
	t.Helper()
	return netns.Detached(t, "wlw")
}

func inNS(t *testing.T, path string, fn func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

func spec(id, nsPath string) workload.Spec {
	return workload.Spec{ID: id, Node: node, Netns: nsPath, ContainerID: "ctr-" + id, Labels: map[string]string{"app": "web"}}
}

func TestHostVethName(t *testing.T) {
	// echo -n default.nginx | sha1sum: c440f455693b69cdd48a37aa5ecd78038f50413d
	if got := workload.HostVethName(workload.KubernetesID("default", "nginx")); got != "calic440f455693" {
		t.Errorf("HostVethName(default.nginx) = %s, want calic440f455693", got)
	}
	if n := workload.HostVethName("x"); len(n) != 15 {
		t.Errorf("%s is %d bytes, want 15 (IFNAMSIZ-1)", n, len(n))
	}
}

// assertAbsent fails unless nothing of the workload is left: host veth, Margay routes, record,
// handle and allocations.
func (e *env) assertAbsent(t *testing.T, id string) {
	t.Helper()
	e.host.AssertLinkGone(t, workload.HostVethName(id))
	ctx := t.Context()
	if _, err := e.ds.Workloads(node).Get(ctx, id); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("record of %s: err %v, want ErrNotFound", id, err)
	}
	if _, err := e.ds.Handles().Get(ctx, id); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("handle %s: err %v, want ErrNotFound", id, err)
	}
	blocks, _, err := e.ds.Blocks().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range blocks {
		for _, a := range b.Value.Allocations {
			if a.Handle == id {
				t.Errorf("block %s still gives %s to %s", b.Value.CIDR, a.IP, id)
			}
		}
	}
}

func TestAddCheckDel(t *testing.T) {
	e := newEnv(t, "198.19.0.0/16", 26)
	path, _ := workloadNS(t)
	s := spec("web-1", path)
	s.Ports = []datastore.EndpointPort{{Name: "http", Protocol: 6, Port: 8080}, {Name: "dns", Protocol: 17, Port: 53}}
	res, err := e.add(s)
	if err != nil {
		t.Fatal(err)
	}
	if !netip.MustParsePrefix("198.19.0.0/16").Contains(res.IPv4.Addr()) || res.IPv4.Bits() != 32 {
		t.Errorf("address %s, want a /32 of 198.19.0.0/16", res.IPv4)
	}
	if res.HostVeth != workload.HostVethName("web-1") || res.IfName != "eth0" || res.MTU != 1500 || res.Gateway.String() != "169.254.1.1" {
		t.Errorf("result %+v", res)
	}

	// Host side.
	l := e.host.Link(t, res.HostVeth)
	if l.Attrs().HardwareAddr.String() != "ee:ee:ee:ee:ee:ee" || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host veth %s: MAC %s flags %v", res.HostVeth, l.Attrs().HardwareAddr, l.Attrs().Flags)
	}
	for key, want := range map[string]string{
		"ipv4/conf/" + res.HostVeth + "/proxy_arp":    "1",
		"ipv4/conf/" + res.HostVeth + "/forwarding":   "1",
		"ipv4/neigh/" + res.HostVeth + "/proxy_delay": "0",
	} {
		if got := hostSysctl(t, e.host, key); got != want {
			t.Errorf("sysctl %s = %s, want %s", key, got, want)
		}
	}
	routes, err := e.host.Netlink().RouteList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[0].Dst.String() != res.IPv4.String() || routes[0].Protocol != unix.RTPROT_BOOT || routes[0].Scope != netlink.SCOPE_LINK {
		t.Errorf("host routes via %s: %+v", res.HostVeth, routes)
	}

	// Workload side.
	out, err := runIn(path, "ip", "-4", "route", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0 scope link"} {
		if !strings.Contains(out, want) {
			t.Errorf("workload routes lack %q:\n%s", want, out)
		}
	}
	out, err = runIn(path, "ip", "-4", "neigh", "show")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "169.254.1.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee PERMANENT") {
		t.Errorf("workload neighbours:\n%s", out)
	}
	inNS(t, path, func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if eth0.Attrs().HardwareAddr.String() != res.MAC.String() || eth0.Attrs().MTU != 1500 {
			t.Errorf("eth0 MAC %s MTU %d, result says %s", eth0.Attrs().HardwareAddr, eth0.Attrs().MTU, res.MAC)
		}
		addrs, _ := netlink.AddrList(eth0, netlink.FAMILY_V4)
		if len(addrs) != 1 || addrs[0].IPNet.String() != res.IPv4.String() {
			t.Errorf("eth0 addresses %v, want %s", addrs, res.IPv4)
		}
		return nil
	})

	// Datastore.
	rec, err := e.ds.Workloads(node).Get(t.Context(), "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if w := rec.Value; w.IfName != res.HostVeth || w.MAC != res.MAC.String() || !slices.Equal(w.IPv4, []netip.Prefix{res.IPv4}) ||
		w.Netns != path || w.ContainerID != "ctr-web-1" || w.Name != "web-1" || w.Labels["app"] != "web" ||
		w.AddDurationSeconds != 0 || // no Started: nothing measured
		!slices.Equal(w.Ports, s.Ports) {
		t.Errorf("record %+v", w)
	}
	h, err := e.ds.Handles().Get(t.Context(), "web-1")
	if err != nil || !slices.Equal(h.Value.IPs, []netip.Addr{res.IPv4.Addr()}) || h.Value.Workload != node+"/web-1" {
		t.Errorf("handle %+v, %v", h.Value, err)
	}

	if err := e.check(s); err != nil {
		t.Errorf("check of a good workload: %v", err)
	}

	// A repeated ADD returns the same and changes nothing.
	again, err := e.add(s)
	if err != nil {
		t.Fatal(err)
	}
	if again.IPv4 != res.IPv4 || again.MAC.String() != res.MAC.String() {
		t.Errorf("repeated add gave %s %s, first %s %s", again.IPv4, again.MAC, res.IPv4, res.MAC)
	}
	if idx := e.host.Link(t, res.HostVeth).Attrs().Index; idx != l.Attrs().Index {
		t.Errorf("repeated add recreated the veth (index %d, was %d)", idx, l.Attrs().Index)
	}
	if again, err := e.ds.Workloads(node).Get(t.Context(), "web-1"); err != nil || again.ModRevision != rec.ModRevision {
		t.Errorf("repeated add rewrote the record (revision %d, was %d): %v", again.ModRevision, rec.ModRevision, err)
	}
	// A repeated ADD whose named ports changed (the pod's did) writes them.
	s.Ports = s.Ports[:1]
	if _, err := e.add(s); err != nil {
		t.Fatal(err)
	}
	if got, err := e.ds.Workloads(node).Get(t.Context(), "web-1"); err != nil || !slices.Equal(got.Value.Ports, s.Ports) {
		t.Errorf("after an ADD with other ports, record ports %v (%v), want %v", got.Value.Ports, err, s.Ports)
	}

	// Break the workload: Check names it, a repeated ADD repairs it.
	inNS(t, path, func() error {
		return netlink.RouteDel(&netlink.Route{LinkIndex: mustLink(t, "eth0").Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: net.ParseIP("169.254.1.1")})
	})
	err = e.check(s)
	if !errors.Is(err, workload.ErrMismatch) || !strings.Contains(err.Error(), "default via 169.254.1.1") {
		t.Errorf("check without default route: %v", err)
	}
	if _, err := e.add(s); err != nil {
		t.Fatal(err)
	}
	if err := e.check(s); err != nil {
		t.Errorf("check after repair: %v", err)
	}

	if err := e.del(s); err != nil {
		t.Fatal(err)
	}
	e.assertAbsent(t, "web-1")
	inNS(t, path, func() error {
		if _, err := netlink.LinkByName("eth0"); err == nil {
			t.Error("eth0 still exists in the workload after delete")
		}
		return nil
	})
	if err := e.del(s); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if err := e.check(s); !errors.Is(err, workload.ErrNotFound) {
		t.Errorf("check after delete: %v, want ErrNotFound", err)
	}
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func hostSysctl(t *testing.T, host *netns.NS, key string) string {
	t.Helper()
	var v string
	if err := host.Do(func() (err error) { v, err = hostconv.ReadSysctl(hostconv.SysctlRoot, key); return err }); err != nil {
		t.Fatal(err)
	}
	return v
}

func runIn(path string, name string, args ...string) (string, error) {
	return (&netns.NS{Path: path}).Run(name, args...)
}

func TestDelWhenNetnsGoneOrNothingExists(t *testing.T) {
	e := newEnv(t, "198.19.0.0/16", 26)
	path, remove := workloadNS(t)
	s := spec("gone", path)
	if _, err := e.add(s); err != nil {
		t.Fatal(err)
	}
	remove()
	if err := e.del(s); err != nil {
		t.Fatalf("delete after the netns is gone: %v", err)
	}
	e.assertAbsent(t, "gone")
	if err := e.del(s); err != nil {
		t.Errorf("repeated delete: %v", err)
	}
	if err := e.del(workload.Spec{ID: "never-existed", Node: node}); err != nil {
		t.Errorf("delete of an unknown workload: %v", err)
	}
}

func TestAddFailuresLeaveNothing(t *testing.T) {
	e := newEnv(t, "198.19.7.0/31", 31) // two addresses
	p1, _ := workloadNS(t)
	p2, _ := workloadNS(t)
	p3, _ := workloadNS(t)
	for i, p := range []string{p1, p2} {
		if _, err := e.add(spec(fmt.Sprint("w", i), p)); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("pool exhausted", func(t *testing.T) {
		_, err := e.add(spec("w3", p3))
		if !errors.Is(err, ipam.ErrPoolExhausted) {
			t.Fatalf("add to a full pool: %v, want ErrPoolExhausted", err)
		}
		e.assertAbsent(t, "w3")
	})
	if err := e.del(spec("w1", "")); err != nil {
		t.Fatal(err)
	}

	t.Run("netns missing", func(t *testing.T) {
		_, err := e.add(spec("w4", "/var/run/netns/margay-does-not-exist"))
		if !errors.Is(err, workload.ErrNetnsNotFound) {
			t.Fatalf("add into a missing netns: %v, want ErrNetnsNotFound", err)
		}
		e.assertAbsent(t, "w4")
	})

	t.Run("interface exists", func(t *testing.T) {
		// Someone else's eth0 in the namespace: the veth cannot be created after IPAM assigned.
		inNS(t, p3, func() error {
			return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "other0"})
		})
		_, err := e.add(spec("w5", p3))
		if !errors.Is(err, workload.ErrInterfaceExists) {
			t.Fatalf("add over a foreign eth0: %v, want ErrInterfaceExists", err)
		}
		e.assertAbsent(t, "w5")
		inNS(t, p3, func() error { return netlink.LinkDel(mustLink(t, "eth0")) })
	})

	t.Run("record write fails", func(t *testing.T) {
		// A label larger than etcd's request limit passes validation and fails the very last
		// step, after the veth, routes and address exist.
		s := spec("w6", p3)
		s.Labels = map[string]string{"big": strings.Repeat("x", 2<<20)}
		_, err := e.add(s)
		if err == nil {
			t.Fatal("add with a record etcd refuses succeeded")
		}
		t.Logf("add with a too large record: %.300s", err)
		e.assertAbsent(t, "w6")
		inNS(t, p3, func() error {
			if _, err := netlink.LinkByName("eth0"); err == nil {
				t.Error("eth0 left in the workload namespace")
			}
			return nil
		})
	})

	t.Run("invalid spec", func(t *testing.T) {
		for _, s := range []workload.Spec{
			{ID: "a/b", Node: node, Netns: p3},
			{ID: "ok", Node: "", Netns: p3},
			{ID: "ok", Node: node, Netns: "relative"},
			{ID: "ok", Node: node, Netns: p3, IfName: "a-name-longer-than-15"},
			{ID: "ok", Node: node, Netns: p3, MTU: 20},
			{ID: "ok", Node: node, Netns: p3, Labels: map[string]string{"": "x"}},
			{ID: "ok", Node: node, Netns: p3, Ports: []datastore.EndpointPort{{Name: "http", Protocol: 6}}},
			{ID: "ok", Node: node, Netns: p3, Ports: []datastore.EndpointPort{{Name: "HTTP", Protocol: 6, Port: 80}}},
		} {
			if _, err := e.add(s); !errors.Is(err, workload.ErrInvalidSpec) {
				t.Errorf("add %+v: %v, want ErrInvalidSpec", s, err)
			}
		}
		e.assertAbsent(t, "ok")
		// The host's own namespace as the workload's would put eth0 on the host.
		if _, err := e.add(workload.Spec{ID: "own", Node: node, Netns: e.host.Path}); !errors.Is(err, workload.ErrInvalidSpec) {
			t.Errorf("add into the host namespace: %v, want ErrInvalidSpec", err)
		}
		e.assertAbsent(t, "own")
	})
}

func TestNewSandboxReplacesOld(t *testing.T) {
	e := newEnv(t, "198.19.0.0/16", 26)
	oldPath, _ := workloadNS(t)
	newPath, _ := workloadNS(t)
	id := workload.KubernetesID("default", "nginx")
	old := workload.Spec{ID: id, Name: "nginx", Namespace: "default", Node: node, ContainerID: "c-old", Netns: oldPath}
	cur := old
	cur.ContainerID, cur.Netns = "c-new", newPath

	r1, err := e.add(old)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := e.add(cur)
	if err != nil {
		t.Fatal(err)
	}
	if r1.IPv4 != r2.IPv4 || r2.HostVeth != "calic440f455693" {
		t.Errorf("new sandbox got %s on %s, old had %s", r2.IPv4, r2.HostVeth, r1.IPv4)
	}
	// The runtime's late DEL of the old sandbox must not touch the new one.
	if err := e.del(old); err != nil {
		t.Fatal(err)
	}
	if err := e.check(cur); err != nil {
		t.Errorf("new sandbox after the old one's delete: %v", err)
	}
	if err := e.check(old); !errors.Is(err, workload.ErrMismatch) {
		t.Errorf("check of the old sandbox: %v, want ErrMismatch", err)
	}
	if err := e.del(cur); err != nil {
		t.Fatal(err)
	}
	e.assertAbsent(t, id)
}

func TestIDOwnedByAnotherNode(t *testing.T) {
	e := newEnv(t, "198.19.0.0/16", 26)
	p1, _ := workloadNS(t)
	p2, _ := workloadNS(t)
	if _, err := e.add(spec("dup", p1)); err != nil {
		t.Fatal(err)
	}
	// node-2 is another host: a namespace of its own.
	e2 := &env{ds: e.ds, ipam: e.ipam, host: netns.New(t, "wlh")}
	other := spec("dup", p2)
	other.Node = "node-2"
	if _, err := e2.add(other); !errors.Is(err, workload.ErrInvalidSpec) {
		t.Fatalf("add of an ID another node holds: %v, want ErrInvalidSpec", err)
	}
	// Deleting on node-2 must not release node-1's address.
	if err := e2.del(other); err != nil {
		t.Fatal(err)
	}
	if err := e.check(spec("dup", p1)); err != nil {
		t.Errorf("node-1's workload after node-2's delete: %v", err)
	}
}

func TestMTU(t *testing.T) {
	e := newEnv(t, "198.19.0.0/16", 26)
	peer := netns.New(t, "wlp")
	netns.Veth(t, e.host, "ens32", peer, "peer0")
	if err := e.host.Netlink().LinkSetMTU(e.host.Link(t, "ens32"), 1400); err != nil {
		t.Fatal(err)
	}
	e.host.AddAddr(t, "ens32", "198.18.0.1/24")
	e.host.RouteVia(t, "default", "198.18.0.254", "ens32")

	for _, c := range []struct {
		id   string
		mtu  int
		want int
	}{{"auto", 0, 1400}, {"fixed", 1300, 1300}} {
		path, _ := workloadNS(t)
		s := spec(c.id, path)
		s.MTU = c.mtu
		res, err := e.add(s)
		if err != nil {
			t.Fatal(err)
		}
		if res.MTU != c.want || e.host.Link(t, res.HostVeth).Attrs().MTU != c.want {
			t.Errorf("%s: MTU %d, want %d", c.id, res.MTU, c.want)
		}
		inNS(t, path, func() error {
			if m := mustLink(t, "eth0").Attrs().MTU; m != c.want {
				t.Errorf("%s: eth0 MTU %d, want %d", c.id, m, c.want)
			}
			return nil
		})
	}
}

func TestConcurrentAdds(t *testing.T) {
	e := newEnv(t, "198.19.0.0/16", 26)
	const n = 12
	paths := make([]string, n)
	for i := range paths {
		paths[i], _ = workloadNS(t)
	}
	var wg sync.WaitGroup
	results := make([]workload.Result, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = e.add(spec(fmt.Sprint("c", i), paths[i])) })
	}
	wg.Wait()
	seen := map[netip.Prefix]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("add c%d: %v", i, errs[i])
		}
		if j, dup := seen[results[i].IPv4]; dup {
			t.Errorf("c%d and c%d both got %s", i, j, results[i].IPv4)
		}
		seen[results[i].IPv4] = i
		if err := e.check(spec(fmt.Sprint("c", i), paths[i])); err != nil {
			t.Error(err)
		}
	}
	// Every workload reaches the next one through the host, all within 10 s. ping may fail at
	// once: 50 ms between tries, not a spin.
	reached := 0
	poll.UntilEvery(t, "every workload reaches the next one", 50*time.Millisecond, 10*time.Second, func() error {
		for ; reached < n; reached++ {
			dst := results[(reached+1)%n].IPv4.Addr().String()
			if _, err := runIn(paths[reached], "ping", "-c", "1", "-W", "1", dst); err != nil {
				return fmt.Errorf("c%d cannot reach %s: %v", reached, dst, err)
			}
		}
		return nil
	})
	for i := range n {
		if err := e.del(spec(fmt.Sprint("c", i), paths[i])); err != nil {
			t.Error(err)
		}
	}
	workloadPool := &net.IPNet{IP: net.IPv4(198, 19, 0, 0), Mask: net.CIDRMask(16, 32)}
	routes, err := e.host.Netlink().RouteList(nil, netlink.FAMILY_V4)
	for _, r := range routes {
		if r.Dst != nil && workloadPool.Contains(r.Dst.IP) {
			t.Errorf("workload route left on the host: %v", r)
		}
	}
	if err != nil {
		t.Error(err)
	}
}
