package k8s

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/k8s/podlabels"
	"github.com/margaynet/margay/control/policy"
)

// The semantics tests hold Margay's reading of converted NetworkPolicies (control/policy's
// reference evaluator, over endpoints labelled as margay-cni labels them) against Kubernetes's
// own meaning of the NetworkPolicies, computed here straight from the Kubernetes objects with
// apimachinery's label selectors.

type kpod struct {
	ns, name string
	labels   map[string]string
	ip       netip.Addr
}

type cluster struct {
	pods       []kpod
	nsLabels   map[string]map[string]string // as Kubernetes sees them: with kubernetes.io/metadata.name
	world      *policy.World
	externals  []netip.Addr
	namespaces []string
}

// newCluster builds the pods, and the Margay endpoints with the labels margay-cni gives them
// (podlabels.Of, what WorkloadLabels reads them into; its reading from a real API server is
// tested in labels_test.go, under the k8s build tag).
func newCluster(t testing.TB) *cluster {
	t.Helper()
	nsLabels := map[string]map[string]string{
		"prod":        {"team": "a", "env": "live"},
		"dev":         {"team": "b"},
		"ops":         nil,
		"kube-system": nil,
	}
	c := &cluster{
		pods: []kpod{
			{"prod", "web-1", map[string]string{"app": "web", "role": "fe"}, netip.MustParseAddr("10.0.0.1")},
			{"prod", "web-2", map[string]string{"app": "web"}, netip.MustParseAddr("10.0.0.2")},
			{"prod", "db", map[string]string{"app": "db", "tier": "be"}, netip.MustParseAddr("10.0.0.3")},
			{"dev", "web", map[string]string{"app": "web", "role": "fe"}, netip.MustParseAddr("10.0.1.1")},
			{"dev", "tool", map[string]string{"app": "tool"}, netip.MustParseAddr("10.0.1.2")},
			{"ops", "mon", map[string]string{"app": "mon", "role": "fe", "tier": "be"}, netip.MustParseAddr("10.0.2.1")},
			{"kube-system", "dns", map[string]string{"k8s-app": "kube-dns"}, netip.MustParseAddr("10.0.3.1")},
		},
		nsLabels:  map[string]map[string]string{},
		world:     &policy.World{Endpoints: map[netip.Addr]*policy.Endpoint{}},
		externals: []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.77"), netip.MustParseAddr("10.0.9.9")},
	}
	for ns, l := range nsLabels {
		c.namespaces = append(c.namespaces, ns)
		kl := map[string]string{"kubernetes.io/metadata.name": ns}
		for k, v := range l {
			kl[k] = v
		}
		c.nsLabels[ns] = kl
	}
	slices.Sort(c.namespaces)
	for _, p := range c.pods {
		l, err := podlabels.Of(pod(p.ns, p.name, "default", p.labels), namespace(p.ns, nsLabels[p.ns]), nil)
		if err != nil {
			t.Fatal(err)
		}
		c.world.Endpoints[p.ip] = &policy.Endpoint{Key: "node-1/" + p.ns + "." + p.name, Node: "node-1", Addr: p.ip, Labels: l}
	}
	return c
}

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func pod(ns, name, sa string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: sa}}
}

func (c *cluster) podAt(a netip.Addr) *kpod {
	for i := range c.pods {
		if c.pods[i].ip == a {
			return &c.pods[i]
		}
	}
	return nil
}

func k8sSelects(t testing.TB, ls *metav1.LabelSelector, l map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		t.Fatalf("selector %v: %v", ls, err)
	}
	return s.Matches(labels.Set(l))
}

// k8sAllowedDir is Kubernetes's verdict for one direction: target is the selected pod, the peer
// is at addr (the pod there, or nil).
func (c *cluster) k8sAllowedDir(t testing.TB, nps []*networkingv1.NetworkPolicy, target *kpod, egress bool, addr netip.Addr, peer *kpod, proto corev1.Protocol, port int32) bool {
	selected := false
	for _, np := range nps {
		if np.Namespace != target.ns || !k8sSelects(t, &np.Spec.PodSelector, target.labels) {
			continue
		}
		in, eg := len(np.Spec.PolicyTypes) == 0, len(np.Spec.PolicyTypes) == 0 && len(np.Spec.Egress) > 0
		for _, ty := range np.Spec.PolicyTypes {
			in = in || ty == networkingv1.PolicyTypeIngress
			eg = eg || ty == networkingv1.PolicyTypeEgress
		}
		type rule struct {
			peers []networkingv1.NetworkPolicyPeer
			ports []networkingv1.NetworkPolicyPort
		}
		var rules []rule
		switch {
		case egress && eg:
			for _, r := range np.Spec.Egress {
				rules = append(rules, rule{r.To, r.Ports})
			}
		case !egress && in:
			for _, r := range np.Spec.Ingress {
				rules = append(rules, rule{r.From, r.Ports})
			}
		default:
			continue
		}
		selected = true
		for _, r := range rules {
			if !k8sPortMatches(r.ports, proto, port) {
				continue
			}
			if len(r.peers) == 0 || slices.ContainsFunc(r.peers, func(p networkingv1.NetworkPolicyPeer) bool {
				return c.k8sPeerMatches(t, np, p, addr, peer)
			}) {
				return true
			}
		}
	}
	return !selected
}

