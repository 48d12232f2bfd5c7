package datastore

import (
	"slices"
	"testing"
)

// A policy without types gets Calico's: Ingress for ingress rules or none, Egress for egress
// rules only, both for both; types given are kept.
func TestPolicyTypesDefault(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want []PolicyType
	}{
		{`{"name":"none"}`, []PolicyType{PolicyIngress}},
		{`{"name":"in","ingress":[{"action":"allow"}]}`, []PolicyType{PolicyIngress}},
		{`{"name":"out","egress":[{"action":"allow"}]}`, []PolicyType{PolicyEgress}},
		{`{"name":"both","ingress":[{"action":"allow"}],"egress":[{"action":"deny"}]}`, []PolicyType{PolicyIngress, PolicyEgress}},
		{`{"name":"given","types":["Ingress","Egress"],"egress":[{"action":"allow"}]}`, []PolicyType{PolicyIngress, PolicyEgress}},
		{`{"name":"isolate","types":["Egress"]}`, []PolicyType{PolicyEgress}},
	} {
		p, err := DecodePolicy([]byte(tc.doc))
		if err != nil || !slices.Equal(p.Types, tc.want) {
			t.Errorf("DecodePolicy(%s): types %v, %v; want %v", tc.doc, p.Types, err, tc.want)
		}
	}
}
