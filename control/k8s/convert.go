package k8s

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/k8s/podlabels"
)

// PolicyPrefix starts the name of every policy made from a NetworkPolicy, as in Calico. The
// Syncer owns the policies with this prefix and no others.
const PolicyPrefix = datastore.KubernetesPolicyPrefix

// PolicyOrder is the order of every policy made from a NetworkPolicy: Calico's.
const PolicyOrder = 1000.0

// PolicyName returns the name of the policy made from NetworkPolicy namespace/name:
// knp.default.<namespace>.<name>.
func PolicyName(namespace, name string) string { return PolicyPrefix + namespace + "." + name }

// networkPolicyOf returns the namespace and name of the NetworkPolicy the policy called name was
// made from. A namespace holds no dots, so the first dot after the prefix ends it.
func networkPolicyOf(name string) (namespace, npName string, ok bool) {
	rest, ok := strings.CutPrefix(name, PolicyPrefix)
	if !ok {
		return "", "", false
	}
	namespace, npName, ok = strings.Cut(rest, ".")
	if !ok || namespace == "" || npName == "" {
		return "", "", false
	}
	return namespace, npName, true
}

// PolicyFromNetworkPolicy converts a Kubernetes NetworkPolicy into a Margay policy the way Calico
// does:
//
//   - name knp.default.<namespace>.<name>, order 1000;
//   - selector projectcalico.org/namespace == '<namespace>' && the podSelector;
//   - types from policyTypes; without them Ingress, plus Egress when there are egress rules, as
//     Kubernetes defaults them. A type without rules denies everything in that direction; rules
//     of a direction policyTypes leaves out are ignored, as Kubernetes ignores them;
//   - every from/to peer becomes allow rules: podSelector (pods of the policy's namespace),
//     namespaceSelector (matched against the pcns.<key> namespace labels WorkloadLabels adds)
//     with an optional podSelector, ipBlock (nets, its except as notNets). An empty from/to means
//     every source or destination. IPv6 blocks are left out: they can match no IPv4 traffic;
//   - ports: protocol TCP (default), UDP or SCTP, a port number, endPort making a range, or a
//     port name (port: "http"); ports apply to the destination, the selected pod for ingress and
//     the peer for egress. A named port is a destination port of the rule, which Margay
//     resolves against the named ports of the workload at the destination end: for ingress the
//     selected pod's, for egress the peer pod's, as Kubernetes means it.
//
// An error means there is no policy.
//
// The result passes Margay's own validation (datastore.DecodePolicy) and is in the form the
// datastore stores, so it compares equal to a stored copy.
func PolicyFromNetworkPolicy(np *networkingv1.NetworkPolicy) (datastore.Policy, error) {
	if np == nil {
		return datastore.Policy{}, errors.New("k8s: nil NetworkPolicy")
	}
	c := converter{namespace: np.Namespace}
	p, err := c.convert(np)
	if err != nil {
		return datastore.Policy{}, fmt.Errorf("k8s: NetworkPolicy %s/%s: %w", np.Namespace, np.Name, err)
	}
	return p, nil
}

type converter struct {
	namespace string
}

func (c *converter) convert(np *networkingv1.NetworkPolicy) (datastore.Policy, error) {
	if errs := validation.IsDNS1123Label(np.Namespace); len(errs) > 0 {
		return datastore.Policy{}, fmt.Errorf("namespace %q: %s", np.Namespace, strings.Join(errs, "; "))
	}
	if np.Name == "" {
		return datastore.Policy{}, errors.New("no name")
	}
	terms, err := selectorTerms(&np.Spec.PodSelector, "")
	if err != nil {
		return datastore.Policy{}, fmt.Errorf("spec.podSelector: %w", err)
	}
	order := PolicyOrder
	p := datastore.Policy{
		Version:  datastore.CurrentVersion,
		Name:     PolicyName(np.Namespace, np.Name),
		Order:    &order,
		Selector: strings.Join(append([]string{c.namespaceTerm()}, terms...), " && "),
	}
	ingress, egress := false, false
	for i, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		default:
			return datastore.Policy{}, fmt.Errorf("spec.policyTypes[%d]: %q, want Ingress or Egress", i, t)
		}
	}
	if len(np.Spec.PolicyTypes) == 0 {
		ingress, egress = true, len(np.Spec.Egress) > 0
	}
	if ingress {
		p.Types = append(p.Types, datastore.PolicyIngress)
		for i, r := range np.Spec.Ingress {
			rules, err := c.rules(fmt.Sprintf("ingress[%d]", i), r.From, r.Ports, false)
			if err != nil {
				return datastore.Policy{}, err
			}
			p.Ingress = append(p.Ingress, rules...)
		}
	}
	if egress {
		p.Types = append(p.Types, datastore.PolicyEgress)
		for i, r := range np.Spec.Egress {
			rules, err := c.rules(fmt.Sprintf("egress[%d]", i), r.To, r.Ports, true)
			if err != nil {
				return datastore.Policy{}, err
			}
			p.Egress = append(p.Egress, rules...)
		}
	}
	// Margay's own check, and the stored form (defaults, empty lists as nil).
	data, err := json.Marshal(p)
	if err != nil {
		return datastore.Policy{}, err
	}
	return datastore.DecodePolicy(data)
}

