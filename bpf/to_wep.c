// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * to_wep: tcx egress of each host-side cali* veth: what the kernel delivers to a workload (host
 * traffic, and whatever the eBPF paths left to the kernel). Packets forwarded by from_wep and
 * from_net enter the workload through bpf_redirect_peer and never pass here.
 */

#include "include/counters.h"
#include "include/events.h"
#include "include/forward.h"

static __always_inline int to_wep_handle(struct __sk_buff *skb, enum reason *reason)
{
	struct packet pkt;
	struct flow_ctx fc;
	bool kernel_nat;
	int verdict;

	verdict = tc_parse(skb, &pkt, reason);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;

	/*
	 * The receiver's ingress policy; a flow eBPF already checked on this host finds its entry. A
	 * flow the kernel translated arrives here translated (a Service's backend as destination) and
	 * is checked so; its entry sends the backend's replies back through the kernel.
	 */
	flow_ctx_init(&fc, bpf_ktime_get_coarse_ns());
	verdict = tc_policy(skb, &pkt, &fc, HOOK_TO_WEP, NAT_PROBE_EGRESS, &kernel_nat, reason);
	if (verdict != TC_ACT_UNSPEC)
		return verdict;

	*reason = REASON_PASS_DELIVER;
	return TC_ACT_OK;
}

SEC("tcx/egress")
int to_wep(struct __sk_buff *skb)
{
	enum reason reason = REASON_UNSPEC;
	__u32 ifindex = skb->ifindex;
	__u64 len = skb->len;
	int verdict = to_wep_handle(skb, &reason);

	count_packet(ifindex, HOOK_TO_WEP, reason, len);
	emit_event((void *)(long)skb->data, (void *)(long)skb->data_end, ifindex, HOOK_TO_WEP, reason, len);
	return verdict;
}
