package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
)

func margayctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRoot()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestDecodeMaps(t *testing.T) {
	root := netns.BPFFS(t)
	d, err := loader.Load(loader.WithRoot(root))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	set := maps.FromDataplane(d)
	if err := set.Routes.Put(maps.Route{Prefix: netip.MustParsePrefix("198.19.0.64/26"), Flags: maps.RemoteBlock | maps.InPool,
		Ifindex: 1, NextHop: netip.MustParseAddr("198.18.0.2")}); err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("0a:58:c6:13:00:01")
	if err := set.Endpoints.Put(maps.Endpoint{Ifindex: 1, IPv4: netip.MustParseAddr("198.19.0.1"), MAC: mac}); err != nil {
		t.Fatal(err)
	}

	out, err := margayctl(t, "--bpffs-root", root, "routes")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PREFIX", "198.19.0.64/26", "REMOTE_BLOCK|IN_POOL", "lo", "198.18.0.2"} {
		if !strings.Contains(out, want) {
			t.Errorf("routes output lacks %q:\n%s", want, out)
		}
	}

	out, err = margayctl(t, "--bpffs-root", root, "endpoints", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var eps []endpointJSON
	if err := json.Unmarshal([]byte(out), &eps); err != nil || len(eps) != 1 || eps[0].IPv4 != "198.19.0.1" || eps[0].MAC != mac.String() {
		t.Errorf("endpoints -o json = %s (err %v)", out, err)
	}

	out, err = margayctl(t, "--bpffs-root", root, "counters", "-o", "json")
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("counters of an idle dataplane = %q, %v; want []", out, err)
	}

	if _, err := margayctl(t, "--bpffs-root", root, "routes", "-o", "yaml"); err == nil {
		t.Error("-o yaml accepted")
	}
	if _, err := margayctl(t, "--bpffs-root", root+"/nothing", "routes"); err == nil {
		t.Error("routes of a root without pins succeeded")
	}
}

// With etcd stopped, a datastore command fails within its dial timeout (--etcd-dial-timeout,
// MARGAY_ETCD_DIAL_TIMEOUT, or datastore.DefaultCommandTimeout) and names the endpoint.
func TestEtcdStopped(t *testing.T) {
	e := datastoretest.Start(t)
	ep := e.Endpoints()[0]
	e.Close()
	for _, c := range []struct {
		name  string
		args  []string
		env   string
		bound time.Duration
	}{
		{"flag", []string{"--etcd-dial-timeout", "1s"}, "", time.Second},
		{"env", nil, "1500ms", 1500 * time.Millisecond},
		{"default", nil, "", datastore.DefaultCommandTimeout},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("MARGAY_ETCD_DIAL_TIMEOUT", c.env)
			start := time.Now()
			out, err := margayctl(t, append([]string{"--etcd-endpoints", ep, "pool", "list"}, c.args...)...)
			took := time.Since(start)
			t.Logf("failed after %s: %v", took.Round(time.Millisecond), err)
			if err == nil || !strings.Contains(err.Error(), "connect to etcd at "+ep) {
				t.Errorf("pool list with etcd stopped: %v\n%s; want an error naming %s", err, out, ep)
			}
			if took > 2*c.bound {
				t.Errorf("pool list with etcd stopped took %s, want at most twice %s", took, c.bound)
			}
		})
	}
}
