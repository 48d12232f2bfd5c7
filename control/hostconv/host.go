// Package hostconv holds the conventions every part of a Margay host shares — the agent's
// reconciler, the CNI plugin's workload set-up, the datastore's validation, the policy compiler —
// so that each is written once: the host-side veth's name, MAC and settings, how sysctls are read
// and written, the protocol of the kernel routes Margay owns, the key that names a workload
// across the cluster, what the agent's HTTP API answers to margayctl, the names of IP protocols
// (policies, conntrack entries and events write them alike), and the values the BPF
// programs share with Go (conntrack's default timeouts, the events' rate limit), which reach the
// C as generated constants.
package hostconv

import (
	"net"
	"time"
)

// VethMAC is the MAC of every host-side cali* veth, as in Calico: the workload's gateway
// (169.254.1.1) resolves to it. The BPF programs write it as the source of what they deliver
// to a workload (HOST_VETH_MAC, generated into bpf/include/hostconv.h).
var VethMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// RouteProtocol marks the kernel routes Margay owns (`proto margay` once named in
// /etc/iproute2/rt_protos.d); routes of any other protocol are never touched.
const RouteProtocol = 77

// VethSysctls are the settings of a host-side veth under /proc/sys/net, as Calico sets them:
// proxy ARP answers the workload's ARP for 169.254.1.1 (should its permanent entry be flushed)
// without the default 0.8 s delay, and the interface forwards.
func VethSysctls(name string) [][2]string {
	return [][2]string{
		{"ipv4/conf/" + name + "/proxy_arp", "1"},
		{"ipv4/neigh/" + name + "/proxy_delay", "0"},
		{"ipv4/conf/" + name + "/forwarding", "1"},
	}
}

// IsVethName says whether name is a host-side veth's: cali + 11 lower-case hex digits (what
// `^cali[0-9a-f]{11}$` matches, without a regexp: the reconciler checks it often).
func IsVethName(name string) bool {
	if len(name) != 15 || name[:4] != "cali" {
		return false
	}
	for i := 4; i < len(name); i++ {
		if c := name[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// WorkloadKey names a workload across the cluster: "<node>/<id>", as the datastore keys it
// under workloads/.
func WorkloadKey(node, id string) string { return node + "/" + id }

// PeerStatus is one BGP peer as the agent's /bgp/peers serves it and `margayctl node status`
// prints it.
type PeerStatus struct {
	Address string    `json:"address"`
	Type    string    `json:"type"`
	State   string    `json:"state"`
	Since   time.Time `json:"since,omitzero"`
	Info    string    `json:"info,omitempty"`
}
