package cluster_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// The whole system: agents in a BGP mesh, workloads connected by the CNI plugin, ping, TCP and UDP
// between every pair carried by the eBPF paths — also with the hosts' FORWARD policy set to DROP.
func TestWorkloadTraffic(t *testing.T) {
	c := cluster.New(t)
	h1 := c.AddHost("vm100", "198.18.0.100/24", "--bgp")
	h2 := c.AddHost("vm101", "198.18.0.101/24", "--bgp")
	wls := []*cluster.Workload{c.AddWorkload(h1, "a"), c.AddWorkload(h1, "b"), c.AddWorkload(h2, "c")}
	sets := map[*cluster.Host]*maps.Set{h1: h1.Maps(t), h2: h2.Maps(t)}
	// Until its agent has programmed a workload, the kernel carries its traffic: wait, so that
	// the counts below see every packet.
	for _, w := range wls {
		w.WaitProgrammed(t)
	}

	ping := func(from, to *cluster.Workload) error {
		out, err := from.NS.Run("ping", "-c", "2", "-i", "0.2", "-w", "10", to.IP.String())
		if err != nil {
			return fmt.Errorf("%s → %s: %v\n%s", from.Name, to.Name, err, out)
		}
		return nil
	}
	forwarded := func() uint64 {
		var n uint64
		for _, set := range sets {
			cs, err := set.Counters.List()
			if err != nil {
				t.Fatal(err)
			}
			for _, ct := range cs {
				if ct.Reason.Forward() {
					n += ct.Packets
				}
			}
		}
		return n
	}
	for _, policy := range []string{"ACCEPT", "DROP"} {
		for _, h := range []*cluster.Host{h1, h2} {
			h.NS.MustRun(t, "iptables", "-P", "FORWARD", policy)
		}
		for _, from := range wls {
			for _, to := range wls {
				if from == to {
					continue
				}
				before := forwarded()
				// The first ping may wait for the agent to program a new workload and BGP to
				// carry the block: retry within a deadline.
				poll.Until(t, fmt.Sprintf("FORWARD %s: ping %s → %s", policy, from.Name, to.Name), 30*time.Second,
					func() error { return ping(from, to) })
				if after := forwarded(); after < before+4 {
					t.Errorf("FORWARD %s: %s → %s: eBPF forwarded %d packets, want at least the 2 requests and 2 replies",
						policy, from.Name, to.Name, after-before)
				}
				before = forwarded()
				netns.TCPEcho(t, from.NS, from.IP, to.NS, to.IP, 64<<10, 15*time.Second)
				netns.UDPEcho(t, from.NS, from.IP, to.NS, to.IP, 1200, 15*time.Second)
				if after := forwarded(); after < before+10 {
					t.Errorf("FORWARD %s: %s → %s: eBPF forwarded %d packets of TCP and UDP", policy, from.Name, to.Name, after-before)
				}
			}
		}
	}
	// The agent, not the plugin, put every workload into its host's endpoints map.
	for _, w := range wls {
		set := sets[w.Host]
		eps, err := set.Endpoints.List()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, ep := range eps {
			found = found || ep.IPv4 == w.IP
		}
		if !found {
			t.Errorf("no endpoint for %s (%v) on %s", w.Name, w.IP, w.Host.Name)
		}
	}
}
