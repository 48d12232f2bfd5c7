package docker_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/docker"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/tests/netns"
)

const node = "node-1"

// Endpoint and network IDs as dockerd makes them: 64 hex digits.
const (
	nid = "5a6f2f4e0d7c5c5e2d9c7b1a3f0e4d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e"
	eid = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
)

type env struct {
	ds   *datastore.Client
	ipam *ipam.IPAM
	host *netns.NS
	url  string
	srv  *docker.Server
}

func pool(name, cidr string, blockSize int, disabled bool) datastore.Pool {
	return datastore.Pool{Version: datastore.CurrentVersion, Name: name, CIDR: netip.MustParsePrefix(cidr), BlockSize: blockSize, Disabled: disabled}
}

// newEnv starts an etcd with the pools, a namespace standing for the host and the plugin's
// server in it.
func newEnv(t *testing.T, pools ...datastore.Pool) *env {
	t.Helper()
	return newEnvWith(t, nil, pools...)
}

func newEnvWith(t *testing.T, opts []docker.Option, pools ...datastore.Pool) *env {
	t.Helper()
	ds := datastoretest.New(t)
	for _, p := range pools {
		if _, err := ds.Pools().Create(t.Context(), p.Name, p); err != nil {
			t.Fatal(err)
		}
	}
	datastoretest.RegisterNodes(t, ds, node, "node-2")
	log := datastoretest.Logger(t)
	ipm := ipam.New(ds, ipam.WithLogger(log))
	host := netns.New(t, "dkh")
	srv := docker.New(ds, ipm, node, append([]docker.Option{docker.WithLogger(log), docker.WithNetns(host.Do)}, opts...)...)
	t.Cleanup(srv.Close)
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return &env{ds: ds, ipam: ipm, host: host, url: ts.URL, srv: srv}
}

func defaultEnv(t *testing.T) *env {
	return newEnv(t, pool("main", "198.18.0.0/16", 26, false), pool("off", "198.19.0.0/16", 26, true))
}

// post sends body (a string as is, else JSON) and returns the status and the decoded answer.
func (e *env) post(t *testing.T, path string, body any) (int, map[string]any) {
	t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case string:
		r = strings.NewReader(b)
	case nil:
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		r = strings.NewReader(string(j))
	}
	resp, err := http.Post(e.url+path, "application/json", r)
	if err != nil {
		t.Fatal(err)
	}
	return decodeAnswer(t, resp)
}

func decodeAnswer(t *testing.T, resp *http.Response) (int, map[string]any) {
	t.Helper()
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != docker.ContentType {
		t.Errorf("content type %q", ct)
	}
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("answer is not a JSON object: %v", err)
	}
	return resp.StatusCode, out
}

// ok posts and fails the test unless the call succeeded.
func (e *env) ok(t *testing.T, path string, body any) map[string]any {
	t.Helper()
	status, out := e.post(t, path, body)
	if status != http.StatusOK || out["Err"] != nil {
		t.Fatalf("%s %v: status %d, %v", path, body, status, out)
	}
	return out
}

// fails posts and checks that the call failed with an Err containing want.
func (e *env) fails(t *testing.T, path string, body any, want string) {
	t.Helper()
	status, out := e.post(t, path, body)
	msg, _ := out["Err"].(string)
	if status == http.StatusOK || msg == "" {
		t.Fatalf("%s %v: status %d, %v; want an error", path, body, status, out)
	}
	if !strings.Contains(msg, want) {
		t.Errorf("%s %v: Err %q, want it to contain %q", path, body, msg, want)
	}
}

