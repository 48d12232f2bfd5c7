package programs_test

import (
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
)

// fixture is one BPF_PROG_TEST_RUN case, Katran style: a program, the state it runs against, a
// frame in, and the verdict, the one counter and the frame out that must follow.
//
// The target of a redirect (the workload's veth, the uplink) is not observable through a test
// run: bpf_redirect_peer and bpf_redirect_neigh only record it for the hook to act on after the
// program returns, and a test run discards it. The route's ifindex is checked by the forwarding
// tests instead (tests/forwarding); here the MACs written from the endpoint show which one it was.
type fixture struct {
	name  string
	prog  program
	iface string                        // where the frame arrives; default prog.iface()
	setup func(tb testing.TB, w *world) // state beyond newWorld's, undone when the case ends
	in    []byte

	verdict uint32
	reason  loader.MargayReason
	out     rewrite // nil: the frame leaves unchanged

	// refused: the kernel refuses the frame before the program runs (see malformed), so the
	// run must fail with EINVAL and count nothing.
	refused bool
}

// Reasons under short names, so that each fixture fits a line or two.
const (
	fwdLocal       = loader.MargayReasonREASON_FWD_LOCAL
	fwdRemote      = loader.MargayReasonREASON_FWD_REMOTE
	passNotIPv4    = loader.MargayReasonREASON_PASS_NOT_IPV4
	passNoRoute    = loader.MargayReasonREASON_PASS_NO_ROUTE
	passKernel     = loader.MargayReasonREASON_PASS_KERNEL
	passTTL        = loader.MargayReasonREASON_PASS_TTL
	passIPOptions  = loader.MargayReasonREASON_PASS_IP_OPTIONS
	passFragment   = loader.MargayReasonREASON_PASS_FRAGMENT
	passMTU        = loader.MargayReasonREASON_PASS_MTU
	passNotHost    = loader.MargayReasonREASON_PASS_NOT_HOST
	passNoEndpoint = loader.MargayReasonREASON_PASS_NO_ENDPOINT
	passDeliver    = loader.MargayReasonREASON_PASS_DELIVER
	passPrefilter  = loader.MargayReasonREASON_PASS_PREFILTER
	dropMalformed  = loader.MargayReasonREASON_DROP_MALFORMED
	dropSpoofed    = loader.MargayReasonREASON_DROP_SPOOFED
	dropNoEndpoint = loader.MargayReasonREASON_DROP_NO_ENDPOINT
	dropNoWorkload = loader.MargayReasonREASON_DROP_NO_WORKLOAD
)

// wepCWithoutEndpoint routes workload C's /32 to its veth while its endpoint entry is missing,
// as between the agent's two writes or after a lost one.
func wepCWithoutEndpoint(tb testing.TB, w *world) {
	w.putRoute(tb, maps.Route{Prefix: netip.PrefixFrom(wepC, 32), Flags: maps.LocalWorkload | maps.InPool,
		Ifindex: w.ifindex[caliC]})
}

