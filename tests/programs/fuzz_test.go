package programs_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// FuzzPrograms feeds arbitrary frames to each of the four programs on the interface it is
// attached to on a real host, and requires of every run: a verdict the hook defines; exactly one
// counter of this hook and interface grown by one packet of the frame's length, under a reason
// that agrees with the verdict, so that the counters account for every packet; and the frame left
// as it came, except that a forwarded frame has its TTL decremented with a still valid checksum
// and, when delivered locally, MACs from the host veth to a workload.
func FuzzPrograms(f *testing.F) {
	// One namespace and one dataplane per fuzz process: setting them up costs far more than a run.
	w := newWorld(f)
	installPolicy(f, w)
	for _, fx := range allFixtures() {
		f.Add(fx.in)
	}
	maxLen := map[program]int{}
	for _, p := range programs {
		maxLen[p] = w.maxFrame(f, p)
	}
	workloadMACs := []string{wepAMAC, wepBMAC}

	f.Fuzz(func(t *testing.T, frame []byte) {
		// Reading the counters costs more than a run: each snapshot after a run is the next
		// run's before.
		before := w.counters(t)
		for _, p := range programs {
			iface := p.iface()
			verdict, out, err := w.run(p, iface, frame)
			after := w.counters(t)
			grown, gerr := growth(before, after)
			before = after
			if gerr != nil {
				t.Fatalf("%v: %v", p, gerr)
			}

			if err != nil {
				// Frames the kernel refuses never reach the program: nothing to check but that
				// the refusal is one of the known ones and nothing was counted.
				if !errors.Is(err, unix.EINVAL) || !refusedByKernel(p, frame, maxLen[p]) {
					t.Fatalf("%v: %v", p, err)
				}
				if len(grown) != 0 {
					t.Fatalf("%v: the kernel refused the frame, yet counters grew: %v", p, grown)
				}
				continue
			}

			if !definedVerdict(p, verdict) {
				t.Fatalf("%v: %s", p, verdictName(p, verdict))
			}

			if len(grown) != 1 {
				t.Fatalf("%v: %d counters grew, want exactly one: %v", p, len(grown), grown)
			}
			var key counterKey
			for k := range grown {
				key = k
			}
			want := counterValue{1, uint64(len(frame))}
			if key.hook != p.hook() || key.ifindex != w.ifindex[iface] || grown[key] != want {
				t.Fatalf("%v on %s (ifindex %d): counter %v grew by %+v, want a counter of this hook and interface to grow by %+v",
					p, iface, w.ifindex[iface], key, grown[key], want)
			}
			if !reasonAgrees(p, verdict, key.reason) {
				t.Fatalf("%v: %s counted under %v", p, verdictName(p, verdict), key.reason)
			}

			if p == xdpFromNet || verdict != tcActRedirect {
				if !bytes.Equal(out, frame) {
					t.Fatalf("%v: %s changed the frame\n got %x\nwant %x", p, verdictName(p, verdict), out, frame)
				}
				continue
			}
			checkForwarded(t, p, key.reason, frame, out, workloadMACs)
		}
	})
}

// installPolicy puts compiled policy on both workloads, so that fuzzed frames also walk the
// identity, program and source-port lookups and the deny paths.
func installPolicy(tb testing.TB, w *world) {
	tb.Helper()
	tcp, udp, icmp := datastore.Protocol(6), datastore.Protocol(17), datastore.Protocol(1)
	echo := uint8(8)
	ps := []datastore.Policy{{Version: 1, Name: "b-in", Selector: `app == "b"`, Types: []datastore.PolicyType{datastore.PolicyIngress},
		Ingress: []datastore.Rule{
			{Action: "allow", Protocol: &tcp, Source: datastore.EntityRule{Selector: `app == "a"`},
				Destination: datastore.EntityRule{Ports: []datastore.PortRange{{Lo: 80, Hi: 80}, {Lo: 8000, Hi: 8080}}}},
			{Action: "allow", Protocol: &udp, Source: datastore.EntityRule{Ports: []datastore.PortRange{{Lo: 1000, Hi: 2000}}}},
			{Action: "deny", Protocol: &icmp, ICMP: &datastore.ICMPMatch{Type: &echo}},
			{Action: "allow", Source: datastore.EntityRule{Nets: []netip.Prefix{netip.MustParsePrefix("198.18.0.0/24")}}},
		}},
		{Version: 1, Name: "a-out", Selector: `app == "a"`, Types: []datastore.PolicyType{datastore.PolicyEgress},
			Egress: []datastore.Rule{
				{Action: "deny", Protocol: &tcp, Destination: datastore.EntityRule{Nets: []netip.Prefix{remoteBlock},
					Ports: []datastore.PortRange{{Lo: 22, Hi: 22}}}},
				{Action: "allow"},
			}}}
	set, err := policy.NewSet(ps)
	if err != nil {
		tb.Fatal(err)
	}
	eps := []policy.Endpoint{{Key: "h/a", Node: "h", Addr: wepA, Labels: map[string]string{"app": "a"}},
		{Key: "h/b", Node: "h", Addr: wepB, Labels: map[string]string{"app": "b"}}}
	c := policy.NewCompiler(w.maps.RuleHits.MaxRules())
	res, err := c.Compile(set, eps, eps)
	if err != nil {
		tb.Fatal(err)
	}
	for k, v := range c.Entries(res.Programs, res.Identities) {
		if err := w.maps.Policy.Put(k, v); err != nil {
			tb.Fatal(err)
		}
	}
	for p, id := range res.IPs {
		if err := w.maps.PolicyIPs.Put(p, id); err != nil {
			tb.Fatal(err)
		}
	}
	for _, ep := range []struct {
		iface string
		addr  netip.Addr
		mac   string
	}{{caliA, wepA, wepAMAC}, {caliB, wepB, wepBMAC}} {
		pg := res.Endpoints[ep.addr]
		if pg.Ingress == 0 && pg.Egress == 0 {
			tb.Fatalf("no program for %v", ep.addr)
		}
		if err := w.maps.Endpoints.Put(maps.Endpoint{Ifindex: w.ifindex[ep.iface], IPv4: ep.addr, MAC: mustMAC(ep.mac),
			IngressProgram: pg.Ingress, EgressProgram: pg.Egress}); err != nil {
			tb.Fatal(err)
		}
	}
}

