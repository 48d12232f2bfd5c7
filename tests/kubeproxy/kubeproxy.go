package kubeproxy

import (
	"fmt"
	"net/netip"
	"strings"
)

// Service is one Service with one endpoint, as kube-proxy programs it on one node.
type Service struct {
	Name      string // chain suffix, e.g. "WEB-TCP"
	ClusterIP netip.Addr
	Proto     string // tcp or udp
	Port      int
	NodePort  int            // 0: none
	Local     bool           // externalTrafficPolicy: Local
	Backend   netip.AddrPort // the endpoint
	OnNode    bool           // the endpoint runs on the node the rules are for
}

// Rules is the iptables-restore input of the nat and filter tables kube-proxy's iptables mode writes for
// svcs on one node, with clusterCIDR the pod network (one endpoint per Service, so no statistic
// match).
func Rules(clusterCIDR string, svcs []Service) string {
	var b strings.Builder
	b.WriteString("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n")
	for _, s := range svcs {
		fmt.Fprintf(&b, ":KUBE-SVC-%[1]s - [0:0]\n:KUBE-SEP-%[1]s - [0:0]\n", s.Name)
		if s.NodePort != 0 {
			fmt.Fprintf(&b, ":KUBE-EXT-%[1]s - [0:0]\n:KUBE-SVL-%[1]s - [0:0]\n", s.Name)
		}
	}
	b.WriteString(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
`)
	for _, s := range svcs {
		c := "default/" + strings.ToLower(s.Name)
		fmt.Fprintf(&b, "-A KUBE-SERVICES -d %s/32 -p %s -m comment --comment \"%s cluster IP\" -m %s --dport %d -j KUBE-SVC-%s\n",
			s.ClusterIP, s.Proto, c, s.Proto, s.Port, s.Name)
		fmt.Fprintf(&b, "-A KUBE-SVC-%s ! -s %s -d %s/32 -p %s -m %s --dport %d -j KUBE-MARK-MASQ\n",
			s.Name, clusterCIDR, s.ClusterIP, s.Proto, s.Proto, s.Port)
		fmt.Fprintf(&b, "-A KUBE-SVC-%[1]s -m comment --comment \"%[2]s -> %[3]s\" -j KUBE-SEP-%[1]s\n", s.Name, c, s.Backend)
		fmt.Fprintf(&b, "-A KUBE-SEP-%s -s %s/32 -j KUBE-MARK-MASQ\n", s.Name, s.Backend.Addr())
		fmt.Fprintf(&b, "-A KUBE-SEP-%s -p %s -m %s -j DNAT --to-destination %s\n", s.Name, s.Proto, s.Proto, s.Backend)
		if s.NodePort == 0 {
			continue
		}
		fmt.Fprintf(&b, "-A KUBE-NODEPORTS -p %s -m comment --comment \"%s\" -m %s --dport %d -j KUBE-EXT-%s\n",
			s.Proto, c, s.Proto, s.NodePort, s.Name)
		if !s.Local {
			fmt.Fprintf(&b, "-A KUBE-EXT-%[1]s -m comment --comment \"masquerade traffic for %[2]s external destinations\" -j KUBE-MARK-MASQ\n-A KUBE-EXT-%[1]s -j KUBE-SVC-%[1]s\n", s.Name, c)
			continue
		}
		// externalTrafficPolicy: Local: pods and the node itself go cluster-wide, the outside only
		// to this node's endpoints, without SNAT.
		fmt.Fprintf(&b, "-A KUBE-EXT-%[1]s -s %[2]s -j KUBE-SVC-%[1]s\n", s.Name, clusterCIDR)
		fmt.Fprintf(&b, "-A KUBE-EXT-%[1]s -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ\n-A KUBE-EXT-%[1]s -m addrtype --src-type LOCAL -j KUBE-SVC-%[1]s\n", s.Name)
		fmt.Fprintf(&b, "-A KUBE-EXT-%[1]s -j KUBE-SVL-%[1]s\n", s.Name)
		if s.OnNode { // else the chain stays empty, and kube-proxy's filter rules drop the packet
			fmt.Fprintf(&b, "-A KUBE-SVL-%[1]s -j KUBE-SEP-%[1]s\n", s.Name)
		}
	}
	b.WriteString("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n")
	// The filter table's KUBE-FORWARD: what conntrack finds INVALID is dropped (a TCP reply
	// whose request the kernel never saw, say), and forwarding is allowed to marked and
	// established flows.
	b.WriteString(`*filter
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
`)
	return b.String()
}
