// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* from_net: tcx ingress of the uplink: traffic for local workloads goes straight into them. */

#include <linux/if_packet.h>

#include "include/counters.h"
#include "include/events.h"
#include "include/forward.h"

static __always_inline int from_net_handle(struct __sk_buff *skb, enum reason *reason)
{
	struct packet pkt;
	struct flow_ctx fc;
	struct route_value *rt;
	int verdict;

	/* Broadcast, multicast and frames for other hosts (promiscuous uplink) are the kernel's. */
	if (skb->pkt_type != PACKET_HOST) {
		*reason = REASON_PASS_NOT_HOST;
		return TC_ACT_OK;
	}

	verdict = tc_parse(skb, &pkt, reason);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;

	verdict = tc_checksum(skb, pkt.ip, reason);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;

	verdict = tc_forwardable(pkt.ip, reason);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;

	/* The flow first: an established one carries the routes of both its addresses. */
	flow_ctx_init(&fc, bpf_ktime_get_coarse_ns());
	flow_parse(&fc, pkt.ip, (void *)(long)skb->data_end);
	rt = flow_route(&fc, SIDE_DST, pkt.ip->daddr);
	if (!rt) {
		*reason = REASON_PASS_NO_ROUTE;
		return TC_ACT_OK;
	}
	if (rt->flags & ROUTE_LOCAL_WEP) {
		/* The XDP prefilter drops these already when it runs. */
		if (!(fc.cfg && (fc.cfg->flags & CONFIG_XDP_PREFILTER)) && flow_spoofed_from_network(&fc, pkt.ip->saddr)) {
			*reason = REASON_DROP_SPOOFED;
			return TC_ACT_SHOT;
		}
		/*
		 * From a host (another node's own address: its processes, or what its kernel translated
		 * with SNAT, such as a NodePort whose pod is here): the kernel's, both ways. The reply is
		 * for a host, which from_wep leaves to the kernel; its conntrack must have seen the
		 * request, or the reply is INVALID and kube-proxy's KUBE-FORWARD drops it. to_wep checks
		 * the receiver's ingress policy on the way in. An ICMP error a host (a router) sends
		 * about a flow eBPF forwards stays with that flow, below.
		 */
		if (!(fc.parsed && fc.f.icmp_error) && flow_from_host(&fc, pkt.ip->saddr)) {
			*reason = REASON_PASS_KERNEL;
			return TC_ACT_OK;
		}
		/* The receiver's ingress policy; what goes to the kernel instead meets it in to_wep. */
		verdict = tc_policy_forward(skb, &pkt, &fc, HOOK_FROM_NET, reason);
		if (verdict != TC_ACT_UNSPEC)
			return verdict;
		return redirect_local(skb, &pkt, &fc, reason);
	}

	*reason = REASON_PASS_KERNEL;
	return TC_ACT_OK;
}

SEC("tcx/ingress")
int from_net(struct __sk_buff *skb)
{
	enum reason reason = REASON_UNSPEC;
	__u32 ifindex = skb->ifindex;
	__u64 len = skb->len;
	int verdict = from_net_handle(skb, &reason);

	count_packet(ifindex, HOOK_FROM_NET, reason, len);
	emit_event((void *)(long)skb->data, (void *)(long)skb->data_end, ifindex, HOOK_FROM_NET, reason, len);
	return verdict;
}
