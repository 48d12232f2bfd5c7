package docker_test

import (
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/docker"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/tests/netns"
)

// dockerd's clean-up of stale sandboxes when it starts after a crash deletes their endpoints by
// force without calling the network driver (not loaded yet), then releases their addresses
// through the IPAM driver: ReleaseAddress of an address whose endpoint still exists deletes the
// endpoint (veth, record), then frees the address, which is never held twice.
func TestReleaseAddressOfUndeletedEndpoint(t *testing.T) {
	e := newEnvWith(t, []docker.Option{docker.WithNetworkNamer(namer("net1"))}, pool("main", "198.18.0.0/16", 26, false))
	ctx := t.Context()
	addr := e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"].(string)
	ip := netip.MustParsePrefix(addr).Addr()
	e.ok(t, "/NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"Address": addr}})
	// dockerd's Join: the peer moves into the sandbox, which still exists when dockerd releases.
	sandbox, _ := netns.Detached(t, "dks")
	e.ok(t, "/NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": sandbox})
	sb := netns.Open(t, filepath.Base(sandbox))
	if err := e.host.Netlink().LinkSetNsFd(e.host.Link(t, docker.TempVethName(eid)), int(sb.Handle())); err != nil {
		t.Fatal(err)
	}

	e.ok(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "margay-any", "Address": addr})
	e.host.AssertLinkGone(t, workload.HostVethName(eid))
	if _, err := e.ds.Workloads(node).Get(ctx, eid); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("the endpoint's record after ReleaseAddress: %v", err)
	}
	if loc, err := e.ipam.Locate(ctx, ip); err != nil || loc.Handle != "" {
		t.Errorf("address after ReleaseAddress: %+v, %v", loc, err)
	}
	if hs, _, err := e.ds.Handles().List(ctx); err != nil || len(hs) != 0 {
		t.Errorf("handles after ReleaseAddress: %+v, %v", hs, err)
	}
	// A DeleteEndpoint and a ReleaseAddress that come late are no errors.
	e.ok(t, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid})
	e.ok(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "margay-any", "Address": addr})
}
