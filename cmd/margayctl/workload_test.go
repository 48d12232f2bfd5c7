package main

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/tests/netns"
)

// TestWorkloadCommands drives workload add, list and delete against an embedded etcd, with the
// command running in a host namespace as an operator's shell would on the host.
func TestWorkloadCommands(t *testing.T) {
	e := datastoretest.Start(t)
	c := datastoretest.Connect(t, datastore.Config{Endpoints: e.Endpoints()})
	pool := datastore.Pool{Version: datastore.CurrentVersion, Name: "lab", CIDR: netip.MustParsePrefix("198.19.0.0/16"), BlockSize: 26}
	if _, err := c.Pools().Create(t.Context(), pool.Name, pool); err != nil {
		t.Fatal(err)
	}
	datastoretest.RegisterNodes(t, c, "host-1")
	host := netns.New(t, "mch")
	wl := netns.New(t, "mcw")
	endpoint := strings.Join(e.Endpoints(), ",")
	ctl := func(args ...string) (string, error) {
		var out string
		err := host.Do(func() error {
			var err error
			out, err = margayctl(t, append([]string{"--etcd-endpoints", endpoint}, args...)...)
			return err
		})
		return out, err
	}

	out, err := ctl("workload", "add", "web-1", "--netns", wl.Path, "--node", "host-1", "--label", "app=web", "--label", "tier=front")
	if err != nil {
		t.Fatalf("workload add: %v\n%s", err, out)
	}
	t.Logf("margayctl workload add:\n%s", out)
	veth := workload.HostVethName("web-1")
	for _, want := range []string{"NODE", "NAME", "INTERFACE", "IPV4", "MAC", "host-1", "web-1", veth, "198.19.0.0/32"} {
		if !strings.Contains(out, want) {
			t.Errorf("workload add output lacks %q:\n%s", want, out)
		}
	}
	host.Link(t, veth)
	if out := wl.MustRun(t, "ip", "-4", "route", "show", "default"); !strings.Contains(out, "default via 169.254.1.1 dev eth0") {
		t.Errorf("workload default route: %q", out)
	}
	rec, err := c.Workloads("host-1").Get(t.Context(), "web-1")
	if err != nil || rec.Value.Labels["app"] != "web" || rec.Value.Labels["tier"] != "front" || rec.Value.ContainerID != "" {
		t.Errorf("record %+v: %v", rec.Value, err)
	}

	out, err = ctl("workload", "list", "--node", "host-1", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var listed []datastore.Workload
	if err := json.Unmarshal([]byte(out), &listed); err != nil || len(listed) != 1 || listed[0].ID != "web-1" ||
		listed[0].IfName != veth || len(listed[0].IPv4) != 1 || listed[0].MAC != rec.Value.MAC {
		t.Errorf("workload list -o json = %s (%v)", out, err)
	}
	out, err = ctl("workload", "list", "--node", "host-2")
	if err != nil || strings.Contains(out, "web-1") || !strings.Contains(out, "NODE") {
		t.Errorf("workload list of another node = %q, %v", out, err)
	}

	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"workload", "add", "web-2", "--netns", wl.Path, "--label", "novalue"}, "key=value"},
		{[]string{"workload", "add", "web-2", "--node", "host-1"}, `"netns" not set`},
		{[]string{"workload", "add", "web/2", "--netns", wl.Path, "--node", "host-1"}, "invalid workload spec"},
		{[]string{"workload", "add", "web-2", "--netns", "/var/run/netns/margay-none", "--node", "host-1"}, "network namespace not found"},
		{[]string{"workload", "delete", "web-1", "--node", "host-2"}, "not found on node host-2"},
		{[]string{"workload", "add", "web-2", "--netns", wl.Path, "--node", "nosuchnode"}, `node "nosuchnode" is not registered`},
	} {
		if out, err := ctl(bad.args...); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("margayctl %s: %v, want an error with %q\n%s", strings.Join(bad.args, " "), err, bad.want, out)
		}
	}

	if bs, _, err := c.Blocks().List(t.Context()); err != nil || len(bs) != 1 || bs[0].Value.Node() != "host-1" {
		t.Errorf("blocks after the refused add on nosuchnode: %+v, %v; want host-1's only", bs, err)
	}

	out, err = ctl("workload", "delete", "web-1", "--node", "host-1")
	if err != nil || !strings.Contains(out, "deleted workload web-1") {
		t.Fatalf("workload delete: %v\n%s", err, out)
	}
	if _, err := host.Netlink().LinkByName(veth); err == nil {
		t.Errorf("%s still exists after delete", veth)
	}
	if _, err := c.Workloads("host-1").Get(t.Context(), "web-1"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("record after delete: %v", err)
	}
	if _, err := c.Handles().Get(t.Context(), "web-1"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("IPAM handle after delete: %v", err)
	}
	out, err = ctl("workload", "list", "--node", "host-1", "-o", "json")
	if err != nil || strings.TrimSpace(out) != "[]" {
		t.Errorf("workload list after delete = %q, %v", out, err)
	}
}

