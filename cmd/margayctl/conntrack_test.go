package main

import (
	"encoding/binary"
	"encoding/json"
	"math/bits"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

// ctAddr stores an address as the BPF programs do: __be32, its bytes in network order.
func ctAddr(s string) uint32 {
	b := netip.MustParseAddr(s).As4()
	return binary.NativeEndian.Uint32(b[:])
}

// ctPort stores a port as __be16.
func ctPort(p uint16) uint16 { return bits.ReverseBytes16(p) }

func TestConntrack(t *testing.T) {
	root := netns.BPFFS(t)
	d, err := loader.Load(loader.WithRoot(root))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ct := d.Maps().Conntrack
	now := maps.Monotonic()

	// A TCP flow 198.19.0.5:40000 -> 198.19.0.9:80, with A the initiator, that the kernel translates.
	k1 := loader.MargayCtKey{AddrA: ctAddr("198.19.0.5"), AddrB: ctAddr("198.19.0.9"), PortA: ctPort(40000), PortB: ctPort(80),
		Protocol: unix.IPPROTO_TCP}
	v1 := loader.MargayCtValue{Created: now - uint64(65*time.Second), LastSeen: now - uint64(2*time.Second),
		Packets: [2]uint64{10, 8}, Bytes: [2]uint64{1200, 900}, Generation: 4, RuleEgress: 3, RuleIngress: 7,
		PolicyPort: ctPort(80), State: loader.MargayCtStateCT_TCP_ESTABLISHED, Verdict: loader.MargayCtVerdictCT_VERDICT_ALLOW,
		InitiatorIsA: 1, KernelNat: 1}
	// A UDP flow 198.19.0.6:5353 -> 198.18.0.1:53, stored with B the initiator.
	k2 := loader.MargayCtKey{AddrA: ctAddr("198.18.0.1"), AddrB: ctAddr("198.19.0.6"), PortA: ctPort(53), PortB: ctPort(5353),
		Protocol: unix.IPPROTO_UDP}
	v2 := loader.MargayCtValue{Created: now - uint64(3*time.Second), LastSeen: now - uint64(3*time.Second),
		Packets: [2]uint64{1, 0}, Bytes: [2]uint64{60, 0}, Generation: 4, RuleEgress: 9,
		PolicyPort: ctPort(53), State: loader.MargayCtStateCT_UDP, Verdict: loader.MargayCtVerdictCT_VERDICT_DENY_EGRESS}
	if err := ct.Put(&k1, &v1); err != nil {
		t.Fatal(err)
	}
	if err := ct.Put(&k2, &v2); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) string {
		t.Helper()
		out, err := margayctl(t, append([]string{"--bpffs-root", root}, args...)...)
		if err != nil {
			t.Fatalf("margayctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	rows := func(out string) []string {
		var rs []string
		for _, l := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			rs = append(rs, strings.Join(strings.Fields(l), " "))
		}
		return rs
	}

	out := run("conntrack", "list")
	if !strings.HasPrefix(strings.Join(strings.Fields(out), " "), "PROTO SRC DST STATE VERDICT PACKETS BYTES AGE IDLE RULES") {
		t.Errorf("conntrack list header:\n%s", out)
	}
	rs := rows(out)
	if len(rs) != 2 || !strings.HasPrefix(rs[0], "tcp 198.19.0.5:40000 198.19.0.9:80 TCP_ESTABLISHED ALLOW+NAT 10/8 1200/900 1m5s 2s egress=3 ingress=7") ||
		!strings.HasPrefix(rs[1], "udp 198.19.0.6:5353 198.18.0.1:53 UDP DENY_EGRESS 1/0 60/0 3s 3s egress=9") {
		t.Errorf("conntrack list:\n%s", out)
	}
	if bare := run("ct"); len(rows(bare)) != 2 {
		t.Errorf("bare ct:\n%s", bare)
	}

	out = run("conntrack", "list", "-o", "json")
	var flows []flowJSON
	if err := json.Unmarshal([]byte(out), &flows); err != nil || len(flows) != 2 {
		t.Fatalf("conntrack list -o json = %s (%v)", out, err)
	}
	if !flows[0].KernelNAT || flows[1].KernelNAT {
		t.Errorf("kernelNAT in JSON: %+v, %+v; want only the first", flows[0], flows[1])
	}
	f := flows[1]
	if f.Proto != "udp" || f.Src != "198.19.0.6" || f.SrcPort != 5353 || f.Dst != "198.18.0.1" || f.DstPort != 53 ||
		f.State != "UDP" || f.Verdict != "DENY_EGRESS" || f.RuleEgress != 9 || f.PacketsOrig != 1 || f.BytesOrig != 60 ||
		f.AgeSeconds < 3 || f.AgeSeconds > 60 {
		t.Errorf("udp flow as JSON = %+v", f)
	}

	for _, tc := range []struct {
		args []string
		want string // SRC of the only flow listed; "" for none
	}{
		{[]string{"--src", "198.19.0.5"}, "198.19.0.5:40000"},
		{[]string{"--src", "198.19.0.9"}, ""}, // the responder is no source
		{[]string{"--dst", "198.18.0.0/16"}, "198.19.0.6:5353"},
		{[]string{"--proto", "tcp"}, "198.19.0.5:40000"},
		{[]string{"--proto", "17", "--src", "198.19.0.0/24"}, "198.19.0.6:5353"},
		{[]string{"--proto", "icmp"}, ""},
	} {
		out := run(append([]string{"ct", "list"}, tc.args...)...)
		rs := rows(out)
		switch {
		case tc.want == "" && len(rs) != 0,
			tc.want != "" && (len(rs) != 1 || strings.Fields(rs[0])[1] != tc.want):
			t.Errorf("ct list %s:\n%s", strings.Join(tc.args, " "), out)
		}
	}
	if out := run("ct", "--proto", "udp", "-o", "json"); !strings.Contains(out, `"srcPort": 5353`) || strings.Contains(out, `"tcp"`) {
		t.Errorf("ct --proto udp -o json:\n%s", out)
	}

	for _, args := range [][]string{{"ct", "list", "--src", "nope"}, {"ct", "list", "--proto", "bogus"}, {"ct", "list", "-o", "yaml"}, {"ct", "flush", "-o", "yaml"}} {
		if out, err := margayctl(t, append([]string{"--bpffs-root", root}, args...)...); err == nil {
			t.Errorf("margayctl %s succeeded:\n%s", strings.Join(args, " "), out)
		}
	}
	if out := run("conntrack", "list"); len(rows(out)) != 2 {
		t.Errorf("failed commands changed the entries:\n%s", out)
	}

	if out := run("conntrack", "flush"); strings.TrimSpace(out) != "flushed 2 conntrack entries" {
		t.Errorf("conntrack flush = %q", out)
	}
	if out := run("conntrack", "list", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("conntrack list after flush = %q, want []", out)
	}
	if out := run("ct", "flush", "-o", "json"); strings.Join(strings.Fields(out), "") != `{"deleted":0}` {
		t.Errorf("second flush -o json = %q", out)
	}
	if _, err := margayctl(t, "--bpffs-root", root+"/nothing", "conntrack", "list"); err == nil {
		t.Error("conntrack list of a root without pins succeeded")
	}
}
