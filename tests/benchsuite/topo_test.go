package benchsuite_test

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/margaynet/margay/control/policy"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/benchrules"
	"github.com/margaynet/margay/tests/bpfbench"
	"github.com/margaynet/margay/tests/kubeproxy"
	"github.com/margaynet/margay/tests/netns"
)

// The Calico picture, in the RFC 2544 range: two hosts on one segment, each owning a /26, one
// workload on each. Topology a reuses the workload addresses on a single veth pair.
const (
	uplink      = "ens32"
	hostVethMAC = "ee:ee:ee:ee:ee:ee" // every host-side cali* veth, as in Calico
	gateway     = "169.254.1.1"       // what workloads route through; nobody holds it
	caliClient  = "cali0000000000a"
	caliServer  = "cali0000000000b"

	iperfPort  = 5201 // iperf3 -s
	rrPort     = 5202 // the Go RR/CRR server
	deniedPort = 5300 // no rule allows it: with a filter, a connection to it must time out
	basePort   = 1000 // rule i < n-1 allows port basePort+i

	clusterCIDR = "198.19.0.0/16" // the pods, as kube-proxy's --cluster-cidr
)

var (
	hostAAddr = netip.MustParseAddr("198.18.0.1")
	hostBAddr = netip.MustParseAddr("198.18.0.2")
	blockA    = netip.MustParsePrefix("198.19.0.0/26")
	blockB    = netip.MustParsePrefix("198.19.0.64/26")
	clientIP  = netip.MustParseAddr("198.19.0.1")
	serverIP  = netip.MustParseAddr("198.19.0.65")
	clientNet = netip.MustParsePrefix("198.19.0.0/28") // the last rule's source
	ruleBase  = netip.MustParseAddr("198.18.0.0")
)

// kinds of topology.
const (
	kindVeth         = "a"
	kindKernel       = "b-empty"
	kindKernelFilter = "b-filter"
	kindMargay       = "c"
	kindMargayPolicy = "c-policy"
	// kindMargayXDP is c with the XDP prefilter on the veth uplinks, which the agent's default
	// (--xdp auto) leaves off: a diagnostic of what XDP costs on a veth.
	kindMargayXDP = "c-xdp"
	// The client reaches the server through a Kubernetes ClusterIP that kube-proxy's nat rules
	// translate on both hosts: the kernel path, and Margay, where the client's host leaves the
	// translated flow to the kernel.
	kindKernelSvc = "b-svc"
	kindMargaySvc = "c-svc"
	// kindMargayBare is c's attach points and maps with programs that only look the route up
	// and redirect (bpf/bench/bare.c): what the mechanism gives, without what Margay's programs
	// do on top of it.
	kindMargayBare = "c-bare"
)

// svcIP is the ClusterIP of the svc topologies.
var svcIP = netip.MustParseAddr("198.18.96.10")

func isMargay(kind string) bool {
	return kind == kindMargay || kind == kindMargayPolicy || kind == kindMargayXDP || kind == kindMargaySvc
}

func isSvc(kind string) bool { return kind == kindKernelSvc || kind == kindMargaySvc }

// kubeServices are the ClusterIP's ports, each to the same port of the server.
func kubeServices() []kubeproxy.Service {
	var svcs []kubeproxy.Service
	for _, port := range []int{rrPort, iperfPort, deniedPort} {
		svcs = append(svcs, kubeproxy.Service{Name: fmt.Sprintf("BENCH-%d", port), ClusterIP: svcIP, Proto: "tcp", Port: port,
			Backend: netip.AddrPortFrom(serverIP, uint16(port))})
	}
	return svcs
}

// topo is one measured topology: a client and a server namespace and whatever joins them.
type topo struct {
	kind           string
	rules          int        // policy rules (b-filter, c-policy)
	dst            netip.Addr // what the client connects to: the server, or the ClusterIP
	client, server *netns.NS
	hostA, hostB   *host // nil for a
	srv            *server
}