func (c *converter) namespaceTerm() string {
	return fmt.Sprintf("%s == '%s'", NamespaceLabel, c.namespace)
}

// portGroup is what one Margay rule matches of the traffic: a protocol (nil: any) and its
// destination ports (none: all).
type portGroup struct {
	proto *datastore.Protocol
	ports []datastore.PortRange
	all   bool
}

// rules converts one ingress or egress rule: one allow rule per peer and protocol.
func (c *converter) rules(where string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, egress bool) ([]datastore.Rule, error) {
	groups, err := portGroups(where, ports)
	if err != nil {
		return nil, err
	}
	ends := []datastore.EntityRule{{}} // no peers: everything
	if len(peers) > 0 {
		ends = nil
		for j, peer := range peers {
			e, ok, err := c.peer(peer)
			if err != nil {
				return nil, fmt.Errorf("%s.%s[%d]: %w", where, map[bool]string{false: "from", true: "to"}[egress], j, err)
			}
			if ok {
				ends = append(ends, e)
			}
		}
	}
	var out []datastore.Rule
	for _, e := range ends {
		for _, g := range groups {
			r := datastore.Rule{Action: datastore.ActionAllow, Protocol: g.proto}
			if egress {
				r.Destination = e
				r.Destination.Ports = g.ports
			} else {
				r.Source = e
				r.Destination.Ports = g.ports
			}
			out = append(out, r)
		}
	}
	return out, nil
}

var protocols = map[corev1.Protocol]datastore.Protocol{corev1.ProtocolTCP: 6, corev1.ProtocolUDP: 17, corev1.ProtocolSCTP: 132}

// portGroups groups the ports of a rule by protocol, in the order the protocols first appear. No
// ports: one group matching everything.
func portGroups(where string, ports []networkingv1.NetworkPolicyPort) ([]portGroup, error) {
	if len(ports) == 0 {
		return []portGroup{{all: true}}, nil
	}
	var groups []portGroup
	group := func(p datastore.Protocol) *portGroup {
		for i := range groups {
			if *groups[i].proto == p {
				return &groups[i]
			}
		}
		groups = append(groups, portGroup{proto: &p})
		return &groups[len(groups)-1]
	}
	for j, port := range ports {
		at := fmt.Sprintf("%s.ports[%d]", where, j)
		proto := datastore.Protocol(6)
		if port.Protocol != nil {
			p, ok := protocols[*port.Protocol]
			if !ok {
				return nil, fmt.Errorf("%s: protocol %q, want TCP, UDP or SCTP", at, *port.Protocol)
			}
			proto = p
		}
		switch {
		case port.Port == nil:
			if port.EndPort != nil {
				return nil, fmt.Errorf("%s: endPort without port", at)
			}
			g := group(proto)
			g.all, g.ports = true, nil
		case port.Port.Type == intstr.String:
			name := port.Port.StrVal
			if err := datastore.ValidatePortName(name); err != nil {
				return nil, fmt.Errorf("%s: port %q: %w", at, name, err)
			}
			if port.EndPort != nil {
				return nil, fmt.Errorf("%s: endPort with the named port %q", at, name)
			}
			if g := group(proto); !g.all {
				g.ports = append(g.ports, datastore.PortRange{Name: name})
			}
		default:
			lo := port.Port.IntVal
			if lo < 1 || lo > 65535 {
				return nil, fmt.Errorf("%s: port %d outside 1-65535", at, lo)
			}
			hi := lo
			if port.EndPort != nil {
				hi = *port.EndPort
				if hi < lo || hi > 65535 {
					return nil, fmt.Errorf("%s: endPort %d: want %d-65535", at, hi, lo)
				}
			}
			if g := group(proto); !g.all {
				g.ports = append(g.ports, datastore.PortRange{Lo: uint16(lo), Hi: uint16(hi)})
			}
		}
	}
	return groups, nil
}

