/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * policy.h: conntrack and policy. Every IPv4 packet a workload sends or receives passes ct_policy
 * once per host: the first packet of a flow is checked against the sender's egress and the
 * receiver's ingress policy (each only where that workload is local), and the verdict is kept in
 * the conntrack entry for the rest of the flow and its replies. The agent bumps the policy
 * generation on every policy change; an entry taken under another generation is checked again on
 * its next packet, so a policy change reaches established flows too.
 */
#ifndef MARGAY_POLICY_H
#define MARGAY_POLICY_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "events.h"
#include "hostconv.h"
#include "kernel_ct.h"
#include "maps.h"
#include "parse.h"

/* From linux/icmp.h, which drags in the C library's headers. */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_SOURCE_QUENCH 4
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

#define NSEC_PER_SEC 1000000000ULL

/* The 5-tuple of a packet as conntrack and policy see it. */
struct flow {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;       /* ICMP echo request: the identifier; other ICMP: 0 */
	__be16 dport;       /* ICMP echo reply: the identifier */
	__be16 policy_port; /* TCP, UDP, SCTP: the destination port; ICMP: type << 8 | code */
	__u8 protocol;
	__u8 tcp_flags;
	/* An ICMP error: the tuple of the packet it is about, as that packet was sent. */
	bool icmp_error;
	__u8 _pad[3];
	struct ct_key inner;
};

enum flow_result {
	FLOW_OK = 0,
	FLOW_FRAGMENT_UNKNOWN = 1, /* a later fragment whose first fragment left no ports */
};

static __always_inline bool icmp_is_echo(__u8 type)
{
	return type == ICMP_ECHO || type == ICMP_ECHOREPLY;
}

static __always_inline bool icmp_is_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB ||
	       type == ICMP_SOURCE_QUENCH;
}

/*
 * The ports of an ICMP echo: a request carries its identifier as the source port, a reply as
 * the destination port, so that a reply matches its request's entry and a request the other way
 * with the same identifier is a flow of its own.
 */
static __always_inline void echo_ports(__u8 type, __be16 id, __be16 *sport, __be16 *dport)
{
	if (type == ICMP_ECHO) {
		*sport = id;
		*dport = 0;
	} else {
		*sport = 0;
		*dport = id;
	}
}

/* Key of a flow in conntrack: the lower (address, port) first, so both directions share it. */
static __always_inline bool ct_key_of(struct ct_key *key, __be32 saddr, __be32 daddr, __be16 sport, __be16 dport,
				      __u8 proto)
{
	bool src_is_a = bpf_ntohl(saddr) < bpf_ntohl(daddr) ||
			(saddr == daddr && bpf_ntohs(sport) <= bpf_ntohs(dport));

	key->protocol = proto;
	key->_pad[0] = key->_pad[1] = key->_pad[2] = 0;
	if (src_is_a) {
		key->addr_a = saddr;
		key->addr_b = daddr;
		key->port_a = sport;
		key->port_b = dport;
	} else {
		key->addr_a = daddr;
		key->addr_b = saddr;
		key->port_a = dport;
		key->port_b = sport;
	}
	return src_is_a;
}

/*
 * The embedded packet of an ICMP error: its IPv4 header and the first 8 bytes of its payload, as
 * RFC 792 requires them. Returns false when they are not all there or the header has options.
 */
static __noinline bool parse_icmp_inner(void *inner, void *data_end, struct ct_key *key)
{
	struct iphdr *ip = inner;
	__u8 *l4 = (void *)(ip + 1);
	__be16 sport = 0, dport = 0;

	if ((void *)(ip + 1) > data_end || l4 + 8 > (__u8 *)data_end)
		return false;
	if (ip->version != 4 || ip->ihl != 5)
		return false;
	if (proto_has_ports(ip->protocol)) {
		sport = *(__be16 *)l4;
		dport = *(__be16 *)(l4 + 2);
	} else if (ip->protocol == IPPROTO_ICMP) {
		if (!icmp_is_echo(l4[0]))
			return false;
		echo_ports(l4[0], *(__be16 *)(l4 + 4), &sport, &dport);
	}
	ct_key_of(key, ip->saddr, ip->daddr, sport, dport, ip->protocol);
	return true;
}

/*
 * Fragments are rare: their two steps run out of line, away from the code an ordinary packet
 * runs. A later fragment takes the ports its first fragment recorded (none for a protocol
 * without ports); FLOW_FRAGMENT_UNKNOWN when that one was not seen.
 */