// host is a namespace acting as one Calico host: an uplink, one workload behind a cali veth and,
// for c, Margay's dataplane.
type host struct {
	name        string
	ns          *netns.NS
	addr        netip.Addr
	block       netip.Prefix
	cali        string
	caliIndex   uint32
	uplinkIndex uint32
	wl          *netns.NS
	wlIP        netip.Addr
	wlMAC       net.HardwareAddr
	d           *loader.Dataplane
	set         *maps.Set
	bare        *bpfbench.BarePrograms // c-bare
}

func newTopo(tb testing.TB, kind string, rules int) *topo {
	tb.Helper()
	t := &topo{kind: kind, rules: rules, dst: serverIP}
	if isSvc(kind) {
		t.dst = svcIP
	}
	if kind == kindVeth {
		t.client = netns.New(tb, "mgbs-a-cli")
		t.server = netns.New(tb, "mgbs-a-srv")
		netns.Veth(tb, t.client, "eth0", t.server, "eth0")
		t.client.AddAddr(tb, "eth0", netip.PrefixFrom(clientIP, 32).String())
		t.server.AddAddr(tb, "eth0", netip.PrefixFrom(serverIP, 32).String())
		t.client.RouteDev(tb, netip.PrefixFrom(serverIP, 32).String(), "eth0")
		t.server.RouteDev(tb, netip.PrefixFrom(clientIP, 32).String(), "eth0")
		// Neighbours are fixed everywhere: ARP is no part of what is measured.
		t.client.PermanentNeigh(tb, "eth0", serverIP.String(), t.server.Link(tb, "eth0").Attrs().HardwareAddr.String())
		t.server.PermanentNeigh(tb, "eth0", clientIP.String(), t.client.Link(tb, "eth0").Attrs().HardwareAddr.String())
	} else {
		p := "mgbs-" + strings.ReplaceAll(kind, "-", "") + "-"
		t.hostA = newHost(tb, p+"ha", "A", hostAAddr, blockA)
		t.hostB = newHost(tb, p+"hb", "B", hostBAddr, blockB)
		netns.Veth(tb, t.hostA.ns, uplink, t.hostB.ns, uplink)
		t.hostA.connect(tb, t.hostB)
		t.hostB.connect(tb, t.hostA)
		t.client = t.hostA.addWorkload(tb, p+"cli", caliClient, clientIP)
		t.server = t.hostB.addWorkload(tb, p+"srv", caliServer, serverIP)
		for _, h := range []*host{t.hostA, t.hostB} {
			switch kind {
			case kindKernel:
				// Empty netfilter: no table is ever loaded in these namespaces.
			case kindKernelSvc:
				h.ns.IPTablesRestore(tb, kubeproxy.Rules(clusterCIDR, kubeServices()))
			case kindMargaySvc:
				// The Service's flows take FORWARD on the client's host: it accepts.
				h.ns.IPTablesRestore(tb, kubeproxy.Rules(clusterCIDR, kubeServices()))
				h.loadMargay(tb)
			case kindKernelFilter:
				h.ns.IPTablesRestore(tb, benchRules(rules).IPTables())
			case kindMargay, kindMargayPolicy, kindMargayXDP, kindMargayBare:
				// FORWARD drops everything: traffic that does not take the eBPF path does not arrive.
				h.ns.IPTablesRestore(tb, benchrules.ForwardDrop)
				h.loadMargay(tb)
			default:
				tb.Fatalf("kind %q", kind)
			}
		}
		if isMargay(kind) {
			for _, h := range []*host{t.hostA, t.hostB} {
				h.installMargay(tb, t.hostA, t.hostB, rules, kind == kindMargayXDP)
			}
		}
		if kind == kindMargayBare {
			for _, h := range []*host{t.hostA, t.hostB} {
				h.installBare(tb, t.hostA, t.hostB)
			}
		}
	}
	// A wide ephemeral range: CRR opens thousands of connections a second.
	t.client.MustSysctl(tb, "ipv4/ip_local_port_range", "10000 65000")
	t.srv = startServer(tb, t.server)
	return t
}