func TestActivateAndCapabilities(t *testing.T) {
	e := defaultEnv(t)
	out := e.ok(t, "/Plugin.Activate", nil)
	if got, _ := json.Marshal(out["Implements"]); string(got) != `["NetworkDriver","IpamDriver"]` {
		t.Errorf("Implements %s", got)
	}
	out = e.ok(t, "/NetworkDriver.GetCapabilities", "null")
	if out["Scope"] != "local" || out["ConnectivityScope"] != "global" {
		t.Errorf("network capabilities %v", out)
	}
	out = e.ok(t, "/IpamDriver.GetCapabilities", "{}")
	if out["RequiresMACAddress"] != false {
		t.Errorf("IPAM capabilities %v", out)
	}
	out = e.ok(t, "/IpamDriver.GetDefaultAddressSpaces", nil)
	if out["LocalDefaultAddressSpace"] != docker.LocalAddressSpace || out["GlobalDefaultAddressSpace"] != docker.GlobalAddressSpace {
		t.Errorf("address spaces %v", out)
	}
	e.ok(t, "/NetworkDriver.DiscoverNew", `{"DiscoveryType":1,"DiscoveryData":{"Address":"198.18.0.1"}}`)
	e.ok(t, "/NetworkDriver.DiscoverDelete", `{"DiscoveryType":1}`)
}

func TestMalformedAndUnknown(t *testing.T) {
	e := defaultEnv(t)
	e.fails(t, "/NetworkDriver.Frobnicate", "{}", "no such call")
	e.fails(t, "/", "", "no such call")
	for _, body := range []string{`{`, `[1]`, `"x"`, `{"PoolID": 7}`, `{} {}`, `{"PoolID":"margay-any"} x`} {
		e.fails(t, "/IpamDriver.ReleasePool", body, "malformed request body")
	}
	e.fails(t, "/IpamDriver.ReleasePool", `null`, "is not one of margay-ipam's")
	e.fails(t, "/IpamDriver.ReleasePool", `{"PoolID":"default"}`, "is not one of margay-ipam's")
	e.fails(t, "/IpamDriver.ReleasePool", `{"PoolID":"margay-198.18.0.1/16"}`, "is not one of margay-ipam's")
	e.fails(t, "/NetworkDriver.Join", `{"NetworkID":"`+nid+`"}`, "no EndpointID")
	e.fails(t, "/NetworkDriver.Join", `{"EndpointID":"`+eid+`","SandboxKey":"/x"}`, "no NetworkID")
	e.fails(t, "/NetworkDriver.Join", `{"NetworkID":"`+nid+`","EndpointID":"a/b","SandboxKey":"/x"}`, "EndpointID")
	e.fails(t, "/NetworkDriver.Join", `{"NetworkID":"`+nid+`","EndpointID":"`+eid+`"}`, "no SandboxKey")
	e.fails(t, "/NetworkDriver.AllocateNetwork", `{"NetworkID":"`+nid+`"}`, "swarm")

	// Unknown fields are ignored (dockerd's requests grow between versions).
	e.ok(t, "/IpamDriver.ReleasePool", `{"PoolID":"margay-any","Future":true}`)

	big := `{"PoolID":"margay-any","Options":{"k":"` + strings.Repeat("x", 2<<20) + `"}}`
	e.fails(t, "/IpamDriver.ReleasePool", big, "request")

	resp, err := http.Get(e.url + "/Plugin.Activate")
	if err != nil {
		t.Fatal(err)
	}
	status, out := decodeAnswer(t, resp)
	if status != http.StatusMethodNotAllowed || out["Err"] == nil {
		t.Errorf("GET: status %d, %v", status, out)
	}
}

