// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * baseline.c: two TC programs that bound the dataplane's per-packet cost from below, for
 * tests/bpfbench. `empty` is the price of running any TC program at all; `lpm_lookup` adds the
 * least a router must do: find the IPv4 destination and look it up once in the routes trie. The
 * trie comes from maps.h, so at run time the benchmark can hand this object the dataplane's own
 * routes map and both look up the very same entries.
 */

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "../include/maps.h"

SEC("tc")
int empty(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

SEC("tc")
int lpm_lookup(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct route_key key = { .prefixlen = 32 };

	/* Protects eth->h_proto. */
	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;

	ip = (void *)(eth + 1);
	/* Protects ip->daddr, the only IPv4 field read. */
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;

	/* The result is deliberately unused: the baseline is the lookup alone, hit or miss alike. */
	key.addr = ip->daddr;
	bpf_map_lookup_elem(&routes, &key);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
