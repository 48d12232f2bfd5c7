package datastore

import (
	"math"
	"net/netip"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	pfx := netip.MustParsePrefix
	addr := netip.MustParseAddr
	okPool := Pool{Version: 1, Name: "p", CIDR: pfx("198.19.0.0/16"), BlockSize: 26}
	okPeer := BGPPeer{Version: 1, Name: "gw", PeerIP: addr("198.18.0.254"), ASN: 64513}
	okNode := Node{Version: 1, Name: "host1", AddressV4: pfx("198.18.0.1/24"), Uplink: "ens32"}
	okBlock := Block{Version: 1, CIDR: pfx("198.19.0.0/26"), Affinity: "host:host1",
		Allocations: []Allocation{{IP: addr("198.19.0.1"), Handle: "h1"}, {IP: addr("198.19.0.2"), Handle: "h2"}}}
	okHandle := Handle{Version: 1, ID: "h1", Node: "host1", IPs: []netip.Addr{addr("198.19.0.1")}, Workload: "host1/w1"}
	okWorkload := Workload{Version: 1, ID: "w1", Name: "web", Namespace: "default", Node: "host1",
		IfName: "cali0b7f49da20a", MAC: "02:42:c6:13:00:01", IPv4: []netip.Prefix{pfx("198.19.0.1/32")},
		Netns: "/var/run/netns/w1", Labels: map[string]string{"app": "web"}}

	tests := []struct {
		name string
		v    Resource
		want string // substring of the error; "" = valid
	}{
		{"pool ok", &okPool, ""},
		{"default pool", ptr(DefaultPool()), ""},
		{"pool version 0", with(okPool, func(p *Pool) { p.Version = 0 }), "version 0, want 1"},
		{"pool version 2", with(okPool, func(p *Pool) { p.Version = 2 }), "version 2, want 1"},
		{"pool no name", with(okPool, func(p *Pool) { p.Name = "" }), "name: empty"},
		{"pool slash name", with(okPool, func(p *Pool) { p.Name = "a/b" }), `byte 1 ('/') not allowed`},
		{"pool dotdot name", with(okPool, func(p *Pool) { p.Name = ".." }), `contains ".."`},
		{"pool no cidr", with(okPool, func(p *Pool) { p.CIDR = netip.Prefix{} }), "cidr is missing"},
		{"pool v6", with(okPool, func(p *Pool) { p.CIDR = pfx("fd00::/48") }), "not IPv4"},
		{"pool host bits", with(okPool, func(p *Pool) { p.CIDR = pfx("198.19.0.1/16") }), "host bits set (want 198.19.0.0/16)"},
		{"pool block 19", with(okPool, func(p *Pool) { p.BlockSize = 19 }), "blockSize 19 outside 20..32"},
		{"pool block 33", with(okPool, func(p *Pool) { p.BlockSize = 33 }), "blockSize 33 outside 20..32"},
		{"pool block shorter", with(okPool, func(p *Pool) { p.CIDR = pfx("198.19.0.0/28") }), "blockSize 26 is shorter than the pool's /28"},

		{"bgp default", ptr(DefaultBGPConfig()), ""},
		{"bgp asn 0", &BGPConfig{Version: 1}, "asn is missing"},
		{"bgp asn reserved", &BGPConfig{Version: 1, ASN: 23456}, "asn 23456 is reserved"},

		{"peer ok", &okPeer, ""},
		{"peer v6", with(okPeer, func(p *BGPPeer) { p.PeerIP = addr("2001:db8::1") }), ""},
		{"peer no ip", with(okPeer, func(p *BGPPeer) { p.PeerIP = netip.Addr{} }), "peerIP is missing"},
		{"peer zero ip", with(okPeer, func(p *BGPPeer) { p.PeerIP = addr("0.0.0.0") }), "want a plain unicast address"},
		{"peer no asn", with(okPeer, func(p *BGPPeer) { p.ASN = 0 }), "asn is missing"},
		{"peer bad node", with(okPeer, func(p *BGPPeer) { p.Node = "a b" }), "node:"},
		{"peer long password", with(okPeer, func(p *BGPPeer) { p.Password = strings.Repeat("x", 81) }), "password is 81 bytes"},

		{"node ok", &okNode, ""},
		{"node no address", with(okNode, func(n *Node) { n.AddressV4 = netip.Prefix{} }), "addressV4 is missing"},
		{"node v6 address", with(okNode, func(n *Node) { n.AddressV4 = pfx("2001:db8::1/64") }), "want a unicast IPv4"},
		{"node bad uplink", with(okNode, func(n *Node) { n.Uplink = "a-very-long-interface" }), "uplink:"},
		{"node asn reserved", with(okNode, func(n *Node) { n.ASN = 65535 }), "asn 65535 is reserved"},
		{"node rr id", with(okNode, func(n *Node) { n.RouteReflectorClusterID = "224.0.0.1" }), ""},
		{"node bad rr id", with(okNode, func(n *Node) { n.RouteReflectorClusterID = "rr1" }), `routeReflectorClusterID "rr1"`},
		{"node empty label", with(okNode, func(n *Node) { n.Labels = map[string]string{"": "x"} }), "labels: empty key"},

		{"block ok", &okBlock, ""},
		{"block wide", with(okBlock, func(b *Block) { b.CIDR = pfx("198.19.0.0/16"); b.Allocations = nil }), "blocks are /20 to /32"},
		{"block bad affinity", with(okBlock, func(b *Block) { b.Affinity = "node:host1" }), `affinity "node:host1": want`},
		{"block bad affinity node", with(okBlock, func(b *Block) { b.Affinity = "host:" }), "node: empty"},
		{"block ip outside", with(okBlock, func(b *Block) { b.Allocations[1].IP = addr("198.19.0.64") }), "allocations[1]: ip 198.19.0.64 is outside 198.19.0.0/26"},
		{"block ip twice", with(okBlock, func(b *Block) { b.Allocations[1].IP = addr("198.19.0.1") }), "allocations[1]: ip 198.19.0.1 already allocated in allocations[0]"},
		{"block no handle", with(okBlock, func(b *Block) { b.Allocations[0].Handle = "" }), "allocations[0]: handle: empty"},

		{"handle ok", &okHandle, ""},
		{"handle no node", with(okHandle, func(h *Handle) { h.Node = "" }), "node: empty"},
		{"handle dup ip", with(okHandle, func(h *Handle) { h.IPs = append(h.IPs, h.IPs[0]) }), "ips[1]: 198.19.0.1 repeats ips[0]"},
		{"handle bad workload", with(okHandle, func(h *Handle) { h.Workload = "w1" }), `workload "w1": want <node>/<id>`},

		{"workload ok", &okWorkload, ""},
		{"workload no name", with(okWorkload, func(w *Workload) { w.Name = "" }), "name is empty"},
		{"workload bad ifname", with(okWorkload, func(w *Workload) { w.IfName = "eth0" }), `ifName "eth0": want "cali" and 11 lowercase hex digits`},
		{"workload upper ifname", with(okWorkload, func(w *Workload) { w.IfName = "cali0B7F49DA20A" }), "ifName"},
		{"workload bad mac", with(okWorkload, func(w *Workload) { w.MAC = "zz" }), `mac "zz"`},
		{"workload long mac", with(okWorkload, func(w *Workload) { w.MAC = "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01" }), "mac"},
		{"workload /24", with(okWorkload, func(w *Workload) { w.IPv4 = []netip.Prefix{pfx("198.19.0.0/24")} }), `ipv4[0]: "198.19.0.0/24" is not an IPv4 /32`},
		{"workload two addresses", with(okWorkload, func(w *Workload) { w.IPv4 = []netip.Prefix{pfx("198.19.0.1/32"), pfx("198.19.0.2/32")} }),
			"ipv4 [198.19.0.1/32 198.19.0.2/32]: a workload has one address (one veth, one /32), not 2"},
		{"workload no address", with(okWorkload, func(w *Workload) { w.IPv4 = nil }), ""},
		{"workload relative netns", with(okWorkload, func(w *Workload) { w.Netns = "netns/w1" }), `netns "netns/w1"`},
		{"workload id slash", with(okWorkload, func(w *Workload) { w.ID = "a/b" }), "id:"},
		{"workload add duration", with(okWorkload, func(w *Workload) { w.AddDurationSeconds = 0.25 }), ""},
		{"workload negative add duration", with(okWorkload, func(w *Workload) { w.AddDurationSeconds = -0.5 }), "addDurationSeconds -0.5: want a non-negative"},
		{"workload NaN add duration", with(okWorkload, func(w *Workload) { w.AddDurationSeconds = math.NaN() }), "addDurationSeconds NaN"},
		{"workload infinite add duration", with(okWorkload, func(w *Workload) { w.AddDurationSeconds = math.Inf(1) }), "addDurationSeconds +Inf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.v.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.want != "" && err == nil:
				t.Fatalf("Validate() = nil, want error containing %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("Validate() = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestBlockKeyName(t *testing.T) {
	for _, tt := range []struct {
		cidr, name string
	}{
		{"198.19.0.0/26", "198.19.0.0-26"},
		{"198.19.255.192/26", "198.19.255.192-26"},
		{"10.0.0.5/32", "10.0.0.5-32"},
	} {
		p := netip.MustParsePrefix(tt.cidr)
		if got := BlockKeyName(p); got != tt.name {
			t.Errorf("BlockKeyName(%s) = %q, want %q", p, got, tt.name)
		}
		if got, err := ParseBlockKeyName(tt.name); err != nil || got != p {
			t.Errorf("ParseBlockKeyName(%q) = %v, %v, want %s", tt.name, got, err, p)
		}
	}
	for _, bad := range []string{"", "198.19.0.0", "198.19.0.0/26", "198.19.0.1-26", "198.19.0.0-026", "198.19.0.0-33", "x-26", "198.19.0.0-"} {
		if p, err := ParseBlockKeyName(bad); err == nil {
			t.Errorf("ParseBlockKeyName(%q) = %v, want an error", bad, p)
		}
	}
}

func TestDefaults(t *testing.T) {
	c, err := bgpConfigKind.decode("bgp", []byte(`{"version":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.ASN != DefaultASN || !c.MeshEnabled() {
		t.Errorf("decoded empty BGP config = %+v, want ASN %d and mesh on", c, DefaultASN)
	}
	p, err := poolKind.decode("p", []byte(`{"version":1,"cidr":"198.19.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.BlockSize != DefaultBlockSize || p.Name != "p" {
		t.Errorf("decoded pool = %+v, want blockSize %d and the key's name", p, DefaultBlockSize)
	}
}

func ptr[T any](v T) *T { return &v }

// with returns a modified deep-enough copy of v as a Resource.
func with[T any, P interface {
	*T
	Resource
}](v T, f func(P)) P {
	c := deepCopy(v)
	f(P(&c))
	return P(&c)
}

func deepCopy[T any](v T) T {
	switch x := any(&v).(type) {
	case *Block:
		x.Allocations = append([]Allocation(nil), x.Allocations...)
	case *Handle:
		x.IPs = append([]netip.Addr(nil), x.IPs...)
	}
	return v
}

func TestEffectiveASN(t *testing.T) {
	for _, tc := range []struct {
		name      string
		node, cfg uint32
		want      uint32
	}{
		{"node's own", 65001, 64600, 65001},
		{"node's own without config", 65001, 0, 65001},
		{"the cluster's", 0, 64600, 64600},
		{"the default", 0, 0, DefaultASN},
	} {
		if got := EffectiveASN(Node{ASN: tc.node}, BGPConfig{ASN: tc.cfg}); got != tc.want {
			t.Errorf("%s: EffectiveASN(node %d, config %d) = %d, want %d", tc.name, tc.node, tc.cfg, got, tc.want)
		}
	}
	// A cluster without config/bgp: DefaultBGPConfig and the zero config agree.
	if a, b := EffectiveASN(Node{}, DefaultBGPConfig()), EffectiveASN(Node{}, BGPConfig{}); a != b || a != DefaultASN {
		t.Errorf("EffectiveASN with the default config = %d, with none = %d; want %d", a, b, DefaultASN)
	}
}
