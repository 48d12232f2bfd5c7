package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/tests/netns"
)

const node = "node-1"

// testConf returns a network config reaching etcd at endpoint; set adds or replaces fields (nil
// deletes).
func testConf(endpoint, version string, set map[string]any) []byte {
	c := map[string]any{
		"cniVersion": version,
		"name":       "margay",
		"type":       "margay-cni",
		"nodeName":   node,
		"logLevel":   "debug",
		"datastore":  map[string]any{"endpoints": []string{endpoint}, "dialTimeout": "2s"},
	}
	for k, v := range set {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	return b
}

// world is one test's node: an embedded etcd with a pool, and a host namespace where the
// commands run in this process (their etcd client's goroutines stay in the test's namespace, so
// the config names etcd's own address).
type world struct {
	ds   *datastore.Client
	host *netns.NS
}

func newWorld(t testing.TB, pool string) *world {
	t.Helper()
	e := datastoretest.Start(t)
	ds := datastoretest.Connect(t, datastore.Config{Endpoints: e.Endpoints()})
	datastoretest.RegisterNodes(t, ds, node)
	p := datastore.Pool{Version: datastore.CurrentVersion, Name: "pool-0", CIDR: netip.MustParsePrefix(pool), BlockSize: 26}
	if _, err := ds.Pools().Create(t.Context(), p.Name, p); err != nil {
		t.Fatal(err)
	}
	host := netns.New(t, "cnh")
	if err := host.Sysctl("ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	return &world{ds: ds, host: host}
}

func (w *world) conf(version string, set map[string]any) []byte {
	return testConf(w.ds.Raw().Endpoints()[0], version, set)
}

func (w *world) mustDel(t *testing.T, containerID, nsPath, args string) {
	t.Helper()
	if err := w.host.Do(func() error {
		_, err := (&Plugin{}).Run(t.Context(), "DEL", &skel.CmdArgs{ContainerID: containerID, Netns: nsPath, IfName: "eth0", Args: args, StdinData: w.conf("1.0.0", nil)})
		return err
	}); err != nil {
		t.Fatalf("DEL %s: %v", containerID, err)
	}
}

// assertGone fails unless nothing of the workload with this ID is left.
func (w *world) assertGone(t testing.TB, id string) {
	t.Helper()
	w.host.AssertLinkGone(t, workload.HostVethName(id))
	if _, err := w.ds.Workloads(node).Get(t.Context(), id); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("record %s: %v, want not found", id, err)
	}
	if _, err := w.ds.Handles().Get(t.Context(), id); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("IPAM handle %s: %v, want not found", id, err)
	}
}

// workloadNS creates a namespace as a runtime does: deleting it (the returned func, also run at
// cleanup) destroys it.
func workloadNS(t testing.TB) (string, func()) {
	t.Helper()
	return netns.Detached(t, "cnw")
}

func inNS(t testing.TB, path string, fn func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

// closedPort returns an http:// endpoint where nothing listens.
func closedPort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return fmt.Sprint("http://", addr)
}
