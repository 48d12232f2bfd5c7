package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/dataplane"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// eventually polls cond until it holds, for up to 15 s.
func eventually(t testing.TB, what string, cond func() error) {
	t.Helper()
	poll.Until(t, what, 15*time.Second, cond)
}

type agentHost struct {
	ns     *netns.NS
	root   string
	agent  *Agent
	cancel context.CancelFunc
	done   chan error
}

func (h *agentHost) routes(t *testing.T) map[netip.Prefix]netlink.Route {
	t.Helper()
	rs, err := h.ns.Netlink().RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: hostconv.RouteProtocol},
		netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Prefix]netlink.Route{}
	for _, r := range rs {
		a, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		bits, _ := r.Dst.Mask.Size()
		out[netip.PrefixFrom(a, bits)] = r
	}
	return out
}

// get fetches a URL of the agent's HTTP server, dialling from inside its namespace.
func (h *agentHost) get(path string) (int, string, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := h.ns.Do(func() (err error) { c, err = net.Dial(network, addr); return err })
		return c, err
	}}, Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + h.agent.HTTPAddr() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// startAgent runs an agent for vm100 in a namespace, with vm101 as a second host known to the
// datastore (address and block, no agent), and returns once the pinned maps can be opened.
func startAgent(t testing.TB, reg *prometheus.Registry, ds *datastore.Client, tune ...func(*Config)) (*agentHost, *maps.Set) {
	t.Helper()
	return startAgentWith(t, reg, ds, nil, tune...)
}

