// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * to_wep: tcx egress of each host-side cali* veth: what the kernel delivers to a workload (host
 * traffic, and whatever the eBPF paths left to the kernel). Packets forwarded by from_wep and
 * from_net enter the workload through bpf_redirect_peer and never pass here.
 */

#include "include/counters.h"

SEC("tcx/egress")
int to_wep(struct __sk_buff *skb)
{
	/* Policy and conntrack: the receiver's ingress policy for kernel-delivered traffic goes here. */
	count_packet(skb->ifindex, HOOK_TO_WEP, REASON_PASS_DELIVER, skb->len);
	return TC_ACT_OK;
}
