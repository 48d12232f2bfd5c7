/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parse.h: Ethernet + IPv4 header parsing with every bound checked, shared by TC and XDP. */
#ifndef MARGAY_PARSE_H
#define MARGAY_PARSE_H

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>

#include "types.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define IPV4_MIN_HLEN 20

enum parse_result {
	PARSE_IPV4 = 0,      /* eth and ip point at a well-formed IPv4 header */
	PARSE_NOT_IPV4 = 1,  /* not an IPv4 frame: leave it to the kernel */
	PARSE_MALFORMED = 2, /* claims to be IPv4 but cannot be */
};

struct packet {
	struct ethhdr *eth;
	struct iphdr *ip;
};

/*
 * Parse the frame in [data, data_end). wire_len is the length of the whole frame, which is more
 * than data_end - data when the tail sits in fragments. allow_zero_tot_len: a GSO skb bigger than
 * 64 KiB (BIG TCP) carries tot_len 0, which the kernel accepts; only TC sees such packets.
 */
static __always_inline enum parse_result parse_ipv4(void *data, void *data_end, __u64 wire_len,
						    bool allow_zero_tot_len, struct packet *pkt)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 tot_len;

	/* Protects eth->h_proto and the MAC rewrite. */
	if ((void *)(eth + 1) > data_end)
		return PARSE_MALFORMED;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IPV4;

	ip = (void *)(eth + 1);
	/* Protects every fixed field of the IPv4 header: addresses, TTL, checksum, frag_off. */
	if ((void *)(ip + 1) > data_end)
		return PARSE_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_MALFORMED;

	tot_len = bpf_ntohs(ip->tot_len);
	if (tot_len == 0 && allow_zero_tot_len)
		goto ok;
	if (tot_len < (__u32)ip->ihl * 4)
		return PARSE_MALFORMED;
	if (wire_len < sizeof(*eth) + tot_len)
		return PARSE_MALFORMED; /* truncated */
ok:
	pkt->eth = eth;
	pkt->ip = ip;
	return PARSE_IPV4;
}

static __always_inline bool ipv4_is_fragment(const struct iphdr *ip)
{
	return ip->frag_off & bpf_htons(IP_MF | IP_OFFSET);
}

/* Protocols whose header starts with a source and a destination port. */
static __always_inline bool proto_has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP || proto == IPPROTO_UDPLITE;
}

#endif /* MARGAY_PARSE_H */
