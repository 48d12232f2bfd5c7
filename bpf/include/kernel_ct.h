/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * kernel_ct.h: the kernel's own conntrack, looked up from TC to find the flows it translates. A
 * Service's DNAT (kube-proxy), a NodePort, Docker's published ports and masquerade rewrite
 * addresses in netfilter; a reply that eBPF redirected past the kernel would reach its client
 * untranslated. Flows the kernel translates therefore keep the kernel path in both directions.
 */
#ifndef MARGAY_KERNEL_CT_H
#define MARGAY_KERNEL_CT_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

/* include/uapi/linux/netfilter/nf_conntrack_common.h, which needs the C library's headers. */
#define IPS_SRC_NAT (1 << 4)
#define IPS_DST_NAT (1 << 5)
#define IP_CT_DIR_REPLY 1

/* The kfunc's options (net/netfilter/nf_conntrack_bpf.c), in the 12-byte form every kernel since
 * 6.0 takes. dir is set by the lookup: the direction of the tuple found. */
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u8 reserved[2];
};

/* Only the field read here; CO-RE finds it in the running kernel's struct. */
struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple__sz,
					 struct bpf_ct_opts *opts, __u32 opts__sz) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;

/* Where the packet stands relative to the kernel's translation. */
enum kernel_nat {
	KNAT_NONE = 0,     /* the kernel translates no flow of this tuple */
	KNAT_ORIGINAL = 1, /* the packet goes the way the flow's first packet went */
	KNAT_REPLY = 2,    /* the packet is a reply */
};

/*
 * Look the kernel's conntrack up for a TCP or UDP packet. Before netfilter (tcx ingress) a packet
 * still carries the tuple the kernel will look it up by; after it (tcx egress) it carries the
 * translated one, which is the other direction's tuple reversed, so reversed asks for that.
 * Called only for a flow's first packet on this host, which Margay's own conntrack does not know.
 */
static __always_inline enum kernel_nat kernel_nat_lookup(struct __sk_buff *skb, __be32 saddr, __be32 daddr,
							 __be16 sport, __be16 dport, __u8 proto, bool reversed)
{
	/* The IPv4 member of struct bpf_sock_tuple alone: the kfunc reads tuple__sz bytes of it, and
	 * the union's IPv6 member would take 24 more bytes of a stack conntrack's callers fill. */
	struct {
		__be32 saddr;
		__be32 daddr;
		__be16 sport;
		__be16 dport;
	} t = {};
	struct bpf_ct_opts opts = { .netns_id = BPF_F_CURRENT_NETNS, .l4proto = proto };
	enum kernel_nat ret = KNAT_NONE;
	struct nf_conn *ct;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return KNAT_NONE;
	if (reversed) {
		t.saddr = daddr;
		t.daddr = saddr;
		t.sport = dport;
		t.dport = sport;
	} else {
		t.saddr = saddr;
		t.daddr = daddr;
		t.sport = sport;
		t.dport = dport;
	}
	ct = bpf_skb_ct_lookup(skb, (struct bpf_sock_tuple *)&t, sizeof(t), &opts, sizeof(opts));
	if (!ct)
		return KNAT_NONE;
	if (ct->status & (IPS_SRC_NAT | IPS_DST_NAT))
		ret = (opts.dir == IP_CT_DIR_REPLY) != reversed ? KNAT_REPLY : KNAT_ORIGINAL;
	bpf_ct_release(ct);
	return ret;
}

#endif /* MARGAY_KERNEL_CT_H */
