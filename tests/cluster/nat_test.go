package cluster_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/kubeproxy"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// Service addresses of the kube-proxy-style rules: outside the pool and the hosts' segment, in the
// test range.
var (
	svcRemote = netip.MustParseAddr("198.18.96.10") // one backend, on another host
	svcLocal  = netip.MustParseAddr("198.18.96.11") // one backend, on the client's host
	svcSelf   = netip.MustParseAddr("198.18.96.12") // the client itself: hairpin
)

const (
	svcPort        = 80
	backendPort    = 8080
	nodePortRemote = 30080 // externalTrafficPolicy: Cluster, backend on vm101
	nodePortLocal  = 30081 // externalTrafficPolicy: Local, backend on vm100
	publishedPort  = 8088  // Docker's -p 8088:8080 on vm100, to the backend beside the client
)

// serveWho answers every TCP connection and UDP datagram on addr with the address the server saw
// it come from: what a backend's ingress policy sees.
func serveWho(t *testing.T, ns *netns.NS, addr netip.AddrPort) {
	t.Helper()
	var (
		ln  *net.TCPListener
		udp *net.UDPConn
	)
	if err := ns.Do(func() (err error) {
		if ln, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr)); err != nil {
			return err
		}
		udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns.Name, err)
	}
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after the closes below
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().String())
			c.Close()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			_, from, err := udp.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = udp.WriteToUDPAddrPort([]byte(from.Addr().String()), from)
		}
	}()
	t.Cleanup(func() { ln.Close(); udp.Close() })
}

