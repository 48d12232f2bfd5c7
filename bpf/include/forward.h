/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* forward.h: route lookup and the two eBPF forwarding paths (into a workload, out of the uplink). */
#ifndef MARGAY_FORWARD_H
#define MARGAY_FORWARD_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "csum.h"
#include "hostconv.h"
#include "maps.h"
#include "parse.h"
#include "policy.h"

#ifndef AF_INET
#define AF_INET 2
#endif

/* The MAC of every host-side cali* veth, as in Calico: workloads send to it for 169.254.1.1. */
static const __u8 host_veth_mac[ETH_ALEN] = HOST_VETH_MAC;

/*
 * What policy reads past the IPv4 header: TCP's ports and flags (the fixed header), UDP's ports,
 * ICMP's header and, for an error, the header and first 8 bytes of the packet it is about.
 */
static __always_inline __u32 l4_need(__u8 protocol)
{
	switch (protocol) {
	case IPPROTO_TCP:
		return 20;
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
	case IPPROTO_SCTP:
		return 8;
	case IPPROTO_ICMP:
		return 8 + IPV4_MIN_HLEN + 8;
	}
	return 0;
}

/*
 * Make the headers the programs read linear, and nothing more. A TCP socket's skbs keep their
 * payload in page fragments, even a single byte of it, and are clones (TCP keeps the original
 * for retransmission): bpf_skb_pull_data() on one reallocates and copies its head. Pulling a
 * fixed length that reaches into the payload would do that for nearly every data packet a
 * workload sends, so only the headers are pulled, and only when they are not linear already.
 */
static __always_inline void tc_linearize(struct __sk_buff *skb)
{
	/* Ethernet, IPv4 with options, and the most l4_need() asks for. */
	const __u32 max = sizeof(struct ethhdr) + 60 + 8 + IPV4_MIN_HLEN + 8;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u32 need;

	if ((void *)(ip + 1) > data_end) {
		/* Not even the fixed headers are linear (never seen on a veth): pull all that may be read. */
		need = max;
	} else {
		if (eth->h_proto != bpf_htons(ETH_P_IP))
			return;
		need = sizeof(struct ethhdr) + ip->ihl * 4 + l4_need(ip->protocol);
	}
	if (need > skb->len)
		need = skb->len;
	if (data + need > data_end)
		bpf_skb_pull_data(skb, need);
}

/*
 * Parse a TC skb. Returns TC_ACT_UNSPEC when pkt holds an IPv4 packet to go on with; otherwise
 * the verdict, with *reason set: the kernel's for anything not IPv4, a drop for malformed IPv4.
 */
static __always_inline int tc_parse(struct __sk_buff *skb, struct packet *pkt, enum reason *reason)
{
	tc_linearize(skb);

	/* tot_len 0 is BIG TCP, which only a GSO skb can be; on anything else it is malformed. */
	switch (parse_ipv4((void *)(long)skb->data, (void *)(long)skb->data_end, skb->len,
			   skb->gso_size != 0, pkt)) {
	case PARSE_IPV4:
		return TC_ACT_UNSPEC;
	case PARSE_NOT_IPV4:
		*reason = REASON_PASS_NOT_IPV4;
		return TC_ACT_OK;
	default:
		*reason = REASON_DROP_MALFORMED;
		return TC_ACT_SHOT;
	}
}

/* Options are rare: their checksum loop runs out of line, away from every packet's code. */
static __noinline bool ipv4_csum_ok_options_call(const struct iphdr *ip, const void *data_end)
{
	return ipv4_csum_ok_options(ip, data_end);
}

/*
 * The header checksum, checked before conntrack sees the packet: what ip_rcv() would drop must
 * neither be forwarded nor leave state behind, also when it carries options.
 */
static __always_inline int tc_checksum(struct __sk_buff *skb, const struct iphdr *ip, enum reason *reason)
{
	bool ok = ip->ihl == 5 ? ipv4_csum_ok(ip) : ipv4_csum_ok_options_call(ip, (void *)(long)skb->data_end);

	if (!ok) {
		*reason = REASON_DROP_MALFORMED;
		return TC_ACT_SHOT;
	}
	return TC_ACT_UNSPEC;
}

/*
 * Sources that never arrive from the network: this host's own addresses and local workloads
 * and blocks. The kernel would call them martians; eBPF bypasses its check.
 */
static __always_inline bool martian_route(const struct route_value *rt)
{
	return rt && (rt->flags & (ROUTE_LOCAL_WEP | ROUTE_LOCAL_BLOCK | ROUTE_LOCAL_HOST));
}

static __always_inline bool spoofed_from_network(__be32 saddr)
{
	return martian_route(route_lookup(saddr));
}

/* spoofed_from_network for the packet fc holds, whose flow may know its source's route. */
static __always_inline bool flow_spoofed_from_network(struct flow_ctx *fc, __be32 saddr)
{
	return martian_route(flow_route(fc, SIDE_SRC, saddr));
}

