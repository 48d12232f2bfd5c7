package hostconv

import (
	"slices"
	"testing"
)

func TestProtocolNames(t *testing.T) {
	for _, tc := range []struct {
		p     uint8
		name  string
		ports bool
	}{
		{6, "tcp", true}, {17, "udp", true}, {1, "icmp", false}, {132, "sctp", true}, {136, "udplite", true},
		// Without a name: the number.
		{47, "47", false}, {0, "0", false}, {255, "255", false},
	} {
		if got := ProtocolName(tc.p); got != tc.name {
			t.Errorf("ProtocolName(%d) = %q, want %q", tc.p, got, tc.name)
		}
		if got := ProtocolHasPorts(tc.p); got != tc.ports {
			t.Errorf("ProtocolHasPorts(%d) = %v, want %v", tc.p, got, tc.ports)
		}
	}
	if got := ProtocolNames(); !slices.Equal(got, []string{"tcp", "udp", "icmp", "sctp", "udplite"}) {
		t.Errorf("ProtocolNames() = %v", got)
	}
}

// ParseProtocol reads what ProtocolName writes, for every protocol but 0, which is none.
func TestParseProtocol(t *testing.T) {
	for p := 1; p <= 255; p++ {
		if got, err := ParseProtocol(ProtocolName(uint8(p))); err != nil || got != uint8(p) {
			t.Errorf("ParseProtocol(%q) = %d, %v; want %d", ProtocolName(uint8(p)), got, err, p)
		}
	}
	for s, want := range map[string]uint8{"TCP": 6, "Udp": 17, "ICMP": 1, "47": 47} {
		if got, err := ParseProtocol(s); err != nil || got != want {
			t.Errorf("ParseProtocol(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "0", "256", "06", "+6", "-1", "tcp6", "ſctp"} {
		if _, err := ParseProtocol(s); err == nil {
			t.Errorf("ParseProtocol(%q) succeeded", s)
		}
	}
	_, err := ParseProtocol("gre")
	if want := `protocol "gre": want tcp, udp, icmp, sctp, udplite or a number 1-255`; err == nil || err.Error() != want {
		t.Errorf("ParseProtocol(gre) error = %v; want %s", err, want)
	}
}
