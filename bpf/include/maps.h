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

#endif /* MARGAY_MAPS_H */