/* Whether the source is a host's own address (ROUTE_HOST), not a workload's. */
static __always_inline bool flow_from_host(struct flow_ctx *fc, __be32 saddr)
{
	struct route_value *rt = flow_route(fc, SIDE_SRC, saddr);

	return rt && (rt->flags & ROUTE_HOST);
}

/* Whether eBPF may forward the packet past the kernel's ip_rcv() checks (see tc_forwardable). */
static __always_inline bool ipv4_forwardable(const struct iphdr *ip)
{
	return ip->ihl == 5 && !ipv4_is_fragment(ip) && ip->ttl > 1;
}

/*
 * Checks shared by every TC forwarding path, after tc_checksum. Returns TC_ACT_UNSPEC when eBPF may forward the
 * packet; otherwise the verdict, with *reason set: what the kernel must see as it is goes to the
 * kernel unchanged, what its ip_rcv() would drop is dropped (bypassing it must not forward that).
 */
static __always_inline int tc_forwardable(const struct iphdr *ip, enum reason *reason)
{
	if (ip->ihl != 5) {
		*reason = REASON_PASS_IP_OPTIONS;
		return TC_ACT_OK;
	}
	if (ipv4_is_fragment(ip)) {
		*reason = REASON_PASS_FRAGMENT;
		return TC_ACT_OK;
	}
	if (ip->ttl <= 1) {
		*reason = REASON_PASS_TTL;
		return TC_ACT_OK;
	}
	return TC_ACT_UNSPEC;
}

/*
 * Conntrack and policy for the parsed packet, by the program at hook. Returns TC_ACT_UNSPEC when
 * it may go on; otherwise TC_ACT_SHOT with *reason set. *kernel_nat: the kernel translates the
 * flow (see kernel_ct.h).
 */
static __always_inline int tc_policy(struct __sk_buff *skb, const struct packet *pkt, struct flow_ctx *fc,
				     enum hook hook, enum nat_probe probe, bool *kernel_nat, enum reason *reason)
{
	*kernel_nat = false;
	flow_parse(fc, pkt->ip, (void *)(long)skb->data_end);
	if (fc->flow_error) {
		*reason = REASON_DROP_FRAGMENT;
		return TC_ACT_SHOT;
	}
	return ct_policy(skb, fc, skb->len, skb->ifindex, hook, probe, KNAT_NONE, kernel_nat, reason);
}

/*
 * Conntrack and policy on a forwarding path (tcx ingress). Returns TC_ACT_UNSPEC when eBPF may
 * forward the packet; otherwise the verdict, with *reason set: a drop, or the kernel for a flow
 * it translates, so that it reverses the translation (un-DNAT a Service's reply, say).
 */
static __always_inline int tc_policy_forward(struct __sk_buff *skb, const struct packet *pkt, struct flow_ctx *fc,
					     enum hook hook, enum reason *reason)
{
	bool kernel_nat;
	int verdict = tc_policy(skb, pkt, fc, hook, NAT_PROBE_INGRESS, &kernel_nat, reason);

	if (verdict == TC_ACT_UNSPEC && kernel_nat) {
		*reason = REASON_PASS_NAT;
		return TC_ACT_OK;
	}
	return verdict;
}

/* Whether nf_policy runs at netfilter's hooks (the agent sets the flag once its links are attached). */
static __always_inline bool nf_policy_on(const struct flow_ctx *fc)
{
	return fc->cfg && (fc->cfg->flags & CONFIG_NF_POLICY);
}

/* Deliver to a workload on this host (the packet's destination route): into its namespace, past the host's stack. */
static __always_inline int redirect_local(struct __sk_buff *skb, struct packet *pkt, struct flow_ctx *fc,
					  enum reason *reason)
{
	const __u8 *mac = flow_dst_mac(fc);
	long ret;

	if (!mac) {
		*reason = REASON_PASS_NO_ENDPOINT;
		return TC_ACT_OK;
	}

	__builtin_memcpy(pkt->eth->h_dest, mac, ETH_ALEN);
	__builtin_memcpy(pkt->eth->h_source, host_veth_mac, ETH_ALEN);
	ipv4_decrease_ttl(pkt->ip);

	flow_keep_routes(fc);
	ret = bpf_redirect_peer(fc->rt[SIDE_DST].v.ifindex, 0);
	if (ret != TC_ACT_REDIRECT) {
		*reason = REASON_DROP_REDIRECT;
		return TC_ACT_SHOT;
	}
	*reason = REASON_FWD_LOCAL;
	return TC_ACT_REDIRECT;
}

/* Send to another host's workload: out of the uplink, L2 filled in from the neighbour table. */
static __always_inline int redirect_remote(struct __sk_buff *skb, struct packet *pkt, struct flow_ctx *fc,
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

	flow_keep_routes(fc);
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