// startAgentWith is startAgent with the agent's options.
func startAgentWith(t testing.TB, reg *prometheus.Registry, ds *datastore.Client, opts []Option, tune ...func(*Config)) (*agentHost, *maps.Set) {
	t.Helper()
	ctx := context.Background()
	if _, err := ds.Pools().Create(ctx, "lab", datastore.Pool{Version: 1, Name: "lab",
		CIDR: netip.MustParsePrefix("198.19.0.0/16"), BlockSize: 26}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Nodes().Create(ctx, "vm101", datastore.Node{Version: 1, Name: "vm101",
		AddressV4: netip.MustParsePrefix("198.18.0.101/24")}); err != nil {
		t.Fatal(err)
	}
	if _, err := ipam.New(ds).EnsureBlock(ctx, "vm101"); err != nil {
		t.Fatal(err)
	}

	h := &agentHost{ns: netns.New(t, "mgyagt-"), root: netns.BPFFS(t), done: make(chan error, 1)}
	peer := netns.New(t, "mgyagtp-")
	netns.Veth(t, h.ns, "ens32", peer, "ens32")
	h.ns.AddAddr(t, "ens32", "198.18.0.100/24")

	cfg := Config{NodeName: "vm100", Uplink: "ens32", BPFFSRoot: h.root, XDP: dataplane.XDPOn, TCMode: loader.TCAuto,
		HTTPAddr: "127.0.0.1:0", ReconcileInterval: 300 * time.Millisecond, GCInterval: 200 * time.Millisecond}
	for _, f := range tune {
		f(&cfg)
	}
	a, err := New(cfg, ds, append([]Option{WithLogger(datastoretest.Logger(t)), WithRegistry(reg)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	h.agent = a
	runCtx, cancel := context.WithCancel(ctx)
	h.cancel = cancel
	go func() { h.done <- h.ns.Do(func() error { return a.Run(runCtx) }) }()
	t.Cleanup(func() { cancel(); <-h.done })

	var set *maps.Set
	eventually(t, "the agent's maps pinned", func() (err error) {
		set, err = maps.OpenPinned(h.root)
		return err
	})
	t.Cleanup(func() { set.Close() })
	return h, set
}

func TestAgent(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	ds := datastoretest.New(t, datastore.WithRegisterer(reg))
	h, set := startAgent(t, reg, ds)
	cancel := h.cancel

	// vm101 claimed first: it has the pool's first block, we get the second.
	own := netip.MustParsePrefix("198.19.0.64/26")
	remote := netip.MustParsePrefix("198.19.0.0/26")
	eventually(t, "node registered, block claimed, block routes programmed", func() error {
		n, err := ds.Nodes().Get(ctx, "vm100")
		if err != nil || n.Value.AddressV4 != netip.MustParsePrefix("198.18.0.100/24") || n.Value.Uplink != "ens32" {
			return fmt.Errorf("node record %+v, %v", n, err)
		}
		rs := h.routes(t)
		if r, ok := rs[own]; !ok || r.Type != 6 /* RTN_BLACKHOLE */ {
			return fmt.Errorf("no blackhole for %v: %+v", own, rs)
		}
		if r, ok := rs[remote]; !ok || !r.Gw.Equal(net.ParseIP("198.18.0.101")) {
			return fmt.Errorf("no route to %v via vm101: %+v", remote, rs)
		}
		rt, err := set.Routes.Get(remote)
		if err != nil || rt.Kind() != maps.RemoteBlock || rt.NextHop != netip.MustParseAddr("198.18.0.101") {
			return fmt.Errorf("routes map entry of %v: %+v, %v", remote, rt, err)
		}
		return nil
	})
	eventually(t, "readyz", func() error {
		code, body, err := h.get("/readyz")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("readyz %d %q %v", code, body, err)
		}
		return nil
	})

	// A workload as the CNI plugin leaves it: veth pair, record in etcd.
	wns := netns.New(t, "mgyagtw-")
	cali := "cali0123456789a"
	_, eth0 := netns.Veth(t, h.ns, cali, wns, "eth0")
	wl := datastore.Workload{Version: 1, ID: "w1", Name: "w1", Node: "vm100", IfName: cali,
		MAC: eth0.Attrs().HardwareAddr.String(), IPv4: []netip.Prefix{netip.MustParsePrefix("198.19.0.69/32")}}
	if _, err := ds.Workloads("vm100").Create(ctx, "w1", wl); err != nil {
		t.Fatal(err)
	}
	wip := netip.MustParsePrefix("198.19.0.69/32")
	caliIndex := uint32(h.ns.Link(t, cali).Attrs().Index)
	eventually(t, "workload programmed", func() error {
		if r, ok := h.routes(t)[wip]; !ok || r.LinkIndex != int(caliIndex) {
			return fmt.Errorf("no /32 route to %s", cali)
		}
		if ep, err := set.Endpoints.Get(caliIndex); err != nil || ep.IPv4 != wip.Addr() {
			return fmt.Errorf("endpoint %+v, %v", ep, err)
		}
		return h.ns.Do(func() error { _, err := loaderAttached(h.root, cali); return err })
	})

	// Hand-made damage is repaired within the reconcile interval.
	victim := h.routes(t)[wip]
	if err := h.ns.Netlink().RouteDel(&victim); err != nil {
		t.Fatal(err)
	}
	if err := set.Endpoints.Delete(caliIndex); err != nil {
		t.Fatal(err)
	}
	eventually(t, "repair", func() error {
		if _, ok := h.routes(t)[wip]; !ok {
			return errors.New("route not restored")
		}
		if _, err := set.Endpoints.Get(caliIndex); err != nil {
			return err
		}
		return nil
	})

	// A malformed value is skipped; the agent goes on.
	if _, err := ds.Raw().Put(ctx, ds.Workloads("vm100").Key("junk"), "{not json"); err != nil {
		t.Fatal(err)
	}
	// A workload on vm101 that borrowed an address of our block: a /32 via vm101.
	borrowed := netip.MustParsePrefix("198.19.0.73/32")
	if _, err := ds.Workloads("vm101").Create(ctx, "b1", datastore.Workload{Version: 1, ID: "b1", Name: "b1", Node: "vm101",
		IfName: "cali0000000000b", MAC: "0a:58:00:00:00:01", IPv4: []netip.Prefix{borrowed}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "borrowed /32 routed", func() error {
		rt, err := set.Routes.Get(borrowed)
		if err != nil || rt.Kind() != maps.RemoteWorkload || rt.NextHop != netip.MustParseAddr("198.18.0.101") {
			return fmt.Errorf("%+v, %v", rt, err)
		}
		if _, ok := h.routes(t)[borrowed]; !ok {
			return errors.New("no kernel route")
		}
		return nil
	})

	// Removal undoes everything.
	if err := ds.Workloads("vm100").Delete(ctx, "w1", 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "workload removed", func() error {
		if _, ok := h.routes(t)[wip]; ok {
			return errors.New("route still there")
		}
		if _, err := set.Endpoints.Get(caliIndex); !errors.Is(err, maps.ErrNotFound) {
			return fmt.Errorf("endpoint still there: %v", err)
		}
		if _, err := set.Routes.Get(wip); !errors.Is(err, maps.ErrNotFound) {
			return fmt.Errorf("map route still there: %v", err)
		}
		return h.ns.Do(func() error {
			if _, err := loaderAttached(h.root, cali); !errors.Is(err, loader.ErrNotAttached) {
				return fmt.Errorf("programs still attached: %v", err)
			}
			return nil
		})
	})

	// An address whose workload never got a record (a runtime that died mid-ADD, or never called
	// DEL) is collected after two passes.
	ghost, err := ipam.New(ds).Assign(ctx, ipam.Request{Handle: "ghost", Node: "vm100", Workload: "vm100/ghost"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "ghost address collected", func() error {
		if _, err := ds.Handles().Get(ctx, "ghost"); !errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("handle of %v still there: %v", ghost.IP, err)
		}
		return nil
	})

	code, body, err := h.get("/metrics")
	if err != nil || code != http.StatusOK || !strings.Contains(body, `margay_agent_reconciles_total{kind="full",result="ok"}`) ||
		!strings.Contains(body, `margay_datastore_malformed_values_total`) {
		t.Errorf("metrics: %d %v\n%s", code, err, body)
	}
	if code, _, _ := h.get("/healthz"); code != http.StatusOK {
		t.Errorf("healthz %d", code)
	}

	// Stopping leaves forwarding in place.
	cancel()
	if err := <-h.done; err != nil {
		t.Fatalf("agent: %v", err)
	}
	h.done <- nil // for the cleanup
	if err := h.ns.Do(func() error { _, err := loaderAttachedHook(h.root, "ens32", loader.HookFromNet); return err }); err != nil {
		t.Errorf("uplink program gone after the agent stopped: %v", err)
	}
}

func TestDetectUplink(t *testing.T) {
	ns := netns.New(t, "mgyup-")
	peer := netns.New(t, "mgyupp-")
	netns.Veth(t, ns, "ens32", peer, "ens32")
	ns.AddAddr(t, "ens32", "198.18.0.7/24")
	err := ns.Do(func() error {
		nl, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer nl.Close()
		if _, _, err := detectUplink(nl, ""); err == nil {
			return errors.New("found an uplink without a default route")
		}
		if err := nl.RouteAdd(&netlink.Route{LinkIndex: ns.Link(t, "ens32").Attrs().Index, Gw: net.ParseIP("198.18.0.1")}); err != nil {
			return err
		}
		name, addr, err := detectUplink(nl, "")
		if err != nil || name != "ens32" || addr != netip.MustParsePrefix("198.18.0.7/24") {
			return fmt.Errorf("detectUplink = %s %v %v", name, addr, err)
		}
		if _, _, err := detectUplink(nl, "lo"); err == nil {
			return errors.New("lo has no global address but was accepted")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// loaderAttached checks from_wep on ifname through a throwaway dataplane handle on the same pins.
func loaderAttached(root, ifname string) (loader.Attachment, error) {
	return loaderAttachedHook(root, ifname, loader.HookFromWep)
}

func loaderAttachedHook(root, ifname string, hook loader.Hook) (loader.Attachment, error) {
	d, err := loader.Load(loader.WithRoot(root))
	if err != nil {
		return "", err
	}
	defer d.Close()
	return d.Attached(ifname, hook)
}

// A workload created by the CNI plugin's code path ends up programmed by the agent, its route
// taken over by the agent's protocol; deleting it through the same path cleans everything.
func TestAgentWithCNIWorkload(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	ds := datastoretest.New(t, datastore.WithRegisterer(reg))
	h, set := startAgent(t, reg, ds)
	wns := netns.New(t, "mgyagc-")
	spec := workload.Spec{ID: "web", Name: "web", Node: "vm100", Netns: wns.Path}
	ipm := ipam.New(ds)
	var res workload.Result
	if err := h.ns.Do(func() (err error) { res, err = workload.Add(ctx, ds, ipm, spec); return err }); err != nil {
		t.Fatal(err)
	}
	idx := uint32(h.ns.Link(t, res.HostVeth).Attrs().Index)
	eventually(t, "CNI workload programmed", func() error {
		if r, ok := h.routes(t)[res.IPv4]; !ok || r.LinkIndex != int(idx) {
			return fmt.Errorf("no proto %d route for %v", hostconv.RouteProtocol, res.IPv4)
		}
		if ep, err := set.Endpoints.Get(idx); err != nil || ep.IPv4 != res.IPv4.Addr() || ep.MAC.String() != res.MAC.String() {
			return fmt.Errorf("endpoint %+v, %v", ep, err)
		}
		return nil
	})
	if err := h.ns.Do(func() error { return workload.Del(ctx, ds, ipm, spec) }); err != nil {
		t.Fatal(err)
	}
	eventually(t, "CNI workload removed", func() error {
		if _, ok := h.routes(t)[res.IPv4]; ok {
			return errors.New("route still there")
		}
		if eps, _ := set.Endpoints.List(); len(eps) != 0 {
			return fmt.Errorf("endpoints left: %+v", eps)
		}
		return nil
	})
}

// A collection that takes long (etcd slow to answer) does not hold up the owner loop: a workload
// written while it hangs is programmed. Before collection ran on its own goroutine, the loop ran
// it and the workload waited for it.
func TestCollectionOffLoop(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	ds := datastoretest.New(t, datastore.WithRegisterer(reg))
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hang := func(a *Agent) {
		a.beforeCollect = func(ctx context.Context) {
			once.Do(func() { close(entered) })
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
	}
	h, set := startAgentWith(t, reg, ds, []Option{hang}, func(c *Config) { c.GCInterval = 50 * time.Millisecond })
	t.Cleanup(func() { close(release) })
	select {
	case <-entered:
	case <-time.After(15 * time.Second):
		t.Fatal("no collection started within 15 s")
	}

	wns := netns.New(t, "mgyagtw-")
	cali := "cali0123456789b"
	_, eth0 := netns.Veth(t, h.ns, cali, wns, "eth0")
	if _, err := ds.Workloads("vm100").Create(ctx, "w1", datastore.Workload{Version: 1, ID: "w1", Name: "w1", Node: "vm100",
		IfName: cali, MAC: eth0.Attrs().HardwareAddr.String(), IPv4: []netip.Prefix{netip.MustParsePrefix("198.19.0.70/32")}}); err != nil {
		t.Fatal(err)
	}
	index := uint32(h.ns.Link(t, cali).Attrs().Index)
	// Well inside gcTimeout (10 s), the longest a collection could have held the loop up.
	poll.Until(t, "workload programmed while the collection hangs", 5*time.Second, func() error {
		if _, err := set.Endpoints.Get(index); err != nil {
			return err
		}
		return nil
	})
}