// askWho asks the server at to (through whatever translation lies between) who it saw. A
// connected UDP socket takes only replies from to itself, so an answer proves the reply was
// translated back.
func askWho(ns *netns.NS, proto string, to netip.AddrPort) (string, error) {
	var c net.Conn
	if err := ns.Do(func() (err error) {
		c, err = net.DialTimeout(proto, to.String(), 3*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if proto == "tcp" {
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if _, err := c.Write([]byte("who")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// pathCounts sums the host's counters by hook and reason over its interfaces, e.g. "from_net
// PASS_NAT".
func pathCounts(t *testing.T, set *maps.Set) map[string]uint64 {
	t.Helper()
	cs, err := set.Counters.List()
	if err != nil {
		t.Fatal(err)
	}
	sum := map[string]uint64{}
	for _, c := range cs {
		sum[c.Hook.String()+" "+c.Reason.String()] += c.Packets
	}
	return sum
}

// Flows the kernel translates with kube-proxy's rules keep working with the eBPF fast path on,
// in both directions, and the counters show which path carried each: ClusterIP to a backend on
// another host and on the same host, hairpin, NodePort from an outside client behind a BIRD
// gateway with and without SNAT, Docker's published port, masquerade, a headless Service, and a
// host-networked client; the backend's ingress policy sees the client pod, or the node after
// SNAT, and the client's egress policy sees the Service's backend.
func TestKernelNATServices(t *testing.T) {
	c := cluster.New(t)
	outside := netip.MustParsePrefix("198.18.1.0/24")
	gwPeer := bgpPeer("198.18.0.1")
	gwPeer.Accept = []netip.Prefix{outside}
	if _, err := c.DS.BGPPeers().Create(t.Context(), gwPeer.Name, gwPeer); err != nil {
		t.Fatal(err)
	}
	vm100 := c.AddHost("vm100", "198.18.0.100/24", "--bgp")
	vm101 := c.AddHost("vm101", "198.18.0.101/24", "--bgp")
	gw, client := outsideGateway(t, c, []*cluster.Host{vm100, vm101})
	gwIP := netip.MustParseAddr("198.18.0.1")
	serveWho(t, gw.NS(), netip.AddrPortFrom(gwIP, backendPort))

	wA := c.AddWorkload(vm100, "nata") // the client pod
	wB := c.AddWorkload(vm100, "natb") // a backend beside it
	wR := c.AddWorkload(vm101, "natr") // a backend on another host
	for _, w := range []*cluster.Workload{wA, wB, wR} {
		w.WaitProgrammed(t)
		serveWho(t, w.NS, netip.AddrPortFrom(w.IP, backendPort))
	}
	svcs := func(node string) []kubeproxy.Service {
		be := func(w *cluster.Workload) netip.AddrPort { return netip.AddrPortFrom(w.IP, backendPort) }
		var out []kubeproxy.Service
		for _, proto := range []string{"tcp", "udp"} {
			p := strings.ToUpper(proto)
			out = append(out,
				kubeproxy.Service{Name: "REMOTE-" + p, ClusterIP: svcRemote, Proto: proto, Port: svcPort, NodePort: nodePortRemote, Backend: be(wR), OnNode: node == "vm101"},
				kubeproxy.Service{Name: "LOCAL-" + p, ClusterIP: svcLocal, Proto: proto, Port: svcPort, NodePort: nodePortLocal, Local: true, Backend: be(wB), OnNode: node == "vm100"},
				kubeproxy.Service{Name: "SELF-" + p, ClusterIP: svcSelf, Proto: proto, Port: svcPort, Backend: be(wA), OnNode: node == "vm100"})
		}
		return out
	}
	for _, h := range []*cluster.Host{vm100, vm101} {
		h.NS.IPTablesRestore(t, kubeproxy.Rules("198.19.0.0/16", svcs(h.Name)))
	}
	// Docker's published port (docker run -p 8088:8080) to the backend beside the client, as
	// Docker writes it in the nat table for its default bridge (no docker0 exists here, so
	// "! -i docker0" matches every interface): DNAT of what comes in to, or is sent by the node
	// to, any of the node's addresses.
	for _, args := range [][]string{
		{"-N", "DOCKER"},
		{"-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"},
		{"-A", "OUTPUT", "!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"},
		{"-A", "DOCKER", "-i", "docker0", "-j", "RETURN"},
		{"-A", "DOCKER", "!", "-i", "docker0", "-p", "tcp", "-m", "tcp", "--dport", fmt.Sprint(publishedPort), "-j", "DNAT", "--to-destination", netip.AddrPortFrom(wB.IP, backendPort).String()},
		{"-A", "DOCKER", "!", "-i", "docker0", "-p", "udp", "-m", "udp", "--dport", fmt.Sprint(publishedPort), "-j", "DNAT", "--to-destination", netip.AddrPortFrom(wB.IP, backendPort).String()},
	} {
		vm100.NS.MustRun(t, "iptables", append([]string{"-t", "nat"}, args...)...)
	}
	// Masquerade ("NAT outgoing") of the pool's traffic to the gateway's own address, which lies
	// outside Margay's routes: what from_wep leaves to the kernel.
	vm100.NS.MustRun(t, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "198.19.0.0/16", "-d", gwIP.String()+"/32", "-j", "MASQUERADE")
	// A node's own sockets route a Service's address before kube-proxy's OUTPUT rule translates
	// it: like a real node, the lab's get a default route (to the gateway).
	for _, h := range []*cluster.Host{vm100, vm101} {
		h.NS.RouteVia(t, "0.0.0.0/0", "198.18.0.1", "ens32")
	}
	sets := map[string]*maps.Set{"vm100": vm100.Maps(t), "vm101": vm101.Maps(t)}
	// The outside network from BIRD, and each host's block from the other over the mesh: until
	// the mesh is up the gateway carries pod traffic (the hosts' default route), past the eBPF
	// path the cases count.
	blocks := map[string]netip.Prefix{"vm100": blockOf(t, c, "vm100"), "vm101": blockOf(t, c, "vm101")}
	poll.Until(t, "the outside network from BIRD and the other host's block over the mesh", 60*time.Second, func() error {
		for name, set := range sets {
			if rt, err := set.Routes.Get(outside); err != nil || rt.Kind() != maps.RemoteBlock {
				return fmt.Errorf("%s: %+v, %v", name, rt, err)
			}
		}
		if err := routed(sets["vm100"], blocks["vm101"], vm101.Addr.Addr()); err != nil {
			return fmt.Errorf("vm100: %w", err)
		}
		if err := routed(sets["vm101"], blocks["vm100"], vm100.Addr.Addr()); err != nil {
			return fmt.Errorf("vm101: %w", err)
		}
		return nil
	})

	vm100IP, clientIP := vm100.Addr.Addr(), netip.MustParseAddr("198.18.1.2")
	type path struct {
		host, counter string // a counter that must grow: which path carried a direction
	}
	// paths lists the request's counters, then the reply's.
	cases := []struct {
		name  string
		from  *netns.NS
		to    netip.AddrPort
		saw   netip.Addr // the source the backend saw
		paths []path
	}{
		{"ClusterIP, backend on another host", wA.NS, netip.AddrPortFrom(svcRemote, svcPort), wA.IP,
			[]path{{"vm100", "from_wep PASS_NO_ROUTE"}, {"vm100", "nf_policy PASS_NAT"}, {"vm101", "from_net FWD_LOCAL"},
				{"vm101", "from_wep FWD_REMOTE"}, {"vm100", "from_net PASS_NAT"}, {"vm100", "to_wep PASS_DELIVER"}}},
		{"ClusterIP, backend on the same host", wA.NS, netip.AddrPortFrom(svcLocal, svcPort), wA.IP,
			[]path{{"vm100", "from_wep PASS_NO_ROUTE"}, {"vm100", "nf_policy PASS_NAT"}, {"vm100", "to_wep PASS_DELIVER"},
				{"vm100", "from_wep PASS_NAT"}}},
		{"hairpin: the Service sends the client to itself", wA.NS, netip.AddrPortFrom(svcSelf, svcPort), vm100IP,
			[]path{{"vm100", "from_wep PASS_NO_ROUTE"}, {"vm100", "nf_policy PASS_NAT"}, {"vm100", "to_wep PASS_DELIVER"},
				{"vm100", "from_wep PASS_KERNEL"}}},
		{"NodePort, externalTrafficPolicy Cluster (SNAT to the node)", client, netip.AddrPortFrom(vm100IP, nodePortRemote), vm100IP,
			// vm101 sees vm100's address: the kernel's both ways (its conntrack must know the
			// request, or kube-proxy's KUBE-FORWARD drops the TCP reply as INVALID).
			[]path{{"vm100", "from_net PASS_KERNEL"}, {"vm101", "from_net PASS_KERNEL"}, {"vm101", "to_wep PASS_DELIVER"},
				{"vm101", "from_wep PASS_KERNEL"}, {"vm101", "nf_policy PASS_KERNEL"}}},
		{"NodePort, externalTrafficPolicy Local (no SNAT)", client, netip.AddrPortFrom(vm100IP, nodePortLocal), clientIP,
			[]path{{"vm100", "from_net PASS_KERNEL"}, {"vm100", "to_wep PASS_DELIVER"},
				{"vm100", "from_wep PASS_NAT"}, {"vm100", "nf_policy PASS_NAT"}}},
		{"Docker's published port, from outside", client, netip.AddrPortFrom(vm100IP, publishedPort), clientIP,
			[]path{{"vm100", "from_net PASS_KERNEL"}, {"vm100", "to_wep PASS_DELIVER"},
				{"vm100", "from_wep PASS_NAT"}, {"vm100", "nf_policy PASS_NAT"}}},
		{"Docker's published port, from a pod on the node", wA.NS, netip.AddrPortFrom(vm100IP, publishedPort), wA.IP,
			[]path{{"vm100", "from_wep PASS_KERNEL"}, {"vm100", "nf_policy PASS_NAT"}, {"vm100", "to_wep PASS_DELIVER"},
				{"vm100", "from_wep PASS_NAT"}}},
		{"Docker's published port, from the node", vm100.NS, netip.AddrPortFrom(vm100IP, publishedPort), vm100IP,
			[]path{{"vm100", "to_wep PASS_DELIVER"},
				{"vm100", "from_wep PASS_KERNEL"}}},
		{"masquerade: a pod to an address outside Margay's routes, SNAT to the node", wA.NS, netip.AddrPortFrom(gwIP, backendPort), vm100IP,
			[]path{{"vm100", "from_wep PASS_NO_ROUTE"},
				{"vm100", "from_net PASS_KERNEL"}, {"vm100", "to_wep PASS_DELIVER"}}},
		{"headless: the backend's own address, no translation", wA.NS, netip.AddrPortFrom(wR.IP, backendPort), wA.IP,
			[]path{{"vm100", "from_wep FWD_REMOTE"}, {"vm101", "from_net FWD_LOCAL"},
				{"vm101", "from_wep FWD_REMOTE"}, {"vm100", "from_net FWD_LOCAL"}}},
		{"host-networked client, backend on another host", vm100.NS, netip.AddrPortFrom(svcRemote, svcPort), vm100IP,
			[]path{{"vm101", "from_net PASS_KERNEL"}, {"vm101", "to_wep PASS_DELIVER"},
				{"vm101", "from_wep PASS_KERNEL"}, {"vm101", "nf_policy PASS_KERNEL"}, {"vm100", "from_net PASS_KERNEL"}}},
		{"host-networked client, backend on the same host", vm100.NS, netip.AddrPortFrom(svcLocal, svcPort), vm100IP,
			[]path{{"vm100", "to_wep PASS_DELIVER"},
				{"vm100", "from_wep PASS_KERNEL"}, {"vm100", "nf_policy PASS_NAT"}}},
	}
	for _, tc := range cases {
		for _, proto := range []string{"tcp", "udp"} {
			t.Run(tc.name+"/"+proto, func(t *testing.T) {
				before := map[string]map[string]uint64{}
				for name, set := range sets {
					before[name] = pathCounts(t, set)
				}
				// The first try may race BGP carrying the blocks.
				poll.Until(t, fmt.Sprintf("%s %s", proto, tc.to), 30*time.Second, func() error {
					saw, err := askWho(tc.from, proto, tc.to)
					if err != nil {
						return err
					}
					if saw != tc.saw.String() {
						return fmt.Errorf("the backend saw %q, want %s", saw, tc.saw)
					}
					return nil
				})
				for _, name := range []string{"vm100", "vm101"} {
					after := pathCounts(t, sets[name])
					var grew []string
					for k, v := range after {
						if v > before[name][k] {
							grew = append(grew, fmt.Sprintf("%s +%d", k, v-before[name][k]))
						}
					}
					slices.Sort(grew)
					t.Logf("%s: %s", name, strings.Join(grew, ", "))
				}
				for _, p := range tc.paths {
					if after := pathCounts(t, sets[p.host])[p.counter]; after <= before[p.host][p.counter] {
						t.Errorf("on %s, %s did not count this flow (%d before, %d after)", p.host, p.counter, before[p.host][p.counter], after)
					}
				}
			})
		}
	}

	// The client's host keeps the Service flows marked, as margayctl conntrack shows them.
	flows, err := sets["vm100"].Conntrack.List()
	if err != nil {
		t.Fatal(err)
	}
	marked := 0
	for _, f := range flows {
		if f.KernelNAT {
			marked++
		}
	}
	if marked == 0 {
		t.Errorf("no conntrack entry on vm100 is marked as translated by the kernel: %v", flows)
	}

	// Ingress policy on the backend sees the client pod through a ClusterIP (on another host,
	// from_net; on the same host, to_wep), the outside client through a NodePort without SNAT,
	// and the node after a NodePort's SNAT: allowing only the client pod keeps the first two and
	// cuts the others; allowing only the node turns that round.
	setWorkloadLabels(t, c.DS, wR, "default", map[string]string{"app": "backend", "tier": "remote"})
	setWorkloadLabels(t, c.DS, wB, "default", map[string]string{"app": "backend"})
	tcp := datastore.Protocol(6)
	allowFrom := func(a netip.Addr) datastore.Policy {
		return datastore.Policy{Version: 1, Name: "backend-from", Selector: `app == "backend"`,
			Ingress: []datastore.Rule{{Action: "allow", Protocol: &tcp, Source: datastore.EntityRule{Nets: []netip.Prefix{netip.PrefixFrom(a, 32)}}}}}
	}
	reaches := func(what string, from *netns.NS, to netip.AddrPort, saw netip.Addr) {
		t.Helper()
		if got, err := askWho(from, "tcp", to); err != nil || got != saw.String() {
			t.Errorf("%s (%s): the backend saw %q, want %s (%v)", what, to, got, saw, err)
		}
	}
	blocked := func(what string, from *netns.NS, proto string, to netip.AddrPort) {
		t.Helper()
		if got, err := askWho(from, proto, to); err == nil {
			t.Errorf("%s (%s %s) reached the backend (it saw %q)", what, proto, to, got)
		}
	}
	revs := putPolicies(t, c.DS, nil, []datastore.Policy{allowFrom(wA.IP)})
	waitEnforced(t, []*cluster.Host{vm100, vm101}, revs, 30*time.Second)
	reaches("ClusterIP from the allowed pod, backend on another host", wA.NS, netip.AddrPortFrom(svcRemote, svcPort), wA.IP)
	reaches("ClusterIP from the allowed pod, backend on the same host", wA.NS, netip.AddrPortFrom(svcLocal, svcPort), wA.IP)
	blocked("NodePort through SNAT, the policy allowing only the pod", client, "tcp", netip.AddrPortFrom(vm100IP, nodePortRemote))
	blocked("NodePort without SNAT, the policy allowing only the pod", client, "tcp", netip.AddrPortFrom(vm100IP, nodePortLocal))

	revs = putPolicies(t, c.DS, nil, []datastore.Policy{allowFrom(vm100IP)})
	waitEnforced(t, []*cluster.Host{vm100, vm101}, revs, 30*time.Second)
	reaches("NodePort through SNAT, the policy allowing only the node", client, netip.AddrPortFrom(vm100IP, nodePortRemote), vm100IP)
	blocked("ClusterIP from the pod, the policy allowing only the node", wA.NS, "tcp", netip.AddrPortFrom(svcRemote, svcPort))

	// Egress policy sees the Service's backend, as Calico's does, and nf_policy drops what it
	// denies after the kernel's DNAT.
	setWorkloadLabels(t, c.DS, wA, "default", map[string]string{"app": "client"})
	egress := func(rules ...datastore.Rule) datastore.Policy {
		return datastore.Policy{Version: 1, Name: "client-egress", Selector: `app == "client"`,
			Types: []datastore.PolicyType{datastore.PolicyEgress}, Egress: rules}
	}
	drops := func() uint64 { return pathCounts(t, sets["vm100"])["nf_policy DROP_POLICY_EGRESS"] }
	to := func(p netip.Prefix) datastore.EntityRule { return datastore.EntityRule{Nets: []netip.Prefix{p}} }

	// Allowed only the backend on vm101 by its address: it reaches that backend through its
	// ClusterIP (whose address no rule names), and not the backend beside it through the other.
	revs = putPolicies(t, c.DS, []string{"backend-from"}, []datastore.Policy{allowFrom(wA.IP),
		egress(datastore.Rule{Action: "allow", Destination: to(netip.PrefixFrom(wR.IP, 32))})})
	waitEnforced(t, []*cluster.Host{vm100, vm101}, revs, 30*time.Second)
	before := drops()
	reaches("ClusterIP to the backend the egress policy allows", wA.NS, netip.AddrPortFrom(svcRemote, svcPort), wA.IP)
	for _, proto := range []string{"tcp", "udp"} {
		blocked("ClusterIP to a backend the egress policy does not allow", wA.NS, proto, netip.AddrPortFrom(svcLocal, svcPort))
	}
	if after := drops(); after <= before {
		t.Errorf("nf_policy counted no egress drop on vm100 (%d before, %d after)", before, after)
	}

	// Denied the backend on vm101 by its labels, everything else allowed: its ClusterIP is cut,
	// the other Service still works.
	revs = putPolicies(t, c.DS, nil, []datastore.Policy{allowFrom(wA.IP),
		egress(datastore.Rule{Action: "deny", Destination: datastore.EntityRule{Selector: `tier == "remote"`}}, datastore.Rule{Action: "allow"})})
	waitEnforced(t, []*cluster.Host{vm100, vm101}, revs, 30*time.Second)
	before = drops()
	blocked("ClusterIP to a backend the egress policy denies by label", wA.NS, "tcp", netip.AddrPortFrom(svcRemote, svcPort))
	reaches("ClusterIP to a backend the egress policy does not deny", wA.NS, netip.AddrPortFrom(svcLocal, svcPort), wA.IP)
	if after := drops(); after <= before {
		t.Errorf("nf_policy counted no egress drop of the denied backend on vm100 (%d before, %d after)", before, after)
	}

	// Allowed only the Service's own address: the policy sees the backend, so nothing passes.
	revs = putPolicies(t, c.DS, nil, []datastore.Policy{allowFrom(wA.IP),
		egress(datastore.Rule{Action: "allow", Destination: to(netip.PrefixFrom(svcRemote, 32))})})
	waitEnforced(t, []*cluster.Host{vm100, vm101}, revs, 30*time.Second)
	blocked("ClusterIP, the egress policy allowing only the ClusterIP itself", wA.NS, "tcp", netip.AddrPortFrom(svcRemote, svcPort))
}
