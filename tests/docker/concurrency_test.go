package docker_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
)

// concurrent is how many docker runs start at once.
const concurrent = 20

// testConcurrency: 20 docker runs at once on one host, then 20 at once spread over three hosts:
// every one succeeds with an address of its own (assertState refuses duplicates), every container
// is reachable from a container on another host, and removing them all at once leaves nothing.
func testConcurrency(t *testing.T, e *env) {
	createNetwork(t, e.hosts, "", "ncc")
	// A prober on vm100 and one on vm101: each probes the containers of the other hosts.
	probers := []ctr{e.hosts[0].run(t, "cc-probe0", "ncc"), e.hosts[1].run(t, "cc-probe1", "ncc")}
	e.assertState(t, probers...)

	for _, tc := range []struct {
		name  string
		hosts []*host
	}{
		{"OneHost", e.hosts[:1]},
		{"ThreeHosts", e.hosts},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ctrs []ctr
			for i := range concurrent {
				h := tc.hosts[i%len(tc.hosts)]
				ctrs = append(ctrs, ctr{h, fmt.Sprintf("cc-%s-%d", h.Name, i)})
			}
			each(t, ctrs, func(c ctr) error {
				_, err := c.h.tryRun(t, "", c.name, "ncc")
				return err
			})
			e.assertState(t, append(ctrs, probers...)...)
			r := reach{}
			for _, c := range ctrs {
				p := probers[0]
				if c.h == p.h {
					p = probers[1]
				}
				r[p] = append(r[p], c.ip(t))
			}
			r.mustReach(t)
			each(t, ctrs, func(c ctr) error {
				_, err := c.h.docker(t, "rm", "-f", c.name)
				return err
			})
			e.assertState(t, probers...)
		})
	}
	for _, p := range probers {
		p.h.mustDocker(t, "rm", "-f", p.name)
	}
	for _, h := range e.hosts {
		h.mustDocker(t, "network", "rm", "ncc")
	}
	e.assertState(t)
}

// each runs fn for every container at once and fails the test with the errors.
func each(t *testing.T, ctrs []ctr, fn func(ctr) error) {
	t.Helper()
	errs := make([]error, len(ctrs))
	var wg sync.WaitGroup
	for i, c := range ctrs {
		wg.Go(func() { errs[i] = fn(c) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}