func (c *cluster) k8sPeerMatches(t testing.TB, np *networkingv1.NetworkPolicy, p networkingv1.NetworkPolicyPeer, addr netip.Addr, peer *kpod) bool {
	switch {
	case p.IPBlock != nil:
		if !netip.MustParsePrefix(p.IPBlock.CIDR).Contains(addr) {
			return false
		}
		for _, e := range p.IPBlock.Except {
			if netip.MustParsePrefix(e).Contains(addr) {
				return false
			}
		}
		return true
	case p.NamespaceSelector != nil:
		return peer != nil && k8sSelects(t, p.NamespaceSelector, c.nsLabels[peer.ns]) &&
			(p.PodSelector == nil || k8sSelects(t, p.PodSelector, peer.labels))
	default:
		return peer != nil && peer.ns == np.Namespace && k8sSelects(t, p.PodSelector, peer.labels)
	}
}

func k8sPortMatches(ports []networkingv1.NetworkPolicyPort, proto corev1.Protocol, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := corev1.ProtocolTCP
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if pp != proto {
			continue
		}
		if p.Port == nil {
			return true
		}
		hi := p.Port.IntVal
		if p.EndPort != nil {
			hi = *p.EndPort
		}
		if p.Port.Type == intstr.Int && port >= p.Port.IntVal && port <= hi {
			return true
		}
	}
	return false
}

var (
	testProtos = map[corev1.Protocol]uint8{corev1.ProtocolTCP: 6, corev1.ProtocolUDP: 17, corev1.ProtocolSCTP: 132}
	testPorts  = []int32{53, 80, 443, 8000, 8080, 8081, 9000}
)

// compare checks every flow between pods, and between pods and the outside, against Kubernetes.
// It returns the number of flows checked.
func (c *cluster) compare(t testing.TB, nps []*networkingv1.NetworkPolicy) int {
	t.Helper()
	var ps []datastore.Policy
	for _, np := range nps {
		p, err := PolicyFromNetworkPolicy(np)
		if err != nil {
			t.Fatalf("%v", err)
		}
		ps = append(ps, p)
	}
	set, err := policy.NewSet(ps)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for _, p := range c.pods {
		addrs = append(addrs, p.ip)
	}
	addrs = append(addrs, c.externals...)
	n, bad := 0, 0
	for _, src := range addrs {
		for _, dst := range addrs {
			sp, dp := c.podAt(src), c.podAt(dst)
			if src == dst || (sp == nil && dp == nil) {
				continue
			}
			for proto, num := range testProtos {
				for _, port := range testPorts {
					want := (sp == nil || c.k8sAllowedDir(t, nps, sp, true, dst, dp, proto, port)) &&
						(dp == nil || c.k8sAllowedDir(t, nps, dp, false, src, sp, proto, port))
					got, _ := set.Allowed(c.world, policy.Flow{Src: src, Dst: dst, Proto: num, SrcPort: 40000, DstPort: uint16(port)})
					n++
					if got != want {
						bad++
						if bad <= 5 {
							t.Errorf("%s %s:%d -> %s: Margay allows=%v, Kubernetes allows=%v", proto, name(sp, src), port, name(dp, dst), got, want)
						}
					}
				}
			}
		}
	}
	if bad > 0 {
		var b strings.Builder
		for _, p := range ps {
			fmt.Fprintf(&b, "\n%s", mustJSON(p))
		}
		t.Errorf("%d of %d flows differ; policies:%s", bad, n, b.String())
	}
	return n
}

func name(p *kpod, a netip.Addr) string {
	if p == nil {
		return a.String()
	}
	return p.ns + "/" + p.name
}

