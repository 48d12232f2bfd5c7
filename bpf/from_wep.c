// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_wep: tcx ingress of each host-side cali* veth, i.e. everything a workload sends. */

#include "include/counters.h"
#include "include/events.h"
#include "include/forward.h"

static __always_inline int from_wep_handle(struct __sk_buff *skb, enum reason *reason)
{
	struct packet pkt;
	struct endpoint *ep;
	struct route_value *rt;
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

	/*
	 * Conntrack and policy: the sender's egress policy, and the receiver's ingress policy when it
	 * is local, for everything the workload sends, also what goes on to the kernel below.
	 */
	verdict = tc_policy_forward(skb, &pkt, reason);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;

	verdict = tc_forwardable(pkt.ip, reason);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;

	rt = route_lookup(pkt.ip->daddr);
	if (!rt) {
		*reason = REASON_PASS_NO_ROUTE;
		return TC_ACT_OK;
	}
	if (rt->flags & ROUTE_LOCAL_WEP)
		return redirect_local(skb, &pkt, rt, reason);
	if (rt->flags & (ROUTE_REMOTE_BLOCK | ROUTE_REMOTE_WEP))
		return redirect_remote(skb, &pkt, rt, reason);

	*reason = REASON_PASS_KERNEL;
	return TC_ACT_OK;
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
