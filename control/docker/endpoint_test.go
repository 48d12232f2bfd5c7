package docker_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/docker"
	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/tests/netns"
)

func namer(name string) docker.NetworkNamer {
	return func(_ context.Context, id string) (string, error) {
		if id != nid {
			return "", errors.New("no such network")
		}
		return name, nil
	}
}

// The whole life of a container's endpoint, with dockerd's part (moving the interface into the
// container) done by the test: RequestAddress, CreateEndpoint, Join, Leave, DeleteEndpoint,
// ReleaseAddress.
func TestEndpointLifecycle(t *testing.T) {
	e := newEnvWith(t, []docker.Option{docker.WithNetworkNamer(namer("net1"))}, pool("main", "198.18.0.0/16", 26, false))
	ctx := t.Context()
	addr := e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"].(string)
	ip := netip.MustParsePrefix(addr)
	create := map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"Address": addr, "MacAddress": ""}, "Options": map[string]any{}}
	out := e.ok(t, "/NetworkDriver.CreateEndpoint", create)
	if len(out) != 0 {
		t.Errorf("CreateEndpoint answered %v, want {}", out)
	}

	hostName, tmpName := workload.HostVethName(eid), docker.TempVethName(eid)
	hostLink, peer := e.host.Link(t, hostName), e.host.Link(t, tmpName)
	if hostLink.Attrs().HardwareAddr.String() != hostconv.VethMAC.String() || hostLink.Attrs().Flags&net.FlagUp == 0 ||
		peer.Attrs().ParentIndex != hostLink.Attrs().Index {
		t.Errorf("veth %s %+v, peer %s %+v", hostName, hostLink.Attrs(), tmpName, peer.Attrs())
	}
	routes, err := e.host.Netlink().RouteList(hostLink, netlink.FAMILY_V4)
	if err != nil || len(routes) != 1 || routes[0].Dst.String() != addr {
		t.Errorf("host routes through %s: %v, %v", hostName, routes, err)
	}
	rec, err := e.ds.Workloads(node).Get(ctx, eid)
	if err != nil {
		t.Fatal(err)
	}
	w := rec.Value
	if w.IfName != hostName || w.Network != "docker:net1" || !slices.Equal(w.Profiles, []string{"net1"}) ||
		!slices.Equal(w.IPv4, []netip.Prefix{ip}) || w.MAC != peer.Attrs().HardwareAddr.String() || w.Netns != "" {
		t.Errorf("record %+v", w)
	}
	prof, err := e.ds.Profiles().Get(ctx, "net1")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(prof.Value)
	want, _ := json.Marshal(docker.Profile("net1"))
	if string(got) != string(want) {
		t.Errorf("profile\n got %s\nwant %s", got, want)
	}
	loc, err := e.ipam.Locate(ctx, ip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if h, err := e.ds.Handles().Get(ctx, loc.Handle); err != nil || h.Value.Workload != node+"/"+eid {
		t.Errorf("handle after CreateEndpoint: %+v, %v", h, err)
	}

	// An edited profile is not overwritten by the next endpoint.
	prof.Value.Egress = nil
	if _, err := e.ds.Profiles().Put(ctx, "net1", prof.Value); err != nil {
		t.Fatal(err)
	}
	// A repeated CreateEndpoint changes nothing.
	e.ok(t, "/NetworkDriver.CreateEndpoint", create)
	if again := e.host.Link(t, hostName); again.Attrs().Index != hostLink.Attrs().Index {
		t.Errorf("veth replaced on a repeat")
	}
	if p, _ := e.ds.Profiles().Get(ctx, "net1"); p.Value.Egress != nil {
		t.Errorf("profile overwritten: %+v", p.Value)
	}

	// dockerd's part of Join: move the peer into the sandbox, name it cali0.
	sandbox, _ := netns.Detached(t, "dks")
	out = e.ok(t, "/NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": sandbox})
	if n := out["InterfaceName"].(map[string]any)["SrcName"]; n != tmpName {
		t.Errorf("SrcName %v", n)
	}
	if r, _ := e.ds.Workloads(node).Get(ctx, eid); r.Value.Netns != sandbox {
		t.Errorf("netns after Join: %q", r.Value.Netns)
	}
	sb := netns.Open(t, filepath.Base(sandbox))
	if err := e.host.Netlink().LinkSetNsFd(peer, int(sb.Handle())); err != nil {
		t.Fatal(err)
	}
	e.host.AssertLinkGone(t, tmpName)
	// CreateEndpoint repeated after the move (not something dockerd does, but a crash may) keeps
	// the pair.
	e.ok(t, "/NetworkDriver.CreateEndpoint", create)
	if again := e.host.Link(t, hostName); again.Attrs().Index != hostLink.Attrs().Index {
		t.Errorf("veth replaced after the move")
	}
	// dockerd renames it; ProgramExternalConnectivity then writes the gateway's neighbour entry.
	moved, err := sb.Netlink().LinkByName(tmpName)
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Netlink().LinkSetName(moved, "cali0"); err != nil {
		t.Fatal(err)
	}
	e.ok(t, "/NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": nid, "EndpointID": eid})
	neighs, err := sb.Netlink().NeighList(moved.Attrs().Index, netlink.FAMILY_V4)
	if err != nil || len(neighs) != 1 || neighs[0].IP.String() != "169.254.1.1" || neighs[0].State != netlink.NUD_PERMANENT ||
		neighs[0].HardwareAddr.String() != hostconv.VethMAC.String() {
		t.Errorf("neighbours of cali0: %+v, %v", neighs, err)
	}
	e.ok(t, "/NetworkDriver.Leave", map[string]any{"NetworkID": nid, "EndpointID": eid})
	if r, _ := e.ds.Workloads(node).Get(ctx, eid); r.Value.Netns != "" {
		t.Errorf("netns after Leave: %q", r.Value.Netns)
	}

	e.ok(t, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid})
	e.host.AssertLinkGone(t, hostName)
	if _, err := e.ds.Workloads(node).Get(ctx, eid); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("record after DeleteEndpoint: %v", err)
	}
	e.ok(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "margay-any", "Address": addr})
	if loc, err := e.ipam.Locate(ctx, ip.Addr()); err != nil || loc.Handle != "" {
		t.Errorf("address after ReleaseAddress: %+v, %v", loc, err)
	}
	// The profile had no member left, but the operator edited it: it stays.
	if _, err := e.ds.Profiles().Get(ctx, "net1"); err != nil {
		t.Errorf("edited profile after its last member: %v", err)
	}
}