func (t *topo) String() string { return t.kind }

func newHost(tb testing.TB, prefix, name string, addr netip.Addr, block netip.Prefix) *host {
	tb.Helper()
	h := &host{name: name, ns: netns.New(tb, prefix), addr: addr, block: block}
	h.ns.MustSysctl(tb, "ipv4/ip_forward", "1")
	return h
}

// connect gives h its uplink address and the kernel route BGP would install for other's block.
func (h *host) connect(tb testing.TB, other *host) {
	tb.Helper()
	h.ns.AddAddr(tb, uplink, netip.PrefixFrom(h.addr, 24).String())
	h.uplinkIndex = uint32(h.ns.Link(tb, uplink).Attrs().Index)
	h.ns.Blackhole(tb, h.block.String())
	h.ns.RouteVia(tb, other.block.String(), other.addr.String(), uplink)
	h.ns.PermanentNeigh(tb, uplink, other.addr.String(), other.ns.Link(tb, uplink).Attrs().HardwareAddr.String())
}

// addWorkload does what Calico's CNI plugin does: a /32 on eth0, a default route through
// 169.254.1.1, proxy ARP and a /32 route on the host's cali veth.
func (h *host) addWorkload(tb testing.TB, prefix, cali string, ip netip.Addr) *netns.NS {
	tb.Helper()
	w := netns.New(tb, prefix)
	netns.Veth(tb, h.ns, cali, w, "eth0")
	w.AddAddr(tb, "eth0", netip.PrefixFrom(ip, 32).String())
	w.RouteDev(tb, gateway+"/32", "eth0")
	w.RouteVia(tb, "default", gateway, "eth0")
	w.PermanentNeigh(tb, "eth0", gateway, hostVethMAC)
	h.wlMAC = w.Link(tb, "eth0").Attrs().HardwareAddr

	h.ns.SetMAC(tb, cali, hostVethMAC)
	h.ns.MustSysctl(tb, "ipv4/conf/"+cali+"/proxy_arp", "1")
	h.ns.MustSysctl(tb, "ipv4/conf/"+cali+"/forwarding", "1")
	h.ns.RouteDev(tb, netip.PrefixFrom(ip, 32).String(), cali)
	h.ns.PermanentNeigh(tb, cali, ip.String(), h.wlMAC.String())
	h.cali, h.caliIndex, h.wl, h.wlIP = cali, uint32(h.ns.Link(tb, cali).Attrs().Index), w, ip
	return w
}

// loadMargay loads a dataplane into a private bpffs; its cleanup detaches everything.
func (h *host) loadMargay(tb testing.TB) {
	tb.Helper()
	root := netns.BPFFS(tb)
	log := slog.New(slog.DiscardHandler)
	d, err := loader.Load(loader.WithRoot(root), loader.WithLogger(log))
	if err != nil {
		tb.Fatalf("host %s: %v", h.name, err)
	}
	tb.Cleanup(func() {
		d.Close()
		if err := h.ns.Do(func() error { return loader.Cleanup(root, log) }); err != nil {
			tb.Errorf("host %s: dataplane cleanup: %v", h.name, err)
		}
	})
	h.d, h.set = d, maps.FromDataplane(d)
}