func fromWepFixtures() []fixture {
	fs := []fixture{
		{name: "ICMP to a local workload", in: fromWorkload(),
			verdict: tcActRedirect, reason: fwdLocal, out: delivered(wepBMAC)},
		{name: "TCP to a local workload", in: fromWorkload(tcp(), dontFragment()),
			verdict: tcActRedirect, reason: fwdLocal, out: delivered(wepBMAC)},
		{name: "UDP to a local workload", in: fromWorkload(udp()),
			verdict: tcActRedirect, reason: fwdLocal, out: delivered(wepBMAC)},
		{name: "TTL 2 is the lowest forwarded", in: fromWorkload(ttl(2)),
			verdict: tcActRedirect, reason: fwdLocal, out: delivered(wepBMAC)},
		// A TCP SYN is 40 bytes of IPv4; Ethernet pads it to its 60-byte minimum, and the padding
		// travels on untouched.
		{name: "padded to the Ethernet minimum", in: fromWorkload(tcp(), ipLen(40), frameLen(60)),
			verdict: tcActRedirect, reason: fwdLocal, out: delivered(wepBMAC)},
		{name: "to a remote block", in: fromWorkload(to(remoteDst)),
			verdict: tcActRedirect, reason: fwdRemote, out: routed()},
		{name: "to a remote workload inside another host's block", in: fromWorkload(to(remoteWep), tcp()),
			verdict: tcActRedirect, reason: fwdRemote, out: routed()},
		{name: "to another host's workload inside our block", in: fromWorkload(to(borrowedHere), udp()),
			verdict: tcActRedirect, reason: fwdRemote, out: routed()},
		{name: "to a remote block without next hop", in: fromWorkload(to(directDst)),
			verdict: tcActRedirect, reason: fwdRemote, out: routed()},
		{name: "exactly the uplink MTU to a remote block", in: fromWorkload(to(remoteDst), ipLen(uplinkMTU)),
			verdict: tcActRedirect, reason: fwdRemote, out: routed()},
		{name: "one byte over the uplink MTU to a remote block", in: fromWorkload(to(remoteDst), ipLen(uplinkMTU+1)),
			verdict: tcActOK, reason: passMTU},

		{name: "no route", in: fromWorkload(to(noRoute)), verdict: tcActOK, reason: passNoRoute},
		{name: "to this host", in: fromWorkload(to(thisHost)), verdict: tcActOK, reason: passKernel},
		{name: "to another host", in: fromWorkload(to(otherHost)), verdict: tcActOK, reason: passKernel},
		{name: "to an unused address of the local block", in: fromWorkload(to(unusedLocal)),
			verdict: tcActOK, reason: passKernel},
		{name: "to a local workload without endpoint", setup: wepCWithoutEndpoint, in: fromWorkload(to(wepC)),
			verdict: tcActOK, reason: passNoEndpoint},
		// eBPF bypasses ip_rcv(), so it drops what ip_rcv() would: forwarding it would pass it on.
		{name: "bad header checksum", in: fromWorkload(badChecksum()), verdict: tcActShot, reason: dropMalformed},
		{name: "TTL 1", in: fromWorkload(ttl(1)), verdict: tcActOK, reason: passTTL},
		{name: "TTL 0", in: fromWorkload(ttl(0)), verdict: tcActOK, reason: passTTL},
		{name: "IP options", in: fromWorkload(ipOptions(routerAlert...)), verdict: tcActOK, reason: passIPOptions},
		{name: "first fragment (MF)", in: fromWorkload(fragmentMF()), verdict: tcActOK, reason: passFragment},
		{name: "last fragment (offset)", in: fromWorkload(fragmentOffset(185)), verdict: tcActOK, reason: passFragment},
		{name: "ARP request", in: arp("ff:ff:ff:ff:ff:ff", wepAMAC, false, wepA, wepB),
			verdict: tcActOK, reason: passNotIPv4},
		{name: "IPv6", in: ipv6Echo(hostVethMAC, wepAMAC), verdict: tcActOK, reason: passNotIPv4},
		{name: "Ethernet header only (ARP)", in: truncate(arp("ff:ff:ff:ff:ff:ff", wepAMAC, false, wepA, wepB), ethHeaderLen),
			verdict: tcActOK, reason: passNotIPv4},

		{name: "spoofed: another workload's address", in: fromWorkload(from(wepB), to(remoteDst)),
			verdict: tcActShot, reason: dropSpoofed},
		{name: "spoofed: the host's address", in: fromWorkload(from(thisHost)),
			verdict: tcActShot, reason: dropSpoofed},
		// Anti-spoofing comes before every reason to hand a packet to the kernel.
		{name: "spoofed with TTL 1", in: fromWorkload(from(remoteDst), ttl(1)),
			verdict: tcActShot, reason: dropSpoofed},
		{name: "from an interface without endpoint", iface: caliC, in: fromWorkload(from(wepC)),
			verdict: tcActShot, reason: dropNoEndpoint},
	}
	fs = append(fs, malformedFixtures(fromWorkload, tcActShot)...)
	return withProgram(fromWep, fs)
}

