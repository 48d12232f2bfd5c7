package agent

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
	"github.com/margaynet/margay/tests/benchrules"
)

// BenchmarkPolicyCompile measures what the agent does with the policies in a pass (policyEngine
// fill: the policy set parsed, every selector matched against every workload, the programs
// compiled, the map entries spelled out) for 1,000 workloads, 100 of them local, and 100 to
// 1,000 policies (benchrules.ScalePolicies), from a fresh compiler as after an agent start.
func BenchmarkPolicyCompile(b *testing.B) {
	var all, local []policy.Endpoint
	for i := range 1000 {
		node := fmt.Sprintf("vm%d", 100+i%10)
		w := datastore.Workload{Version: 1, ID: fmt.Sprintf("w%d", i), Name: fmt.Sprintf("w%d", i), Node: node,
			IfName: fmt.Sprintf("cali%011x", i), Labels: benchrules.ScaleLabels(i),
			IPv4: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i / 250), byte(i%250 + 1)}), 32)}}
		ep, ok := policy.EndpointOf(w)
		if !ok {
			b.Fatal("no endpoint")
		}
		all = append(all, ep)
		if node == "vm100" {
			local = append(local, ep)
		}
	}
	for _, n := range []int{100, 300, 1000} {
		b.Run(fmt.Sprintf("policies=%d", n), func(b *testing.B) {
			ps := benchrules.ScalePolicies(n)
			start := time.Now()
			for b.Loop() {
				c := policy.NewCompiler(1 << 16)
				set, err := policy.NewSet(ps)
				if err != nil {
					b.Fatal(err)
				}
				res, err := c.Compile(set, all, local)
				if err != nil {
					b.Fatal(err)
				}
				if len(c.Entries(res.Programs, res.Identities)) == 0 {
					b.Fatal("no entries")
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/compile")
		})
	}
}
