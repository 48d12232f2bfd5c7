package calicov3

import (
	"fmt"
	"strings"

	"github.com/margaynet/margay/control/resource"
)

// kindNames are the names calicoctl takes for each kind, lowercase: the kind, its plural and
// its short forms.
var kindNames = map[string]resource.Kind{
	"globalnetworkpolicy": resource.KindGlobalNetworkPolicy, "globalnetworkpolicies": resource.KindGlobalNetworkPolicy,
	"gnp": resource.KindGlobalNetworkPolicy, "gnps": resource.KindGlobalNetworkPolicy,
	"networkpolicy": resource.KindNetworkPolicy, "networkpolicies": resource.KindNetworkPolicy,
	"np": resource.KindNetworkPolicy, "nps": resource.KindNetworkPolicy, "policy": resource.KindNetworkPolicy, "policies": resource.KindNetworkPolicy,
	"profile": resource.KindProfile, "profiles": resource.KindProfile, "pro": resource.KindProfile, "pros": resource.KindProfile,
	"tier": resource.KindTier, "tiers": resource.KindTier,
	"ippool": resource.KindIPPool, "ippools": resource.KindIPPool, "ipp": resource.KindIPPool, "ipps": resource.KindIPPool,
	"pool": resource.KindIPPool, "pools": resource.KindIPPool,
	"bgppeer": resource.KindBGPPeer, "bgppeers": resource.KindBGPPeer, "bgpp": resource.KindBGPPeer, "bgpps": resource.KindBGPPeer,
	"bp": resource.KindBGPPeer, "bps": resource.KindBGPPeer,
	"bgpconfiguration": resource.KindBGPConfiguration, "bgpconfigurations": resource.KindBGPConfiguration,
	"bgpconfig": resource.KindBGPConfiguration, "bgpconfigs": resource.KindBGPConfiguration,
	"node": resource.KindNode, "nodes": resource.KindNode, "no": resource.KindNode, "nos": resource.KindNode,
	"workloadendpoint": resource.KindWorkloadEndpoint, "workloadendpoints": resource.KindWorkloadEndpoint,
	"wep": resource.KindWorkloadEndpoint, "weps": resource.KindWorkloadEndpoint,
}

// ParseKind reads a kind as calicoctl get and delete take it: its name, plural or short form,
// in any case (globalnetworkpolicy, GlobalNetworkPolicies, gnp; ippool, pool; bgpconfig; wep).
func ParseKind(s string) (resource.Kind, error) {
	if k, ok := kindNames[strings.ToLower(s)]; ok {
		return k, nil
	}
	return "", fmt.Errorf("resource type %q is not supported (want one of %s)", s, kindList())
}

func kindList() string {
	var names []string
	for _, k := range resource.Kinds() {
		names = append(names, strings.ToLower(string(k)))
	}
	return strings.Join(names, ", ")
}

// Ref names one resource.
type Ref struct {
	Kind      resource.Kind
	Namespace string // of a namespaced kind; empty for the others
	Name      string
}

// String writes r as calicoctl does: GlobalNetworkPolicy(web), WorkloadEndpoint(prod/host-k8s-web-eth0).
func (r Ref) String() string {
	if r.Namespace != "" {
		return fmt.Sprintf("%s(%s/%s)", r.Kind, r.Namespace, r.Name)
	}
	return fmt.Sprintf("%s(%s)", r.Kind, r.Name)
}

// RefOf names resource r.
func RefOf(r resource.Resource) Ref {
	m := r.Metadata()
	return Ref{Kind: r.Kind(), Namespace: m.Namespace, Name: m.Name}
}