func fromNetFixtures() []fixture {
	fs := []fixture{
		{name: "ICMP to a local workload", in: fromNetwork(),
			verdict: tcActRedirect, reason: fwdLocal, out: delivered(wepBMAC)},
		{name: "TCP to a local workload", in: fromNetwork(tcp(), dontFragment(), from(remoteWep)),
			verdict: tcActRedirect, reason: fwdLocal, out: delivered(wepBMAC)},
		// The reply will go to the kernel (to a host): the request does too, so that the kernel's
		// conntrack sees both (kube-proxy drops what it finds INVALID).
		{name: "TCP from another host to a local workload", in: fromNetwork(tcp(), dontFragment(), from(otherHost)),
			verdict: tcActOK, reason: passKernel},
		{name: "UDP to the other local workload", in: fromNetwork(udp(), to(wepA)),
			verdict: tcActRedirect, reason: fwdLocal, out: delivered(wepAMAC)},
		{name: "TTL 2 is the lowest forwarded", in: fromNetwork(ttl(2)),
			verdict: tcActRedirect, reason: fwdLocal, out: delivered(wepBMAC)},

		{name: "to a remote block", in: fromNetwork(to(remoteDst), from(remoteWep)),
			verdict: tcActOK, reason: passKernel},
		{name: "to another host's workload inside our block", in: fromNetwork(to(borrowedHere)),
			verdict: tcActOK, reason: passKernel},
		{name: "to this host", in: fromNetwork(to(thisHost)), verdict: tcActOK, reason: passKernel},
		{name: "to an unused address of the local block", in: fromNetwork(to(unusedLocal)),
			verdict: tcActOK, reason: passKernel},
		{name: "no route", in: fromNetwork(to(noRoute)), verdict: tcActOK, reason: passNoRoute},
		{name: "to a local workload without endpoint", setup: wepCWithoutEndpoint, in: fromNetwork(to(wepC)),
			verdict: tcActOK, reason: passNoEndpoint},

		// The same frame as the first case, but not addressed to this host's MAC.
		{name: "to another station's MAC", in: fromNetwork(dstMAC(strangerMAC)),
			verdict: tcActOK, reason: passNotHost},
		{name: "broadcast", in: fromNetwork(dstMAC("ff:ff:ff:ff:ff:ff")), verdict: tcActOK, reason: passNotHost},
		{name: "multicast MAC", in: fromNetwork(dstMAC("01:00:5e:13:00:02")), verdict: tcActOK, reason: passNotHost},
		{name: "ARP request (broadcast)", in: arp("ff:ff:ff:ff:ff:ff", peerMAC, false, otherHost, thisHost),
			verdict: tcActOK, reason: passNotHost},
		{name: "malformed to another station's MAC", in: fromNetwork(dstMAC(strangerMAC), versionIHL(0x44)),
			verdict: tcActOK, reason: passNotHost},

		{name: "bad header checksum", in: fromNetwork(badChecksum()), verdict: tcActShot, reason: dropMalformed},
		{name: "TTL 1", in: fromNetwork(ttl(1)), verdict: tcActOK, reason: passTTL},
		{name: "TTL 0", in: fromNetwork(ttl(0)), verdict: tcActOK, reason: passTTL},
		{name: "IP options", in: fromNetwork(ipOptions(routerAlert...)), verdict: tcActOK, reason: passIPOptions},
		{name: "first fragment (MF)", in: fromNetwork(fragmentMF()), verdict: tcActOK, reason: passFragment},
		{name: "last fragment (offset)", in: fromNetwork(fragmentOffset(185)), verdict: tcActOK, reason: passFragment},
		{name: "ARP reply", in: arp(uplinkMAC, peerMAC, true, otherHost, thisHost),
			verdict: tcActOK, reason: passNotIPv4},
		{name: "IPv6", in: ipv6Echo(uplinkMAC, peerMAC), verdict: tcActOK, reason: passNotIPv4},
	}
	fs = append(fs, malformedFixtures(fromNetwork, tcActShot)...)
	return withProgram(fromNet, fs)
}