// A network's profile goes with its last member on any node, and comes back with the next one.
func TestProfileCollected(t *testing.T) {
	e := newEnvWith(t, []docker.Option{docker.WithNetworkNamer(namer("net1"))}, pool("main", "198.18.0.0/16", 26, false))
	ctx := t.Context()
	eid2 := strings.Repeat("ab", 32)
	create := func(id string) {
		addr := e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"].(string)
		e.ok(t, "/NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": id, "Interface": map[string]any{"Address": addr}})
	}
	exists := func() bool {
		_, err := e.ds.Profiles().Get(ctx, "net1")
		if err != nil && !errors.Is(err, datastore.ErrNotFound) {
			t.Fatal(err)
		}
		return err == nil
	}
	create(eid)
	create(eid2)
	// A member on another node keeps it too.
	other := datastore.Workload{Version: datastore.CurrentVersion, ID: "c1", Name: "c1", Node: "node-2", IfName: workload.HostVethName("c1"),
		MAC: "02:42:c6:13:00:02", Network: "docker:net1", Profiles: []string{"net1"}}
	if _, err := e.ds.Workloads("node-2").Create(ctx, "c1", other); err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{eid, eid2} {
		e.ok(t, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": id})
		if !exists() {
			t.Fatalf("profile gone after deleting endpoint %d of 2 (node-2's member remains)", i+1)
		}
	}
	if err := e.ds.Workloads("node-2").Delete(ctx, "c1", 0); err != nil {
		t.Fatal(err)
	}
	create(eid)
	e.ok(t, "/NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid})
	if exists() {
		t.Fatal("profile left after its last member")
	}
	create(eid2)
	if !exists() {
		t.Fatal("no profile for a new member")
	}
}

// Close stops the background retry of a neighbour entry whose namespace never comes, at once
// rather than after its 30 s.
func TestCloseStopsRetries(t *testing.T) {
	e := newEnvWith(t, []docker.Option{docker.WithNetworkNamer(namer("net1"))}, pool("main", "198.18.0.0/16", 26, false))
	addr := e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"].(string)
	e.ok(t, "/NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"Address": addr}})
	e.ok(t, "/NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": filepath.Join(t.TempDir(), "never")})
	e.ok(t, "/NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": nid, "EndpointID": eid})
	closed := make(chan struct{})
	go func() { e.srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not stop the neighbour retry")
	}
}

