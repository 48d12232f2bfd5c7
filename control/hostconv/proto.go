package hostconv

import (
	"fmt"
	"strconv"
	"strings"
)

// The names of IP protocols, the one table of them: policies read and write them
// (datastore.Protocol), conntrack entries and events print them (maps.Flow, maps.Event), and so
// does margayctl. A protocol without a name is written as its decimal number, "47": the form
// ParseProtocol reads back and a policy's JSON holds as a number.
var protocols = []struct {
	name  string
	num   uint8
	ports bool // the packets carry ports
}{
	{"tcp", 6, true},
	{"udp", 17, true},
	{"icmp", 1, false},
	{"sctp", 132, true},
	{"udplite", 136, true},
}

// ProtocolName is the name of IP protocol p (tcp, udp, icmp, sctp, udplite), else its decimal
// number: "47".
func ProtocolName(p uint8) string {
	for _, pr := range protocols {
		if pr.num == p {
			return pr.name
		}
	}
	return strconv.Itoa(int(p))
}

// ProtocolNames lists the protocols that have a name: tcp, udp, icmp, sctp, udplite.
func ProtocolNames() []string {
	out := make([]string, 0, len(protocols))
	for _, pr := range protocols {
		out = append(out, pr.name)
	}
	return out
}

// ParseProtocol reads a protocol's name, in any case, or its number 1-255 as ProtocolName writes
// it (no sign, no leading zeros).
func ParseProtocol(s string) (uint8, error) {
	lower := strings.ToLower(s)
	for _, pr := range protocols {
		if pr.name == lower {
			return pr.num, nil
		}
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != s {
		return 0, fmt.Errorf("protocol %q: want %s or a number 1-255", s, strings.Join(ProtocolNames(), ", "))
	}
	return uint8(n), nil
}

// ProtocolHasPorts reports whether packets of protocol p carry ports: TCP, UDP, SCTP and UDP-Lite.
func ProtocolHasPorts(p uint8) bool {
	for _, pr := range protocols {
		if pr.num == p {
			return pr.ports
		}
	}
	return false
}
