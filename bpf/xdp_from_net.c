// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * xdp_from_net: XDP prefilter on the uplink. Drops, before an skb exists, what can never be
 * delivered: malformed IPv4, sources that claim to be a local workload, and destinations in a
 * local block that no workload holds. Everything else passes unchanged. Never attached to veths:
 * XDP there disables GRO.
 */

#include "include/counters.h"
#include "include/events.h"
#include "include/forward.h"

static __always_inline int xdp_from_net_handle(struct xdp_md *ctx, __u64 len, enum reason *reason)
{
	struct packet pkt;
	struct route_value *rt;

	switch (parse_ipv4((void *)(long)ctx->data, (void *)(long)ctx->data_end, len, false, &pkt)) {
	case PARSE_IPV4:
		break;
	case PARSE_NOT_IPV4:
		*reason = REASON_PASS_NOT_IPV4;
		return XDP_PASS;
	default:
		*reason = REASON_DROP_MALFORMED;
		return XDP_DROP;
	}

	/* Neither this host's nor local workloads' addresses arrive from the network as a source. */
	if (spoofed_from_network(pkt.ip->saddr)) {
		*reason = REASON_DROP_SPOOFED;
		return XDP_DROP;
	}

	/* The most specific match is the block itself: no workload holds the address. */
	rt = route_lookup(pkt.ip->daddr);
	if (rt && (rt->flags & (ROUTE_LOCAL_BLOCK | ROUTE_LOCAL_WEP)) == ROUTE_LOCAL_BLOCK) {
		*reason = REASON_DROP_NO_WORKLOAD;
		return XDP_DROP;
	}

	*reason = REASON_PASS_PREFILTER;
	return XDP_PASS;
}

/* xdp.frags: multi-buffer capable, so a veth uplink keeps its GSO and full MTU range. */
SEC("xdp.frags")
int xdp_from_net(struct xdp_md *ctx)
{
	enum reason reason = REASON_UNSPEC;
	__u64 len = bpf_xdp_get_buff_len(ctx);
	int verdict = xdp_from_net_handle(ctx, len, &reason);

	count_packet(ctx->ingress_ifindex, HOOK_XDP_FROM_NET, reason, len);
	emit_event((void *)(long)ctx->data, (void *)(long)ctx->data_end, ctx->ingress_ifindex, HOOK_XDP_FROM_NET,
		   reason, len);
	return verdict;
}
