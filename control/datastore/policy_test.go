package datastore

import (
	"encoding/json"
	"testing"
)

// A protocol's text is hostconv's: the name of a known one, else the number, which JSON writes as
// a number; both read back.
func TestProtocolText(t *testing.T) {
	for _, tc := range []struct {
		p          Protocol
		text, json string
		ports      bool
	}{
		{6, "tcp", `"tcp"`, true},
		{1, "icmp", `"icmp"`, false},
		{136, "udplite", `"udplite"`, true},
		{47, "47", `47`, false},
	} {
		if got := tc.p.String(); got != tc.text {
			t.Errorf("Protocol(%d).String() = %q, want %q", tc.p, got, tc.text)
		}
		if got := tc.p.HasPorts(); got != tc.ports {
			t.Errorf("Protocol(%d).HasPorts() = %v, want %v", tc.p, got, tc.ports)
		}
		b, err := json.Marshal(tc.p)
		if err != nil || string(b) != tc.json {
			t.Errorf("json.Marshal(Protocol(%d)) = %s, %v; want %s", tc.p, b, err, tc.json)
		}
		var back Protocol
		if err := json.Unmarshal(b, &back); err != nil || back != tc.p {
			t.Errorf("json.Unmarshal(%s) = %d, %v; want %d", b, back, err, tc.p)
		}
		if p, err := ParseProtocol(tc.text); err != nil || p != tc.p {
			t.Errorf("ParseProtocol(%q) = %d, %v; want %d", tc.text, p, err, tc.p)
		}
	}
	var p Protocol
	if err := json.Unmarshal([]byte(`"TCP"`), &p); err != nil || p != 6 {
		t.Errorf(`json.Unmarshal("TCP") = %d, %v; want 6`, p, err)
	}
	if _, err := ParseProtocol("gre"); err == nil || err.Error() != `protocol "gre": want tcp, udp, icmp, sctp, udplite or a number 1-255` {
		t.Errorf("ParseProtocol(gre) error = %v", err)
	}
}