var catalog = []string{`
metadata: {name: default-deny, namespace: prod}
spec: {podSelector: {}, policyTypes: [Ingress]}`, `
metadata: {name: fe-to-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: fe}}}]
    ports: [{port: 80}, {port: 8000, endPort: 8080}]`, `
metadata: {name: db, namespace: prod}
spec:
  podSelector: {matchExpressions: [{key: tier, operator: In, values: [be, cache]}]}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [a, b]}]}, podSelector: {matchLabels: {app: web}}}]
  - from: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.10/32]}}]
    ports: [{protocol: UDP}]`, `
metadata: {name: dev-egress, namespace: dev}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
  - to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.3/32]}}]
    ports: [{port: 443}]
  - to: [{namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [a]}]}}]
    ports: [{protocol: SCTP, port: 9000}]`, `
metadata: {name: ops, namespace: ops}
spec:
  podSelector: {matchExpressions: [{key: role, operator: Exists}]}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {}}]}]`, `
metadata: {name: dns, namespace: kube-system}
spec:
  podSelector: {matchExpressions: [{key: legacy, operator: DoesNotExist}]}
  ingress:
  - from: [{namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}}, {podSelector: {}}]
  - ports: [{protocol: UDP, port: 53}]`, `
metadata: {name: open, namespace: dev}
spec:
  podSelector: {matchLabels: {app: tool}}
  ingress: [{}]
  egress: [{}]`,
}

func TestNetworkPolicySemantics(t *testing.T) {
	c := newCluster(t)
	var all []*networkingv1.NetworkPolicy
	for _, y := range catalog {
		p := np(t, y)
		all = append(all, p)
		t.Run(p.Name, func(t *testing.T) { c.compare(t, []*networkingv1.NetworkPolicy{p}) })
	}
	t.Run("all", func(t *testing.T) { c.compare(t, all) })
}

// Random NetworkPolicies over the same cluster, from a fixed seed, so the suite checks the same
// ones every run.
func TestNetworkPolicySemanticsRandom(t *testing.T) {
	c := newCluster(t)
	r := rand.New(rand.NewPCG(10, 2026))
	flows := 0
	for i := range 300 {
		var nps []*networkingv1.NetworkPolicy
		for j := range 1 + r.IntN(3) {
			nps = append(nps, randomNetworkPolicy(r, c.namespaces, fmt.Sprintf("r%d-%d", i, j)))
		}
		flows += c.compare(t, nps)
		if t.Failed() {
			t.Fatalf("set %d differs", i)
		}
	}
	t.Logf("%d flows checked", flows)
}

func pick[T any](r *rand.Rand, xs ...T) T { return xs[r.IntN(len(xs))] }

func randomSelector(r *rand.Rand, keys map[string][]string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	ks := slices.Sorted(func(yield func(string) bool) {
		for k := range keys {
			if !yield(k) {
				return
			}
		}
	})
	for range r.IntN(2) {
		k := pick(r, ks...)
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels[k] = pick(r, keys[k]...)
	}
	for range r.IntN(2) {
		k := pick(r, ks...)
		e := metav1.LabelSelectorRequirement{Key: k, Operator: pick(r, metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn,
			metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist)}
		if e.Operator == metav1.LabelSelectorOpIn || e.Operator == metav1.LabelSelectorOpNotIn {
			for range 1 + r.IntN(2) {
				e.Values = append(e.Values, pick(r, keys[k]...))
			}
		}
		s.MatchExpressions = append(s.MatchExpressions, e)
	}
	return s
}

var (
	podKeys = map[string][]string{"app": {"web", "db", "tool", "mon"}, "role": {"fe", "x"}, "tier": {"be"}, "k8s-app": {"kube-dns"}}
	nsKeys  = map[string][]string{"team": {"a", "b"}, "env": {"live"}, "kubernetes.io/metadata.name": {"prod", "dev", "ops", "kube-system"}}
)

