package resource

// NetworkPolicy is a namespaced, ordered set of rules applied to the workloads of its namespace
// that its selector picks.
type NetworkPolicy struct {
	ObjectMeta `json:"metadata"`
	Spec       NetworkPolicySpec `json:"spec"`
}

// NetworkPolicySpec is the spec of a NetworkPolicy.
type NetworkPolicySpec struct {
	// Tier is the tier of the policy; empty means DefaultTierName.
	Tier string `json:"tier,omitempty"`
	// Order ranks the policy in its tier: lower first, then by name; nil comes last.
	Order   *float64 `json:"order,omitempty"`
	Ingress []Rule   `json:"ingress,omitempty"`
	Egress  []Rule   `json:"egress,omitempty"`
	// Selector picks the workloads the policy applies to; empty means all().
	Selector string `json:"selector,omitempty"`
	// Types lists the directions the policy governs; empty means DefaultTypes.
	Types                  []PolicyType            `json:"types,omitempty"`
	ServiceAccountSelector string                  `json:"serviceAccountSelector,omitempty"`
	PerformanceHints       []PolicyPerformanceHint `json:"performanceHints,omitempty"`
}

// GlobalNetworkPolicy is a NetworkPolicy for workloads of every namespace.
type GlobalNetworkPolicy struct {
	ObjectMeta `json:"metadata"`
	Spec       GlobalNetworkPolicySpec `json:"spec"`
}

// GlobalNetworkPolicySpec is the spec of a GlobalNetworkPolicy: a NetworkPolicySpec with a
// namespace selector and the host endpoint options.
type GlobalNetworkPolicySpec struct {
	Tier     string       `json:"tier,omitempty"`
	Order    *float64     `json:"order,omitempty"`
	Ingress  []Rule       `json:"ingress,omitempty"`
	Egress   []Rule       `json:"egress,omitempty"`
	Selector string       `json:"selector,omitempty"`
	Types    []PolicyType `json:"types,omitempty"`
	// DoNotTrack, PreDNAT and ApplyOnForward concern host endpoints, which Margay does not have.
	DoNotTrack             bool   `json:"doNotTrack,omitempty"`
	PreDNAT                bool   `json:"preDNAT,omitempty"`
	ApplyOnForward         bool   `json:"applyOnForward,omitempty"`
	ServiceAccountSelector string `json:"serviceAccountSelector,omitempty"`
	// NamespaceSelector picks the namespaces (by their labels) whose workloads the policy
	// applies to, together with Selector.
	NamespaceSelector string                  `json:"namespaceSelector,omitempty"`
	PerformanceHints  []PolicyPerformanceHint `json:"performanceHints,omitempty"`
}

// PolicyType is a direction a policy governs.
type PolicyType string

// The policy types.
const (
	PolicyTypeIngress PolicyType = "Ingress"
	PolicyTypeEgress  PolicyType = "Egress"
)

// PolicyPerformanceHint tells Calico's policy engine how a policy is used; hints never change
// what a policy allows.
type PolicyPerformanceHint string

// PerfHintAssumeNeededOnEveryNode is the one hint there is.
const PerfHintAssumeNeededOnEveryNode PolicyPerformanceHint = "AssumeNeededOnEveryNode"

// Action is what a rule does with the packets it matches.
type Action string

// The actions. Log logs and goes on with the next rule; Pass skips the rest of the tier.
const (
	Allow Action = "Allow"
	Deny  Action = "Deny"
	Log   Action = "Log"
	Pass  Action = "Pass"
)

// Rule matches packets and applies an action to them. Every match criterion that is set must
// match; the Not forms match what their positive form would not.
type Rule struct {
	Action      Action        `json:"action"`
	IPVersion   *int          `json:"ipVersion,omitempty"`
	Protocol    *Protocol     `json:"protocol,omitempty"`
	ICMP        *ICMPFields   `json:"icmp,omitempty"`
	NotProtocol *Protocol     `json:"notProtocol,omitempty"`
	NotICMP     *ICMPFields   `json:"notICMP,omitempty"`
	Source      EntityRule    `json:"source,omitzero"`
	Destination EntityRule    `json:"destination,omitzero"`
	HTTP        *HTTPMatch    `json:"http,omitempty"`
	Metadata    *RuleMetadata `json:"metadata,omitempty"`
}

// ICMPFields matches an ICMP type and, of that type, a code.
type ICMPFields struct {
	Type *int `json:"type,omitempty"`
	Code *int `json:"code,omitempty"`
}

