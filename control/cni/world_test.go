//go:build k8s

package cni

import (
	"net/netip"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/margaynet/margay/control/cni/cnitest"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/tests/netns"
)

// node is where the tests that run commands in this process work: only those against a real API
// server (build tag k8s) do.
const node = cnitest.Node

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

func (w *world) assertGone(t testing.TB, id string) {
	t.Helper()
	cnitest.AssertGone(t, w.host, w.ds, id)
}

var (
	workloadNS = cnitest.WorkloadNS
	inNS       = cnitest.InNS
)
