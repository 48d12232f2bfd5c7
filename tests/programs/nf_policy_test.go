package programs_test

import (
	"testing"

	"github.com/margaynet/margay/loader"
)

// With nf_policy attached (CONFIG_NF_POLICY), from_wep leaves the policy of what it hands to the
// kernel to netfilter's hooks, where the kernel's DNAT has happened: a packet to an address with
// no route (a Service's, say) passes unchecked and leaves no entry, while what eBPF forwards
// itself still meets the sender's egress policy in from_wep. Without the flag from_wep checks
// everything, as a kernel without netfilter links needs.
func TestNFPolicyFlag(t *testing.T) {
	const prog = 1
	passNoRoute := loader.MargayReasonREASON_PASS_NO_ROUTE
	passKernel := loader.MargayReasonREASON_PASS_KERNEL
	for _, on := range []bool{false, true} {
		name := map[bool]string{false: "without nf_policy", true: "with nf_policy"}[on]
		t.Run(name, func(t *testing.T) {
			w := policyWorld(t)
			w.putPolicy(t, denyAll(prog))
			w.setPrograms(t, caliA, 0, prog)
			if _, err := w.maps.Config.SetNFPolicy(on); err != nil {
				t.Fatal(err)
			}
			toService, toHost := dropPolicyEgress, dropPolicyEgress
			if on {
				toService, toHost = passNoRoute, passKernel
			}
			w.send(t, "SYN to an address without a route", sentByA, tcpPkt(wepA, 40000, noRoute, 80, tcpSYN), toService)
			w.send(t, "UDP to an address without a route", sentByA, udpPkt(wepA, 40001, noRoute, 53), toService)
			w.send(t, "SYN to this host", sentByA, tcpPkt(wepA, 40002, thisHost, 22, tcpSYN), toHost)
			w.send(t, "SYN to B, forwarded by eBPF", sentByA, tcpPkt(wepA, 40003, wepB, 80, tcpSYN), dropPolicyEgress)
			w.send(t, "SYN to a remote workload, forwarded by eBPF", sentByA, tcpPkt(wepA, 40004, remoteDst, 80, tcpSYN), dropPolicyEgress)
			w.expectFlowCount(t, 0)
		})
	}
}
