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

// Ports, ranges and port names, a name starting with a digit among them (Kubernetes allows
// "9p" and "8080-http"), read and written back the same.
func TestParsePortRange(t *testing.T) {
	for _, c := range []struct {
		in   string
		want PortRange
	}{
		{"80", PortRange{Lo: 80, Hi: 80}},
		{"8000:8080", PortRange{Lo: 8000, Hi: 8080}},
		{"http", PortRange{Name: "http"}},
		{"9p", PortRange{Name: "9p"}},
		{"8080-http", PortRange{Name: "8080-http"}},
	} {
		got, err := ParsePortRange(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParsePortRange(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		b, err := json.Marshal(got)
		if err != nil {
			t.Fatal(err)
		}
		var back PortRange
		if err := json.Unmarshal(b, &back); err != nil || back != got {
			t.Errorf("%q: JSON %s reads back as %+v, %v", c.in, b, back, err)
		}
	}
	for _, bad := range []string{"", "8080:80", "70000", "80-", "-80", "1:2:3", "Http", "80 ", "1-2", "a--b", "sixteen-letters1"} {
		if got, err := ParsePortRange(bad); err == nil {
			t.Errorf("ParsePortRange(%q) = %+v, want an error", bad, got)
		}
	}
}
