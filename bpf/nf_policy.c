// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * nf_policy: netfilter's forward and local-in hooks (BPF netfilter links, IPv4), for what a local
 * workload sends that eBPF leaves to the kernel: to a Service (after kube-proxy's DNAT), to this
 * host, to anything outside the pools. Policy there sees what Calico's iptables chains see: the
 * destination after the kernel's DNAT, i.e. a Service's backend rather than the Service's address.
 * Fast-path packets never reach netfilter, so this costs them nothing.
 */

#include <linux/netfilter.h>
#include <bpf/bpf_core_read.h>

#include "include/counters.h"
#include "include/events.h"
#include "include/forward.h"

/* The program's context and the kernel structs it reads, found in the running kernel by CO-RE. */
struct net_device {
	int ifindex;
} __attribute__((preserve_access_index));

struct nf_hook_state {
	__u8 hook;
	struct net_device *in;
} __attribute__((preserve_access_index));

struct sk_buff {
	unsigned int len;
	unsigned long _nfct;
} __attribute__((preserve_access_index));

struct bpf_nf_ctx {
	const struct nf_hook_state *state;
	struct sk_buff *skb;
} __attribute__((preserve_access_index));

extern int bpf_dynptr_from_skb(struct sk_buff *skb, __u64 flags, struct bpf_dynptr *ptr__uninit) __ksym;

/* include/linux/skbuff.h, include/uapi/linux/netfilter/nf_conntrack_common.h */
#define NFCT_INFOMASK 7UL
#define IP_CT_IS_REPLY 3

/* The IPv4 header with options, and what parse_flow reads past it (an ICMP error's inner header). */
#define NF_PARSE_MAX (60 + 8 + IPV4_MIN_HLEN + 8)

/*
 * The packet's headers, copied out of the skb: per CPU rather than on the stack, which the flow's
 * context and a new conntrack entry fill. A program run is not preempted on its CPU.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u8[NF_PARSE_MAX]);
	__uint(max_entries, 1);
} nf_scratch SEC(".maps");

/* Where the kernel's own conntrack says the packet stands: netfilter attached it to the skb. */
static __always_inline enum kernel_nat nf_kernel_nat(const struct sk_buff *skb)
{
	unsigned long nfct = skb->_nfct;
	struct nf_conn *ct = (struct nf_conn *)(nfct & ~NFCT_INFOMASK);
	unsigned long status = 0;

	if (!ct || bpf_core_read(&status, sizeof(status), &ct->status))
		return KNAT_NONE;
	if (!(status & (IPS_SRC_NAT | IPS_DST_NAT)))
		return KNAT_NONE;
	return (nfct & NFCT_INFOMASK) >= IP_CT_IS_REPLY ? KNAT_REPLY : KNAT_ORIGINAL;
}

static __always_inline int nf_policy_handle(struct bpf_nf_ctx *ctx, __u32 *ifindex, __u64 *len, __u8 *buf,
					    enum reason *reason)
{
	struct sk_buff *skb = ctx->skb;
	struct bpf_dynptr ptr;
	struct flow_ctx fc;
	__u32 n;
	bool kernel_nat;
	int verdict;

	*ifindex = ctx->state->in->ifindex;
	*len = skb->len;
	/* Only what a local workload sends (the endpoint of the interface it came in by); the rest
	 * is not this program's and is not counted. */
	if (!bpf_map_lookup_elem(&endpoints, ifindex))
		return NF_ACCEPT;
	n = skb->len;
	if (n > NF_PARSE_MAX)
		n = NF_PARSE_MAX;
	barrier_var(n); /* keep the clamped copy: the verifier bounds the read by it */
	if (n < IPV4_MIN_HLEN || bpf_dynptr_from_skb(skb, 0, &ptr) || bpf_dynptr_read(buf, n, &ptr, 0, 0)) {
		*reason = REASON_DROP_MALFORMED;
		return NF_DROP;
	}
	flow_ctx_init(&fc, bpf_ktime_get_ns());
	flow_parse(&fc, (struct iphdr *)buf, buf + n);
	if (fc.flow_error) {
		*reason = REASON_DROP_FRAGMENT;
		return NF_DROP;
	}
	verdict = ct_policy(NULL, &fc, skb->len, *ifindex, HOOK_NF_POLICY, NAT_PROBE_NONE, nf_kernel_nat(skb), &kernel_nat,
			    reason);
	if (verdict == TC_ACT_SHOT)
		return NF_DROP;
	*reason = kernel_nat ? REASON_PASS_NAT : REASON_PASS_KERNEL;
	return NF_ACCEPT;
}

SEC("netfilter")
int nf_policy(struct bpf_nf_ctx *ctx)
{
	enum reason reason = REASON_UNSPEC;
	__u32 ifindex = 0, zero = 0;
	__u64 len = 0;
	__u8 *buf = bpf_map_lookup_elem(&nf_scratch, &zero);
	int verdict;

	if (!buf)
		return NF_ACCEPT; /* never: the array has its one entry on every CPU */
	__builtin_memset(buf, 0, NF_PARSE_MAX);
	verdict = nf_policy_handle(ctx, &ifindex, &len, buf, &reason);

	if (reason == REASON_UNSPEC)
		return verdict;
	count_packet(ifindex, HOOK_NF_POLICY, reason, len);
	if (verdict != NF_ACCEPT)
		emit_event_ip((struct iphdr *)buf, buf + NF_PARSE_MAX, ifindex, HOOK_NF_POLICY, reason, len);
	return verdict;
}