static __noinline enum flow_result parse_later_fragment(struct iphdr *ip, struct flow *f)
{
	struct frag_key fk = { .saddr = ip->saddr, .daddr = ip->daddr, .id = ip->id, .protocol = ip->protocol };
	struct frag_value *fv;

	if (!proto_has_ports(ip->protocol))
		return FLOW_OK;
	fv = bpf_map_lookup_elem(&frags, &fk);
	if (!fv)
		return FLOW_FRAGMENT_UNKNOWN;
	f->sport = fv->sport;
	f->dport = f->policy_port = fv->dport;
	return FLOW_OK;
}

/* A first fragment records its ports for the later ones, which carry none. */
static __noinline void record_first_fragment(struct iphdr *ip, const struct flow *f)
{
	struct frag_key fk = { .saddr = ip->saddr, .daddr = ip->daddr, .id = ip->id, .protocol = ip->protocol };
	struct frag_value fv = { .sport = f->sport, .dport = f->dport };

	bpf_map_update_elem(&frags, &fk, &fv, BPF_ANY);
}

/*
 * Fill f from the IPv4 packet at ip. Ports that lie past data_end are taken as 0; the kernel
 * drops such packets at the receiver anyway. Fragments: the first one records its ports for the
 * later ones, which carry none.
 */
static __always_inline enum flow_result parse_flow(struct iphdr *ip, void *data_end, struct flow *f)
{
	__u8 *l4 = (__u8 *)ip + ip->ihl * 4;

	__builtin_memset(f, 0, sizeof(*f));
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->protocol = ip->protocol;

	if (ip->frag_off & bpf_htons(IP_OFFSET))
		return parse_later_fragment(ip, f);

	if (proto_has_ports(ip->protocol)) {
		if (l4 + 4 > (__u8 *)data_end)
			return FLOW_OK;
		f->sport = *(__be16 *)l4;
		f->dport = f->policy_port = *(__be16 *)(l4 + 2);
		if (ip->protocol == IPPROTO_TCP && l4 + 14 <= (__u8 *)data_end)
			f->tcp_flags = l4[13];
		if (ip->frag_off & bpf_htons(IP_MF))
			record_first_fragment(ip, f);
		return FLOW_OK;
	}

	if (ip->protocol == IPPROTO_ICMP) {
		if (l4 + 8 > (__u8 *)data_end)
			return FLOW_OK;
		f->policy_port = bpf_htons(((__u16)l4[0] << 8) | l4[1]);
		if (icmp_is_echo(l4[0]))
			echo_ports(l4[0], *(__be16 *)(l4 + 4), &f->sport, &f->dport);
		else if (icmp_is_error(l4[0]))
			f->icmp_error = parse_icmp_inner(l4 + 8, data_end, &f->inner);
	}
	return FLOW_OK;
}

static __always_inline __u64 ct_timeout_ns(const struct config_value *cfg, enum ct_state state)
{
	const struct ct_timeouts *t = cfg ? &cfg->ct_timeouts : NULL;
	__u32 s, def;

	switch (state) {
	case CT_TCP_SYN_SENT:
	case CT_TCP_SYN_ACKED:
		s = t ? t->tcp_syn : 0;
		def = CT_DEFAULT_TCP_SYN;
		break;
	case CT_TCP_ESTABLISHED:
		s = t ? t->tcp_established : 0;
		def = CT_DEFAULT_TCP_ESTABLISHED;
		break;
	case CT_TCP_FIN_WAIT:
		s = t ? t->tcp_fin : 0;
		def = CT_DEFAULT_TCP_FIN;
		break;
	case CT_TCP_CLOSED:
		s = t ? t->tcp_closed : 0;
		def = CT_DEFAULT_TCP_CLOSED;
		break;
	case CT_UDP:
		s = t ? t->udp : 0;
		def = CT_DEFAULT_UDP;
		break;
	case CT_ICMP:
		s = t ? t->icmp : 0;
		def = CT_DEFAULT_ICMP;
		break;
	default:
		s = t ? t->other : 0;
		def = CT_DEFAULT_OTHER;
		break;
	}
	return (__u64)(s ? s : def) * NSEC_PER_SEC;
}

static __always_inline bool ct_expired(const struct ct_value *ct, const struct config_value *cfg, __u64 now)
{
	return now > ct->last_seen && now - ct->last_seen > ct_timeout_ns(cfg, ct->state);
}

/* The Log rule of a policy value: 24 bits, little-endian; 0 for none. */
static __always_inline __u32 policy_value_log(const struct policy_value *v)
{
	return (__u32)v->log[0] | (__u32)v->log[1] << 8 | (__u32)v->log[2] << 16;
}

/*
 * A question to policy_lookup and its answer: in a per-CPU map value rather than on the stack,
 * so that a call costs the caller no knowledge of its stack (see policy_lookup).
 */
