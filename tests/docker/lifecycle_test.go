package docker_test

import (
	"net/netip"
	"strings"
	"testing"
)

// testIPAndSubnet: a network with --subnet inside the pool gives addresses inside it; --ip gives
// that address, reachable from another host, also when it lies in another host's block (it is
// borrowed); a taken --ip and a subnet outside every pool are refused with the plugin's message,
// and nothing is left of them.
func testIPAndSubnet(t *testing.T, e *env) {
	h0, h1 := e.hosts[0], e.hosts[1]
	subnet := netip.MustParsePrefix("198.19.77.0/24")
	createNetwork(t, e.hosts[:2], "", "nsub", "--subnet", subnet.String())
	fixed := netip.MustParseAddr("198.19.77.7")
	borrowed := netip.MustParseAddr("198.19.77.9") // in vm100's block, run on vm101
	a := h0.run(t, "s-a", "nsub", "--ip", fixed.String())
	b := h1.run(t, "s-b", "nsub")
	c := h1.run(t, "s-c", "nsub", "--ip", borrowed.String())
	e.assertState(t, a, b, c)
	if ip := a.ip(t); ip != fixed {
		t.Errorf("%s has %s, want --ip %s", a, ip, fixed)
	}
	if ip := c.ip(t); ip != borrowed {
		t.Errorf("%s has %s, want --ip %s", c, ip, borrowed)
	}
	if ip := b.ip(t); !subnet.Contains(ip) {
		t.Errorf("%s has %s, outside the network's --subnet %s", b, ip, subnet)
	}
	reach{a: {b.ip(t), borrowed}, b: {fixed}, c: {fixed}}.mustReach(t)

	// A taken address.
	_, err := h1.tryRun(t, "", "s-taken", "nsub", "--ip", fixed.String())
	if err == nil || !strings.Contains(err.Error(), "address 198.19.77.7 is in use") {
		t.Errorf("docker run --ip of a taken address: %v, want the plugin's \"address 198.19.77.7 is in use\"", err)
	}
	e.assertState(t, a, b, c)

	// A subnet outside every pool (198.18.64.0/24: the lab's range, not its pool).
	for _, h := range e.hosts[:2] {
		t.Cleanup(func() { _, _ = h.docker(t, "network", "rm", "nout") })
		_, err := h.docker(t, "network", "create", "--driver", "margay", "--ipam-driver", "margay-ipam", "--subnet", "198.18.64.0/24", "nout")
		if err == nil || !strings.Contains(err.Error(), "subnet 198.18.64.0/24 is not inside a Margay IP pool (pools: 198.19.0.0/16)") {
			t.Errorf("%s: docker network create --subnet outside the pools: %v, want the plugin's message", h.Name, err)
		}
		if out := h.mustDocker(t, "network", "ls", "--format", "{{.Name}}"); strings.Contains(out, "nout") {
			t.Errorf("%s: the refused network exists: %s", h.Name, out)
		}
	}
	e.assertState(t, a, b, c)

	for _, x := range []ctr{a, b, c} {
		x.h.mustDocker(t, "rm", "-f", x.name)
	}
	e.assertState(t)
	for _, h := range e.hosts[:2] {
		h.mustDocker(t, "network", "rm", "nsub")
	}
	e.assertState(t)
}

// testCleanup: every way a container goes leaves nothing of it, and a stopped container started
// again, or restarted, is reachable again: docker rm -f, docker run --rm, docker stop and start,
// docker restart, docker network rm.
func testCleanup(t *testing.T, e *env) {
	h0, h1 := e.hosts[0], e.hosts[1]
	createNetwork(t, e.hosts[:2], "", "ncl")
	p := h1.run(t, "cl-peer", "ncl")
	c1 := h0.run(t, "cl-1", "ncl")
	e.assertState(t, p, c1)
	reach{p: {c1.ip(t)}, c1: {p.ip(t)}}.mustReach(t)

	// docker rm -f of a running container.
	h0.mustDocker(t, "rm", "-f", c1.name)
	e.assertState(t, p)

	// docker run --rm of a container that exits by itself.
	out := h0.mustDocker(t, "run", "--rm", "--net", "ncl", image, "sh", "-c", "ip -4 -o addr show cali0; ip route")
	if !strings.Contains(out, "cali0") || !strings.Contains(out, "/32") || !strings.Contains(out, "default via 169.254.1.1 dev cali0") {
		t.Errorf("a container's interface and routes:\n%s", out)
	}
	e.assertState(t, p)

	// docker stop, then start: a new endpoint, reachable again.
	c2 := h0.run(t, "cl-2", "ncl")
	reach{p: {c2.ip(t)}}.mustReach(t)
	h0.mustDocker(t, "stop", c2.name)
	e.assertState(t, p)
	h0.mustDocker(t, "start", c2.name)
	e.assertState(t, p, c2)
	reach{p: {c2.ip(t)}, c2: {p.ip(t)}}.mustReach(t)

	// docker restart.
	h0.mustDocker(t, "restart", c2.name)
	e.assertState(t, p, c2)
	reach{p: {c2.ip(t)}, c2: {p.ip(t)}}.mustReach(t)

	// docker rm -f of both, then docker network rm.
	h0.mustDocker(t, "rm", "-f", c2.name)
	h1.mustDocker(t, "rm", "-f", p.name)
	e.assertState(t)
	for _, h := range e.hosts[:2] {
		h.mustDocker(t, "network", "rm", "ncl")
	}
	e.assertState(t)
}
