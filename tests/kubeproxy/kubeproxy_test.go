package kubeproxy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/margaynet/margay/tests/netns"
)

// The rules load into a real iptables (in a namespace of their own, with nothing else there) and
// hold what kube-proxy writes for each kind of Service.
func TestRules(t *testing.T) {
	svcs := []Service{
		{Name: "A-TCP", ClusterIP: netip.MustParseAddr("198.18.96.10"), Proto: "tcp", Port: 80, NodePort: 30080,
			Backend: netip.MustParseAddrPort("198.19.0.65:8080")},
		{Name: "B-UDP", ClusterIP: netip.MustParseAddr("198.18.96.11"), Proto: "udp", Port: 53, NodePort: 30053, Local: true,
			Backend: netip.MustParseAddrPort("198.19.0.2:5353"), OnNode: true},
		{Name: "C-TCP", ClusterIP: netip.MustParseAddr("198.18.96.12"), Proto: "tcp", Port: 80, NodePort: 30081, Local: true,
			Backend: netip.MustParseAddrPort("198.19.0.66:80")},
	}
	rules := Rules("198.19.0.0/16", svcs)
	for _, want := range []string{
		"-A KUBE-SEP-A-TCP -p tcp -m tcp -j DNAT --to-destination 198.19.0.65:8080",
		"-A KUBE-SEP-A-TCP -s 198.19.0.65/32 -j KUBE-MARK-MASQ", // hairpin
		"-A KUBE-SVC-A-TCP ! -s 198.19.0.0/16 -d 198.18.96.10/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ",
		"-A KUBE-EXT-A-TCP -m comment --comment \"masquerade traffic for default/a-tcp external destinations\" -j KUBE-MARK-MASQ",
		"-A KUBE-SVL-B-UDP -j KUBE-SEP-B-UDP",
		"-A KUBE-EXT-C-TCP -j KUBE-SVL-C-TCP",
		"-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
	} {
		if !strings.Contains(rules, want) {
			t.Errorf("rules lack %q:\n%s", want, rules)
		}
	}
	if strings.Contains(rules, "-A KUBE-SVL-C-TCP") {
		t.Errorf("a Local Service without an endpoint on the node has rules in KUBE-SVL:\n%s", rules)
	}
	// The kernel takes them, in a namespace of the test's own.
	ns := netns.New(t, "mgykp-")
	ns.IPTablesRestore(t, rules)
	if out := ns.MustRun(t, "iptables-save", "-t", "nat"); !strings.Contains(out, "--to-destination 198.19.0.65:8080") {
		t.Errorf("iptables-save after the restore:\n%s", out)
	}
}