struct policy_query {
	__u32 program;
	__be32 peer;
	__be16 port;
	__be16 sport;
	__u8 proto;
	__u8 _pad[3];
	__u32 rule; /* answer: the deciding rule (0: none, the default deny) */
	__u32 log;  /* answer: the Log rule that matched before it (0: none) */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct policy_query);
	__uint(max_entries, 1);
} policy_scratch SEC(".maps");

/*
 * The action of program q->program for the peer q->peer: one lookup for the peer's identity, one
 * in the program (and a second one when the answer depends on the source port). q->rule gets the
 * deciding rule, q->log the Log rule that matched before it, both from the last value looked up:
 * a source-port table's entry, not the entry that named the table.
 *
 * A global function: the verifier checks it once and takes its answer for any action, where the
 * outcomes of an inlined lookup (no identity, no entry, a source-port table, ...) would multiply
 * the paths of the new flow's code after it, which from_wep reaches in many ways.
 */
__noinline int policy_lookup(struct policy_query *q)
{
	struct route_key ik = { .prefixlen = 32 };
	struct policy_key key = { .prefixlen = 96 };
	struct policy_value *v;
	__u32 *identity;

	if (!q)
		return POLICY_DENY;
	ik.addr = q->peer;
	key.program = q->program;
	key.protocol = q->proto;
	key.port = q->port;
	identity = bpf_map_lookup_elem(&policy_ips, &ik);
	key.identity = identity ? *identity : 0;
	v = bpf_map_lookup_elem(&policy, &key);
	if (v && v->action == POLICY_SPORT) {
		struct policy_key sk = { .prefixlen = 96, .program = v->rule, .port = q->sport };

		v = bpf_map_lookup_elem(&policy, &sk);
	}
	if (!v) {
		q->rule = 0;
		q->log = 0;
		return POLICY_DENY;
	}
	q->rule = v->rule;
	q->log = policy_value_log(v);
	return v->action;
}

/* policy_lookup of a program for a peer: *rule and *log get its answer. */
static __always_inline enum policy_action policy_ask(__u32 program, __be32 peer, __u8 proto, __be16 port,
						     __be16 sport, __u32 *rule, __u32 *log)
{
	struct policy_query *q;
	__u32 zero = 0;
	int action;

	q = bpf_map_lookup_elem(&policy_scratch, &zero);
	if (!q) {
		*rule = 0;
		*log = 0;
		return POLICY_DENY; /* never: the array has its one entry on every CPU */
	}
	q->program = program;
	q->peer = peer;
	q->port = port;
	q->sport = sport;
	q->proto = proto;
	action = policy_lookup(q);
	*rule = q->rule;
	*log = q->log;
	return (enum policy_action)action;
}

/* A host at the other end, on a failsafe port of the given direction. */
static __always_inline bool failsafe_port(const struct route_value *host, __u8 proto, __be16 port, __u8 dir)
{
	struct failsafe_key k = { .protocol = proto, .port = bpf_ntohs(port) };
	__u8 *v;

	if (!host || !(host->flags & ROUTE_HOST) || !proto_has_ports(proto))
		return false;
	v = bpf_map_lookup_elem(&failsafe, &k);
	return v && (*v & dir);
}

static __always_inline struct route_value *route_lookup(__be32 addr)
{
	struct route_key key = { .prefixlen = 32, .addr = addr };

	return bpf_map_lookup_elem(&routes, &key);
}

static __always_inline struct endpoint *local_endpoint(const struct route_value *rt)
{
	__u32 ifindex;

	if (!rt || !(rt->flags & ROUTE_LOCAL_WEP))
		return NULL;
	ifindex = rt->ifindex;
	return bpf_map_lookup_elem(&endpoints, &ifindex);
}

/*
 * The verdict for a flow from its initiator (saddr, sport) to its responder, whose routes are srt
 * and drt (NULL: none): the initiator's egress policy where it is a local workload, then the
 * responder's ingress policy where it is. This host's own address may always reach its workloads
 * (as Kubernetes requires for probes), and failsafe ports between workloads and hosts are never
 * cut. *rule_* get the deciding rule of each direction looked up, *log_* the Log rule that
 * matched before it (0: none, or that direction was not looked up).
 */
