package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// The agent registers its node and attaches the uplink, leaves forwarding in place when it
// stops, and --cleanup removes everything.
func TestAgentLifecycle(t *testing.T) {
	etcd := datastoretest.Start(t)
	host := netns.New(t, "mgyag-")
	peer := netns.New(t, "mgyagp-")
	netns.Veth(t, host, "ens32", peer, "ens32")
	host.AddAddr(t, "ens32", "198.18.0.100/24")
	root := netns.BPFFS(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ifindex := host.Link(t, "ens32").Attrs().Index

	ingress := func() []link.AttachedProgram {
		var res *link.QueryResult
		if err := host.Do(func() (err error) {
			res, err = link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return res.Programs
	}

	o := options{node: "vm100", root: root, uplink: "ens32", xdp: "on", tcMode: "auto", interval: time.Second,
		defaultPool: "198.19.0.0/16", ds: datastore.Config{Endpoints: etcd.Endpoints()}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- host.Do(func() error { return run(ctx, o, log) }) }()
	pin := filepath.Join(root, "links", "ens32_from_net")
	poll.Until(t, "agent attached the uplink", 20*time.Second, func() error {
		_, err := os.Stat(pin)
		if err != nil {
			select {
			case err := <-done:
				t.Fatalf("agent exited early: %v", err)
			default:
			}
		}
		return err
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v", err)
	}
	if progs := ingress(); len(progs) != 1 {
		t.Fatalf("after the agent stopped, the uplink runs %d programs, want from_net still attached", len(progs))
	}
	// Its block's blackhole stays too; a route of another protocol is no business of --cleanup.
	margayRoutes := func() string { return host.MustRun(t, "ip", "route", "show", "proto", "77") }
	if r := margayRoutes(); !strings.Contains(r, "blackhole 198.19.") {
		t.Fatalf("after the agent stopped, Margay's routes are %q, want its block's blackhole still there", r)
	}
	host.MustRun(t, "ip", "route", "add", "198.18.5.0/24", "dev", "ens32", "proto", "static")

	if err := host.Do(func() error { return run(context.Background(), options{root: root, cleanup: true}, log) }); err != nil {
		t.Fatal(err)
	}
	if progs := ingress(); len(progs) != 0 {
		t.Errorf("after --cleanup, the uplink runs %d programs", len(progs))
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins left after --cleanup: %v", err)
	}
	if r := margayRoutes(); r != "" {
		t.Errorf("routes left after --cleanup: %q", r)
	}
	if r := host.MustRun(t, "ip", "route", "show", "proto", "static"); !strings.Contains(r, "198.18.5.0/24") {
		t.Errorf("--cleanup removed another protocol's route: %q", r)
	}
}

func TestAgentRejectsBadConfig(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		o    options
		want string
	}{
		{options{node: "n", tcMode: "bogus"}, "tc-mode"},
		{options{node: "n", tcMode: "auto", defaultPool: "198.19.0.1/16"}, "default-pool"},
		{options{node: "n", tcMode: "auto", bgpListen: []string{"not-an-ip"}}, "bgp-listen-address"},
		{options{node: "n", tcMode: "auto", ds: datastore.Config{Endpoints: []string{"not a url"}}}, "endpoint"},
	} {
		err := run(context.Background(), tc.o, log)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%+v) = %v, want an error about %s", tc.o, err, tc.want)
		}
	}
	if _, err := newLogger("loud"); err == nil {
		t.Error("newLogger accepted level loud")
	}
}
