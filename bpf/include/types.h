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
	HOOK_NF_POLICY = 4,    /* netfilter forward and local-in: what workloads send through the kernel */
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
	REASON_PASS_KERNEL = 12,      /* the kernel's job: to a host address, an unused local address, transit; from a host */
	REASON_PASS_TTL = 13,         /* TTL <= 1: the kernel sends ICMP time exceeded */
	REASON_PASS_IP_OPTIONS = 14,  /* IHL > 5 */
	REASON_PASS_FRAGMENT = 15,    /* MF set or offset non-zero */
	REASON_PASS_MTU = 16,         /* too big for the egress device: the kernel fragments or sends ICMP */
	REASON_PASS_NOT_HOST = 17,    /* on the uplink, not addressed to this host's MAC */
	REASON_PASS_NO_ENDPOINT = 18, /* route to a local workload whose endpoint entry is missing */
	REASON_PASS_DELIVER = 19,     /* to_wep: the kernel delivers to the workload */
	REASON_PASS_PREFILTER = 20,   /* xdp_from_net: nothing to drop, on to the stack */
	REASON_PASS_NAT = 21,         /* a flow the kernel translates (Service, NodePort, masquerade): it reverses that */
	/* Dropped. */
	REASON_DROP_MALFORMED = 30,    /* bad IPv4 version, header length or total length; truncated */
	REASON_DROP_SPOOFED = 31,      /* source address not the sender's own */
	REASON_DROP_NO_ENDPOINT = 32,  /* from a cali* interface that has no endpoint entry */
	REASON_DROP_NO_WORKLOAD = 33,  /* to an address of a local block that no workload holds */
	REASON_DROP_REDIRECT = 34,     /* the redirect helper refused the packet */
	REASON_DROP_POLICY_EGRESS = 35,  /* the sender's egress policy denies the flow */
	REASON_DROP_POLICY_INGRESS = 36, /* the receiver's ingress policy denies the flow */
	REASON_DROP_FRAGMENT = 37,       /* a later fragment of a flow whose first fragment was not seen */
};

