package resource

import (
	"reflect"
	"slices"
	"testing"
)

func TestDefaultTypes(t *testing.T) {
	some := []Rule{{Action: Allow}}
	tests := []struct {
		name            string
		ingress, egress []Rule
		want            []PolicyType
	}{
		{"no rules", nil, nil, []PolicyType{PolicyTypeIngress}},
		{"ingress rules only", some, nil, []PolicyType{PolicyTypeIngress}},
		{"egress rules only", nil, some, []PolicyType{PolicyTypeEgress}},
		{"both", some, some, []PolicyType{PolicyTypeIngress, PolicyTypeEgress}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DefaultTypes(tt.ingress, tt.egress); !slices.Equal(got, tt.want) {
				t.Errorf("DefaultTypes = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPolicyDefaulted(t *testing.T) {
	egressOnly := &NetworkPolicy{
		ObjectMeta: ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"a": "b"}},
		Spec:       NetworkPolicySpec{Egress: []Rule{{Action: Deny}}},
	}
	got := egressOnly.Defaulted()
	if got.Spec.Tier != DefaultTierName || !slices.Equal(got.Spec.Types, []PolicyType{PolicyTypeEgress}) ||
		!reflect.DeepEqual(got.Labels, map[string]string{"a": "b", TierLabel: DefaultTierName}) {
		t.Errorf("Defaulted: tier %q, types %v, labels %v", got.Spec.Tier, got.Spec.Types, got.Labels)
	}
	if egressOnly.Spec.Tier != "" || egressOnly.Spec.Types != nil || len(egressOnly.Labels) != 1 {
		t.Errorf("Defaulted changed its receiver: %+v", egressOnly)
	}

	// Types given are kept; the tier label follows the tier.
	typed := &GlobalNetworkPolicy{
		ObjectMeta: ObjectMeta{Name: "devops.p"},
		Spec:       GlobalNetworkPolicySpec{Tier: "devops", Types: []PolicyType{PolicyTypeIngress, PolicyTypeEgress}},
	}
	g := typed.Defaulted()
	if g.Spec.Tier != "devops" || len(g.Spec.Types) != 2 || g.Labels[TierLabel] != "devops" {
		t.Errorf("Defaulted: %+v", g)
	}
	if g.Validate() != nil {
		t.Errorf("Validate after Defaulted: %v", g.Validate())
	}
}

func TestTierDefaulted(t *testing.T) {
	tier := (&Tier{ObjectMeta: ObjectMeta{Name: "t"}}).Defaulted()
	if tier.Spec.DefaultAction == nil || *tier.Spec.DefaultAction != Deny {
		t.Errorf("default action %v, want Deny", tier.Spec.DefaultAction)
	}
	pass := Pass
	if got := (&Tier{Spec: TierSpec{DefaultAction: &pass}}).Defaulted(); *got.Spec.DefaultAction != Pass {
		t.Errorf("default action %v, want Pass kept", *got.Spec.DefaultAction)
	}
}

func TestIPPoolDefaulted(t *testing.T) {
	p := (&IPPool{ObjectMeta: ObjectMeta{Name: "p"}, Spec: IPPoolSpec{CIDR: "198.19.0.0/16"}}).Defaulted()
	automatic := AssignmentAutomatic
	want := IPPoolSpec{
		CIDR:           "198.19.0.0/16",
		BlockSize:      DefaultBlockSize,
		NodeSelector:   "all()",
		AllowedUses:    []IPPoolAllowedUse{AllowedUseWorkload, AllowedUseTunnel},
		AssignmentMode: &automatic,
		IPIPMode:       EncapNever,
		VXLANMode:      EncapNever,
	}
	if !reflect.DeepEqual(p.Spec, want) {
		t.Errorf("Defaulted spec %+v, want %+v", p.Spec, want)
	}
	if err := p.Validate(); err != nil {
		t.Errorf("Validate after Defaulted: %v", err)
	}
}

func TestBGPConfigurationDefaulted(t *testing.T) {
	c := (&BGPConfiguration{ObjectMeta: ObjectMeta{Name: "default"}}).Defaulted()
	if c.Spec.LogSeverityScreen != "Info" || c.Spec.ServiceLoadBalancerAggregation == nil ||
		*c.Spec.ServiceLoadBalancerAggregation != AggregationEnabled {
		t.Errorf("Defaulted spec %+v", c.Spec)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate after Defaulted: %v", err)
	}
	if !c.Spec.MeshEnabled() || c.Spec.AS() != DefaultASNumber {
		t.Errorf("mesh %v, AS %d: want the defaults", c.Spec.MeshEnabled(), c.Spec.AS())
	}
	off, as := false, ASNumber(65001)
	c.Spec.NodeToNodeMeshEnabled, c.Spec.ASNumber = &off, &as
	if c.Spec.MeshEnabled() || c.Spec.AS() != 65001 {
		t.Errorf("mesh %v, AS %d: want false, 65001", c.Spec.MeshEnabled(), c.Spec.AS())
	}
}

// Defaulted copies deeply: the copy shares nothing with the original.
func TestDefaultedCopies(t *testing.T) {
	r, err := decodeYAML(t, everyField[KindWorkloadEndpoint])
	if err != nil {
		t.Fatal(err)
	}
	before, _ := Encode(r)
	c := Defaulted(r).(*WorkloadEndpoint)
	if c == r {
		t.Fatal("Defaulted returned its argument")
	}
	if !reflect.DeepEqual(c, r) {
		t.Fatalf("copy differs:\n%#v\n%#v", c, r)
	}
	c.Name = "other"
	c.Spec.IPNetworks[0] = "198.19.9.9/32"
	c.Spec.Ports[0].Name = "other"
	c.Spec.QoSControls.DSCP.Name = "EF"
	if after, _ := Encode(r); string(after) != string(before) {
		t.Errorf("changing the copy changed the original:\n%s\n%s", before, after)
	}
	if Defaulted(nil) != nil {
		t.Error("Defaulted(nil) != nil")
	}
}
