/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maps.h: the maps every Margay program shares, pinned by name under the bpffs root. */
#ifndef MARGAY_MAPS_H
#define MARGAY_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "types.h"

#ifndef MAX_ROUTES
#define MAX_ROUTES (1 << 18)
#endif
#ifndef MAX_ENDPOINTS
#define MAX_ENDPOINTS 16384
#endif
#ifndef MAX_COUNTERS
#define MAX_COUNTERS 32768
#endif
#ifndef MAX_CONNTRACK
#define MAX_CONNTRACK 65536
#endif
#ifndef MAX_POLICY
#define MAX_POLICY (1 << 20)
#endif
#ifndef MAX_POLICY_IPS
#define MAX_POLICY_IPS (1 << 18)
#endif
#ifndef MAX_RULES
#define MAX_RULES 65536
#endif

/* Destination prefix -> what to do with it: local workload, remote block or workload, host. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct route_key);
	__type(value, struct route_value);
	__uint(max_entries, MAX_ROUTES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} routes SEC(".maps");

/* Ifindex of a host-side cali* veth -> the workload behind it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct endpoint);
	__uint(max_entries, MAX_ENDPOINTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* {ifindex, hook, reason} -> packets and bytes, per CPU; Go sums the CPUs. Allocated on first use. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct counter_key);
	__type(value, struct counter_value);
	__uint(max_entries, MAX_COUNTERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

/* Flows in both directions -> state, verdict, counters. Least recently used flows make room. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_value);
	__uint(max_entries, MAX_CONNTRACK);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* Compiled policy programs: {program, identity, protocol, port prefix} -> action and rule. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, MAX_POLICY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

/* Address prefix -> the identity policy sees for it. 0.0.0.0/0 is always present. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct route_key);
	__type(value, __u32);
	__uint(max_entries, MAX_POLICY_IPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_ips SEC(".maps");

/* Rule id -> packets and bytes of the flows it allowed, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct counter_value);
	__uint(max_entries, MAX_RULES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_hits SEC(".maps");

/* Settings the agent writes: the policy generation and conntrack timeouts. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");

/* {protocol, port} -> FAILSAFE_* for traffic between workloads and hosts. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct failsafe_key);
	__type(value, enum failsafe_flags);
	__uint(max_entries, 256);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} failsafe SEC(".maps");

/* First fragments leave their ports for the later ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} frags SEC(".maps");

/*
 * Drop and trace events for margayctl monitor. A ring buffer has no value size: the value type
 * only puts struct event into the BTF, for bpf2go.
 */
#ifndef EVENTS_RINGBUF_SIZE
#define EVENTS_RINGBUF_SIZE (256 * 1024)
#endif
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__type(value, struct event);
	__uint(max_entries, EVENTS_RINGBUF_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* Rate limits of the events and what they did not send, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct event_state);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events_state SEC(".maps");

/*
 * What margayctl monitor asks for (trace events): apart from the agent's config, so that neither
 * process's read-modify-write can undo a setting of the other.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct monitor_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} monitor SEC(".maps");

#endif /* MARGAY_MAPS_H */