/* Route kinds in the routes map; a route may carry IN_POOL beside its kind. */
enum route_flags {
	ROUTE_LOCAL_WEP = 1 << 0,    /* /32 of a workload on this host: ifindex is its cali* veth */
	ROUTE_REMOTE_BLOCK = 1 << 1, /* another host's block: ifindex is the uplink, next_hop that host */
	ROUTE_REMOTE_WEP = 1 << 2,   /* /32 borrowed by a workload on another host: as REMOTE_BLOCK */
	ROUTE_LOCAL_BLOCK = 1 << 3,  /* a block this host owns (its unused addresses are blackholed) */
	ROUTE_HOST = 1 << 4,         /* an address of a host (this one or another) */
	ROUTE_IN_POOL = 1 << 5,      /* inside an enabled IP pool: for operators (margayctl routes,
				      * bpftool), as DESIGN.md lays the map out; no program reads it */
	ROUTE_LOCAL_HOST = 1 << 6,   /* an address of this host (beside ROUTE_HOST) */
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
	__u32 ingress_program; /* compiled ingress policy in the policy map; 0 = none selects it: allow */
	__u32 egress_program;  /* compiled egress policy; 0 = allow */
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

/*
 * Policy. The agent compiles, for each local workload and direction, the ordered rules of the
 * policies that select it into a program: an LPM table keyed by the peer's identity, the protocol
 * and the destination port. A peer's identity comes from the policy_ips LPM map: the set of rule
 * peer matches (CIDRs, selectors) its address satisfies. One lookup in each map decides the first
 * packet of a flow, however many rules there are.
 */
enum policy_action : __u8 {
	POLICY_NONE = 0,
	POLICY_ALLOW = 1,
	POLICY_DENY = 2,
	POLICY_SPORT = 3, /* depends on the source port: look up the table named by rule */
};

/* LPM key: program, identity and protocol in full, then the leading bits of the port. */
struct policy_key {
	__u32 prefixlen;
	__u32 program;  /* endpoint's program; or a source-port table, with the high bit set */
	__u32 identity; /* the peer's identity; 0 in a source-port table */
	__u8 protocol;  /* 0 in a source-port table */
	__u8 _pad;
	__be16 port;    /* destination port; ICMP: type << 8 | code; in a source-port table the source port */
};

/*
 * What a policy entry decides. log is the id of a Log rule (an index in rule_hits, < MAX_RULES)
 * that matched the flow before the deciding rule, 24 bits little-endian; 0: none. The first
 * packet of a flow (the one that opens its conntrack entry, or is denied) counts it in rule_hits
 * and sends an EVENT_POLICY_LOG event; it never changes the verdict. In a POLICY_SPORT entry it
 * is unused: the source-port table's entry carries the log of its ports.
 */
struct policy_value {
	__u32 rule;                 /* rule id for the hit counters (0: default deny); POLICY_SPORT: the table */
	enum policy_action action;
	__u8 log[3];                /* Log rule id, little-endian; 0: none */
};

/* Conntrack. */
enum ct_state : __u8 {
	CT_NONE = 0,
	CT_TCP_SYN_SENT = 1,    /* SYN from the initiator */
	CT_TCP_SYN_ACKED = 2,   /* SYN-ACK from the responder */
	CT_TCP_ESTABLISHED = 3,
	CT_TCP_FIN_WAIT = 4,    /* one side sent FIN */
	CT_TCP_CLOSED = 5,      /* both sent FIN, or a RST */
	CT_UDP = 6,
	CT_ICMP = 7,
	CT_OTHER = 8,
};

/* Conntrack timeouts in seconds; 0 = the built-in default. */
struct ct_timeouts {
	__u32 tcp_syn;         /* until the handshake completes (60) */
	__u32 tcp_established; /* idle established TCP (6 hours) */
	__u32 tcp_fin;         /* after one side's FIN (30) */
	__u32 tcp_closed;      /* after both FINs or a RST (10) */
	__u32 udp;             /* (60) */
	__u32 icmp;            /* (30) */
	__u32 other;           /* any other protocol (60) */
};

/*
 * A flow in either direction: the lower (address, port) pair first. An ICMP echo request carries
 * its identifier as the source port, its reply as the destination port.
 */
struct ct_key {
	__be32 addr_a;
	__be32 addr_b;
	__be16 port_a;
	__be16 port_b;
	__u8 protocol;
	__u8 _pad[3];
};

enum ct_verdict : __u8 {
	CT_VERDICT_NONE = 0,
	CT_VERDICT_ALLOW = 1,
	CT_VERDICT_DENY_EGRESS = 2,  /* re-checked after a policy change: the sender's egress denies it */
	CT_VERDICT_DENY_INGRESS = 3, /* ... the receiver's ingress denies it */
};

/*
 * The route of one of a flow's addresses, as its conntrack entry keeps it so that the packets of
 * an established flow need no walk of the routes trie (nor, to a local workload, a lookup of its
 * endpoint): what the routes map answered, valid while the entry's route_generation is config's.
 * The agent bumps that on every change of the routes or endpoints maps.
 */
enum ct_route_known : __u8 {
	CT_ROUTE_KNOWN = 1 << 0, /* looked up: flags 0 means the routes map had no route */
	CT_ROUTE_MAC = 1 << 1,   /* mac holds the local workload's MAC (a LOCAL_WEP route's endpoint) */
};

struct ct_route {
	__u32 ifindex;
	__be32 next_hop;
	__u8 flags; /* enum route_flags */
	enum ct_route_known known;
	__u8 mac[6];
};

struct ct_value {
	__u64 created;      /* bpf_ktime_get_coarse_ns (CLOCK_MONOTONIC, at tick resolution) of the first packet */
	__u64 last_seen;    /* of the latest packet */
	__u64 packets[2];   /* [0] initiator to responder, [1] the replies */
	__u64 bytes[2];
	__u32 generation;   /* the policy generation the verdict was taken under */
	__u32 rule_egress;  /* rule of the initiator's egress policy that decided it (0: none) */
	__u32 rule_ingress; /* rule of the responder's ingress policy that decided it */
	__be16 policy_port; /* the port policy matched: destination port, or ICMP type << 8 | code */
	enum ct_state state;
	enum ct_verdict verdict;
	__u8 initiator_is_a; /* the initiator is (addr_a, port_a) */
	__u8 fin_seen;       /* bit 0: the initiator sent FIN, bit 1: the responder did */
	__u8 kernel_nat;     /* the kernel's conntrack translates this flow: eBPF never forwards it past the kernel */
	__u8 _pad[1];
	__u32 route_generation; /* config's route_generation when route was filled */
	struct ct_route route[2]; /* [0] of addr_a, [1] of addr_b */
};

enum config_flags {
	CONFIG_XDP_PREFILTER = 1 << 0, /* xdp_from_net runs on the uplink: from_net need not repeat its checks */
	CONFIG_NF_POLICY = 1 << 1,     /* nf_policy runs at netfilter's forward and local-in hooks: from_wep leaves
					* the policy of what it hands to the kernel to it, after the kernel's NAT */
};

/* Global settings, one entry at index 0, written by the agent. */
struct config_value {
	__u32 policy_generation; /* bumped on every policy change: flows are re-checked */
	struct ct_timeouts ct_timeouts;
	enum config_flags flags;
	__u32 route_generation; /* bumped on every change of the routes or endpoints maps: routes kept in conntrack expire */
};

/* Failsafe ports: traffic between a workload and a host on these is never cut by policy. */
enum failsafe_flags : __u8 {
	FAILSAFE_INBOUND = 1 << 0,  /* to a host on this port: SSH, BGP, etcd, DHCP server */
	FAILSAFE_OUTBOUND = 1 << 1, /* from a host to this port: DNS, DHCP, etcd, BGP */
};

struct failsafe_key {
	__u8 protocol;
	__u8 _pad;
	__u16 port; /* host byte order */
};

/* Fragments after the first carry no ports: the first one leaves them here. */
struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 protocol;
	__u8 _pad;
};