// EntityRule matches the source or the destination of a packet.
type EntityRule struct {
	Nets              []string             `json:"nets,omitempty"`
	Selector          string               `json:"selector,omitempty"`
	NamespaceSelector string               `json:"namespaceSelector,omitempty"`
	Services          *ServiceMatch        `json:"services,omitempty"`
	Ports             []Port               `json:"ports,omitempty"`
	NotNets           []string             `json:"notNets,omitempty"`
	NotSelector       string               `json:"notSelector,omitempty"`
	NotPorts          []Port               `json:"notPorts,omitempty"`
	ServiceAccounts   *ServiceAccountMatch `json:"serviceAccounts,omitempty"`
}

// ServiceMatch matches the endpoints of a Kubernetes Service.
type ServiceMatch struct {
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// ServiceAccountMatch matches workloads by their Kubernetes service account: its name is one
// of Names, and its labels match Selector.
type ServiceAccountMatch struct {
	Names    []string `json:"names,omitempty"`
	Selector string   `json:"selector,omitempty"`
}

// HTTPMatch matches HTTP requests (Calico's application layer policy).
type HTTPMatch struct {
	Methods []string   `json:"methods,omitempty"`
	Paths   []HTTPPath `json:"paths,omitempty"`
}

// HTTPPath matches an HTTP path exactly or by prefix.
type HTTPPath struct {
	Exact  string `json:"exact,omitempty"`
	Prefix string `json:"prefix,omitempty"`
}

// RuleMetadata is information about a rule that does not change what it does.
type RuleMetadata struct {
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Tier names and orders that Calico gives meaning to.
const (
	// DefaultTierName is the tier of a policy that names none; it is evaluated last.
	DefaultTierName = "default"
	// DefaultTierOrder is the order of the default tier.
	DefaultTierOrder = 1_000_000.0
	// KubeAdminTierName and KubeBaselineTierName are the tiers of Kubernetes
	// ClusterNetworkPolicies, before and after all others.
	KubeAdminTierName     = "kube-admin"
	KubeAdminTierOrder    = 1_000.0
	KubeBaselineTierName  = "kube-baseline"
	KubeBaselineTierOrder = 10_000_000.0
)

// TierLabel is the label Calico puts on every policy to name its tier.
const TierLabel = "projectcalico.org/tier"

// TierOrDefault returns tier, or DefaultTierName when tier is empty.
func TierOrDefault(tier string) string {
	if tier == "" {
		return DefaultTierName
	}
	return tier
}

// DefaultTypes returns the types Calico gives a policy that names none: Ingress when it has no
// egress rules (also when it has no rules at all), Egress when it has egress rules only, both
// when it has both.
func DefaultTypes(ingress, egress []Rule) []PolicyType {
	switch {
	case len(egress) == 0:
		return []PolicyType{PolicyTypeIngress}
	case len(ingress) == 0:
		return []PolicyType{PolicyTypeEgress}
	}
	return []PolicyType{PolicyTypeIngress, PolicyTypeEgress}
}

// Defaulted returns a copy of p with Calico's defaults filled in, as Calico stores it: the
// tier (DefaultTierName), the types (DefaultTypes) and the TierLabel label.
func (p *NetworkPolicy) Defaulted() *NetworkPolicy {
	out := clone(p)
	out.Spec.Tier = TierOrDefault(out.Spec.Tier)
	if len(out.Spec.Types) == 0 {
		out.Spec.Types = DefaultTypes(out.Spec.Ingress, out.Spec.Egress)
	}
	setLabel(&out.ObjectMeta, TierLabel, out.Spec.Tier)
	return out
}

// Defaulted returns a copy of p with Calico's defaults filled in, as NetworkPolicy.Defaulted.
func (p *GlobalNetworkPolicy) Defaulted() *GlobalNetworkPolicy {
	out := clone(p)
	out.Spec.Tier = TierOrDefault(out.Spec.Tier)
	if len(out.Spec.Types) == 0 {
		out.Spec.Types = DefaultTypes(out.Spec.Ingress, out.Spec.Egress)
	}
	setLabel(&out.ObjectMeta, TierLabel, out.Spec.Tier)
	return out
}

func setLabel(m *ObjectMeta, key, value string) {
	if m.Labels == nil {
		m.Labels = make(map[string]string, 1)
	}
	m.Labels[key] = value
}

// Kind returns KindNetworkPolicy.
func (*NetworkPolicy) Kind() Kind { return KindNetworkPolicy }

// Kind returns KindGlobalNetworkPolicy.
func (*GlobalNetworkPolicy) Kind() Kind { return KindGlobalNetworkPolicy }
