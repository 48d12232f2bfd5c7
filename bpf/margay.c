// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * margay.c: the whole dataplane as one object, so every program shares one set of maps and one
 * BTF. Each attach point keeps its own file.
 */

#include "from_wep.c"
#include "to_wep.c"
#include "from_net.c"
#include "xdp_from_net.c"
#include "nf_policy.c"

char __license[] SEC("license") = "Dual BSD/GPL";
