/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* forward.h: route lookup and the two eBPF forwarding paths (into a workload, out of the uplink). */
#ifndef MARGAY_FORWARD_H
#define MARGAY_FORWARD_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "csum.h"
#include "maps.h"
#include "parse.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* The MAC of every host-side cali* veth, as in Calico: workloads send to it for 169.254.1.1. */
static const __u8 host_veth_mac[ETH_ALEN] = { 0xee, 0xee, 0xee, 0xee, 0xee, 0xee };

static __always_inline struct route_value *route_lookup(__be32 addr)
{
	struct route_key key = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&routes, &key);
}

/*
 * Make a TC skb's Ethernet and fixed IPv4 headers directly accessible. A veth hands over linear
 * headers almost always; pull only when they are not.
 */
static __always_inline void tc_pull_headers(struct __sk_buff *skb)
{
	const __u32 need = sizeof(struct ethhdr) + IPV4_MIN_HLEN;

	if ((void *)(long)skb->data + need > (void *)(long)skb->data_end && skb->len >= need)
		bpf_skb_pull_data(skb, need);
}

static __always_inline enum parse_result tc_parse(struct __sk_buff *skb, struct packet *pkt)
{
	/* tot_len 0 is BIG TCP, which only a GSO skb can be; on anything else it is malformed. */
	return parse_ipv4((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len,
			  skb->gso_size != 0, pkt);
}

/*
 * Checks shared by every TC forwarding path: what the kernel must see as it is (PASS_*), or what
 * it would drop (DROP_MALFORMED). Returns REASON_UNSPEC when the packet may be forwarded by eBPF.
 */
static __always_inline enum reason forwardable(const struct iphdr *ip)
{
	if (ip->ihl != 5)
		return REASON_PASS_IP_OPTIONS;
	/* The kernel's ip_rcv() drops a bad header checksum; bypassing it must not forward one. */
	if (!ipv4_csum_ok(ip))
		return REASON_DROP_MALFORMED;
	if (ipv4_is_fragment(ip))
		return REASON_PASS_FRAGMENT;
	if (ip->ttl <= 1)
		return REASON_PASS_TTL;
	return REASON_UNSPEC;
}

/* Deliver to a workload on this host: into its namespace, past the host's stack. */
static __always_inline int redirect_local(struct __sk_buff *skb, struct packet *pkt,
					  const struct route_value *rt, enum reason *reason)
{
	__u32 ifindex = rt->ifindex;
	struct endpoint *ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	long ret;

	if (!ep) {
		*reason = REASON_PASS_NO_ENDPOINT;
		return TC_ACT_OK;
	}

	/* Policy and conntrack: the receiver's ingress policy is checked here, before any change. */

	__builtin_memcpy(pkt->eth->h_dest, ep->mac, ETH_ALEN);
	__builtin_memcpy(pkt->eth->h_source, host_veth_mac, ETH_ALEN);
	ipv4_decrease_ttl(pkt->ip);

	ret = bpf_redirect_peer(ifindex, 0);
	if (ret != TC_ACT_REDIRECT) {
		*reason = REASON_DROP_REDIRECT;
		return TC_ACT_SHOT;
	}
	*reason = REASON_FWD_LOCAL;
	return TC_ACT_REDIRECT;
}

/* Send to another host's workload: out of the uplink, L2 filled in from the neighbour table. */
static __always_inline int redirect_remote(struct __sk_buff *skb, struct packet *pkt,
					   const struct route_value *rt, enum reason *reason)
{
	struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = rt->next_hop };
	__u32 ifindex = rt->ifindex;
	__u32 mtu_len = 0;
	long ret;

	/* Too big for the uplink: the kernel fragments it or answers ICMP "fragmentation needed". */
	ret = bpf_check_mtu(skb, ifindex, &mtu_len, 0, 0);
	if (ret != BPF_MTU_CHK_RET_SUCCESS) {
		/* A negative return means the route names no device here: the kernel's job too. */
		*reason = ret > 0 ? REASON_PASS_MTU : REASON_PASS_KERNEL;
		return TC_ACT_OK;
	}

	ipv4_decrease_ttl(pkt->ip);

	if (nh.ipv4_nh)
		ret = bpf_redirect_neigh(ifindex, &nh, sizeof(nh), 0);
	else
		ret = bpf_redirect_neigh(ifindex, NULL, 0, 0);
	if (ret != TC_ACT_REDIRECT) {
		*reason = REASON_DROP_REDIRECT;
		return TC_ACT_SHOT;
	}
	*reason = REASON_FWD_REMOTE;
	return TC_ACT_REDIRECT;
}

#endif /* MARGAY_FORWARD_H */
