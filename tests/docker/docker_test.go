package docker_test

import (
	"net/netip"
	"strings"
	"testing"
)

// TestDocker runs the cases that share three hosts, one after the other: the walkthrough, --ip
// and --subnet, concurrent runs. Each case leaves the hosts as it found them (assertState checks
// it at its start and after every step), so any one can run alone with -run.
func TestDocker(t *testing.T) {
	t.Parallel()
	runCases(t, newEnv(t, 3), []testCase{
		{"Walkthrough", testWalkthrough},
		{"IPAndSubnet", testIPAndSubnet},
		{"Concurrency", testConcurrency},
	})
}

// TestDockerLifecycle runs the cases of containers, plugin, dockerd and etcd going away and coming
// back, on two hosts of their own (a cluster beside TestDocker's, at the same time).
func TestDockerLifecycle(t *testing.T) {
	t.Parallel()
	runCases(t, newEnv(t, 2), []testCase{
		{"Cleanup", testCleanup},
		{"PluginRestart", testPluginRestart},
		{"DockerdRestart", testDockerdRestart},
		{"BadInput", testBadInput},
	})
}

type testCase struct {
	name string
	fn   func(*testing.T, *env)
}

func runCases(t *testing.T, e *env, cases []testCase) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e.assertState(t)
			tc.fn(t, e)
		})
	}
}

// testWalkthrough is Calico's Docker walkthrough on three hosts, with each docker client: the
// same two networks created on every host, a container of each on every host; containers of a
// network reach each other across hosts by ICMP and TCP, and those of the other network not.
// Removing the containers and then the networks leaves nothing.
func testWalkthrough(t *testing.T, e *env) {
	for _, client := range []string{clientNew, clientOld} {
		t.Run(strings.TrimPrefix(client, "/"), func(t *testing.T) { walkthrough(t, e, client) })
	}
}

func walkthrough(t *testing.T, e *env, client string) {
	nets := []string{"net1", "net2"}
	for _, n := range nets {
		createNetwork(t, e.hosts, client, n)
	}
	members := map[string][]ctr{}
	var all []ctr
	for _, h := range e.hosts {
		for _, n := range nets {
			c := ctr{h, "w-" + n + "-" + h.Name}
			members[n] = append(members[n], c)
			all = append(all, c)
		}
	}
	each(t, all, func(c ctr) error {
		_, err := c.h.tryRun(t, client, c.name, strings.Split(c.name, "-")[1])
		return err
	})
	e.assertState(t, all...)
	ips := map[string][]netip.Addr{}
	for _, n := range nets {
		for _, c := range members[n] {
			ips[n] = append(ips[n], c.ip(t))
		}
	}
	// Each container reaches the others of its network, all on other hosts, and none of the
	// other network's, one of which is on its own host.
	same, other := reach{}, reach{}
	for i, n := range nets {
		for j, c := range members[n] {
			for k, ip := range ips[n] {
				if k != j {
					same[c] = append(same[c], ip)
				}
			}
			other[c] = ips[nets[1-i]]
		}
	}
	same.mustReach(t)
	other.mustNotReach(t)

	each(t, all, func(c ctr) error {
		_, err := c.h.dockerWith(t, client, "rm", "-f", c.name)
		return err
	})
	e.assertState(t)
	for _, h := range e.hosts {
		for _, n := range nets {
			if _, err := h.dockerWith(t, client, "network", "rm", n); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.assertState(t)
}
