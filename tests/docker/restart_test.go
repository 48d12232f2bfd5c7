package docker_test

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/margaynet/margay/tests/poll"
)

// testPluginRestart: margay-docker killed (SIGKILL) on two hosts with containers running; their
// traffic goes on while it is down; started again, it serves a new docker run, and removing the
// old containers leaves nothing: the plugin keeps no state of its own, etcd has it all.
func testPluginRestart(t *testing.T, e *env) {
	h0, h1 := e.hosts[0], e.hosts[1]
	createNetwork(t, e.hosts[:2], "", "npr")
	a := h0.run(t, "pr-a", "npr")
	b := h1.run(t, "pr-b", "npr")
	e.assertState(t, a, b)
	both := reach{a: {b.ip(t)}, b: {a.ip(t)}}
	both.mustReach(t)

	for _, h := range e.hosts[:2] {
		t.Cleanup(func() { h.ensurePlugin(t) })
		h.d.StopPlugin(true)
	}
	// Down: the containers still reach each other at once, and nothing changed.
	if err := both.probeOnce(t); err != nil {
		t.Errorf("with margay-docker down: %v", err)
	}
	e.assertState(t, a, b)

	for _, h := range e.hosts[:2] {
		if err := h.startPlugin(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	c := h0.run(t, "pr-c", "npr")
	e.assertState(t, a, b, c)
	reach{b: {c.ip(t)}, c: {b.ip(t)}}.mustReach(t)
	h0.mustDocker(t, "rm", "-f", a.name)
	h1.mustDocker(t, "rm", "-f", b.name)
	e.assertState(t, c)
	h0.mustDocker(t, "rm", "-f", c.name)
	e.assertState(t)
	for _, h := range e.hosts[:2] {
		h.mustDocker(t, "network", "rm", "npr")
	}
	e.assertState(t)
}

// probeOnce probes once (no waiting) and says which targets did not answer.
func (r reach) probeOnce(t *testing.T) error {
	t.Helper()
	var errs []string
	for c, ips := range r {
		_, no, err := c.probe(t, ips...)
		if err != nil {
			return err
		}
		if len(no) > 0 {
			errs = append(errs, fmt.Sprintf("%s: no answer to %v", c, no))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// testDockerdRestart: a container with --restart=always comes back, reachable, after dockerd is
// stopped (SIGTERM, as systemctl stop does; dockerd stops the containers) and started again; and
// after dockerd is killed (SIGKILL) with containers running and started again, its clean-up of
// the old sandboxes leaves nothing of them.
func testDockerdRestart(t *testing.T, e *env) {
	h0, h1 := e.hosts[0], e.hosts[1]
	t.Cleanup(func() { h0.ensureDockerd(t) })
	createNetwork(t, e.hosts[:2], "", "ndr")
	p := h1.run(t, "dr-peer", "ndr")
	r := h0.run(t, "dr-always", "ndr", "--restart=always")
	e.assertState(t, p, r)
	reach{p: {r.ip(t)}}.mustReach(t)

	// Stopped: dockerd stops the container, and its endpoint goes.
	h0.d.StopDockerd()
	e.assertState(t, p)
	if err := h0.d.StartDockerd(t.Context()); err != nil {
		t.Fatal(err)
	}
	h0.waitRunning(t, r.name)
	e.assertState(t, p, r)
	reach{p: {r.ip(t)}, r: {p.ip(t)}}.mustReach(t)

	// Killed with two containers running, one without a restart policy.
	k := h0.run(t, "dr-once", "ndr")
	e.assertState(t, p, r, k)
	old := []netip.Addr{r.ip(t), k.ip(t)}
	reach{p: old}.mustReach(t)
	n := readPid(t, filepath.Join(h0.d.Dir, "dockerd.pid"))
	// dockerd's containerd dies with it (its parent-death signal). A new dockerd takes over a
	// containerd whose pid still exists, a zombie too, and then waits for it in vain: wait until
	// the init process has reaped it, as it does at once on a host (here, within seconds).
	containerd := readPid(t, filepath.Join(h0.d.Dir, "x", "containerd", "containerd.pid"))
	if err := syscall.Kill(n, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "dockerd killed and its containerd gone", 30*time.Second, func() error {
		if pidAlive(filepath.Join(h0.d.Dir, "dockerd.pid")) {
			return fmt.Errorf("dockerd (%d) alive", n)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", containerd)); err == nil {
			return fmt.Errorf("containerd (%d) not reaped yet", containerd)
		}
		return nil
	})
	if err := h0.d.StartDockerd(t.Context()); err != nil {
		t.Fatal(err)
	}
	h0.waitRunning(t, r.name)
	e.assertState(t, p, r)
	reach{p: {r.ip(t)}, r: {p.ip(t)}}.mustReach(t)

	h0.mustDocker(t, "rm", "-f", r.name, k.name)
	h1.mustDocker(t, "rm", "-f", p.name)
	e.assertState(t)
	for _, h := range e.hosts[:2] {
		h.mustDocker(t, "network", "rm", "ndr")
	}
	e.assertState(t)
}

// readPid reads a pid file.
func readPid(t *testing.T, file string) int {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return n
}

// waitRunning waits until docker ps lists exactly the names (a restart policy brings them back
// after dockerd's start).
func (h *host) waitRunning(t *testing.T, names ...string) {
	t.Helper()
	slices.Sort(names)
	poll.UntilEvery(t, fmt.Sprintf("%s runs %v", h.Name, names), 200*time.Millisecond, 60*time.Second, func() error {
		if ps := h.running(t); !slices.Equal(ps, names) {
			return fmt.Errorf("running: %v", ps)
		}
		return nil
	})
}
