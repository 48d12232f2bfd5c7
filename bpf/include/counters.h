/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* counters.h: count a packet once per hook under its reason. */
#ifndef MARGAY_COUNTERS_H
#define MARGAY_COUNTERS_H

#include "maps.h"

static __always_inline void count_packet(__u32 ifindex, enum hook hook, enum reason reason, __u64 bytes)
{
	struct counter_key key = {
		.ifindex = ifindex,
		.hook = hook,
		.reason = reason,
	};
	struct counter_value *v = bpf_map_lookup_elem(&counters, &key);

	if (!v) {
		struct counter_value first = { .packets = 1, .bytes = bytes };

		/* Another CPU may create the key between our lookup and update: then add to it. */
		if (bpf_map_update_elem(&counters, &key, &first, BPF_NOEXIST) == 0)
			return;
		v = bpf_map_lookup_elem(&counters, &key);
		if (!v)
			return; /* map full: the agent prunes keys of deleted interfaces */
	}
	/* Per-CPU values: no other CPU writes this slot, so no atomics are needed. */
	v->packets++;
	v->bytes += bytes;
}

#endif /* MARGAY_COUNTERS_H */