func randomPeers(r *rand.Rand) []networkingv1.NetworkPolicyPeer {
	var peers []networkingv1.NetworkPolicyPeer
	for range r.IntN(3) {
		var p networkingv1.NetworkPolicyPeer
		switch r.IntN(4) {
		case 0:
			p.PodSelector = randomSelector(r, podKeys)
		case 1:
			p.NamespaceSelector = randomSelector(r, nsKeys)
		case 2:
			p.NamespaceSelector = randomSelector(r, nsKeys)
			p.PodSelector = randomSelector(r, podKeys)
		case 3:
			b := pick(r, networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.0.1.0/24"}},
				networkingv1.IPBlock{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.10/32"}},
				networkingv1.IPBlock{CIDR: "0.0.0.0/0"},
				networkingv1.IPBlock{CIDR: "10.0.0.1/32"},
				networkingv1.IPBlock{CIDR: "::/0"})
			p.IPBlock = &b
		}
		peers = append(peers, p)
	}
	return peers
}

func randomPorts(r *rand.Rand) []networkingv1.NetworkPolicyPort {
	var ports []networkingv1.NetworkPolicyPort
	for range r.IntN(3) {
		var p networkingv1.NetworkPolicyPort
		if r.IntN(3) > 0 {
			proto := pick(r, corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP)
			p.Protocol = &proto
		}
		if r.IntN(4) > 0 {
			port := intstr.FromInt32(pick(r, testPorts...))
			p.Port = &port
			if r.IntN(3) == 0 {
				end := port.IntVal + pick[int32](r, 0, 1, 100, 1000)
				p.EndPort = &end
			}
		}
		ports = append(ports, p)
	}
	return ports
}

func randomNetworkPolicy(r *rand.Rand, namespaces []string, name string) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: pick(r, namespaces...), Name: name}}
	np.Spec.PodSelector = *randomSelector(r, podKeys)
	np.Spec.PolicyTypes = pick(r, nil, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		[]networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		[]networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress})
	for range r.IntN(3) {
		np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: randomPeers(r), Ports: randomPorts(r)})
	}
	for range r.IntN(3) {
		np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: randomPeers(r), Ports: randomPorts(r)})
	}
	return np
}

// A named port the pods do not have opens nothing: Kubernetes allows no port by it, nor does
// Margay, and the numeric ports of the same rule still work. (Whether it opens the port of that
// name on a pod that has one is the evaluator's part: it resolves named ports against the
// workloads' records.)
func TestNetworkPolicyNamedPortWithoutPort(t *testing.T) {
	c := newCluster(t)
	p, err := PolicyFromNetworkPolicy(np(t, `
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: http}, {port: 443}]}]`))
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.NewSet([]datastore.Policy{p})
	if err != nil {
		t.Fatal(err)
	}
	web, client := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.1.2")
	for port, want := range map[uint16]bool{8080: false, 443: true, 80: false} {
		if got, _ := set.Allowed(c.world, policy.Flow{Src: client, Dst: web, Proto: 6, SrcPort: 40000, DstPort: port}); got != want {
			t.Errorf("tcp to web port %d: allowed=%v, want %v", port, got, want)
		}
	}
	// Unselected pods stay open.
	if got, _ := set.Allowed(c.world, policy.Flow{Src: web, Dst: client, Proto: 6, SrcPort: 40000, DstPort: 8080}); !got {
		t.Error("an unselected pod is cut off")
	}
}

// TestNetworkPolicyNamedPorts: a named port is the selected pod's port for ingress and the peer
// pod's for egress, as Kubernetes means it (the pods' container ports, which margay-cni records).
func TestNetworkPolicyNamedPorts(t *testing.T) {
	c := newCluster(t)
	web2, db, tool := netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("10.0.1.2")
	c.world.Endpoints[web2].Ports = []datastore.EndpointPort{{Name: "http", Protocol: 6, Port: 8080}}
	c.world.Endpoints[db].Ports = []datastore.EndpointPort{{Name: "metrics", Protocol: 6, Port: 9090}, {Name: "http", Protocol: 6, Port: 8081}}
	var ps []datastore.Policy
	for _, doc := range []string{`
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: http}]}]`, `
metadata: {name: tool, namespace: dev}
spec:
  podSelector: {matchLabels: {app: tool}}
  policyTypes: [Egress]
  egress: [{ports: [{port: metrics}]}]`} {
		p, err := PolicyFromNetworkPolicy(np(t, doc))
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	set, err := policy.NewSet(ps)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		src, dst netip.Addr
		port     uint16
		want     bool
	}{
		{db, web2, 8080, true},    // web-2's http
		{db, web2, 8081, false},   // db's http, not web-2's
		{tool, db, 9090, true},    // db's metrics
		{tool, db, 8081, false},   // not a metrics port
		{tool, web2, 9090, false}, // web-2 has no metrics port
	} {
		if got, _ := set.Allowed(c.world, policy.Flow{Src: f.src, Dst: f.dst, Proto: 6, SrcPort: 40000, DstPort: f.port}); got != f.want {
			t.Errorf("tcp %v -> %v:%d: allowed=%v, want %v", f.src, f.dst, f.port, got, f.want)
		}
	}
}
