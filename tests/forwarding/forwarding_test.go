package forwarding_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/margaynet/margay/loader"
	mgymaps "github.com/margaynet/margay/maps"
)

// Both ways of attaching TC programs must carry traffic end to end: tcx links, and the clsact
// filters that kernels before 6.6 need.
var modes = []loader.TCMode{loader.TCX, loader.TCLegacy}

const (
	tcpPayload = 64 << 10 // more than one GSO segment, so offloads are exercised as well
	udpPayload = 1200
)

type flow struct{ src, dst *workload }

// flows are both directions of a cross-host pair and of a same-host pair.
func (l *lab) flows() []flow {
	return []flow{{l.w1, l.w2}, {l.w2, l.w1}, {l.w1, l.w1b}, {l.w1b, l.w1}}
}

// checkFlows runs ping, TCP and UDP over every flow and requires the eBPF counters of the flow's
// path, and of the reverse path its replies take, to have carried them.
func (l *lab) checkFlows(t *testing.T) {
	for _, f := range l.flows() {
		t.Run(f.src.name+"-"+f.dst.name, func(t *testing.T) {
			t.Run("ping", func(t *testing.T) {
				before := l.counters(t)
				ping(t, f.src, f.dst.ip)
				// Each answered request took the path and each reply the reverse path.
				l.expectGrowth(t, before, l.path(f.src, f.dst), pingCount)
				l.expectGrowth(t, before, l.path(f.dst, f.src), pingCount)
			})
			t.Run("tcp", func(t *testing.T) {
				before := l.counters(t)
				tcpEcho(t, f.src, f.dst, tcpPayload)
				// At least the handshake and the data each way.
				l.expectGrowth(t, before, l.path(f.src, f.dst), 2)
				l.expectGrowth(t, before, l.path(f.dst, f.src), 2)
			})
			t.Run("udp", func(t *testing.T) {
				before := l.counters(t)
				udpEcho(t, f.src, f.dst, udpPayload)
				l.expectGrowth(t, before, l.path(f.src, f.dst), 1)
				l.expectGrowth(t, before, l.path(f.dst, f.src), 1)
			})
		})
	}
}

// TestForwarding: workloads reach each other on one host and across hosts through the eBPF
// programs; they still do when the kernel's FORWARD chain drops everything, which proves the
// kernel does not forward; and they no longer do once the programs are detached, which proves
// that this test can fail.
func TestForwarding(t *testing.T) {
	requirePing(t)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			l := newLab(t, mode)
			hosts := []*host{l.h1, l.h2}

			if !t.Run("ebpf", l.checkFlows) {
				return
			}

			ok := t.Run("forward-drop", func(t *testing.T) {
				dropped := map[*host]uint64{}
				for _, h := range hosts {
					h.ns.MustRun(t, "iptables", "-w", "-P", "FORWARD", "DROP")
					policy, n := forwardPolicyDrops(t, h)
					if policy != "DROP" {
						t.Fatalf("%s: FORWARD policy is %s after setting DROP", h.name, policy)
					}
					dropped[h] = n
				}
				l.checkFlows(t)
				for _, h := range hosts {
					if _, n := forwardPolicyDrops(t, h); n != dropped[h] {
						t.Errorf("%s: FORWARD dropped %d packets: some traffic took the kernel's path", h.name, n-dropped[h])
					}
				}
			})
			if !ok {
				return
			}

			ok = t.Run("detached", func(t *testing.T) {
				for _, h := range hosts {
					h.detach(t)
				}
				before := l.counters(t)
				_, dropped := forwardPolicyDrops(t, l.h1)
				sent := pingFails(t, l.w1, l.w1.ip, l.w2.ip)
				// The failure must be the intended one: the requests reached h1's kernel, and its
				// FORWARD chain dropped them.
				if _, n := forwardPolicyDrops(t, l.h1); n-dropped < uint64(sent) {
					t.Errorf("h1: FORWARD dropped %d packets, want ≥ %d: the ping failed for another reason", n-dropped, sent)
				}
				if diff := changed(before, l.counters(t)); len(diff) > 0 {
					t.Errorf("counters changed with every program detached:\n  %s", strings.Join(diff, "\n  "))
				}
			})
			if !ok {
				return
			}

			t.Run("reattached", func(t *testing.T) {
				for _, h := range hosts {
					h.attach(t)
				}
				l.checkFlows(t)
			})
		})
	}
}

// TestAntiSpoofing: a workload that sends from an address other than its own reaches nobody, on
// its host or across hosts, and from_wep counts the drops. Behind that, the XDP prefilter of the
// receiving host drops sources from its own block that arrive from the network.
func TestAntiSpoofing(t *testing.T) {
	requirePing(t)
	// In w1's own block, held by no workload: only from_wep stands between it and w2, since h2's
	// prefilter accepts sources from other hosts' blocks.
	forged := netip.MustParseAddr("198.19.0.9")
	// In h2's block, held by no workload.
	forgedRemote := netip.MustParseAddr("198.19.0.99")
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			l := newLab(t, mode)
			for _, a := range []netip.Addr{forged, forgedRemote} {
				l.w1.ns.AddAddr(t, "eth0", netip.PrefixFrom(a, 32).String())
			}

			for _, dst := range []*workload{l.w2, l.w1b} {
				t.Run(l.w1.name+"-"+dst.name, func(t *testing.T) {
					// Control: from its own address w1 reaches dst, so silence below is the drop.
					before := l.counters(t)
					ping(t, l.w1, dst.ip)
					l.expectGrowth(t, before, l.path(l.w1, dst), pingCount)

					before = l.counters(t)
					echos := icmpInEchos(t, dst)
					sent := pingFails(t, l.w1, forged, dst.ip)
					if got := icmpInEchos(t, dst); got != echos {
						t.Errorf("%s received %d forged echo requests, want none", dst.name, got-echos)
					}
					l.expectSame(t, before, l.path(l.w1, dst))
					l.expectGrowth(t, before, []hop{{l.h1, l.w1.cali, l.w1.caliIndex, mgymaps.HookFromWep, "DROP_SPOOFED"}},
						uint64(sent))
				})
			}

			// Last, as it leaves w1 unguarded: without from_wep on w1's veth, h1's kernel forwards
			// the forged packet, and h2's prefilter must drop it before an skb exists.
			t.Run("xdp-prefilter", func(t *testing.T) {
				if err := l.h1.ns.Do(func() error { return l.h1.d.Detach(l.w1.cali, loader.HookFromWep) }); err != nil {
					t.Fatal(err)
				}
				before := l.counters(t)
				echos := icmpInEchos(t, l.w2)
				sent := pingFails(t, l.w1, forgedRemote, l.w2.ip)
				if got := icmpInEchos(t, l.w2); got != echos {
					t.Errorf("w2 received %d forged echo requests, want none", got-echos)
				}
				l.expectSame(t, before, []hop{{l.h2, uplink, l.h2.uplinkIndex, mgymaps.HookFromNet, "FWD_LOCAL"}})
				l.expectGrowth(t, before, []hop{{l.h2, uplink, l.h2.uplinkIndex, mgymaps.HookXDPFromNet, "DROP_SPOOFED"}},
					uint64(sent))
			})
		})
	}
}