static __always_inline enum ct_verdict policy_check(__be32 saddr, __be32 daddr, __be16 sport, __be16 port, __u8 proto,
						    const struct route_value *srt, const struct route_value *drt,
						    __u32 *rule_egress, __u32 *rule_ingress, __u32 *log_egress,
						    __u32 *log_ingress)
{
	struct endpoint *sep = local_endpoint(srt);
	struct endpoint *dep = local_endpoint(drt);

	*rule_egress = 0;
	*rule_ingress = 0;
	*log_egress = 0;
	*log_ingress = 0;
	if (sep && sep->egress_program && !failsafe_port(drt, proto, port, FAILSAFE_INBOUND) &&
	    policy_ask(sep->egress_program, daddr, proto, port, sport, rule_egress, log_egress) != POLICY_ALLOW)
		return CT_VERDICT_DENY_EGRESS;
	if (dep && dep->ingress_program && !(srt && (srt->flags & ROUTE_LOCAL_HOST)) &&
	    !failsafe_port(srt, proto, port, FAILSAFE_OUTBOUND) &&
	    policy_ask(dep->ingress_program, saddr, proto, port, sport, rule_ingress, log_ingress) != POLICY_ALLOW)
		return CT_VERDICT_DENY_INGRESS;
	return CT_VERDICT_ALLOW;
}

static __always_inline void count_rule(__u32 rule, __u64 len)
{
	struct counter_value *v;

	if (!rule)
		return;
	v = bpf_map_lookup_elem(&rule_hits, &rule);
	if (v) {
		v->packets++;
		v->bytes += len;
	}
}

