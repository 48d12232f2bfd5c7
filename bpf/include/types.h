/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* types.h: every struct and enum shared with Go (bpf2go -type); fixed width, explicit padding. */
#ifndef MARGAY_TYPES_H
#define MARGAY_TYPES_H

#include <stdbool.h>
#include <linux/types.h>

/* The hook a program runs at; part of every counter key. */
enum hook : __u16 {
	HOOK_FROM_WEP = 0,     /* tcx ingress of a host-side cali* veth */
	HOOK_TO_WEP = 1,       /* tcx egress of a host-side cali* veth */
	HOOK_FROM_NET = 2,     /* tcx ingress of the uplink */
	HOOK_XDP_FROM_NET = 3, /* XDP on the uplink */
};

/*
 * Why a packet left a program the way it did. Every packet is counted once per hook under exactly
 * one reason. Go prints the names without the REASON_ prefix, so keep them short and stable:
 * dashboards and alerts key on them.
 */
enum reason : __u16 {
	REASON_UNSPEC = 0,
	/* Forwarded by eBPF. */
	REASON_FWD_LOCAL = 1,  /* bpf_redirect_peer into a workload on this host */
	REASON_FWD_REMOTE = 2, /* bpf_redirect_neigh out of the uplink to another host */
	/* Handed to the kernel unchanged. */
	REASON_PASS_NOT_IPV4 = 10,    /* ARP, IPv6, anything not IPv4 */
	REASON_PASS_NO_ROUTE = 11,    /* no entry in the routes map */
	REASON_PASS_KERNEL = 12,      /* the route is the kernel's job: host address, unused local address, transit */
	REASON_PASS_TTL = 13,         /* TTL <= 1: the kernel sends ICMP time exceeded */
	REASON_PASS_IP_OPTIONS = 14,  /* IHL > 5 */
	REASON_PASS_FRAGMENT = 15,    /* MF set or offset non-zero */
	REASON_PASS_MTU = 16,         /* too big for the egress device: the kernel fragments or sends ICMP */
	REASON_PASS_NOT_HOST = 17,    /* on the uplink, not addressed to this host's MAC */
	REASON_PASS_NO_ENDPOINT = 18, /* route to a local workload whose endpoint entry is missing */
	REASON_PASS_DELIVER = 19,     /* to_wep: the kernel delivers to the workload */
	REASON_PASS_PREFILTER = 20,   /* xdp_from_net: nothing to drop, on to the stack */
	/* Dropped. */
	REASON_DROP_MALFORMED = 30,    /* bad IPv4 version, header length or total length; truncated */
	REASON_DROP_SPOOFED = 31,      /* source address not the sender's own */
	REASON_DROP_NO_ENDPOINT = 32,  /* from a cali* interface that has no endpoint entry */
	REASON_DROP_NO_WORKLOAD = 33,  /* to an address of a local block that no workload holds */
	REASON_DROP_REDIRECT = 34,     /* the redirect helper refused the packet */
};

/* Route kinds in the routes map; a route may carry IN_POOL beside its kind. */
enum route_flags {
	ROUTE_LOCAL_WEP = 1 << 0,    /* /32 of a workload on this host: ifindex is its cali* veth */
	ROUTE_REMOTE_BLOCK = 1 << 1, /* another host's block: ifindex is the uplink, next_hop that host */
	ROUTE_REMOTE_WEP = 1 << 2,   /* /32 borrowed by a workload on another host: as REMOTE_BLOCK */
	ROUTE_LOCAL_BLOCK = 1 << 3,  /* a block this host owns (its unused addresses are blackholed) */
	ROUTE_HOST = 1 << 4,         /* an address of a host (this one or another) */
	ROUTE_IN_POOL = 1 << 5,      /* inside a configured IP pool */
};

/* LPM trie key: prefixlen counts the leading bits of addr that matter. */
struct route_key {
	__u32 prefixlen;
	__be32 addr;
};

struct route_value {
	enum route_flags flags; /* kind of route, plus IN_POOL */
	__u32 ifindex;          /* where the packet leaves: the cali* veth or the uplink */
	__be32 next_hop;        /* remote routes: the host to hand the packet to; 0 = resolve the destination */
};

/* One workload, keyed by the ifindex of its host-side veth. */
struct endpoint {
	__be32 ipv4;   /* the workload's own /32: the only source it may send from */
	__u8 mac[6];   /* the workload-side MAC, destination of frames delivered to it */
	__u8 _pad[2];
};

struct counter_key {
	__u32 ifindex; /* the interface the program ran on */
	enum hook hook;
	enum reason reason;
};

struct counter_value {
	__u64 packets;
	__u64 bytes;
};

#endif /* MARGAY_TYPES_H */
