package datastore

import (
	"slices"
	"strings"
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

// notProtocol and notICMP are checked as protocol and icmp are.
func TestRuleNegationsValidate(t *testing.T) {
	for _, tc := range []struct {
		doc, wantErr string
	}{
		{`{"name":"a","ingress":[{"action":"allow","notProtocol":"udp"}]}`, ""},
		{`{"name":"a","ingress":[{"action":"allow","protocol":"tcp","notProtocol":"udp"}]}`, ""},
		{`{"name":"a","ingress":[{"action":"allow","protocol":"udp","notProtocol":"udp"}]}`, "notProtocol udp: the same as protocol"},
		{`{"name":"a","ingress":[{"action":"allow","protocol":"icmp","notICMP":{"type":8}}]}`, ""},
		{`{"name":"a","ingress":[{"action":"allow","notICMP":{"type":8}}]}`, "notICMP: needs protocol icmp"},
		{`{"name":"a","ingress":[{"action":"allow","protocol":"icmp","notICMP":{"code":1}}]}`, "notICMP: code without type"},
	} {
		_, err := DecodePolicy([]byte(tc.doc))
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("DecodePolicy(%s): %v; want %q", tc.doc, err, tc.wantErr)
		}
	}
}