static __always_inline enum ct_state ct_initial_state(const struct flow *f)
{
	switch (f->protocol) {
	case IPPROTO_TCP:
		if (f->tcp_flags & TCP_FLAG_RST)
			return CT_TCP_CLOSED;
		if (f->tcp_flags & TCP_FLAG_FIN)
			return CT_TCP_FIN_WAIT;
		if ((f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			return CT_TCP_SYN_SENT;
		return CT_TCP_ESTABLISHED; /* picked up in the middle */
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
		return CT_UDP;
	case IPPROTO_ICMP:
		return CT_ICMP;
	}
	return CT_OTHER;
}

/* TCP state after a packet in direction dir (0: from the initiator, 1: from the responder). */
static __always_inline void ct_advance(struct ct_value *ct, const struct flow *f, int dir)
{
	__u8 flags = f->tcp_flags;

	if (f->protocol != IPPROTO_TCP)
		return;
	if (flags & TCP_FLAG_RST) {
		ct->state = CT_TCP_CLOSED;
		return;
	}
	if (flags & TCP_FLAG_FIN) {
		ct->fin_seen |= 1 << dir;
		ct->state = ct->fin_seen == 3 ? CT_TCP_CLOSED : CT_TCP_FIN_WAIT;
		return;
	}
	if (ct->state == CT_TCP_SYN_SENT && dir == 1 &&
	    (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == (TCP_FLAG_SYN | TCP_FLAG_ACK))
		ct->state = CT_TCP_SYN_ACKED;
	else if (ct->state == CT_TCP_SYN_ACKED && dir == 0 && (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_ACK)
		ct->state = CT_TCP_ESTABLISHED;
}

static __always_inline enum reason deny_reason(enum ct_verdict v)
{
	return v == CT_VERDICT_DENY_EGRESS ? REASON_DROP_POLICY_EGRESS : REASON_DROP_POLICY_INGRESS;
}

/*
 * An ICMP error about a flow conntrack allows is allowed with it. Returns true when f is such an
 * error.
 */
static __always_inline bool ct_related(const struct flow *f, const struct config_value *cfg, __u32 generation,
				       __u64 now)
{
	struct ct_value *ct;

	if (!f->icmp_error)
		return false;
	ct = bpf_map_lookup_elem(&conntrack, &f->inner);
	/* A verdict from before a policy change does not vouch: the error is checked on its own. */
	return ct && ct->verdict == CT_VERDICT_ALLOW && ct->generation == generation && !ct_expired(ct, cfg, now);
}

/* Whether, and how, ct_policy asks the kernel's conntrack about a flow it does not know. */
enum nat_probe {
	NAT_PROBE_NONE = 0,    /* the caller knows (netfilter hooks: the skb carries the kernel's entry) */
	NAT_PROBE_INGRESS = 1, /* tcx ingress: the packet has not met netfilter yet */
	NAT_PROBE_EGRESS = 2,  /* tcx egress: netfilter has translated the packet already */
};

/* Which of a packet's addresses. */
enum flow_side {
	SIDE_SRC = 0,
	SIDE_DST = 1,
};

/* A route as one program run knows it: not looked up yet, none, or found. */
enum route_state : __u8 {
	RT_UNKNOWN = 0,
	RT_NONE = 1,
	RT_FOUND = 2,
};

struct flow_route {
	struct route_value v;
	enum route_state state;
	__u8 learned; /* looked up in this run (the route, or the MAC): worth keeping in the entry */
	__u8 has_mac; /* mac is the local workload's (a LOCAL_WEP route) */
	__u8 mac[6];
	__u8 _pad[3];
};

/*
 * What one program run knows of a packet's flow: its tuple and conntrack entry, looked up once,
 * and the routes of its two addresses, from the entry while they are current.
 */
struct flow_ctx {
	struct flow f;
	struct ct_key key;
	struct ct_value *ct; /* the flow's live entry, or NULL */
	struct config_value *cfg;
	__u64 now;
	__u32 generation;       /* config's policy generation */
	__u32 route_generation; /* config's route generation, read before any route */
	bool src_is_a;
	bool parsed;     /* f, key and ct are set */
	bool flow_error; /* a later fragment whose first one left no ports */
	__u8 _pad;
	struct flow_route rt[2]; /* [SIDE_SRC], [SIDE_DST] */
	/* What ct_policy hands its out-of-line part for a new flow (in_*), and gets back (out_*). */
	__u32 in_len;
	__u8 in_probe;      /* enum nat_probe */
	__u8 in_known;      /* enum kernel_nat */
	__u8 out_reason;    /* enum reason */
	__u8 out_kernel_nat;
	__u32 in_ifindex;   /* where the program runs, for a policy log event */
	__u16 in_hook;      /* enum hook */
	__u8 _pad2[2];
};

/*
 * Start a run's flow context at now: conntrack's clock. Timeouts are seconds, so the TC programs
 * give the tick's clock (bpf_ktime_get_coarse_ns), which costs no clock source read; netfilter
 * programs may not call that helper and give bpf_ktime_get_ns. Both are CLOCK_MONOTONIC.
 */
static __always_inline void flow_ctx_init(struct flow_ctx *fc, __u64 now)
{
	__u32 zero = 0;

	__builtin_memset(fc, 0, sizeof(*fc));
	fc->cfg = bpf_map_lookup_elem(&config, &zero);
	if (fc->cfg) {
		fc->generation = fc->cfg->policy_generation;
		fc->route_generation = fc->cfg->route_generation;
	}
	fc->now = now;
}

/*
 * The flow's entry, when it has one that still counts: not expired, and not a closed TCP
 * connection whose ports a new connection reuses (that one starts afresh).
 */
static __always_inline struct ct_value *ct_live(struct flow_ctx *fc)
{
	struct ct_value *ct = bpf_map_lookup_elem(&conntrack, &fc->key);

	if (ct && (ct_expired(ct, fc->cfg, fc->now) ||
		   (ct->state == CT_TCP_CLOSED && (fc->f.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)))
		return NULL;
	return ct;
}

/* Parse the packet at ip into fc and find its conntrack entry, once. */
static __always_inline void flow_parse(struct flow_ctx *fc, struct iphdr *ip, void *data_end)
{
	if (fc->parsed || fc->flow_error)
		return;
	if (parse_flow(ip, data_end, &fc->f) != FLOW_OK) {
		fc->flow_error = true;
		return;
	}
	fc->src_is_a = ct_key_of(&fc->key, fc->f.saddr, fc->f.daddr, fc->f.sport, fc->f.dport, fc->f.protocol);
	fc->ct = ct_live(fc);
	fc->parsed = true;
}

/* The entry's slot for a side of the packet: addr_a's or addr_b's. */
static __always_inline struct ct_route *ct_route_of(struct ct_value *ct, const struct flow_ctx *fc,
						    enum flow_side side)
{
	__u32 slot = (side == SIDE_SRC) == fc->src_is_a ? 0 : 1;

	/* The verifier knows no bool is 0 or 1: keep the mask the compiler would drop. */
	barrier_var(slot);
	return &ct->route[slot & 1];
}

/*
 * The route of a side of the packet (addr: that side's address), or NULL when there is none:
 * from the flow's conntrack entry when it holds a current one, else from the routes trie.
 */
static __always_inline struct route_value *flow_route(struct flow_ctx *fc, enum flow_side side, __be32 addr)
{
	struct flow_route *r = &fc->rt[side & 1];
	struct route_value *found;

	if (r->state == RT_UNKNOWN) {
		struct ct_value *ct = fc->ct;

		if (ct && ct->route_generation == fc->route_generation) {
			struct ct_route *cr = ct_route_of(ct, fc, side);

			if (cr->known & CT_ROUTE_KNOWN) {
				r->v.flags = cr->flags;
				r->v.ifindex = cr->ifindex;
				r->v.next_hop = cr->next_hop;
				r->has_mac = !!(cr->known & CT_ROUTE_MAC);
				__builtin_memcpy(r->mac, cr->mac, ETH_ALEN);
				r->state = cr->flags ? RT_FOUND : RT_NONE;
			}
		}
	}
	if (r->state == RT_UNKNOWN) {
		found = route_lookup(addr);
		r->learned = 1;
		if (found) {
			r->v = *found;
			r->state = RT_FOUND;
		} else {
			r->state = RT_NONE;
		}
	}
	return r->state == RT_FOUND ? &r->v : NULL;
}

/*
 * The MAC of the local workload the packet goes to (its destination route is LOCAL_WEP), or
 * NULL when its endpoint is missing.
 */
static __always_inline const __u8 *flow_dst_mac(struct flow_ctx *fc)
{
	struct flow_route *r = &fc->rt[SIDE_DST];
	struct endpoint *ep;
	__u32 ifindex;

	if (r->state != RT_FOUND || !(r->v.flags & ROUTE_LOCAL_WEP))
		return NULL;
	if (!r->has_mac) {
		ifindex = r->v.ifindex;
		ep = bpf_map_lookup_elem(&endpoints, &ifindex);
		if (!ep)
			return NULL;
		__builtin_memcpy(r->mac, ep->mac, ETH_ALEN);
		r->has_mac = 1;
		r->learned = 1;
	}
	return r->mac;
}

/* Keep the route of a side in ct's slot (or leave the slot unknown when the run has none). */
static __always_inline void ct_route_fill(struct ct_route *cr, const struct flow_route *r)
{
	if (r->state == RT_UNKNOWN) {
		cr->known = 0;
		return;
	}
	cr->flags = r->state == RT_FOUND ? (__u8)r->v.flags : 0;
	cr->ifindex = r->state == RT_FOUND ? r->v.ifindex : 0;
	cr->next_hop = r->state == RT_FOUND ? r->v.next_hop : 0;
	__builtin_memcpy(cr->mac, r->mac, ETH_ALEN);
	cr->known = CT_ROUTE_KNOWN | (r->has_mac ? CT_ROUTE_MAC : 0);
}

/*
 * Keep what this run learned of the flow's routes in its live entry, for its next packets. The
 * generation is the one read before the routes were: a change since makes them stale at once.
 */
static __always_inline void flow_keep_routes(struct flow_ctx *fc)
{
	struct ct_value *ct = fc->ct;
	int side;

	if (!ct || !(fc->rt[SIDE_SRC].learned || fc->rt[SIDE_DST].learned))
		return;
	if (ct->route_generation != fc->route_generation) {
		ct->route[0].known = 0;
		ct->route[1].known = 0;
		barrier();
		ct->route_generation = fc->route_generation;
	}
	for (side = SIDE_SRC; side <= SIDE_DST; side++) {
		const struct flow_route *r = &fc->rt[side];

		if (r->state != RT_UNKNOWN)
			ct_route_fill(ct_route_of(ct, fc, side), r);
	}
}

/*
 * Count a Log rule (e->rule) in rule_hits as a deciding rule is counted and send its policy log
 * event e (all but its timestamp filled in), rate-limited per CPU as the drop and trace events
 * are, in a bucket of its own. A global function: the verifier checks it once, not on every path
 * of the new flow's code that logs; e, on the caller's stack, holds no pointer that the verifier
 * could forget across the call.
 */
__noinline int policy_log_send(struct event *e)
{
	struct event_state *st;
	struct event *out;
	__u32 zero = 0;
	__u64 now;

	if (!e)
		return 0;
	count_rule(e->rule, e->len);
	st = bpf_map_lookup_elem(&events_state, &zero);
	if (!st)
		return 0;
	now = bpf_ktime_get_ns();
	if (!events_allowed(st, &st->tat[EVENT_BUCKET_POLICY_LOG], now))
		return 0;
	out = bpf_ringbuf_reserve(&events, sizeof(*out), 0);
	if (!out) {
		st->lost_full++;
		return 0;
	}
	__builtin_memcpy(out, e, sizeof(*out));
	out->timestamp = now;
	bpf_ringbuf_submit(out, 0);
	return 0;
}

/*
 * A Log rule (a policy value's log) matched the first packet of the flow fc holds: it counts in
 * rule_hits as a deciding rule does and sends a policy log event, then policy goes on. The
 * event's tuple is the packet's, as its drop or trace event has it, with the flow's ports (a later
 * fragment's from its first). Only a new flow's first packet logs, where its deciding rules count:
 * neither the packets of an established flow nor a re-check after a policy change do, nor an ICMP
 * error allowed on its own.
 */
static __always_inline void policy_log(const struct flow_ctx *fc, __u32 log_egress, __u32 log_ingress)
{
	const struct flow *f = &fc->f;
	struct event e = {
		.ifindex = fc->in_ifindex,
		.hook = fc->in_hook,
		.reason = REASON_UNSPEC,
		.saddr = f->saddr,
		.daddr = f->daddr,
		.len = fc->in_len,
		.protocol = f->protocol,
		.kind = EVENT_POLICY_LOG,
		.flags = EVENT_F_IPV4,
	};

	if (!(log_egress | log_ingress))
		return;
	if (proto_has_ports(f->protocol)) {
		e.sport = f->sport;
		e.dport = f->dport;
		e.flags |= EVENT_F_PORTS;
	}
	if (log_egress) {
		e.rule = log_egress;
		policy_log_send(&e);
	}
	if (log_ingress) {
		e.rule = log_ingress;
		policy_log_send(&e);
	}
}

/*
 * The first packet of a flow this host's conntrack does not know (ct_policy's cold path, kept out
 * of line so that the code an established flow runs stays small): related ICMP errors, the
 * kernel's NAT, policy, and the new entry with the routes fc holds. fc->in_* hold the packet's
 * length, how to probe the kernel's conntrack and what the caller knows of it; fc->out_* get
 * whether the kernel translates the flow and, for a drop, the reason.
 */
/* A new entry is built here, not on the stack, which the flow's context and its caller fill. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct ct_value);
	__uint(max_entries, 1);
} ct_scratch SEC(".maps");

static __noinline int ct_new(struct __sk_buff *skb, struct flow_ctx *fc)
{
	const struct flow *f = &fc->f;
	__u32 generation = fc->generation;
	__u64 now = fc->now;
	__u64 len = fc->in_len;
	enum nat_probe probe = (enum nat_probe)fc->in_probe;
	struct ct_value *fresh;
	enum kernel_nat nat = (enum kernel_nat)fc->in_known;
	__u32 zero = 0;
	__be32 saddr = f->saddr, daddr = f->daddr;
	__be16 sport = f->sport, port = f->policy_port;
	struct route_value *srt, *drt;
	__u32 log_egress, log_ingress;
	enum ct_verdict v;
	int dir;

	fresh = bpf_map_lookup_elem(&ct_scratch, &zero);
	if (!fresh)
		return TC_ACT_UNSPEC; /* never: the array has its one entry on every CPU */
	__builtin_memset(fresh, 0, sizeof(*fresh));
	if (ct_related(f, fc->cfg, generation, now))
		return TC_ACT_UNSPEC;
	if (probe != NAT_PROBE_NONE && skb)
		nat = kernel_nat_lookup(skb, f->saddr, f->daddr, f->sport, f->dport, f->protocol,
					probe == NAT_PROBE_EGRESS);
	/* The kernel delivers a reply it translated back (a Service's, to its client): the flow's
	 * first packet met policy before, as it was after the kernel's DNAT; a reply passes. */
	if (nat == KNAT_REPLY && probe == NAT_PROBE_EGRESS)
		return TC_ACT_UNSPEC;
	srt = flow_route(fc, SIDE_SRC, f->saddr);
	drt = flow_route(fc, SIDE_DST, f->daddr);
	if (nat == KNAT_REPLY) {
		/* The first packet this host's eBPF sees of a translated flow is a reply: the flow is
		 * checked as its initiator opened it, which is this packet's tuple reversed. */
		struct route_value *t = srt;

		saddr = f->daddr;
		daddr = f->saddr;
		sport = f->dport;
		port = f->sport;
		srt = drt;
		drt = t;
	}
	v = policy_check(saddr, daddr, sport, port, f->protocol, srt, drt, &fresh->rule_egress, &fresh->rule_ingress,
			 &log_egress, &log_ingress);
	if (v == CT_VERDICT_ALLOW && f->icmp_error)
		return TC_ACT_UNSPEC; /* an error about no known flow: allowed on its own, never a flow */
	if (v != CT_VERDICT_ALLOW) {
		/* Denied first packets leave no entry: a flood of them cannot fill the table. */
		count_rule(fresh->rule_egress, len);
		count_rule(fresh->rule_ingress, len);
		policy_log(fc, log_egress, log_ingress);
		fc->out_reason = deny_reason(v);
		return TC_ACT_SHOT;
	}
	dir = nat == KNAT_REPLY ? 1 : 0;
	fresh->created = now;
	fresh->last_seen = now;
	fresh->packets[dir] = 1;
	fresh->bytes[dir] = len;
	fresh->generation = generation;
	fresh->policy_port = port;
	fresh->state = ct_initial_state(f);
	fresh->verdict = CT_VERDICT_ALLOW;
	fresh->initiator_is_a = fc->src_is_a != (nat == KNAT_REPLY);
	fresh->kernel_nat = nat != KNAT_NONE;
	if (f->protocol == IPPROTO_TCP && (f->tcp_flags & TCP_FLAG_FIN) && !(f->tcp_flags & TCP_FLAG_RST))
		fresh->fin_seen = 1 << dir;
	/* A local workload's MAC, for the redirect that follows. */
	flow_dst_mac(fc);
	fresh->route_generation = fc->route_generation;
	ct_route_fill(ct_route_of(fresh, fc, SIDE_SRC), &fc->rt[SIDE_SRC]);
	ct_route_fill(ct_route_of(fresh, fc, SIDE_DST), &fc->rt[SIDE_DST]);
	bpf_map_update_elem(&conntrack, &fc->key, fresh, BPF_ANY);
	count_rule(fresh->rule_egress, len);
	count_rule(fresh->rule_ingress, len);
	policy_log(fc, log_egress, log_ingress);
	fc->out_kernel_nat = fresh->kernel_nat;
	return TC_ACT_UNSPEC;
}

/*
 * Policy changed since the verdict of fc's live entry: check the flow again, as its initiator
 * opened it. Out of line: an established flow's packets run it once per policy change. Log rules
 * logged the flow's first packet: a re-check neither counts nor logs them again.
 */
static __noinline void ct_recheck(struct flow_ctx *fc)
{
	struct ct_value *ct = fc->ct;
	const struct ct_key *key = &fc->key;
	__be32 s, d;
	__be16 sport;
	__u32 re, ri, le, li;

	if (!ct)
		return;
	s = ct->initiator_is_a ? key->addr_a : key->addr_b;
	d = ct->initiator_is_a ? key->addr_b : key->addr_a;
	sport = ct->initiator_is_a ? key->port_a : key->port_b;
	ct->verdict = policy_check(s, d, sport, ct->policy_port, key->protocol, route_lookup(s), route_lookup(d), &re,
				   &ri, &le, &li);
	ct->rule_egress = re;
	ct->rule_ingress = ri;
	ct->generation = fc->generation;
}

/*
 * Conntrack and policy for the packet fc was parsed from (flow_parse), by the program at hook on
 * ifindex. Returns TC_ACT_UNSPEC when the packet may go on, or TC_ACT_SHOT with *reason set.
 * *kernel_nat says that the kernel translates the flow, so the packet must stay on the kernel
 * path. A new flow's entry keeps the routes fc holds.
 */
static __always_inline int ct_policy(struct __sk_buff *skb, struct flow_ctx *fc, __u64 len, __u32 ifindex,
				     enum hook hook, enum nat_probe probe, enum kernel_nat known, bool *kernel_nat,
				     enum reason *reason)
{
	const struct flow *f = &fc->f;
	struct ct_value *ct = fc->ct;
	__u32 generation = fc->generation;
	__u64 now = fc->now;
	int dir, verdict;

	*kernel_nat = false;
	if (!ct) {
		fc->in_len = len;
		fc->in_ifindex = ifindex;
		fc->in_hook = hook;
		fc->in_probe = probe;
		fc->in_known = known;
		fc->out_kernel_nat = false;
		fc->out_reason = REASON_UNSPEC;
		verdict = ct_new(skb, fc);
		*kernel_nat = fc->out_kernel_nat;
		if (verdict != TC_ACT_UNSPEC)
			*reason = (enum reason)fc->out_reason;
		return verdict;
	}

	dir = fc->src_is_a == (bool)ct->initiator_is_a ? 0 : 1;
	if (ct->generation != generation)
		ct_recheck(fc);
	if (ct->verdict != CT_VERDICT_ALLOW) {
		count_rule(ct->rule_egress, len);
		count_rule(ct->rule_ingress, len);
		*reason = deny_reason(ct->verdict);
		return TC_ACT_SHOT;
	}

	ct_advance(ct, f, dir);
	/* The tick's clock moves a few hundred times a second: most packets write nothing here. */
	if (ct->last_seen != now)
		ct->last_seen = now;
	__sync_fetch_and_add(&ct->packets[dir & 1], 1);
	__sync_fetch_and_add(&ct->bytes[dir & 1], len);
	count_rule(ct->rule_egress, len);
	count_rule(ct->rule_ingress, len);
	*kernel_nat = ct->kernel_nat;
	return TC_ACT_UNSPEC;
}

#endif /* MARGAY_POLICY_H */