// checkForwarded requires that a redirected frame differs from the input only where forwarding
// rewrites it.
func checkForwarded(t testing.TB, p program, reason maps.Reason, in, out []byte, workloadMACs []string) {
	t.Helper()
	if len(out) != len(in) || len(in) < ethHeaderLen+ipv4MinLen {
		t.Fatalf("%v: forwarded a %d-byte frame as %d bytes", p, len(in), len(out))
	}
	exp := routed()(in)
	if reason == maps.Reason(fwdLocal) {
		found := false
		for _, mac := range workloadMACs {
			if bytes.Equal(out[0:6], mustMAC(mac)) {
				exp = delivered(mac)(in)
				found = true
			}
		}
		if !found {
			t.Fatalf("%v: delivered to MAC %x, which no endpoint has", p, out[0:6])
		}
	}
	// Only the checksum may differ from exp: by the zero of one's complement it took.
	a, b := bytes.Clone(out), exp
	a[csumOffset], a[csumOffset+1] = b[csumOffset], b[csumOffset+1]
	if !bytes.Equal(a, b) {
		t.Fatalf("%v: %v frame\n got %x\nwant %x", p, reason, out, exp)
	}
	if ipv4HeaderValid(in) && !ipv4HeaderValid(out) {
		t.Fatalf("%v: a valid IPv4 header checksum became invalid: %x", p, out)
	}
}

func definedVerdict(p program, v uint32) bool {
	if p == xdpFromNet {
		return v == xdpPass || v == xdpDrop
	}
	return v == tcActOK || v == tcActShot || v == tcActRedirect
}

// reasonAgrees: forwarded packets are counted under FWD_*, dropped ones under DROP_* and
// everything handed on under PASS_*.
func reasonAgrees(p program, v uint32, r maps.Reason) bool {
	switch {
	case r.Forward():
		return p != xdpFromNet && v == tcActRedirect
	case r.Drop():
		return v == tcActShot || (p == xdpFromNet && v == xdpDrop)
	default:
		pass := v == tcActOK
		if p == xdpFromNet {
			pass = v == xdpPass
		}
		return pass && r != maps.Reason(loader.MargayReasonREASON_UNSPEC)
	}
}

// refusedByKernel reports whether BPF_PROG_TEST_RUN refuses frame for p before running it:
// every frame needs an Ethernet header; it must fit the buffer a test run allocates (one page for
// an skb; more buffers for multi-buffer XDP), measured by maxFrame; and an skb whose EtherType
// says IPv4 or IPv6 must hold that protocol's fixed header.
func refusedByKernel(p program, frame []byte, maxLen int) bool {
	if len(frame) < ethHeaderLen || len(frame) > maxLen {
		return true
	}
	if p == xdpFromNet {
		return false
	}
	switch binary.BigEndian.Uint16(frame[12:]) {
	case unix.ETH_P_IP:
		return len(frame) < ethHeaderLen+ipv4MinLen
	case unix.ETH_P_IPV6:
		return len(frame) < ethHeaderLen+40
	}
	return false
}

// maxFrame is the longest frame a test run of p accepts, found by bisection with frames of zeros
// (EtherType 0, so no network header rule applies). It depends on the page size, the size of
// struct skb_shared_info and, for multi-buffer XDP, MAX_SKB_FRAGS: not worth hard-coding.
func (w *world) maxFrame(tb testing.TB, p program) int {
	tb.Helper()
	lo, hi := ethHeaderLen, 1<<20
	if _, _, err := w.run(p, p.iface(), make([]byte, lo)); err != nil {
		tb.Fatalf("the smallest frame: %v", err)
	}
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if _, _, err := w.run(p, p.iface(), make([]byte, mid)); err == nil {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}