// peer converts a from/to peer; ok is false for one that matches no IPv4 address (an IPv6
// ipBlock).
func (c *converter) peer(p networkingv1.NetworkPolicyPeer) (e datastore.EntityRule, ok bool, err error) {
	switch {
	case p.IPBlock != nil:
		if p.PodSelector != nil || p.NamespaceSelector != nil {
			return e, false, errors.New("ipBlock together with podSelector or namespaceSelector")
		}
		cidr, err := netip.ParsePrefix(p.IPBlock.CIDR)
		if err != nil {
			return e, false, fmt.Errorf("ipBlock.cidr %q: %w", p.IPBlock.CIDR, err)
		}
		if !cidr.Addr().Is4() {
			return e, false, nil
		}
		e.Nets = []netip.Prefix{cidr.Masked()}
		for k, s := range p.IPBlock.Except {
			ex, err := netip.ParsePrefix(s)
			if err != nil {
				return e, false, fmt.Errorf("ipBlock.except[%d] %q: %w", k, s, err)
			}
			if ex.Addr().Is4() {
				e.NotNets = append(e.NotNets, ex.Masked())
			}
		}
		return e, true, nil
	case p.NamespaceSelector != nil:
		nsTerms, err := selectorTerms(p.NamespaceSelector, NamespaceLabelPrefix)
		if err != nil {
			return e, false, fmt.Errorf("namespaceSelector: %w", err)
		}
		podTerms, err := selectorTerms(p.PodSelector, "")
		if err != nil {
			return e, false, fmt.Errorf("podSelector: %w", err)
		}
		// has(namespace): a pod, even when every namespace term is negative.
		terms := append(append([]string{fmt.Sprintf("has(%s)", NamespaceLabel)}, nsTerms...), podTerms...)
		e.Selector = strings.Join(terms, " && ")
		return e, true, nil
	case p.PodSelector != nil:
		podTerms, err := selectorTerms(p.PodSelector, "")
		if err != nil {
			return e, false, fmt.Errorf("podSelector: %w", err)
		}
		e.Selector = strings.Join(append([]string{c.namespaceTerm()}, podTerms...), " && ")
		return e, true, nil
	}
	return e, false, errors.New("a peer needs podSelector, namespaceSelector or ipBlock")
}

// selectorTerms converts a Kubernetes label selector into Margay selector terms, to be joined
// with &&; the label keys get prefix. nil and {} give no terms (everything).
func selectorTerms(ls *metav1.LabelSelector, prefix string) ([]string, error) {
	if ls == nil {
		return nil, nil
	}
	var terms []string
	for _, k := range slices.Sorted(maps.Keys(ls.MatchLabels)) {
		v := ls.MatchLabels[k]
		if err := podlabels.CheckLabel(k, v); err != nil {
			return nil, fmt.Errorf("matchLabels: %w", err)
		}
		key, err := prefixed(prefix, k)
		if err != nil {
			return nil, fmt.Errorf("matchLabels: %w", err)
		}
		terms = append(terms, fmt.Sprintf("%s == '%s'", key, v))
	}
	for i, e := range ls.MatchExpressions {
		at := fmt.Sprintf("matchExpressions[%d]", i)
		if errs := validation.IsQualifiedName(e.Key); len(errs) > 0 {
			return nil, fmt.Errorf("%s: key %q: %s", at, e.Key, strings.Join(errs, "; "))
		}
		key, err := prefixed(prefix, e.Key)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", at, err)
		}
		quoted := make([]string, len(e.Values))
		for j, v := range e.Values {
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				return nil, fmt.Errorf("%s: values[%d] %q: %s", at, j, v, strings.Join(errs, "; "))
			}
			quoted[j] = "'" + v + "'"
		}
		set := "{" + strings.Join(quoted, ", ") + "}"
		switch e.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(e.Values) == 0 {
				return nil, fmt.Errorf("%s: operator %s needs values", at, e.Operator)
			}
			op := "in"
			if e.Operator == metav1.LabelSelectorOpNotIn {
				op = "not in"
			}
			terms = append(terms, fmt.Sprintf("%s %s %s", key, op, set))
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(e.Values) > 0 {
				return nil, fmt.Errorf("%s: operator %s takes no values", at, e.Operator)
			}
			term := fmt.Sprintf("has(%s)", key)
			if e.Operator == metav1.LabelSelectorOpDoesNotExist {
				term = "!" + term
			}
			terms = append(terms, term)
		default:
			return nil, fmt.Errorf("%s: operator %q, want In, NotIn, Exists or DoesNotExist", at, e.Operator)
		}
	}
	return terms, nil
}

// prefixed returns prefix+key, checked to be a label key still.
func prefixed(prefix, key string) (string, error) {
	if prefix == "" {
		return key, nil
	}
	if errs := validation.IsQualifiedName(prefix + key); len(errs) > 0 {
		return "", fmt.Errorf("label %q cannot be matched as %s%s: %s", key, prefix, key, strings.Join(errs, "; "))
	}
	return prefix + key, nil
}