// installMargay writes what the agent would (routes, the endpoint, and the n-rule policy
// compiled as the agent compiles it) and attaches the programs, XDP included.
func (h *host) installMargay(tb testing.TB, a, b *host, n int, xdp bool) {
	tb.Helper()
	h.putRoutes(tb, a, b)
	ep := maps.Endpoint{Ifindex: h.caliIndex, IPv4: h.wlIP, MAC: h.wlMAC}
	if n > 0 {
		all := []policy.Endpoint{
			{Key: "A/client", Node: "A", Addr: a.wlIP, Labels: map[string]string{}},
			{Key: "B/server", Node: "B", Addr: b.wlIP, Labels: map[string]string{}},
		}
		local := all[:1]
		if h == b {
			local = all[1:]
		}
		_, res, err := benchRules(n).Install(h.set, all, local)
		if err != nil {
			tb.Fatal(err)
		}
		ep.IngressProgram, ep.EgressProgram = res.Endpoints[h.wlIP].Ingress, res.Endpoints[h.wlIP].Egress
		if ep.IngressProgram == 0 {
			tb.Fatalf("host %s: %d rules: the workload has no ingress program", h.name, n)
		}
	}
	if err := h.set.Endpoints.Put(ep); err != nil {
		tb.Fatal(err)
	}
	if err := h.ns.Do(func() error {
		if err := h.d.AttachWorkload(h.cali); err != nil {
			return err
		}
		if err := h.d.AttachUplink(uplink, xdp); err != nil {
			return err
		}
		// nf_policy at netfilter's hooks, and from_wep told so, as the agent does.
		if _, err := h.d.EnsureNetfilter(); err != nil {
			return err
		}
		_, err := h.set.Config.SetNFPolicy(true)
		return err
	}); err != nil {
		tb.Fatalf("host %s: %v", h.name, err)
	}
}

// putRoutes writes what the agent would for h, one of the hosts a and b: its block, the
// other's, its workload.
func (h *host) putRoutes(tb testing.TB, a, b *host) {
	tb.Helper()
	other := b
	if h == b {
		other = a
	}
	for _, r := range []maps.Route{
		{Prefix: h.block, Flags: maps.LocalBlock | maps.InPool},
		{Prefix: other.block, Flags: maps.RemoteBlock | maps.InPool, Ifindex: h.uplinkIndex, NextHop: other.addr},
		{Prefix: netip.PrefixFrom(h.wlIP, 32), Flags: maps.LocalWorkload | maps.InPool, Ifindex: h.caliIndex},
	} {
		if err := h.set.Routes.Put(r); err != nil {
			tb.Fatal(err)
		}
	}
}

// installBare fills the dataplane's routes and endpoint as installMargay does, and attaches the
// bare programs (bpf/bench/bare.c) where Margay's go, on those maps.
func (h *host) installBare(tb testing.TB, a, b *host) {
	tb.Helper()
	h.putRoutes(tb, a, b)
	if err := h.set.Endpoints.Put(maps.Endpoint{Ifindex: h.caliIndex, IPv4: h.wlIP, MAC: h.wlMAC}); err != nil {
		tb.Fatal(err)
	}
	spec, err := bpfbench.LoadBare()
	if err != nil {
		tb.Fatal(err)
	}
	h.bare = &bpfbench.BarePrograms{}
	dm := h.d.Maps()
	if err := spec.LoadAndAssign(h.bare, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		bpfbench.BareMapRoutes: dm.Routes, bpfbench.BareMapEndpoints: dm.Endpoints}}); err != nil {
		tb.Fatalf("host %s: load the bare programs: %v", h.name, err)
	}
	tb.Cleanup(func() { h.bare.Close() })
	for _, at := range []struct {
		prog  *ebpf.Program
		index uint32
	}{{h.bare.BareFromWep, h.caliIndex}, {h.bare.BareFromNet, h.uplinkIndex}} {
		var l link.Link
		// The ifindex is resolved in the caller's namespace: the host's.
		err := h.ns.Do(func() (err error) {
			l, err = link.AttachTCX(link.TCXOptions{Interface: int(at.index), Program: at.prog, Attach: ebpf.AttachTCXIngress})
			return err
		})
		if err != nil {
			tb.Fatalf("host %s: attach %v to ifindex %d: %v", h.name, at.prog, at.index, err)
		}
		tb.Cleanup(func() { l.Close() })
	}
}

// benchRules is the rule set of n rules: the last allows the client's /28 to iperf3's port and
// the RR/CRR server's.
func benchRules(n int) benchrules.Rules {
	return benchrules.Rules{N: n, Base: ruleBase, BasePort: basePort, LastNet: clientNet, LastLo: iperfPort, LastHi: rrPort}
}