func TestRequestPool(t *testing.T) {
	e := defaultEnv(t)
	req := func(pool string) map[string]any {
		return map[string]any{"AddressSpace": docker.LocalAddressSpace, "Pool": pool, "Options": map[string]string{}, "V6": false}
	}
	out := e.ok(t, "/IpamDriver.RequestPool", req(""))
	if out["PoolID"] != "margay-any" || out["Pool"] != "0.0.0.0/0" {
		t.Errorf("no subnet: %v", out)
	}
	if d, _ := out["Data"].(map[string]any); d["com.docker.network.gateway"] != "169.254.1.1/32" {
		t.Errorf("no subnet: gateway %v", out["Data"])
	}
	for _, subnet := range []string{"198.18.4.0/24", "198.18.0.0/16", "198.18.7.9/32"} {
		out = e.ok(t, "/IpamDriver.RequestPool", req(subnet))
		if out["PoolID"] != "margay-"+subnet || out["Pool"] != subnet {
			t.Errorf("subnet %s: %v", subnet, out)
		}
		e.ok(t, "/IpamDriver.ReleasePool", map[string]any{"PoolID": out["PoolID"]})
	}
	e.fails(t, "/IpamDriver.RequestPool", req("198.18.0.0/15"), "not inside a Margay IP pool (pools: 198.18.0.0/16, 198.19.0.0/16)")
	e.fails(t, "/IpamDriver.RequestPool", req("10.0.0.0/24"), "not inside a Margay IP pool")
	e.fails(t, "/IpamDriver.RequestPool", req("198.19.1.0/24"), "disabled")
	e.fails(t, "/IpamDriver.RequestPool", req("198.18.4.1/24"), "host bits")
	e.fails(t, "/IpamDriver.RequestPool", req("2001:db8::/64"), "IPv4")
	e.fails(t, "/IpamDriver.RequestPool", req("banana"), "IPv4 CIDR")

	r := req("")
	r["V6"] = true
	e.fails(t, "/IpamDriver.RequestPool", r, "IPv6")
	r = req("198.18.4.0/24")
	r["SubPool"] = "198.18.4.0/25"
	e.fails(t, "/IpamDriver.RequestPool", r, "--ip-range")
	r = req("")
	r["AddressSpace"] = "LocalDefault"
	e.fails(t, "/IpamDriver.RequestPool", r, "address space")
}

func TestRequestPoolWithoutPools(t *testing.T) {
	e := newEnv(t)
	e.fails(t, "/IpamDriver.RequestPool", map[string]any{"AddressSpace": docker.LocalAddressSpace, "Pool": "198.18.4.0/24"}, "there is no Margay IP pool")
}

func TestRequestAndReleaseAddress(t *testing.T) {
	e := defaultEnv(t)
	ctx := t.Context()
	out := e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any", "Address": "", "Options": nil})
	got, err := netip.ParsePrefix(out["Address"].(string))
	if err != nil || got.Bits() != 32 || !netip.MustParsePrefix("198.18.0.0/16").Contains(got.Addr()) {
		t.Fatalf("address %v (%v)", out["Address"], err)
	}
	loc, err := e.ipam.Locate(ctx, got.Addr())
	if err != nil || !strings.HasPrefix(loc.Handle, docker.HandlePrefix) || loc.Block.Affinity != datastore.AffinityForNode(node) {
		t.Fatalf("allocation: %+v, %v", loc, err)
	}
	h, err := e.ds.Handles().Get(ctx, loc.Handle)
	if err != nil || h.Value.Node != node || h.Value.Workload != "" {
		t.Errorf("handle %+v, %v", h, err)
	}
	// The agent's IPAM garbage collection leaves the handle alone at its first look: it names
	// no workload yet, as CreateEndpoint is about to key it (ipam's TestCollectUnkeyed has the
	// rest).
	gc := e.ipam.Collector(node)
	if freed, err := gc.Run(ctx, map[string]datastore.Workload{}); err != nil || len(freed) != 0 {
		t.Fatalf("gc freed %v, %v", freed, err)
	}
	// A second container gets another address.
	out2 := e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})
	if out2["Address"] == out["Address"] {
		t.Errorf("two containers got %v", out["Address"])
	}

	// The gateway is answered, not allocated.
	out = e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any", "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}})
	if out["Address"] != "169.254.1.1/32" {
		t.Errorf("gateway %v", out)
	}

	// Release, bare or with a prefix length; again is no error.
	rel := map[string]any{"PoolID": "margay-any", "Address": got.Addr().String()}
	e.ok(t, "/IpamDriver.ReleaseAddress", rel)
	if loc, err := e.ipam.Locate(ctx, got.Addr()); err != nil || loc.Handle != "" {
		t.Errorf("after release: %+v, %v", loc, err)
	}
	if _, err := e.ds.Handles().Get(ctx, h.Name); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("handle after release: %v", err)
	}
	rel["Address"] = got.String()
	e.ok(t, "/IpamDriver.ReleaseAddress", rel)
	e.ok(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "margay-any", "Address": "169.254.1.1"})

	// A CNI workload's address is not Docker's to release.
	a, err := e.ipam.Assign(ctx, ipam.Request{Handle: "default.pod", Node: node, Workload: node + "/default.pod"})
	if err != nil {
		t.Fatal(err)
	}
	e.fails(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "margay-any", "Address": a.IP.String()}, "not to a Docker container")
	// Nor another node's container's.
	b, err := e.ipam.Assign(ctx, ipam.Request{Handle: "docker-other", Node: "node-2", Workload: "node-2/docker-other"})
	if err != nil {
		t.Fatal(err)
	}
	e.fails(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "margay-any", "Address": b.IP.String()}, "node node-2")

	e.fails(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "margay-198.18.4.0/24", "Address": "198.18.5.1"}, "outside the network's subnet")
	e.fails(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "margay-any", "Address": "2001:db8::1"}, "IPv4")
	e.fails(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "margay-any"}, "no address")
	e.fails(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "bridge-pool"}, "not one of margay-ipam's")
}