func toWepFixtures() []fixture {
	return withProgram(toWep, []fixture{
		{name: "ICMP from the host", in: fromHost(), verdict: tcActOK, reason: passDeliver},
		{name: "TCP from a remote workload", in: fromHost(tcp(), from(remoteDst), ttl(62)),
			verdict: tcActOK, reason: passDeliver},
		{name: "TTL 1", in: fromHost(ttl(1)), verdict: tcActOK, reason: passDeliver},
		{name: "ARP reply", in: arp(wepBMAC, hostVethMAC, true, wepA, wepB), verdict: tcActOK, reason: passNotIPv4},
		{name: "IPv6", in: ipv6Echo(wepBMAC, hostVethMAC), verdict: tcActOK, reason: passNotIPv4},
		{name: "malformed: IHL 4", in: fromHost(versionIHL(0x44)), verdict: tcActShot, reason: dropMalformed},
		{name: "Ethernet header only (ARP)", in: truncate(arp(wepBMAC, hostVethMAC, true, wepA, wepB), ethHeaderLen),
			verdict: tcActOK, reason: passNotIPv4},
		{name: "on a veth without endpoint", iface: caliC, in: fromHost(to(wepC), dstMAC(wepCMAC)),
			verdict: tcActOK, reason: passDeliver},
	})
}

func xdpFromNetFixtures() []fixture {
	fs := []fixture{
		{name: "to a local workload", in: fromNetwork(), verdict: xdpPass, reason: passPrefilter},
		{name: "to another host's workload inside our block", in: fromNetwork(to(borrowedHere)),
			verdict: xdpPass, reason: passPrefilter},
		{name: "to a remote block", in: fromNetwork(to(remoteDst)), verdict: xdpPass, reason: passPrefilter},
		{name: "to a remote workload", in: fromNetwork(to(remoteWep)), verdict: xdpPass, reason: passPrefilter},
		{name: "to this host", in: fromNetwork(to(thisHost), from(otherHost)), verdict: xdpPass, reason: passPrefilter},
		{name: "no route", in: fromNetwork(to(noRoute)), verdict: xdpPass, reason: passPrefilter},
		// The most specific route of the source is another host's /32, not our block.
		{name: "from another host's workload inside our block", in: fromNetwork(from(borrowedHere)),
			verdict: xdpPass, reason: passPrefilter},
		// TTL, options and fragments are the TC hook's and the kernel's business.
		{name: "TTL 0", in: fromNetwork(ttl(0)), verdict: xdpPass, reason: passPrefilter},
		{name: "IP options", in: fromNetwork(ipOptions(routerAlert...)), verdict: xdpPass, reason: passPrefilter},
		{name: "fragment", in: fromNetwork(fragmentMF()), verdict: xdpPass, reason: passPrefilter},
		{name: "to another station's MAC", in: fromNetwork(dstMAC(strangerMAC)), verdict: xdpPass, reason: passPrefilter},
		{name: "ARP request", in: arp("ff:ff:ff:ff:ff:ff", peerMAC, false, otherHost, thisHost),
			verdict: xdpPass, reason: passNotIPv4},
		{name: "IPv6", in: ipv6Echo(uplinkMAC, peerMAC), verdict: xdpPass, reason: passNotIPv4},
		// xdp.frags: a jumbo frame spans several buffers; the program parses the first and
		// counts the whole frame.
		{name: "jumbo frame in several buffers", in: fromNetwork(udp(), ipLen(9000)), verdict: xdpPass, reason: passPrefilter},
		{name: "jumbo frame in several buffers, tot_len beyond it", in: fromNetwork(udp(), ipLen(9000), frameLen(ethHeaderLen+8999)),
			verdict: xdpDrop, reason: dropMalformed},

		{name: "from a local workload", in: fromNetwork(from(wepA)), verdict: xdpDrop, reason: dropSpoofed},
		{name: "from an unused address of the local block", in: fromNetwork(from(unusedLocal), to(remoteDst)),
			verdict: xdpDrop, reason: dropSpoofed},
		// The source is checked first.
		{name: "from a local workload to an unused address", in: fromNetwork(from(wepA), to(unusedLocal)),
			verdict: xdpDrop, reason: dropSpoofed},
		{name: "to an unused address of the local block", in: fromNetwork(to(unusedLocal)),
			verdict: xdpDrop, reason: dropNoWorkload},
		{name: "to the local block's network address", in: fromNetwork(to(localBlock.Addr()), udp()),
			verdict: xdpDrop, reason: dropNoWorkload},
		// The kernel checks the header checksum after XDP: the prefilter does not.
		{name: "bad header checksum", in: fromNetwork(badChecksum()), verdict: xdpPass, reason: passPrefilter},
	}
	fs = append(fs, malformedFixtures(fromNetwork, xdpDrop)...)
	return withProgram(xdpFromNet, fs)
}

