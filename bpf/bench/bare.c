// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * bare.c: the least a router in eBPF does at Margay's attach points, for the benchmark suite's
 * c-bare topology. Look the IPv4 destination up in the routes trie and redirect: into a local
 * workload (its MAC from the endpoints map, bpf_redirect_peer) or out of the uplink
 * (bpf_redirect_neigh), with the TTL decremented as any router must. No conntrack, policy,
 * anti-spoofing, checksum or ip_rcv() checks, counters or events: c-bare against the kernel path
 * is what the mechanism gives on this kernel, and c against c-bare what Margay's programs cost on
 * top of it. The maps come from maps.h, so the benchmark hands this object the dataplane's own.
 */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "../include/csum.h"
#include "../include/maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif

static const __u8 host_veth_mac[ETH_ALEN] = { 0xee, 0xee, 0xee, 0xee, 0xee, 0xee };

static __always_inline int bare_forward(struct __sk_buff *skb, __u32 kinds)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct route_key key = { .prefixlen = 32 };
	struct route_value *rt;
	struct endpoint *ep;
	__u32 ifindex;

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	key.addr = ip->daddr;
	rt = bpf_map_lookup_elem(&routes, &key);
	if (!rt || !(rt->flags & kinds))
		return TC_ACT_OK;
	ifindex = rt->ifindex;
	if (rt->flags & ROUTE_LOCAL_WEP) {
		ep = bpf_map_lookup_elem(&endpoints, &ifindex);
		if (!ep)
			return TC_ACT_OK;
		__builtin_memcpy(eth->h_dest, ep->mac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, host_veth_mac, ETH_ALEN);
		ipv4_decrease_ttl(ip);
		return bpf_redirect_peer(ifindex, 0);
	}
	ipv4_decrease_ttl(ip);
	if (rt->next_hop) {
		struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = rt->next_hop };

		return bpf_redirect_neigh(ifindex, &nh, sizeof(nh), 0);
	}
	return bpf_redirect_neigh(ifindex, NULL, 0, 0);
}

/* On a cali* veth: to local workloads and remote blocks, like from_wep. */
SEC("tcx/ingress")
int bare_from_wep(struct __sk_buff *skb)
{
	return bare_forward(skb, ROUTE_LOCAL_WEP | ROUTE_REMOTE_BLOCK | ROUTE_REMOTE_WEP);
}

/* On the uplink: to local workloads, like from_net. */
SEC("tcx/ingress")
int bare_from_net(struct __sk_buff *skb)
{
	return bare_forward(skb, ROUTE_LOCAL_WEP);
}

char __license[] SEC("license") = "Dual BSD/GPL";
