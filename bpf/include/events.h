/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * events.h: drop and trace events for margayctl monitor, through the events ring buffer, at a
 * bounded rate per CPU so that a flood of drops costs the dataplane little and cannot fill the
 * buffer faster than a reader empties it. Sending never changes a verdict or a counter. Policy
 * log events (a Log rule that matched a flow's first packet) are sent from policy.h, which knows
 * the flow, under a rate limit of their own.
 */
#ifndef MARGAY_EVENTS_H
#define MARGAY_EVENTS_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "hostconv.h"
#include "maps.h"
#include "parse.h"

/* Per CPU and kind: at most EVENTS_BURST events at once, refilled at EVENTS_RATE a second. */
#define EVENTS_INTERVAL_NS (1000000000ULL / EVENTS_RATE)

/* Every DROP_* reason, and only they, are numbered from REASON_DROP_MALFORMED on. */
static __always_inline bool reason_is_drop(enum reason reason)
{
	return reason >= REASON_DROP_MALFORMED;
}

/* What kind of event a packet makes: 0 for none, the common case, decided in a few instructions. */
static __always_inline enum event_kind event_kind_of(enum reason reason)
{
	__u32 zero = 0;
	struct monitor_value *m;

	if (reason_is_drop(reason))
		return EVENT_DROP;
	m = bpf_map_lookup_elem(&monitor, &zero);
	if (m && (m->flags & MONITOR_TRACE))
		return EVENT_TRACE;
	return 0;
}

/*
 * The rate limit (GCRA) of one kind's bucket (tat, one of st's): an event may go when the
 * theoretical arrival time of the next one lies at most EVENTS_BURST - 1 intervals ahead of now.
 * Per-CPU state: no other CPU writes it.
 */
static __always_inline bool events_allowed(struct event_state *st, __u64 *tat, __u64 now)
{
	__u64 t = *tat > now ? *tat : now;

	if (t - now > (EVENTS_BURST - 1) * EVENTS_INTERVAL_NS) {
		st->lost_rate++;
		return false;
	}
	*tat = t + EVENTS_INTERVAL_NS;
	return true;
}

/* The 5-tuple of the IPv4 packet at ip, as far as [ip, data_end) holds it. */
static __always_inline void event_tuple_ip(struct event *e, struct iphdr *ip, void *data_end)
{
	__u8 *l4;

	e->saddr = e->daddr = 0;
	e->sport = e->dport = 0;
	e->protocol = 0;
	e->flags = 0;
	if ((void *)(ip + 1) > data_end)
		return;
	e->saddr = ip->saddr;
	e->daddr = ip->daddr;
	e->protocol = ip->protocol;
	e->flags = EVENT_F_IPV4;
	/* Later fragments carry no L4 header; a malformed IHL points nowhere useful. */
	if (ip->ihl < 5 || (ip->frag_off & bpf_htons(IP_OFFSET)))
		return;
	if (!proto_has_ports(ip->protocol))
		return;
	l4 = (__u8 *)ip + ip->ihl * 4;
	if (l4 + 4 > (__u8 *)data_end)
		return;
	e->sport = *(__be16 *)l4;
	e->dport = *(__be16 *)(l4 + 2);
	e->flags |= EVENT_F_PORTS;
}

/*
 * The out-of-line part of emit_event_ip: rare (drops and tracing only), so it stays out of the
 * code an ordinary packet runs. hkr packs hook, reason and kind (a subprogram takes 5 arguments).
 */
static __noinline void emit_event_slow(struct iphdr *ip, void *data_end, __u32 ifindex, __u32 hkr, __u64 len)
{
	enum event_kind kind = (enum event_kind)(hkr >> 16);
	struct event_state *st;
	struct event *e;
	__u32 zero = 0;
	__u64 now;

	st = bpf_map_lookup_elem(&events_state, &zero);
	if (!st)
		return;
	now = bpf_ktime_get_ns();
	if (!events_allowed(st, &st->tat[kind == EVENT_TRACE ? EVENT_BUCKET_TRACE : EVENT_BUCKET_DROP], now))
		return;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		st->lost_full++;
		return;
	}
	e->timestamp = now;
	e->ifindex = ifindex;
	e->hook = hkr & 0xff;
	e->reason = (hkr >> 8) & 0xff;
	e->len = len;
	e->kind = kind;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	e->rule = 0;
	if (ip) {
		event_tuple_ip(e, ip, data_end);
	} else {
		e->saddr = e->daddr = 0;
		e->sport = e->dport = 0;
		e->protocol = 0;
		e->flags = 0;
	}
	bpf_ringbuf_submit(e, 0);
}

/*
 * Send an event about a packet the program is done with, when its reason or tracing asks for one
 * and the rate limit allows; count it as lost otherwise. Call it after count_packet, with the
 * packet's data as it is now: ip is its IPv4 header, or NULL when it has none.
 */
static __always_inline void emit_event_ip(struct iphdr *ip, void *data_end, __u32 ifindex, enum hook hook,
					  enum reason reason, __u64 len)
{
	enum event_kind kind = event_kind_of(reason);

	if (kind)
		emit_event_slow(ip, data_end, ifindex, (__u32)hook | (__u32)reason << 8 | (__u32)kind << 16, len);
}

/* emit_event_ip for a packet that starts with its Ethernet header (TC and XDP). */
static __always_inline void emit_event(void *data, void *data_end, __u32 ifindex, enum hook hook,
				       enum reason reason, __u64 len)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		ip = NULL;
	emit_event_ip(ip, data_end, ifindex, hook, reason, len);
}

#endif /* MARGAY_EVENTS_H */
