/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: incremental IPv4 header checksum updates (RFC 1624). */
#ifndef MARGAY_CSUM_H
#define MARGAY_CSUM_H

#include <stdbool.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>

/*
 * Decrement the TTL and patch the checksum in place, as the kernel's ip_decrease_ttl() does: the
 * TTL is the high byte of its 16-bit word, so the sum grows by 0x0100 with end-around carry.
 */
static __always_inline void ipv4_decrease_ttl(struct iphdr *ip)
{
	__u32 check = (__u32)ip->check;

	check += (__u32)bpf_htons(0x0100);
	ip->check = (__sum16)(check + (check >= 0xFFFF));
	ip->ttl--;
}

/*
 * Whether an option-less IPv4 header sums to 0xffff. The caller has checked that all 20 bytes
 * lie within the packet (parse_ipv4) and that IHL is 5.
 */
static __always_inline bool ipv4_csum_ok(const struct iphdr *ip)
{
	const __u16 *word = (const __u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += word[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

/*
 * Whether a header of any length (IHL 5 to 15) sums to 0xffff, for packets with options. The
 * caller has checked IHL; the words are bounds-checked against data_end here.
 */
static __always_inline bool ipv4_csum_ok_options(const struct iphdr *ip, const void *data_end)
{
	const __u16 *word = (const __u16 *)ip;
	__u32 words = ip->ihl * 2;
	__u32 sum = 0;

	for (__u32 i = 0; i < 30; i++) {
		if (i >= words)
			break;
		if ((const void *)(word + i + 1) > data_end)
			return false;
		sum += word[i];
	}
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

#endif /* MARGAY_CSUM_H */