func TestCreateEndpointRefusals(t *testing.T) {
	ctx := t.Context()
	noNames := defaultEnv(t)
	addr := noNames.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"].(string)
	ep := func(addr string) map[string]any {
		return map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"Address": addr}}
	}
	noNames.fails(t, "/NetworkDriver.CreateEndpoint", ep(addr), "no way to learn network names")

	e := newEnvWith(t, []docker.Option{docker.WithNetworkNamer(namer("net1"))}, pool("main", "198.18.0.0/16", 26, false))
	e.fails(t, "/NetworkDriver.CreateEndpoint", ep("198.18.3.3/32"), "was not given out by margay-ipam")
	addr = e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"].(string)
	other := map[string]any{"NetworkID": "ffff", "EndpointID": eid, "Interface": map[string]any{"Address": addr}}
	e.fails(t, "/NetworkDriver.CreateEndpoint", other, "no such network")
	withMAC := ep(addr)
	withMAC["Interface"].(map[string]any)["MacAddress"] = "02:00:00:00:00:01"
	e.fails(t, "/NetworkDriver.CreateEndpoint", withMAC, "--mac-address")
	bad := newEnvWith(t, []docker.Option{docker.WithNetworkNamer(namer("bad name"))}, pool("main", "198.18.0.0/16", 26, false))
	addr2 := bad.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"].(string)
	bad.fails(t, "/NetworkDriver.CreateEndpoint", ep(addr2), "cannot name a profile")

	// Nothing was left behind by the refusals.
	for _, x := range []*env{noNames, e, bad} {
		x.host.AssertLinkGone(t, workload.HostVethName(eid))
		if ws, _, err := x.ds.Workloads(node).List(ctx); err != nil || len(ws) != 0 {
			t.Errorf("records: %v, %v", ws, err)
		}
	}
}

// DockerAPINamer asks dockerd's API over its unix socket.
func TestDockerAPINamer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/networks/"+nid {
			http.Error(w, `{"message":"network not found"}`, http.StatusNotFound)
			return
		}
		_, _ = w.Write([]byte(`{"Name":"net1","Id":"` + nid + `","Driver":"margay"}`))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	n := docker.DockerAPINamer(sock)
	if name, err := n(t.Context(), nid); err != nil || name != "net1" {
		t.Errorf("got %q, %v", name, err)
	}
	if _, err := n(t.Context(), "nope"); err == nil {
		t.Errorf("unknown network: no error")
	}
	if _, err := docker.DockerAPINamer(filepath.Join(t.TempDir(), "none.sock"))(t.Context(), nid); err == nil {
		t.Errorf("no dockerd: no error")
	}
}

// With a policy setup wait, ProgramExternalConnectivity fails when the agent never programs the
// endpoint (here: no agent pins under the root), naming what it waited for.
func TestPolicySetupWait(t *testing.T) {
	e := newEnvWith(t, []docker.Option{docker.WithNetworkNamer(namer("net1")), docker.WithPolicySetup(t.TempDir(), 300*time.Millisecond)},
		pool("main", "198.18.0.0/16", 26, false))
	addr := e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"].(string)
	e.ok(t, "/NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"Address": addr}})
	e.ok(t, "/NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": filepath.Join(t.TempDir(), "later")})
	e.fails(t, "/NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": nid, "EndpointID": eid},
		"the agent did not program endpoint "+eid)
	e.fails(t, "/NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": nid, "EndpointID": eid},
		"no endpoints map under")
}