struct frag_value {
	__be16 sport;
	__be16 dport;
};

/*
 * Events for margayctl monitor, sent through the events ring buffer. Every DROP_* reason (all of
 * them are numbered from REASON_DROP_MALFORMED on) makes a drop event; any other packet makes a
 * trace event while MONITOR_TRACE is set. A Log rule that matched a flow's first packet (a policy
 * value's log) makes a policy log event, beside the packet's own drop or trace event.
 */
enum event_kind : __u8 {
	EVENT_DROP = 1,
	EVENT_TRACE = 2,
	EVENT_POLICY_LOG = 3, /* rule is the Log rule; reason is REASON_UNSPEC: the verdict is not the log's */
};

/* Which parts of an event the packet had in its linear data. */
enum event_flags : __u8 {
	EVENT_F_IPV4 = 1 << 0,  /* an IPv4 header: saddr, daddr and protocol are its */
	EVENT_F_PORTS = 1 << 1, /* TCP, UDP, SCTP or UDP-Lite ports: sport and dport */
};

struct event {
	__u64 timestamp; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u32 ifindex;   /* the interface the program ran on */
	enum hook hook;
	enum reason reason;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 len; /* the whole packet, as counted */
	__u8 protocol;
	enum event_kind kind;
	enum event_flags flags;
	__u8 _pad[1];
	__u32 rule; /* EVENT_POLICY_LOG: the Log rule's id (rule_hits); 0 in other events */
};

/* The rate limit bucket of each kind in event_state's tat. */
enum event_bucket {
	EVENT_BUCKET_DROP = 0,
	EVENT_BUCKET_TRACE = 1,
	EVENT_BUCKET_POLICY_LOG = 2,
	EVENT_BUCKETS = 3,
};

/*
 * Per-CPU state of the events: a rate limit per kind (GCRA: the theoretical arrival time of the
 * next event) and what was not sent.
 */
struct event_state {
	__u64 tat[EVENT_BUCKETS]; /* by enum event_bucket: drop, trace and policy log events */
	__u64 lost_rate; /* events over the rate limit */
	__u64 lost_full; /* events the ring buffer had no room for */
};

/* Settings of margayctl monitor, one entry at index 0; the agent never writes them. */
enum monitor_flags {
	MONITOR_TRACE = 1 << 0, /* send a trace event for every packet that is not dropped */
};

struct monitor_value {
	enum monitor_flags flags;
};

#endif /* MARGAY_TYPES_H */
