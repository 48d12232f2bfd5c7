package cluster_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/poll"
)

// Short timers, so that losing a peer shows within seconds.
var fastBGP = []string{"--bgp", "--bgp-hold-time", "3s", "--bgp-keepalive", "1s", "--bgp-connect-retry", "1s"}

func routed(set *maps.Set, p netip.Prefix, nh netip.Addr) error {
	rt, err := set.Routes.Get(p)
	if err != nil || rt.NextHop != nh {
		return fmt.Errorf("route to %v: %+v, %v", p, rt, err)
	}
	return nil
}

// An agent restart (SIGTERM, start again) does not take its block out of the others' tables:
// graceful restart keeps it until the restarted speaker sends it again. (TestGracefulRestartNoLoss
// counts the packets.)
func TestBGPGracefulRestart(t *testing.T) {
	c := cluster.New(t)
	// The listen address given explicitly, as operators with several addresses do. The restart
	// time is the hold time, which must cover the restart.
	flags := grBGP
	h1 := c.AddHost("vm100", "198.18.0.100/24", slices.Concat(flags, []string{"--bgp-listen-address", "198.18.0.100"})...)
	h2 := c.AddHost("vm101", "198.18.0.101/24", slices.Concat(flags, []string{"--bgp-listen-address", "198.18.0.101"})...)
	set := h1.Maps(t)
	block := blockOf(t, c, h2.Name)
	poll.Until(t, "vm100 learned vm101's block", 30*time.Second, func() error { return routed(set, block, h2.Addr.Addr()) })

	h2.Stop()
	// Without graceful restart the route would be gone at once.
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err := routed(set, block, h2.Addr.Addr()); err != nil {
			t.Fatalf("while vm101 restarts: %v", err)
		}
	}
	h2.Start()
	poll.Until(t, "session back", 30*time.Second, func() error {
		code, body, err := h1.Get("/bgp/peers")
		if err != nil || code != 200 || !strings.Contains(body, `"state":"Established"`) {
			return fmt.Errorf("%d %v %s", code, err, body)
		}
		return routed(set, block, h2.Addr.Addr())
	})
}

// A peer that falls silent (its link goes down: no notification, no TCP reset) is declared down
// after the hold time, and its routes are withdrawn once the restart time has passed too; they
// come back when the peer does.
func TestBGPPeerLoss(t *testing.T) {
	c := cluster.New(t)
	flags := slices.Concat(fastBGP, []string{"--bgp-restart-time", "2s"})
	h1 := c.AddHost("vm100", "198.18.0.100/24", flags...)
	h2 := c.AddHost("vm101", "198.18.0.101/24", flags...)
	set := h1.Maps(t)
	block := blockOf(t, c, h2.Name)
	poll.Until(t, "vm100 learned vm101's block", 30*time.Second, func() error { return routed(set, block, h2.Addr.Addr()) })

	h2.NS.MustRun(t, "ip", "link", "set", "ens32", "down")
	lost := time.Now()
	poll.Until(t, "vm101's block withdrawn", 30*time.Second, func() error {
		if _, err := set.Routes.Get(block); err == nil {
			return fmt.Errorf("%v still routed", block)
		}
		out, err := h1.NS.Run("ip", "-4", "route", "show", block.String())
		if err != nil || out != "" {
			return fmt.Errorf("kernel route %q, %v", out, err)
		}
		return nil
	})
	t.Logf("withdrawn %s after the peer fell silent (hold 3s, restart time 2s)", time.Since(lost).Round(100*time.Millisecond))

	// The peer returns: the session comes back and with it the block, in the map and the kernel.
	h2.NS.MustRun(t, "ip", "link", "set", "ens32", "up")
	back := time.Now()
	poll.Until(t, "vm101's block back", 60*time.Second, func() error {
		if err := routed(set, block, h2.Addr.Addr()); err != nil {
			return err
		}
		out, err := h1.NS.Run("ip", "-4", "route", "show", block.String())
		if err != nil || !strings.Contains(out, "via "+h2.Addr.Addr().String()) {
			return fmt.Errorf("kernel route %q, %v", out, err)
		}
		return nil
	})
	t.Logf("routed again %s after the peer's link came back", time.Since(back).Round(100*time.Millisecond))
}
