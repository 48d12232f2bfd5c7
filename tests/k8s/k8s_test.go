//go:build k8s

package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/lab/kube"
	"github.com/margaynet/margay/tests/poll"
)

// The tests run in this order on the suite's lab; the last ones (the rolling update, the
// DaemonSet's removal) change what the earlier ones rely on.

// Margay's DaemonSet, applied from deploy/k8s/margay.yaml, is Ready on every node: its init
// container installed the plugin, the network config naming the node, the plugin's kubeconfig and
// datastore file; the agents attached their programs and meshed over BGP with each other and the
// gateway; the nodes are Ready; the lab's Deployment has a pod per node and they reach each other.
func TestDaemonSet(t *testing.T) {
	l := k8sLab(t)
	for _, n := range l.Nodes {
		files := hostRun(t, l, n.Name, "sh", "-c", "ls /opt/cni/bin; cat /etc/cni/net.d/10-margay.conflist /etc/margay/datastore.yaml; "+
			"test -s /etc/cni/net.d/margay-kubeconfig && echo kubeconfig-written")
		for _, want := range []string{"margay-cni\n", "margay-cni-direct\n", `"nodeName": "` + n.Name + `"`, "kubeconfig-written",
			"- http://198.18.0.2:2379"} {
			if !strings.Contains(files, want) {
				t.Errorf("%s: the install-cni container's files lack %q:\n%s", n.Name, want, files)
			}
		}
		// Two other nodes and the gateway.
		poll.Until(t, n.Name+": 3 BGP peers up", 2*time.Minute, func() error {
			out, err := l.HostRun(t.Context(), n.Name, "margayctl", "node", "status")
			if c := strings.Count(out, "| up "); err != nil || c != 3 {
				return fmt.Errorf("%d peers up (%v):\n%s", c, err, out)
			}
			return nil
		})
		// The eBPF dataplane is attached on the uplink, pinned in the node's own bpffs (bpftool 7.1
		// of Debian 12 shows no tcx links by interface; XDP it does).
		links := hostRun(t, l, n.Name, "ls", "/sys/fs/bpf/margay/links")
		xdp := hostRun(t, l, n.Name, "bpftool", "net", "show", "dev", "ens32")
		if !strings.Contains(links, "ens32_from_net\n") || !strings.Contains(links, "ens32_xdp_from_net\n") ||
			!regexp.MustCompile(`(?m)^ens32\(\d+\) \w+ id \d+`).MatchString(xdp) {
			t.Errorf("%s: ens32 lacks Margay's tcx or XDP programs: pinned links\n%s\nbpftool net show dev ens32\n%s", n.Name, links, xdp)
		}
	}
	if err := l.Check(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// Pods of a namespace spread over the nodes get addresses of Margay's pool and reach each other
// across nodes (ICMP, TCP); their workload records carry the pod's labels and its namespace's
// (pcns.<key>), read from the API server by margay-cni.
func TestPodsAcrossNodes(t *testing.T) {
	l := k8sLab(t)
	apply(t, l, namespaceManifest("k8st-a", map[string]string{"team": "blue"}))
	for _, n := range l.Nodes {
		apply(t, l, echoPod("echo-"+n.Name, "k8st-a", n.Name, l.Images.Busybox, map[string]string{"app": "echo", "tier": "t-" + n.Name}))
	}
	pods := waitPods(t, l, "k8st-a", "app=echo", len(l.Nodes))
	for _, p := range pods {
		if !l.Cluster.PodCIDR.Contains(p.IP) {
			t.Errorf("%s has %s, outside Margay's pool %s", p.Name, p.IP, l.Cluster.PodCIDR)
		}
	}
	for _, from := range pods {
		for _, to := range pods {
			if from.Name == to.Name {
				continue
			}
			if err := ping(t, l, from, to.IP.String()); err != nil {
				t.Errorf("ping %s → %s: %v", from.Name, to.Name, err)
			}
			if err := tcpEcho(t, l, from, to.IP.String()+":8080"); err != nil {
				t.Errorf("TCP %s → %s: %v", from.Name, to.Name, err)
			}
		}
	}
	for _, p := range pods {
		w := findWorkload(t, l, p)
		for k, v := range map[string]string{"app": "echo", "tier": "t-" + p.Node, "pcns.team": "blue",
			"projectcalico.org/namespace": "k8st-a", "projectcalico.org/orchestrator": "k8s"} {
			if w.Labels[k] != v {
				t.Errorf("%s's workload: label %s = %q, want %q (labels %v)", p.Name, k, w.Labels[k], v, w.Labels)
			}
		}
		if len(w.IPv4) != 1 || w.IPv4[0].Addr() != p.IP {
			t.Errorf("%s's workload has %v, the pod %s", p.Name, w.IPv4, p.IP)
		}
	}
}

// findWorkload is the workload record of a pod on its node.
func findWorkload(t *testing.T, l *kube.Lab, p kube.Pod) datastore.Workload {
	t.Helper()
	for _, w := range workloads(t, l, p.Node) {
		if w.Namespace == p.Namespace && (w.Name == p.Name || strings.HasSuffix(w.Name, "."+p.Name)) {
			return w
		}
	}
	t.Fatalf("no workload record of %s/%s on %s", p.Namespace, p.Name, p.Node)
	return datastore.Workload{}
}

// A NetworkPolicy applied with kubectl is enforced by the agents (margay-agent
// --k8s-policy-sync turns it into a Margay policy), a second one opens what it allows, and
// deleting them lifts them.
func TestNetworkPolicy(t *testing.T) {
	l := k8sLab(t)
	pods := waitPods(t, l, "k8st-a", "app=echo", len(l.Nodes))
	apply(t, l, namespaceManifest("k8st-b", map[string]string{"team": "green"}))
	apply(t, l, echoPod("client", "k8st-b", l.Nodes[0].Name, l.Images.Busybox, map[string]string{"app": "client"}))
	client := waitPods(t, l, "k8st-b", "app=client", 1)[0]
	var target kube.Pod // on another node than the client
	for _, p := range pods {
		if p.Node != client.Node {
			target = p
		}
	}
	addr := target.IP.String() + ":8080"
	if err := tcpEcho(t, l, client, addr); err != nil {
		t.Fatalf("before any policy: %v", err)
	}
	apply(t, l, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: k8st-a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`)
	waitBlocked(t, "TCP "+client.Name+" → "+addr+" under deny-ingress", func() error { return tcpEcho(t, l, client, addr) })
	waitBlocked(t, "ping under deny-ingress", func() error { return ping(t, l, client, target.IP.String()) })
	apply(t, l, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-green, namespace: k8st-a}
spec:
  podSelector: {matchLabels: {app: echo}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: green}}
      ports:
        - {protocol: TCP, port: echo}
`)
	poll.Until(t, "TCP allowed by allow-green (a named port)", time.Minute, func() error { return tcpEcho(t, l, client, addr) })
	// ICMP is not among what allow-green allows.
	if err := ping(t, l, client, target.IP.String()); err == nil {
		t.Errorf("ping %s → %s passed: allow-green allows TCP to echo only", client.Name, target.Name)
	}
	kubectl(t, l, "delete", "networkpolicy", "-n", "k8st-a", "deny-ingress", "allow-green")
	poll.Until(t, "ping once the policies are deleted", time.Minute, func() error { return ping(t, l, client, target.IP.String()) })
}

// waitBlocked waits until f fails, then wants it to keep failing (a policy in force does not
// flap).
func waitBlocked(t *testing.T, what string, f func() error) {
	t.Helper()
	poll.Until(t, what+" blocked", time.Minute, func() error {
		if f() == nil {
			return fmt.Errorf("still passes")
		}
		return nil
	})
	for range 2 {
		if err := f(); err == nil {
			t.Fatalf("%s: passed again after it was blocked", what)
		}
	}
}

// Services through a real kube-proxy (iptables mode, its own chains in each node), with Margay's
// eBPF dataplane forwarding the translated flows: a ClusterIP to a pod on the client's node and
// to one on another node, a NodePort reached by the outside client behind the gateway (on the
// node of its pod and through another one), and a headless Service, whose EndpointSlice lists the pod
// addresses and for which kube-proxy writes nothing.
func TestServices(t *testing.T) {
	l := k8sLab(t)
	ns := "k8st-svc"
	apply(t, l, namespaceManifest(ns, map[string]string{"team": "svc"}))
	n0, n1 := l.Nodes[0].Name, l.Nodes[1].Name
	apply(t, l, echoPod("srv-local", ns, n0, l.Images.Busybox, map[string]string{"app": "srv", "srv": "local"}))
	apply(t, l, echoPod("srv-remote", ns, n1, l.Images.Busybox, map[string]string{"app": "srv", "srv": "remote"}))
	apply(t, l, echoPod("client", ns, n0, l.Images.Busybox, map[string]string{"app": "client"}))
	waitPods(t, l, ns, "app=srv", 2)
	client := waitPods(t, l, ns, "app=client", 1)[0]
	svc := func(name, typ, selector, extra string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: %s}
spec:
  type: %s
  selector: {%s}
  ports:
    - {name: echo, protocol: TCP, port: 80, targetPort: 8080%s}
`, name, ns, typ, selector, extra)
	}
	apply(t, l, svc("svc-local", "ClusterIP", "srv: local", ""))
	apply(t, l, svc("svc-remote", "ClusterIP", "srv: remote", ""))
	apply(t, l, svc("svc-np", "NodePort", "srv: remote", ", nodePort: 30080"))
	apply(t, l, strings.Replace(svc("svc-headless", "ClusterIP", "app: srv", ""), "  type: ClusterIP\n", "  clusterIP: None\n", 1))
	for _, name := range []string{"svc-local", "svc-remote"} {
		ip := strings.TrimSpace(kubectl(t, l, "get", "service", "-n", ns, name, "-o", "jsonpath={.spec.clusterIP}"))
		if a, err := netip.ParseAddr(ip); err != nil || !kube.ServiceCIDR.Contains(a) {
			t.Fatalf("%s: ClusterIP %q outside %s", name, ip, kube.ServiceCIDR)
		}
		poll.Until(t, "TCP "+client.Name+" → "+name+" "+ip+":80", time.Minute, func() error {
			return tcpEcho(t, l, client, ip+":80")
		})
	}
	// The outside client, behind the gateway, to the NodePort on the pod's node, and on another
	// node, whose kernel translates and masquerades the flow to the pod: the pod's node sees
	// that node's address as the source (from_net leaves such a flow to the kernel both ways).
	for _, n := range []kube.Node{l.Nodes[1], l.Nodes[0]} {
		addr := n.Addr.String()
		poll.Until(t, "outside → NodePort "+addr+":30080", time.Minute, func() error {
			want := fmt.Sprintf("np-%d", time.Now().UnixNano())
			out, err := outside(t, l, "sh", "-c", fmt.Sprintf("echo %s | busybox nc -w 3 %s 30080", want, addr))
			if err != nil {
				return err
			}
			if strings.TrimSpace(out) != want {
				return fmt.Errorf("got %q, want %q", out, want)
			}
			return nil
		})
	}
	// Headless: no ClusterIP, the pods' addresses in its EndpointSlice, reachable; no rules.
	if ip := kubectl(t, l, "get", "service", "-n", ns, "svc-headless", "-o", "jsonpath={.spec.clusterIP}"); ip != "None" {
		t.Errorf("svc-headless has ClusterIP %q", ip)
	}
	var addrs []string
	poll.Until(t, "svc-headless's EndpointSlice lists both pods", time.Minute, func() error {
		out := kubectl(t, l, "get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=svc-headless",
			"-o", "jsonpath={.items[*].endpoints[*].addresses[*]}")
		addrs = strings.Fields(out)
		if len(addrs) != 2 {
			return fmt.Errorf("addresses %q", addrs)
		}
		return nil
	})
	for _, a := range addrs {
		if err := tcpEcho(t, l, client, a+":8080"); err != nil {
			t.Errorf("headless endpoint %s: %v", a, err)
		}
	}
	for _, n := range l.Nodes {
		rules := hostRun(t, l, n.Name, "iptables-save", "-t", "nat")
		if !strings.Contains(rules, ns+"/svc-remote:echo") {
			t.Errorf("%s: kube-proxy's chains lack svc-remote:\n%s", n.Name, rules)
		}
		if strings.Contains(rules, "svc-headless") {
			t.Errorf("%s: kube-proxy wrote rules for the headless Service", n.Name)
		}
	}
}

// outside runs a command in the outside client's namespace (behind the gateway).
func outside(t *testing.T, l *kube.Lab, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	return l.HostRun(ctx, "margay-outside", argv...)
}

// Deleting pods cleans up everything the plugin and the agents made for them, on every node: the
// workload records, the addresses, the veths, the routes and the BPF endpoints.
func TestPodDeletionCleansUp(t *testing.T) {
	l := k8sLab(t)
	kubectl(t, l, "delete", "namespace", "k8st-a", "k8st-b", "k8st-svc", "--ignore-not-found", "--timeout=120s")
	for _, n := range l.Nodes {
		poll.Until(t, n.Name+": only the lab's pod left", time.Minute, func() error {
			ws := workloadsErr(l, n.Name)
			if ws == nil {
				return fmt.Errorf("no workload list")
			}
			if len(ws) != 1 || ws[0].Namespace != "default" {
				return fmt.Errorf("workloads %v", names(ws))
			}
			links := hostRun(t, l, n.Name, "ip", "-o", "link", "show")
			if c := strings.Count(links, ": cali"); c != 1 {
				return fmt.Errorf("%d cali veths", c)
			}
			routes := hostRun(t, l, n.Name, "ip", "route", "show")
			if c := len(regexp.MustCompile(`(?m)^198\.19\.\S+ dev cali`).FindAllString(routes, -1)); c != 1 {
				return fmt.Errorf("%d workload routes:\n%s", c, routes)
			}
			eps := hostRun(t, l, n.Name, "margayctl", "endpoints")
			if c := strings.Count(eps, "cali"); c != 1 {
				return fmt.Errorf("%d BPF endpoints:\n%s", c, eps)
			}
			return nil
		})
	}
	if out, err := l.HostRun(t.Context(), l.Nodes[0].Name, "margayctl", "ipam", "check"); err != nil {
		t.Errorf("ipam check: %v\n%s", err, out)
	}
}

func workloadsErr(l *kube.Lab, node string) []datastore.Workload {
	out, err := l.HostRun(context.Background(), node, "margayctl", "workload", "list", "-o", "json")
	if err != nil {
		return nil
	}
	var ws []datastore.Workload
	if json.Unmarshal([]byte(out), &ws) != nil {
		return nil
	}
	return ws
}

func names(ws []datastore.Workload) []string {
	var n []string
	for _, w := range ws {
		n = append(n, w.Namespace+"/"+w.Name)
	}
	return n
}

// A rolling update of the DaemonSet to a new image (kubectl set image) replaces every agent, one
// node at a time, and a ping across nodes between two of the lab's pods loses no packet: the
// dataplane keeps forwarding while its agent restarts.
func TestRollingUpdate(t *testing.T) {
	l := k8sLab(t)
	pods := waitPods(t, l, "default", "app="+kube.LabDeployment, len(l.Nodes))
	from, to := pods[0], pods[1]
	if _, err := exec(t, l, from, "sh", "-c", fmt.Sprintf("ping -i 0.2 %s >/tmp/ping.log 2>&1 & echo $! >/tmp/ping.pid", to.IP)); err != nil {
		t.Fatal(err)
	}
	before := dsPods(t, l)
	kubectl(t, l, "set", "image", "-n", "kube-system", "daemonset/margay-node",
		"install-cni="+l.Images.NodeNext, "margay-agent="+l.Images.NodeNext)
	kubectl(t, l, "rollout", "status", "-n", "kube-system", "daemonset/margay-node", "--timeout=5m")
	if err := l.WaitMargay(t.Context()); err != nil {
		t.Fatal(err)
	}
	after := dsPods(t, l)
	for name := range after {
		if before[name] {
			t.Errorf("agent pod %s was not replaced", name)
		}
	}
	out, err := exec(t, l, from, "sh", "-c", "kill -INT $(cat /tmp/ping.pid); sleep 1; cat /tmp/ping.log")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no ping summary:\n%s", out)
	}
	sent, _ := strconv.Atoi(m[1])
	got, _ := strconv.Atoi(m[2])
	t.Logf("ping %s → %s during the rolling update: %d sent, %d received", from.Name, to.Name, sent, got)
	if sent < 20 || got != sent {
		t.Errorf("ping during the rolling update: %d sent, %d received", sent, got)
	}
}

// dsPods are the DaemonSet's pods' names.
func dsPods(t *testing.T, l *kube.Lab) map[string]bool {
	t.Helper()
	out := kubectl(t, l, "get", "pods", "-n", "kube-system", "-l", "k8s-app=margay-node", "-o", "jsonpath={.items[*].metadata.name}")
	m := map[string]bool{}
	for _, n := range strings.Fields(out) {
		m[n] = true
	}
	return m
}

// kubectl delete -f of the manifest (--ignore-not-found: the controller manager deletes the
// token Secret of margay-cni with its ServiceAccount), then margay-agent --cleanup on every node,
// leaves the nodes without anything of Margay's: no pin, no program attached, no route of
// Margay's, no workload veth.
func TestRemoval(t *testing.T) {
	l := k8sLab(t)
	kubectl(t, l, "delete", "deployment", kube.LabDeployment, "--wait=true", "--timeout=120s")
	poll.Until(t, "the lab's pods gone", 2*time.Minute, func() error {
		pods, err := l.Cluster.Pods(t.Context(), "default", "app="+kube.LabDeployment)
		if err != nil || len(pods) > 0 {
			return fmt.Errorf("%d pods (%v)", len(pods), err)
		}
		return nil
	})
	manifest, err := kube.LabManifest("../../deploy/k8s/margay.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	if out, err := l.Cluster.KubectlIn(ctx, strings.NewReader(string(manifest)), "delete", "-f", "-", "--ignore-not-found", "--wait=true"); err != nil {
		t.Fatalf("kubectl delete -f: %v\n%s", err, out)
	}
	poll.Until(t, "the DaemonSet's pods gone", 2*time.Minute, func() error {
		if p := dsPods(t, l); len(p) > 0 {
			return fmt.Errorf("pods %v", p)
		}
		return nil
	})
	for _, n := range l.Nodes {
		hostRun(t, l, n.Name, "margay-agent", "--cleanup")
		out := hostRun(t, l, n.Name, "sh", "-c", "ls -A /sys/fs/bpf; bpftool net show dev ens32; ip route show proto 77; ip -o link show")
		for _, bad := range []*regexp.Regexp{regexp.MustCompile(`margay`), regexp.MustCompile(`cali`),
			regexp.MustCompile(`(?m)^ens32\(\d+\) \w+ id \d+`), regexp.MustCompile(`(?m)^198\.19\.`)} {
			if bad.MatchString(out) {
				t.Errorf("%s after removal and --cleanup: %q left:\n%s", n.Name, bad, out)
			}
		}
	}
}