// --subnet networks take addresses from their subnet only; --ip asks for one address.
func TestFixedAddressAndSubnet(t *testing.T) {
	e := defaultEnv(t)
	ctx := t.Context()
	sub := "margay-198.18.4.0/24"
	request := func(poolID, address string) string {
		t.Helper()
		return e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": poolID, "Address": address})["Address"].(string)
	}
	if got := request(sub, ""); got != "198.18.4.0/32" {
		t.Errorf("first of the subnet: %s", got)
	}
	if got := request(sub, "198.18.4.9"); got != "198.18.4.9/32" {
		t.Errorf("--ip 198.18.4.9: %s", got)
	}
	if got := request("margay-any", "198.18.200.7"); got != "198.18.200.7/32" {
		t.Errorf("--ip without --subnet: %s", got)
	}
	e.fails(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": sub, "Address": "198.18.4.9"}, "198.18.4.9 is in use")
	e.fails(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any", "Address": "10.1.1.1"}, "in no enabled Margay pool")
	e.fails(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any", "Address": "198.19.1.1"}, "in no enabled Margay pool")
	e.fails(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": sub, "Address": "198.18.5.1"}, "outside the network's subnet 198.18.4.0/24")
	e.fails(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": sub, "Address": "banana"}, "IPv4 address")

	// A full subnet: its own error, though the pool has room.
	tiny := "margay-198.18.9.0/31"
	request(tiny, "")
	request(tiny, "")
	e.fails(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": tiny}, "no free address in the network's subnet 198.18.9.0/31")
	if loc, err := e.ipam.Locate(ctx, netip.MustParseAddr("198.18.9.2")); err != nil || loc.Handle != "" {
		t.Errorf("address outside the full subnet taken: %+v, %v", loc, err)
	}
}

func TestExhaustedPool(t *testing.T) {
	e := newEnv(t, pool("tiny", "198.18.9.0/30", 30, false))
	var addrs []string
	for range 4 {
		addrs = append(addrs, e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"].(string))
	}
	e.fails(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"}, "no free address")
	e.ok(t, "/IpamDriver.ReleaseAddress", map[string]any{"PoolID": "margay-any", "Address": addrs[2]})
	if got := e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"]; got != addrs[2] {
		t.Errorf("after a release got %v, want %s", got, addrs[2])
	}
}

func TestCreateNetwork(t *testing.T) {
	e := defaultEnv(t)
	data := func(as, pool, gw string) map[string]any {
		return map[string]any{"NetworkID": nid, "Options": map[string]any{"com.docker.network.generic": map[string]any{}},
			"IPv4Data": []map[string]any{{"AddressSpace": as, "Pool": pool, "Gateway": gw}}, "IPv6Data": []any{}}
	}
	e.ok(t, "/NetworkDriver.CreateNetwork", data(docker.LocalAddressSpace, "0.0.0.0/0", "169.254.1.1/32"))
	e.ok(t, "/NetworkDriver.CreateNetwork", data(docker.LocalAddressSpace, "198.18.4.0/24", ""))
	e.fails(t, "/NetworkDriver.CreateNetwork", data("LocalDefault", "172.18.0.0/16", "172.18.0.1/16"), "--ipam-driver margay-ipam")
	e.fails(t, "/NetworkDriver.CreateNetwork", data(docker.LocalAddressSpace, "198.18.4.0/24", "198.18.4.1/24"), "--gateway")
	v6 := data(docker.LocalAddressSpace, "0.0.0.0/0", "")
	v6["IPv6Data"] = []map[string]any{{"AddressSpace": docker.LocalAddressSpace, "Pool": "2001:db8::/64"}}
	e.fails(t, "/NetworkDriver.CreateNetwork", v6, "IPv6")
	e.fails(t, "/NetworkDriver.CreateNetwork", map[string]any{"NetworkID": nid}, "no IPv4 pool")
	e.fails(t, "/NetworkDriver.CreateNetwork", map[string]any{}, "no NetworkID")
	e.ok(t, "/NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": nid})
	e.fails(t, "/NetworkDriver.DeleteNetwork", map[string]any{}, "no NetworkID")
}

func TestUnknownEndpoint(t *testing.T) {
	e := defaultEnv(t)
	ep := map[string]any{"NetworkID": nid, "EndpointID": eid}
	for _, path := range []string{"/NetworkDriver.EndpointOperInfo", "/NetworkDriver.Leave", "/NetworkDriver.ProgramExternalConnectivity"} {
		e.fails(t, path, ep, "endpoint "+eid+" not found on node "+node)
	}
	e.fails(t, "/NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/var/run/docker/netns/x"}, "not found")
	// Deleting what is not there succeeds: dockerd repeats deletes after a crash.
	e.ok(t, "/NetworkDriver.DeleteEndpoint", ep)
	e.ok(t, "/NetworkDriver.RevokeExternalConnectivity", ep)
	e.fails(t, "/NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"Address": "198.18.0.5/32"}}, "was not given out by margay-ipam")
	e.fails(t, "/NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid}, "no Interface.Address")
}

// An endpoint with a record and a veth (made here by workload.Add, until CreateEndpoint makes
// them): Join answers the temporary veth and the routes, DeleteEndpoint removes veth and record.
func TestJoinAndDeleteEndpoint(t *testing.T) {
	e := defaultEnv(t)
	ws, _ := netns.Detached(t, "dkw")
	spec := workload.Spec{ID: eid, Node: node, Netns: ws, Log: datastoretest.Logger(t)}
	if err := e.host.Do(func() error {
		_, err := workload.Add(context.Background(), e.ds, e.ipam, spec)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ep := map[string]any{"NetworkID": nid, "EndpointID": eid}
	out := e.ok(t, "/NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": ws, "Options": map[string]any{}})
	want := `{"DisableGatewayService":true,"Gateway":"169.254.1.1","InterfaceName":{"DstPrefix":"cali","SrcName":"` + docker.TempVethName(eid) +
		`"},"StaticRoutes":[{"Destination":"169.254.1.1/32","RouteType":1}]}`
	if got, _ := json.Marshal(out); string(got) != want {
		t.Errorf("join:\n got %s\nwant %s", got, want)
	}
	if n := docker.TempVethName(eid); len(n) != 14 || !strings.HasPrefix(n, "tmp") || n[3:] != workload.HostVethName(eid)[4:] {
		t.Errorf("temporary name %q, host side %q", n, workload.HostVethName(eid))
	}
	e.ok(t, "/NetworkDriver.EndpointOperInfo", ep)
	e.ok(t, "/NetworkDriver.Leave", ep)

	e.ok(t, "/NetworkDriver.DeleteEndpoint", ep)
	e.host.AssertLinkGone(t, workload.HostVethName(eid))
	if _, err := e.ds.Workloads(node).Get(t.Context(), eid); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("record after DeleteEndpoint: %v", err)
	}
	e.ok(t, "/NetworkDriver.DeleteEndpoint", ep)
	e.fails(t, "/NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": ws}, "not found")
}
