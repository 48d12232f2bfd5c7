// Package cnitest holds what the CNI plugin's tests share: network configs, workload namespaces
// and the checks that nothing of a workload is left.
package cnitest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/tests/netns"
)

// Node is the node of the tests' network configs.
const Node = "node-1"

// Conf returns a network config of network "margay" on Node reaching etcd at endpoint; set adds
// or replaces fields (nil deletes).
func Conf(endpoint, version string, set map[string]any) []byte {
	c := map[string]any{
		"cniVersion": version,
		"name":       "margay",
		"type":       "margay-cni",
		"nodeName":   Node,
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

// WorkloadNS creates a namespace as a runtime does: deleting it (the returned func, also run at
// cleanup) destroys it.
func WorkloadNS(t testing.TB) (string, func()) {
	t.Helper()
	return netns.Detached(t, "cnw")
}

// InNS runs fn in the namespace at path.
func InNS(t testing.TB, path string, fn func() error) {
	t.Helper()
	if err := ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

// AssertGone fails unless nothing of the workload with this ID is left on Node: host veth in
// host, record, IPAM handle.
func AssertGone(t testing.TB, host *netns.NS, ds *datastore.Client, id string) {
	t.Helper()
	host.AssertLinkGone(t, workload.HostVethName(id))
	if _, err := ds.Workloads(Node).Get(t.Context(), id); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("record %s: %v, want not found", id, err)
	}
	if _, err := ds.Handles().Get(t.Context(), id); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("IPAM handle %s: %v, want not found", id, err)
	}
}

// ClosedPort returns an http:// endpoint where nothing listens.
func ClosedPort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return fmt.Sprint("http://", addr)
}