// margayctl takes etcd, the node and the bpffs root from its config file (--config, else
// MARGAYCTL_CONFIG), and says which node and etcd it used when a listing is empty.
func TestHostConfigFile(t *testing.T) {
	e := datastoretest.Start(t)
	c := datastoretest.Connect(t, datastore.Config{Endpoints: e.Endpoints()})
	ep := e.Endpoints()[0]
	rec := datastore.Workload{Version: datastore.CurrentVersion, ID: "w7", Name: "w7", Node: "vm7",
		IfName: workload.HostVethName("w7"), MAC: "02:00:00:00:00:07", IPv4: []netip.Prefix{netip.MustParsePrefix("198.19.0.7/32")}}
	if _, err := c.Workloads("vm7").Create(t.Context(), "w7", rec); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name, body string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inline := write("inline.cfg", "nodeName: vm7\nendpoints: ["+ep+"]\ndialTimeout: 2s\n")
	write("datastore.yaml", "endpoints: ["+ep+"]\n")
	indirect := write("indirect.cfg", "nodeName: vm7\ndatastoreConfig: datastore.yaml\n")
	empty := write("empty-node.cfg", "nodeName: vm8\nendpoints: ["+ep+"]\n")

	for _, c := range []struct {
		name string
		args []string
		env  string
	}{
		{"--config", []string{"--config", inline}, ""},
		{"MARGAYCTL_CONFIG", nil, inline},
		{"datastoreConfig", []string{"--config", indirect}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("MARGAYCTL_CONFIG", c.env)
			out, err := margayctl(t, append(c.args, "workload", "list")...)
			if err != nil || !strings.Contains(out, "vm7") || !strings.Contains(out, "w7") || !strings.Contains(out, "198.19.0.7/32") {
				t.Errorf("workload list = %q, %v; want vm7's w7", out, err)
			}
		})
	}

	out, err := margayctl(t, "--config", empty, "workload", "list")
	want := "no workloads on this node: node vm8 (from nodeName in " + empty + "); etcd " + ep + "; config " + empty
	if err != nil || !strings.Contains(out, want) {
		t.Errorf("empty workload list = %q, %v; want it to say %q", out, err, want)
	}
	// So do the cluster-wide listings when they come out empty (here: no pool, node, policy or peer
	// in this etcd).
	for _, l := range []struct{ args, what string }{
		{"pool list", "no pools"}, {"node list", "no nodes registered"}, {"policy list", "no GlobalNetworkPolicy resources"}, {"get profile", "no Profile resources"},
		{"bgp peer list", "no explicit bgp peers"},
	} {
		want := l.what + ": etcd " + ep + "; config " + empty
		if out, err := margayctl(t, append([]string{"--config", empty}, strings.Fields(l.args)...)...); err != nil || !strings.Contains(out, want) {
			t.Errorf("empty %s = %q, %v; want it to say %q", l.args, out, err, want)
		}
	}
	if out, err := margayctl(t, "--config", empty, "workload", "list", "--node", "vm7"); err != nil || !strings.Contains(out, "w7") {
		t.Errorf("--node over the config file = %q, %v", out, err)
	}
	t.Setenv("MARGAY_NODE_NAME", "vm7") // as in the agent's pod
	if out, err := margayctl(t, "--config", empty, "workload", "list"); err != nil || !strings.Contains(out, "w7") {
		t.Errorf("MARGAY_NODE_NAME over the config file = %q, %v", out, err)
	}
	t.Setenv("MARGAY_NODE_NAME", "")

	root := netns.BPFFS(t)
	d, err := loader.Load(loader.WithRoot(root))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rootCfg := write("root.cfg", "bpffsRoot: "+root+"\n")
	if out, err := margayctl(t, "--config", rootCfg, "routes"); err != nil || !strings.Contains(out, "PREFIX") {
		t.Errorf("routes with bpffsRoot from the config file = %q, %v", out, err)
	}
	if _, err := margayctl(t, "--config", rootCfg, "routes", "--bpffs-root", root+"/nothing"); err == nil {
		t.Error("routes --bpffs-root of a root without pins succeeded: the config file's bpffsRoot won over the flag")
	}
	for _, bad := range []struct{ body, want string }{
		{"nodeName: vm7\nnode: x\n", `unknown field "node"`},
		{"bpffsRoot: sys/fs/bpf\n", "want an absolute path"},
		{"datastoreConfig: missing.yaml\n", "datastoreConfig"},
	} {
		if out, err := margayctl(t, "--config", write("bad.cfg", bad.body), "workload", "list"); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("config %q: %v\n%s; want an error with %q", bad.body, err, out, bad.want)
		}
	}
	if _, err := margayctl(t, "--config", filepath.Join(dir, "none.cfg"), "workload", "list"); err == nil {
		t.Error("a missing --config file was accepted")
	}
}