// malformedFixtures are the malformed frames built by frame, each dropped with verdict under
// DROP_MALFORMED, or refused by the kernel where a TC program cannot be shown them.
func malformedFixtures(frame func(...opt) []byte, verdict uint32) []fixture {
	var fs []fixture
	for _, m := range malformed {
		fx := fixture{name: "malformed: " + m.name, in: frame(m.opts...), verdict: verdict, reason: dropMalformed}
		if m.skbRefused && verdict != xdpDrop {
			fx.refused, fx.verdict, fx.reason = true, 0, 0
		}
		fs = append(fs, fx)
	}
	return fs
}

func withProgram(p program, fs []fixture) []fixture {
	for i := range fs {
		fs[i].prog = p
	}
	return fs
}

func allFixtures() []fixture {
	var all []fixture
	for _, fs := range [][]fixture{fromWepFixtures(), toWepFixtures(), fromNetFixtures(), xdpFromNetFixtures()} {
		all = append(all, fs...)
	}
	return all
}

// runFixtures runs each fixture in a namespace and dataplane of the test's own, one after the
// other, since each checks that no counter but its own moved.
func runFixtures(t *testing.T, fs []fixture) {
	w := newWorld(t)
	for _, fx := range fs {
		t.Run(fx.name, func(t *testing.T) {
			iface := fx.iface
			if iface == "" {
				iface = fx.prog.iface()
			}
			if fx.setup != nil {
				fx.setup(t, w)
			}
			before := w.counters(t)
			verdict, out, err := w.run(fx.prog, iface, fx.in)
			if fx.refused {
				if err == nil {
					t.Fatalf("the kernel ran %v on a frame it used to refuse: give the case a verdict and a reason", fx.prog)
				}
				if !errors.Is(err, unix.EINVAL) {
					t.Fatalf("%v; want EINVAL", err)
				}
				w.expectNothingCounted(t, before)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if verdict != fx.verdict {
				t.Errorf("verdict %s, want %s", verdictName(fx.prog, verdict), verdictName(fx.prog, fx.verdict))
			}
			w.expectCounted(t, before, counterKey{w.ifindex[iface], fx.prog.hook(), maps.Reason(fx.reason)}, len(fx.in))
			checkOutput(t, fx.in, out, fx.out)
		})
	}
}

func TestFromWep(t *testing.T)    { runFixtures(t, fromWepFixtures()) }
func TestFromNet(t *testing.T)    { runFixtures(t, fromNetFixtures()) }
func TestToWep(t *testing.T)      { runFixtures(t, toWepFixtures()) }
func TestXDPFromNet(t *testing.T) { runFixtures(t, xdpFromNetFixtures()) }
