// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_wep: tcx ingress of each host-side cali* veth, i.e. everything a workload sends. */

#include "include/counters.h"
#include "include/events.h"
#include "include/forward.h"

static __always_inline int from_wep_handle(struct __sk_buff *skb, enum reason *reason)
{
	struct packet pkt;
	struct flow_ctx fc;
	struct endpoint *ep;
	struct route_value *rt;
	enum reason kernel_reason;
	bool to_kernel;
	int verdict;
	__u32 ifindex = skb->ifindex;

	verdict = tc_parse(skb, &pkt, reason);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;

	/* Anti-spoofing comes first: a workload may only send from its own address. */
	ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (!ep) {
		*reason = REASON_DROP_NO_ENDPOINT;
		return TC_ACT_SHOT;
	}
	if (pkt.ip->saddr != ep->ipv4) {
		*reason = REASON_DROP_SPOOFED;
		return TC_ACT_SHOT;
	}

	verdict = tc_checksum(skb, pkt.ip, reason);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;

	/* A packet eBPF may forward finds its flow first: an established one carries its route. */
	flow_ctx_init(&fc, bpf_ktime_get_coarse_ns());
	if (ipv4_forwardable(pkt.ip))
		flow_parse(&fc, pkt.ip, (void *)(long)skb->data_end);

	/* eBPF forwards to workloads and remote blocks; everything else goes to the kernel. */
	rt = flow_route(&fc, SIDE_DST, pkt.ip->daddr);
	if (rt && (rt->flags & (ROUTE_LOCAL_WEP | ROUTE_REMOTE_BLOCK | ROUTE_REMOTE_WEP))) {
		verdict = tc_forwardable(pkt.ip, reason);
	} else {
		*reason = rt ? REASON_PASS_KERNEL : REASON_PASS_NO_ROUTE;
		verdict = TC_ACT_OK;
	}
	/*
	 * What goes to the kernel meets the sender's egress policy in nf_policy, after the kernel's
	 * NAT, as Calico's iptables chains do: a Service's backend, not its address. Without that
	 * hook, policy is checked here, on the packet as sent. What eBPF forwards meets conntrack
	 * and policy here: the sender's egress policy, and a local receiver's ingress policy.
	 */
	to_kernel = verdict != TC_ACT_UNSPEC;
	if (to_kernel && nf_policy_on(&fc))
		return TC_ACT_OK;
	kernel_reason = *reason;
	verdict = tc_policy_forward(skb, &pkt, &fc, HOOK_FROM_WEP, reason);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;
	if (to_kernel) {
		*reason = kernel_reason;
		return TC_ACT_OK;
	}
	if (rt->flags & ROUTE_LOCAL_WEP)
		return redirect_local(skb, &pkt, &fc, reason);
	return redirect_remote(skb, &pkt, &fc, rt, reason);
}

SEC("tcx/ingress")
int from_wep(struct __sk_buff *skb)
{
	enum reason reason = REASON_UNSPEC;
	__u32 ifindex = skb->ifindex;
	__u64 len = skb->len;
	int verdict = from_wep_handle(skb, &reason);

	count_packet(ifindex, HOOK_FROM_WEP, reason, len);
	emit_event((void *)(long)skb->data, (void *)(long)skb->data_end, ifindex, HOOK_FROM_WEP, reason, len);
	return verdict;
}
