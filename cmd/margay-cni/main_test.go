package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"
	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/cni"
	"github.com/margaynet/margay/control/cni/cnitest"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/hostconv"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

const node = cnitest.Node

// pluginBin is the margay-cni binary, built once by TestMain with margay-cni-direct beside it.
var pluginBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if spec := os.Getenv(serveEnv); spec != "" {
		return serveForTest(spec) // this process is a test's agent (agent_test.go)
	}
	dir, err := os.MkdirTemp("", "margay-cni-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil { // a caller that is not root runs the plugin too
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go" // where make deps expects Go
	}
	pluginBin = filepath.Join(dir, "margay-cni")
	build := exec.Command(goBin, "build", "-o", dir+"/", ".", "../margay-cni-direct")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build and the image build them
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build margay-cni and margay-cni-direct: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// world is one test's cluster of one: an embedded etcd, a host namespace with ip_forward for the
// node, and a TCP relay inside the host namespace to etcd, because the plugin runs in the host
// namespace (nsenter) while etcd listens on the root namespace's loopback.
type world struct {
	ds       *datastore.Client
	host     *netns.NS
	endpoint string // etcd as the plugin reaches it
}

func newWorld(t testing.TB, pools ...string) *world {
	t.Helper()
	e := datastoretest.Start(t)
	ds := datastoretest.Connect(t, datastore.Config{Endpoints: e.Endpoints()})
	datastoretest.RegisterNodes(t, ds, node)
	for i, p := range pools {
		pool := datastore.Pool{Version: datastore.CurrentVersion, Name: fmt.Sprint("pool-", i), CIDR: netip.MustParsePrefix(p), BlockSize: 26}
		if pool.CIDR.Bits() > 26 {
			pool.BlockSize = pool.CIDR.Bits()
		}
		if _, err := ds.Pools().Create(t.Context(), pool.Name, pool); err != nil {
			t.Fatal(err)
		}
	}
	host := netns.New(t, "cnh")
	if err := host.Sysctl("ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	host.AddAddr(t, "lo", "198.18.0.1/32")
	u, err := url.Parse(e.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	return &world{ds: ds, host: host, endpoint: "http://" + host.Relay(t, u.Host)}
}

// conf returns a network config for the world; set adds or replaces fields (nil deletes).
func (w *world) conf(version string, set map[string]any) []byte {
	return cnitest.Conf(w.endpoint, version, set)
}

// call is one plugin invocation, exactly as a runtime makes it.
type call struct {
	cmd, containerID, netns, ifname, args string
	conf                                  []byte
	env                                   map[string]string // overrides; "" deletes
}

// outcome is what the plugin printed: the result on success, or its error.
type outcome struct {
	stdout []byte
	stderr string
	err    *types.Error
}

// run executes the plugin in the host namespace when host is set (started from a thread in it, as
// a runtime in the host's namespace starts it: no nsenter in between), else where the test runs
// (only for calls that fail before touching the network).
func run(t testing.TB, host *netns.NS, c call) outcome {
	t.Helper()
	cmd := exec.Command(pluginBin)
	if c.ifname == "" {
		c.ifname = "eth0"
	}
	env := map[string]string{
		"CNI_COMMAND":     c.cmd,
		"CNI_CONTAINERID": c.containerID,
		"CNI_NETNS":       c.netns,
		"CNI_IFNAME":      c.ifname,
		"CNI_ARGS":        c.args,
		"CNI_PATH":        filepath.Dir(pluginBin),
	}
	for k, v := range c.env {
		env[k] = v
	}
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	for k, v := range env {
		if v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Stdin = bytes.NewReader(c.conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	var err error
	if host != nil {
		// The child inherits the network namespace of the thread that starts it.
		if nerr := host.Do(func() error { err = cmd.Run(); return nil }); nerr != nil {
			t.Fatal(nerr)
		}
	} else {
		err = cmd.Run()
	}
	o := outcome{stdout: stdout.Bytes(), stderr: stderr.String()}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run margay-cni: %v", err)
		}
		o.err = &types.Error{}
		if jerr := json.Unmarshal(o.stdout, o.err); jerr != nil || o.err.Code == 0 {
			t.Fatalf("margay-cni %s failed (%v) without a CNI error on stdout: %q\nstderr: %s", c.cmd, err, o.stdout, o.stderr)
		}
	}
	return o
}

// mustAdd runs ADD and returns the parsed result.
func (w *world) mustAdd(t testing.TB, version, containerID, nsPath, args string) *current.Result {
	t.Helper()
	o := run(t, w.host, call{cmd: "ADD", containerID: containerID, netns: nsPath, args: args, conf: w.conf(version, nil)})
	if o.err != nil {
		t.Fatalf("ADD %s: %v\nstderr: %s", containerID, o.err, o.stderr)
	}
	t.Logf("ADD %s (cniVersion %s): %s", containerID, version, o.stdout)
	return parseAdd(t, o.stdout, version)
}

// parseAdd parses an ADD result, which must be of the config's cniVersion.
func parseAdd(t testing.TB, stdout []byte, version string) *current.Result {
	t.Helper()
	r, err := create.CreateFromBytes(stdout)
	if err != nil {
		t.Fatalf("ADD result %s does not parse: %v", stdout, err)
	}
	if r.Version() != version {
		t.Errorf("ADD printed a %s result for cniVersion %s: %s", r.Version(), version, stdout)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (w *world) mustDel(t testing.TB, containerID, nsPath, args string) {
	t.Helper()
	o := run(t, w.host, call{cmd: "DEL", containerID: containerID, netns: nsPath, args: args, conf: w.conf("1.0.0", nil)})
	if o.err != nil {
		t.Fatalf("DEL %s: %v\nstderr: %s", containerID, o.err, o.stderr)
	}
}

var (
	workloadNS = cnitest.WorkloadNS
	inNS       = cnitest.InNS
	closedPort = cnitest.ClosedPort
)

func (w *world) sysctl(t testing.TB, key string) string {
	t.Helper()
	var v string
	if err := w.host.Do(func() (err error) { v, err = hostconv.ReadSysctl(hostconv.SysctlRoot, key); return err }); err != nil {
		t.Fatal(err)
	}
	return v
}

// assertGone fails unless nothing of the workload with this ID is left.
func (w *world) assertGone(t testing.TB, id string) {
	t.Helper()
	cnitest.AssertGone(t, w.host, w.ds, id)
}

func TestAddDel(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	for _, version := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(version, func(t *testing.T) {
			path, _ := workloadNS(t)
			pod := "web-" + strings.ReplaceAll(version, ".", "")
			id := "default." + pod
			cid := "ctr" + strings.ReplaceAll(version, ".", "")
			args := "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + pod + ";K8S_POD_INFRA_CONTAINER_ID=" + cid
			res := w.mustAdd(t, version, cid, path, args)

			// The printed result.
			veth := workload.HostVethName(id)
			if len(res.Interfaces) != 2 || res.Interfaces[0].Name != veth || res.Interfaces[0].Mac != "ee:ee:ee:ee:ee:ee" ||
				res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != path {
				t.Fatalf("interfaces %v", res.Interfaces)
			}
			if len(res.IPs) != 1 || res.IPs[0].Interface == nil || *res.IPs[0].Interface != 1 ||
				!res.IPs[0].Gateway.Equal(net.ParseIP("169.254.1.1")) || res.IPs[0].Address.Mask.String() != "ffffffff" {
				t.Fatalf("ips %v", res.IPs)
			}
			ip, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
			if !netip.MustParsePrefix("198.19.0.0/16").Contains(ip) {
				t.Errorf("address %s outside the pool", ip)
			}
			if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || !res.Routes[0].GW.Equal(net.ParseIP("169.254.1.1")) {
				t.Errorf("routes %v", res.Routes)
			}

			// The host side.
			l := w.host.Link(t, veth)
			if l.Attrs().HardwareAddr.String() != "ee:ee:ee:ee:ee:ee" || l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("host veth %s: MAC %s, flags %v", veth, l.Attrs().HardwareAddr, l.Attrs().Flags)
			}
			for key, want := range map[string]string{"ipv4/conf/" + veth + "/proxy_arp": "1", "ipv4/conf/" + veth + "/forwarding": "1",
				"ipv4/neigh/" + veth + "/proxy_delay": "0"} {
				if got := w.sysctl(t, key); got != want {
					t.Errorf("%s = %s, want %s", key, got, want)
				}
			}
			out := w.host.MustRun(t, "ip", "-4", "route", "show", "dev", veth)
			// The kernel's default protocol (boot, which ip route does not print): the agent
			// replaces it with its own once it sees the workload.
			if want := ip.String() + " scope link"; !strings.Contains(out, want) {
				t.Errorf("host route via %s: %q, want %q", veth, out, want)
			}

			// Inside the workload.
			wl := &netns.NS{Name: "workload", Path: path}
			out = wl.MustRun(t, "ip", "-4", "addr", "show", "dev", "eth0")
			if !strings.Contains(out, "inet "+ip.String()+"/32") {
				t.Errorf("eth0 lacks %s/32:\n%s", ip, out)
			}
			out = wl.MustRun(t, "ip", "-4", "route", "show")
			for _, want := range []string{"default via 169.254.1.1 dev eth0", "169.254.1.1 dev eth0 scope link"} {
				if !strings.Contains(out, want) {
					t.Errorf("workload routes lack %q:\n%s", want, out)
				}
			}
			out = wl.MustRun(t, "ip", "neigh", "show", "169.254.1.1")
			if !strings.Contains(out, "lladdr ee:ee:ee:ee:ee:ee PERMANENT") {
				t.Errorf("workload neighbour 169.254.1.1: %q", out)
			}
			inNS(t, path, func() error {
				l, err := netlink.LinkByName("eth0")
				if err == nil && l.Attrs().HardwareAddr.String() != res.Interfaces[1].Mac {
					t.Errorf("eth0 MAC %s, result says %s", l.Attrs().HardwareAddr, res.Interfaces[1].Mac)
				}
				return err
			})

			// The datastore.
			rec, err := w.ds.Workloads(node).Get(t.Context(), id)
			if err != nil {
				t.Fatal(err)
			}
			if r := rec.Value; r.Name != pod || r.Namespace != "default" || r.IfName != veth || r.ContainerID != cid ||
				r.Netns != path || r.MAC != res.Interfaces[1].Mac || !slices.Equal(r.IPv4, []netip.Prefix{netip.PrefixFrom(ip, 32)}) {
				t.Errorf("record %+v", r)
			}
			if d := rec.Value.AddDurationSeconds; d <= 0 || d > 60 {
				t.Errorf("record's addDurationSeconds %v, want how long the ADD took", d)
			}
			h, err := w.ds.Handles().Get(t.Context(), id)
			if err != nil || !slices.Equal(h.Value.IPs, []netip.Addr{ip}) || h.Value.Node != node {
				t.Errorf("handle %+v: %v", h.Value, err)
			}

			w.mustDel(t, cid, path, args)
			w.assertGone(t, id)
			inNS(t, path, func() error {
				if _, err := netlink.LinkByName("eth0"); err == nil {
					t.Error("eth0 left in the workload after DEL")
				}
				return nil
			})
		})
	}
}

// ping polls until the workload at src reaches dst, within the deadline.
func ping(t testing.TB, src, dst string) {
	t.Helper()
	wl := &netns.NS{Name: "workload", Path: src}
	// ping may fail at once (unreachable): 50 ms between tries, not a spin.
	poll.UntilEvery(t, fmt.Sprintf("ping %s from %s", dst, src), 50*time.Millisecond, 10*time.Second, func() error {
		if out, err := wl.Run("ping", "-c", "1", "-W", "1", dst); err != nil {
			return fmt.Errorf("%v\n%s", err, out)
		}
		return nil
	})
}

func TestTwoWorkloadsPing(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	p1, _ := workloadNS(t)
	p2, _ := workloadNS(t)
	r1 := w.mustAdd(t, "1.0.0", "ping-a", p1, "")
	r2 := w.mustAdd(t, "1.0.0", "ping-b", p2, "")
	ip1, ip2 := r1.IPs[0].Address.IP.String(), r2.IPs[0].Address.IP.String()
	ping(t, p1, ip2)
	ping(t, p2, ip1)
	w.mustDel(t, "ping-a", p1, "")
	w.mustDel(t, "ping-b", p2, "")
	w.assertGone(t, "ping-a")
	w.assertGone(t, "ping-b")
}

func TestDelIdempotentAndDuplicateAdd(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	path, remove := workloadNS(t)
	a := w.mustAdd(t, "1.0.0", "dup", path, "")
	b := w.mustAdd(t, "1.0.0", "dup", path, "")
	if a.IPs[0].Address.String() != b.IPs[0].Address.String() || a.Interfaces[1].Mac != b.Interfaces[1].Mac {
		t.Errorf("duplicate ADD gave %s %s, first %s %s", b.IPs[0].Address.String(), b.Interfaces[1].Mac, a.IPs[0].Address.String(), a.Interfaces[1].Mac)
	}
	w.mustDel(t, "dup", path, "")
	w.mustDel(t, "dup", path, "")
	w.assertGone(t, "dup")

	// DEL after the runtime removed the namespace, with and without CNI_NETNS.
	w.mustAdd(t, "1.0.0", "gone", path, "")
	remove()
	w.mustDel(t, "gone", path, "")
	w.mustDel(t, "gone", "", "")
	w.assertGone(t, "gone")

	// DEL of a container Margay never saw.
	w.mustDel(t, "never-added", "", "")
}

func TestCheck(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	path, _ := workloadNS(t)
	res := w.mustAdd(t, "1.1.0", "chk", path, "")
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var prev map[string]any
	if err := json.Unmarshal(raw, &prev); err != nil {
		t.Fatal(err)
	}
	conf := w.conf("1.1.0", map[string]any{"prevResult": prev})
	if o := run(t, w.host, call{cmd: "CHECK", containerID: "chk", netns: path, conf: conf}); o.err != nil {
		t.Fatalf("CHECK of a good workload: %v\n%s", o.err, o.stderr)
	}

	inNS(t, path, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: net.ParseIP("169.254.1.1")})
	})
	o := run(t, w.host, call{cmd: "CHECK", containerID: "chk", netns: path, conf: conf})
	if o.err == nil || o.err.Code != cni.ErrCodeMismatch || !strings.Contains(o.err.Msg, "default via 169.254.1.1") {
		t.Errorf("CHECK without the default route: %v, want code %d naming the route", o.err, cni.ErrCodeMismatch)
	}
	o = run(t, w.host, call{cmd: "CHECK", containerID: "unknown", netns: path, conf: conf})
	if o.err == nil || o.err.Code != types.ErrUnknownContainer {
		t.Errorf("CHECK of an unknown container: %v, want code %d", o.err, types.ErrUnknownContainer)
	}
	w.mustDel(t, "chk", path, "")
}

func TestFailedAddLeavesNothing(t *testing.T) {
	w := newWorld(t, "198.19.3.7/32")
	p1, _ := workloadNS(t)
	p2, _ := workloadNS(t)
	w.mustAdd(t, "1.0.0", "first", p1, "")

	o := run(t, w.host, call{cmd: "ADD", containerID: "second", netns: p2, conf: w.conf("1.0.0", nil)})
	if o.err == nil || o.err.Code != cni.ErrCodePoolExhausted || !strings.Contains(o.err.Msg, "exhausted") {
		t.Errorf("ADD to a full pool: %v, want code %d", o.err, cni.ErrCodePoolExhausted)
	}
	w.assertGone(t, "second")
	inNS(t, p2, func() error {
		if _, err := netlink.LinkByName("eth0"); err == nil {
			t.Error("eth0 left in the workload namespace")
		}
		return nil
	})

	o = run(t, w.host, call{cmd: "ADD", containerID: "third", netns: "/var/run/netns/margay-no-such-ns", conf: w.conf("1.0.0", nil)})
	if o.err == nil || o.err.Code != types.ErrUnknownContainer {
		t.Errorf("ADD into a missing netns: %v, want code %d", o.err, types.ErrUnknownContainer)
	}
	w.assertGone(t, "third")
	w.mustDel(t, "first", p1, "")
}

// With policySetupTimeout, ADD waits for the agent to program the workload; without an agent it
// gives up, undoes everything and asks the runtime to try again. (tests/cluster runs every
// workload with the wait against real agents.)
func TestPolicySetupTimeout(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	p, _ := workloadNS(t)
	start := time.Now()
	o := run(t, w.host, call{cmd: "ADD", containerID: "waits", netns: p,
		conf: w.conf("1.0.0", map[string]any{"policySetupTimeout": "300ms", "bpffsRoot": t.TempDir()})})
	if o.err == nil || o.err.Code != types.ErrTryAgainLater || !strings.Contains(o.err.Msg, "policy setup timed out") ||
		!strings.Contains(o.err.Details, "margay-agent running") {
		t.Errorf("ADD without an agent: %+v, want code %d", o.err, types.ErrTryAgainLater)
	}
	if took := time.Since(start); took < 300*time.Millisecond {
		t.Errorf("ADD gave up after %v, before the timeout", took)
	}
	w.assertGone(t, "waits")
	inNS(t, p, func() error {
		if _, err := netlink.LinkByName("eth0"); err == nil {
			t.Error("eth0 left in the workload namespace")
		}
		return nil
	})
}

func TestBadRequests(t *testing.T) {
	w := &world{endpoint: "http://127.0.0.1:2379"}
	good := func(set map[string]any) []byte { return w.conf("1.0.0", set) }
	closed := closedPort(t)
	for _, c := range []struct {
		name string
		call call
		code uint
		msg  string
	}{
		{"bad json", call{conf: []byte(`{"cniVersion": "1.0.0", "name": `)}, types.ErrDecodingFailure, ""},
		{"unknown field", call{conf: good(map[string]any{"mtuu": 1400})}, types.ErrUnsupportedField, `unknown field "mtuu"`},
		{"unsupported cniVersion", call{conf: good(map[string]any{"cniVersion": "0.3.1"})}, types.ErrIncompatibleCNIVersion, ""},
		{"garbage cniVersion", call{conf: good(map[string]any{"cniVersion": "one"})}, types.ErrIncompatibleCNIVersion, ""},
		{"no datastore", call{conf: good(map[string]any{"datastore": nil})}, types.ErrInvalidNetworkConfig, "no datastore"},
		{"datastore file missing", call{conf: good(map[string]any{"datastore": nil, "datastoreConfig": "/nonexistent/datastore.yaml"})}, types.ErrInvalidNetworkConfig, "datastoreConfig"},
		{"bad endpoint", call{conf: good(map[string]any{"datastore": map[string]any{"endpoints": []string{"etcd:2379"}}})}, types.ErrInvalidNetworkConfig, "endpoint"},
		{"unknown datastore field", call{conf: good(map[string]any{"datastore": map[string]any{"endpoint": "http://x:1"}})}, types.ErrUnsupportedField, `unknown field "endpoint"`},
		{"ipam given", call{conf: good(map[string]any{"ipam": map[string]any{"type": "host-local"}})}, types.ErrInvalidNetworkConfig, "ipam"},
		{"bad mtu", call{conf: good(map[string]any{"mtu": 10})}, types.ErrInvalidNetworkConfig, "mtu"},
		{"bad log level", call{conf: good(map[string]any{"logLevel": "loud"})}, types.ErrInvalidNetworkConfig, "logLevel"},
		{"bad policySetupTimeout", call{conf: good(map[string]any{"policySetupTimeout": "soon"})}, types.ErrInvalidNetworkConfig, "policySetupTimeout"},
		{"relative bpffsRoot", call{conf: good(map[string]any{"bpffsRoot": "sys/fs/bpf"})}, types.ErrInvalidNetworkConfig, "bpffsRoot"},
		{"missing CNI_NETNS", call{conf: good(nil), env: map[string]string{"CNI_NETNS": ""}}, types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"half k8s args", call{conf: good(nil), args: "K8S_POD_NAME=web"}, types.ErrInvalidEnvironmentVariables, "K8S_POD_NAMESPACE"},
		{"malformed args", call{conf: good(nil), args: "K8S_POD_NAME"}, types.ErrInvalidEnvironmentVariables, "KEY=VALUE"},
		{"etcd unreachable", call{conf: good(map[string]any{"datastore": map[string]any{"endpoints": []string{closed}, "dialTimeout": "300ms"}})}, types.ErrTryAgainLater, "etcd is unreachable"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := c.call
			cl.cmd, cl.containerID, cl.netns = "ADD", "bad-request", "/var/run/netns/margay-no-such-ns"
			if c.call.env != nil {
				cl.env = c.call.env
			}
			o := run(t, nil, cl)
			t.Logf("%s: %s", c.name, o.stdout)
			if o.err == nil || o.err.Code != c.code || !strings.Contains(o.err.Msg+o.err.Details, c.msg) {
				t.Errorf("got %+v, want code %d with %q\nstderr: %s", o.err, c.code, c.msg, o.stderr)
			}
			// The error result carries the config's cniVersion (the newest one without a
			// readable config), as the spec's error object does.
			var res struct {
				CNIVersion *string `json:"cniVersion"`
			}
			want := "1.1.0"
			var conf struct{ CNIVersion string }
			if json.Unmarshal(cl.conf, &conf) == nil {
				want = conf.CNIVersion
			}
			if err := json.Unmarshal(o.stdout, &res); err != nil || res.CNIVersion == nil || *res.CNIVersion != want {
				t.Errorf("error result %s: cniVersion %v, want %q", o.stdout, res.CNIVersion, want)
			}
		})
	}
}

// With etcd stopped, ADD fails within its dial timeout (datastore.dialTimeout, or the default
// datastore.DefaultCommandTimeout) with code 11 and an error that names the endpoint.
func TestEtcdStopped(t *testing.T) {
	e := datastoretest.Start(t)
	ep := e.Endpoints()[0]
	e.Close()
	w := &world{endpoint: ep}
	for _, c := range []struct {
		dial  string
		bound time.Duration
	}{{"1s", time.Second}, {"", datastore.DefaultCommandTimeout}} {
		ds := map[string]any{"endpoints": []string{ep}}
		if c.dial != "" {
			ds["dialTimeout"] = c.dial
		}
		start := time.Now()
		o := run(t, nil, call{cmd: "ADD", containerID: "etcd-down", netns: "/var/run/netns/margay-no-such-ns",
			conf: w.conf("1.0.0", map[string]any{"datastore": ds})})
		took := time.Since(start)
		t.Logf("dialTimeout %q: ADD failed after %s: %+v", c.dial, took.Round(time.Millisecond), o.err)
		if o.err == nil || o.err.Code != types.ErrTryAgainLater || !strings.Contains(o.err.Msg, "etcd is unreachable at "+ep) {
			t.Errorf("dialTimeout %q: %+v, want code 11 naming %s", c.dial, o.err, ep)
		}
		if took > 2*c.bound {
			t.Errorf("dialTimeout %q: ADD took %s, want at most twice %s", c.dial, took, c.bound)
		}
	}
}

func TestGC(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	pa, _ := workloadNS(t)
	pb, _ := workloadNS(t)
	pm, _ := workloadNS(t)
	w.mustAdd(t, "1.1.0", "keep", pa, "")
	w.mustAdd(t, "1.1.0", "stale", pb, "")
	// A workload of margayctl (no container): not the runtime's to collect.
	ipm := ipam.New(w.ds)
	if err := w.host.Do(func() error {
		_, err := workload.Add(t.Context(), w.ds, ipm, workload.Spec{ID: "manual", Node: node, Netns: pm})
		return err
	}); err != nil {
		t.Fatal(err)
	}

	conf := w.conf("1.1.0", map[string]any{"cni.dev/valid-attachments": []map[string]string{{"containerID": "keep", "ifname": "eth0"}}})
	if o := run(t, w.host, call{cmd: "GC", conf: conf, env: map[string]string{"CNI_CONTAINERID": "", "CNI_IFNAME": "", "CNI_NETNS": ""}}); o.err != nil {
		t.Fatalf("GC: %v\n%s", o.err, o.stderr)
	}
	w.assertGone(t, "stale")
	for _, id := range []string{"keep", "manual"} {
		if _, err := w.ds.Workloads(node).Get(t.Context(), id); err != nil {
			t.Errorf("GC removed %s: %v", id, err)
		}
	}
	if o := run(t, w.host, call{cmd: "CHECK", containerID: "keep", netns: pa, conf: w.conf("1.1.0", nil)}); o.err != nil {
		t.Errorf("kept workload after GC: %v", o.err)
	}
	w.mustDel(t, "keep", pa, "")
	if err := w.host.Do(func() error {
		return workload.Del(t.Context(), w.ds, ipm, workload.Spec{ID: "manual", Node: node})
	}); err != nil {
		t.Fatal(err)
	}
}

func TestStatus(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	status := func(conf []byte) *types.Error {
		return run(t, w.host, call{cmd: "STATUS", conf: conf, env: map[string]string{"CNI_CONTAINERID": "", "CNI_IFNAME": "", "CNI_NETNS": ""}}).err
	}
	if err := status(w.conf("1.1.0", nil)); err != nil {
		t.Errorf("STATUS with etcd and a pool: %v", err)
	}
	it, err := w.ds.Pools().Get(t.Context(), "pool-0")
	if err != nil {
		t.Fatal(err)
	}
	p := it.Value
	p.Disabled = true
	if _, err := w.ds.Pools().Update(t.Context(), "pool-0", p, it.ModRevision); err != nil {
		t.Fatal(err)
	}
	if err := status(w.conf("1.1.0", nil)); err == nil || err.Code != types.ErrPluginNotAvailable || !strings.Contains(err.Msg, "no enabled IP pool") {
		t.Errorf("STATUS without an enabled pool: %v, want code %d", err, types.ErrPluginNotAvailable)
	}
	down := w.conf("1.1.0", map[string]any{"datastore": map[string]any{"endpoints": []string{closedPort(t)}, "dialTimeout": "300ms"}})
	if err := status(down); err == nil || err.Code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS with etcd down: %v, want code %d", err, types.ErrPluginNotAvailable)
	}
	if err := status(w.conf("1.0.0", nil)); err == nil || err.Code != types.ErrIncompatibleCNIVersion {
		t.Errorf("STATUS with cniVersion 1.0.0: %v, want code %d", err, types.ErrIncompatibleCNIVersion)
	}
}

// BenchmarkCNIAdd measures the latency of ADD, the whole plugin invocation as a runtime sees it
// (process start, IPAM, veth and record), over 200 workloads, two ways in turn: served by the
// host's agent (the default) and run by margay-cni-direct in its own process ("agentSocket":
// "off": its process start and etcd connection included). ms-p50-main is the part from the
// plugin's main to the record's write; ms-p50/version is margay-cni answering VERSION, what any
// call pays to start and end the process.
func BenchmarkCNIAdd(b *testing.B) { benchCNIAdd(b, 0) }

// BenchmarkCNIAddCluster is BenchmarkCNIAdd in a cluster of 500 other nodes, each with a full
// block of 64 workloads in etcd: what an ADD pays for the size of the cluster.
func BenchmarkCNIAddCluster(b *testing.B) { benchCNIAdd(b, 500) }

func benchCNIAdd(b *testing.B, otherNodes int) {
	const n = 200
	w := newWorld(b, "198.19.0.0/16")
	// The other nodes' blocks lie past this host's (198.19.64.0 on), full.
	for i := range otherNodes {
		base := netip.AddrFrom4([4]byte{198, 19, byte(64 + i/4), byte(i % 4 * 64)})
		blk := datastore.Block{Version: datastore.CurrentVersion, CIDR: netip.PrefixFrom(base, 26), Affinity: datastore.AffinityForNode(fmt.Sprint("other-", i))}
		ip := base
		for j := range 64 {
			blk.Allocations = append(blk.Allocations, datastore.Allocation{IP: ip, Handle: fmt.Sprintf("other-%d-%d", i, j)})
			ip = ip.Next()
		}
		if _, err := w.ds.Blocks().Create(b.Context(), datastore.BlockKeyName(blk.CIDR), blk); err != nil {
			b.Fatal(err)
		}
	}
	w.startAgent(b)
	paths := make([]string, n)
	for i := range paths {
		paths[i], _ = workloadNS(b)
	}
	modes := []struct {
		name      string
		conf      []byte
		lat, work []time.Duration
	}{
		{name: "agent", conf: w.conf("1.0.0", map[string]any{"logLevel": "warn"})},
		{name: "direct", conf: w.conf("1.0.0", map[string]any{"logLevel": "warn", "agentSocket": "off"})},
	}
	var version []time.Duration
	b.ResetTimer()
	for range b.N {
		for i := range n {
			m := &modes[i%2]
			c := call{cmd: "ADD", containerID: fmt.Sprint("bench-", i), netns: paths[i], conf: m.conf}
			start := time.Now()
			o := run(b, w.host, c)
			m.lat = append(m.lat, time.Since(start))
			if o.err != nil {
				b.Fatalf("ADD %d (%s): %v\n%s", i, m.name, o.err, o.stderr)
			}
			if i%2 == 1 {
				// The floor of any call: margay-cni started, VERSION answered by skel, exited.
				start := time.Now()
				if o := run(b, w.host, call{cmd: "VERSION", conf: m.conf}); o.err != nil {
					b.Fatalf("VERSION: %v", o.err)
				}
				version = append(version, time.Since(start))
			}
		}
		b.StopTimer()
		for i := range n {
			// The record's addDurationSeconds: from the plugin's main (margay-cni's, or
			// margay-cni-direct's) to the record's write, without the process's exec and
			// initialisation before main.
			rec, err := w.ds.Workloads(node).Get(b.Context(), fmt.Sprint("bench-", i))
			if err != nil {
				b.Fatal(err)
			}
			m := &modes[i%2]
			m.work = append(m.work, time.Duration(rec.Value.AddDurationSeconds*float64(time.Second)))
			w.mustDel(b, fmt.Sprint("bench-", i), paths[i], "")
		}
		b.StartTimer()
	}
	b.StopTimer()
	p50 := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2]) / float64(time.Millisecond)
	}
	b.ReportMetric(p50(version), "ms-p50/version")
	for _, m := range modes {
		b.ReportMetric(p50(m.work), "ms-p50-main/add-"+m.name)
		sort.Slice(m.lat, func(i, j int) bool { return m.lat[i] < m.lat[j] })
		pct := func(p float64) float64 {
			return float64(m.lat[int(p*float64(len(m.lat)-1))]) / float64(time.Millisecond)
		}
		b.ReportMetric(pct(0.50), "ms-p50/add-"+m.name)
		b.ReportMetric(pct(0.99), "ms-p99/add-"+m.name)
	}
	b.ReportMetric(0, "ns/op")
}

// TestShippedConflist drives the plugin through libcni, the library containerd and CRI-O use, with
// deploy/cni/10-margay.conflist pointed at the test's etcd: as shipped (cniVersion 1.0.0, which
// containerd 1.6 and 1.7 read too), and raised to 1.1.0, as a containerd 2 user may set it, for
// STATUS and GC.
func TestShippedConflist(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/cni/10-margay.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var shipped map[string]any
	if err := json.Unmarshal(raw, &shipped); err != nil {
		t.Fatal(err)
	}
	if v := shipped["cniVersion"]; v != "1.0.0" {
		t.Errorf("the shipped conflist's cniVersion is %v, want 1.0.0 (containerd 1.6 and 1.7 refuse a 1.1.0 result)", v)
	}
	for _, version := range []string{"1.0.0", "1.1.0"} {
		t.Run(version, func(t *testing.T) { testShippedConflist(t, raw, version) })
	}
}

func testShippedConflist(t *testing.T, raw []byte, version string) {
	w := newWorld(t, "198.19.0.0/16")
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	doc["cniVersion"] = version
	dir := t.TempDir()
	dsFile := filepath.Join(dir, "datastore.yaml")
	if err := os.WriteFile(dsFile, []byte("endpoints: ["+w.endpoint+"]\ndialTimeout: 2s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "log", "cni.log")
	plugin := doc["plugins"].([]any)[0].(map[string]any)
	plugin["datastoreConfig"], plugin["logFile"], plugin["nodeName"] = dsFile, logFile, node
	if plugin["policySetupTimeout"] != "10s" {
		t.Errorf("the shipped conflist waits %v for policy setup, want 10s", plugin["policySetupTimeout"])
	}
	plugin["policySetupTimeout"] = "0" // no agent runs here; tests/cluster waits with real ones
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes(raw)
	if err != nil {
		t.Fatalf("parse the shipped conflist: %v", err)
	}

	path, _ := workloadNS(t)
	cni := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(pluginBin)}, filepath.Join(dir, "cache"), nil)
	rt := &libcni.RuntimeConf{ContainerID: "lib-1", NetNS: path, IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "lib"}}}
	ctx := t.Context()
	// libcni forks the plugin from the calling thread, which host.Do keeps in the host namespace.
	err = w.host.Do(func() error {
		if _, err := cni.ValidateNetworkList(ctx, list); err != nil {
			return fmt.Errorf("validate: %w", err)
		}
		if err := cni.GetStatusNetworkList(ctx, list); err != nil {
			return fmt.Errorf("status: %w", err)
		}
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return fmt.Errorf("add: %w", err)
		}
		if res.Version() != version {
			return fmt.Errorf("add returned a %s result", res.Version())
		}
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			return fmt.Errorf("check: %w", err)
		}
		keep := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "lib-1", IfName: "eth0"}}}
		if err := cni.GCNetworkList(ctx, list, keep); err != nil {
			return fmt.Errorf("gc: %w", err)
		}
		if _, err := w.ds.Workloads(node).Get(ctx, "default.lib"); err != nil {
			return fmt.Errorf("record after GC that keeps it: %w", err)
		}
		return cni.DelNetworkList(ctx, list, rt)
	})
	if err != nil {
		t.Fatal(err)
	}
	w.assertGone(t, "default.lib")
	if log, err := os.ReadFile(logFile); err != nil || !strings.Contains(string(log), "added workload") {
		t.Errorf("log file %s: %v\n%s", logFile, err, log)
	}
}

// gc runs GC of the network conf names, keeping the given containers.
func (w *world) gc(t testing.TB, network string, keep ...string) {
	t.Helper()
	set := map[string]any{"name": network}
	if keep != nil {
		atts := []map[string]string{}
		for _, c := range keep {
			atts = append(atts, map[string]string{"containerID": c, "ifname": "eth0"})
		}
		set["cni.dev/valid-attachments"] = atts
	}
	if o := run(t, w.host, call{cmd: "GC", conf: w.conf("1.1.0", set), env: map[string]string{"CNI_CONTAINERID": "", "CNI_IFNAME": "", "CNI_NETNS": ""}}); o.err != nil {
		t.Fatalf("GC of %s keeping %v: %v\n%s", network, keep, o.err, o.stderr)
	}
}

// assertPresent fails unless the workload's veth, record (of network) and IPAM handle exist.
func (w *world) assertPresent(t testing.TB, id, network string) {
	t.Helper()
	if err := w.host.Do(func() error {
		_, err := netlink.LinkByName(workload.HostVethName(id))
		return err
	}); err != nil {
		t.Errorf("veth of %s: %v", id, err)
	}
	rec, err := w.ds.Workloads(node).Get(t.Context(), id)
	if err != nil {
		t.Errorf("record %s: %v", id, err)
	} else if rec.Value.Network != network {
		t.Errorf("record %s has network %q, want %q", id, rec.Value.Network, network)
	}
	if h, err := w.ds.Handles().Get(t.Context(), id); err != nil || len(h.Value.IPs) == 0 {
		t.Errorf("IPAM handle %s: %+v, %v", id, h.Value, err)
	}
}

// GC of one network leaves the workloads of another network on the same node alone, with and
// without valid attachments, and so does DEL of one network for another's container.
func TestGCTwoNetworks(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	add := func(network, cid string) string {
		p, _ := workloadNS(t)
		o := run(t, w.host, call{cmd: "ADD", containerID: cid, netns: p, conf: w.conf("1.1.0", map[string]any{"name": network})})
		if o.err != nil {
			t.Fatalf("ADD %s on %s: %v\n%s", cid, network, o.err, o.stderr)
		}
		return p
	}
	pa := add("margay", "a1")
	add("margay", "a2")
	pm := add("mynet", "m1")
	add("mynet", "m2")
	ping(t, pa, "198.19.0.1")

	w.gc(t, "mynet", "m1") // m2 is mynet's and stale
	w.assertGone(t, "m2")
	w.assertPresent(t, "a1", "margay")
	w.assertPresent(t, "a2", "margay")
	w.assertPresent(t, "m1", "mynet")

	w.gc(t, "mynet") // no valid attachments: every workload of mynet goes, no other
	w.assertGone(t, "m1")
	w.assertPresent(t, "a1", "margay")
	w.assertPresent(t, "a2", "margay")
	ping(t, pa, "198.19.0.1")

	// CHECK of mynet for margay's container finds it not mynet's.
	o := run(t, w.host, call{cmd: "CHECK", containerID: "a1", netns: pa, conf: w.conf("1.1.0", map[string]any{"name": "mynet"})})
	if o.err == nil || o.err.Code != cni.ErrCodeMismatch || !strings.Contains(o.err.Msg, `belongs to network "margay"`) {
		t.Errorf("CHECK on another network: %+v, want code %d naming margay", o.err, cni.ErrCodeMismatch)
	}
	// DEL of mynet for margay's container is not margay's DEL.
	o = run(t, w.host, call{cmd: "DEL", containerID: "a2", netns: pm, conf: w.conf("1.1.0", map[string]any{"name": "mynet"})})
	if o.err != nil {
		t.Fatalf("DEL on another network: %v", o.err)
	}
	w.assertPresent(t, "a2", "margay")
	// Nor may mynet take margay's workload over by ADD.
	o = run(t, w.host, call{cmd: "ADD", containerID: "a2", netns: pm, conf: w.conf("1.1.0", map[string]any{"name": "mynet"})})
	if o.err == nil || !strings.Contains(o.err.Msg, `attached by network "margay" already`) {
		t.Errorf("ADD of margay's workload on mynet: %+v, want a refusal naming margay", o.err)
	}
	w.assertPresent(t, "a2", "margay")

	w.gc(t, "margay", "a1")
	w.assertGone(t, "a2")
	w.assertPresent(t, "a1", "margay")
	w.mustDel(t, "a1", pa, "")
}

// A record written before margay-cni recorded the network (none in it) is left alone by GC of
// any network that does not list its container, and taken over by the network that does.
func TestGCLegacyRecord(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	p, _ := workloadNS(t)
	w.mustAdd(t, "1.1.0", "old", p, "")
	rec, err := w.ds.Workloads(node).Get(t.Context(), "old")
	if err != nil {
		t.Fatal(err)
	}
	legacy := rec.Value
	legacy.Network = ""
	if _, err := w.ds.Workloads(node).Put(t.Context(), "old", legacy); err != nil {
		t.Fatal(err)
	}

	w.gc(t, "mynet")
	w.gc(t, "margay", "someone-else")
	w.assertPresent(t, "old", "")

	w.gc(t, "margay", "old") // the runtime says it is margay's
	w.assertPresent(t, "old", "margay")
	w.gc(t, "mynet")
	w.assertPresent(t, "old", "margay")
	w.gc(t, "margay")
	w.assertGone(t, "old")
}

// ADD on a node that is not registered (here: no nodeName, and the hostname is no node) fails at
// once, names the node, and claims no block.
func TestAddUnregisteredNode(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	hostname, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	p, _ := workloadNS(t)
	start := time.Now()
	o := run(t, w.host, call{cmd: "ADD", containerID: "lost", netns: p,
		conf: w.conf("1.0.0", map[string]any{"nodeName": nil, "policySetupTimeout": "10s", "bpffsRoot": t.TempDir()})})
	took := time.Since(start)
	t.Logf("ADD failed after %s: %+v", took.Round(time.Millisecond), o.err)
	if took >= 10*time.Second { // it must not wait for an agent that will never program it
		t.Errorf("ADD on an unregistered node took %s, the whole policySetupTimeout", took)
	}
	if o.err == nil || o.err.Code != types.ErrTryAgainLater ||
		!strings.Contains(o.err.Msg, fmt.Sprintf("node %q is not registered", hostname)) || !strings.Contains(o.err.Msg, "sets no \"nodeName\"") {
		t.Errorf("ADD on an unregistered node: %+v, want code 11 naming node %q and the missing nodeName", o.err, hostname)
	}
	if bs, _, err := w.ds.Blocks().List(t.Context()); err != nil || len(bs) != 0 {
		t.Errorf("blocks after the refused ADD: %+v, %v; want none", bs, err)
	}
	if _, err := w.ds.Handles().Get(t.Context(), "lost"); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("IPAM handle after the refused ADD: %v", err)
	}
	w.host.AssertLinkGone(t, workload.HostVethName("lost"))
}

// ADD of a pod whose API server does not answer fails with code 11 and leaves nothing; a
// kubeconfig that is missing is code 7.
func TestAddKubernetesUnreachable(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	args := "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web"
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "`+closedPort(t)+`"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	path, _ := workloadNS(t)
	for _, c := range []struct {
		kubeconfig string
		code       uint
		want       string
	}{
		{kc, types.ErrTryAgainLater, "cannot read the labels of pod prod/web from the Kubernetes API server"},
		{kc + ".missing", types.ErrInvalidNetworkConfig, "kubernetes.kubeconfig"},
	} {
		o := run(t, w.host, call{cmd: "ADD", containerID: "c1", netns: path, args: args,
			conf: w.conf("1.0.0", map[string]any{"kubernetes": map[string]any{"kubeconfig": c.kubeconfig}})})
		if o.err == nil || o.err.Code != c.code || !strings.Contains(o.err.Msg+" "+o.err.Details, c.want) {
			t.Errorf("ADD with kubeconfig %s: %v, want code %d with %q", c.kubeconfig, o.err, c.code, c.want)
		}
		w.assertGone(t, "prod.web")
		inNS(t, path, func() error {
			if _, err := netlink.LinkByName("eth0"); err == nil {
				t.Error("eth0 left in the workload namespace")
			}
			return nil
		})
	}
}

// ADD of a pod by the real binaries, against an HTTP server speaking the API server's protocol
// (reached through a relay into the host namespace): the record holds the labels of the pod, its
// namespace and its service account, and the pod's named container ports.
func TestAddKubernetes(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	objects := map[string]string{
		"/api/v1/namespaces/prod/pods/web": `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"prod","labels":{"app":"web"}},` +
			`"spec":{"serviceAccountName":"web-sa","containers":[` +
			`{"name":"app","ports":[{"name":"http","containerPort":8080,"protocol":"TCP"},{"containerPort":9090},{"name":"dns","containerPort":53,"protocol":"UDP"}]},` +
			`{"name":"sidecar","ports":[{"name":"http","containerPort":8080,"protocol":"TCP"},{"name":"assoc","containerPort":3868,"protocol":"SCTP"}]}]}}`,
		"/api/v1/namespaces/prod":                        `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"prod","labels":{"team":"a"}}}`,
		"/api/v1/namespaces/prod/serviceaccounts/web-sa": `{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"web-sa","namespace":"prod","labels":{"role":"frontend"}}}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if body, ok := objects[r.URL.Path]; ok {
			_, _ = rw.Write([]byte(body))
			return
		}
		http.Error(rw, `{"kind":"Status","message":"not found"}`, http.StatusNotFound)
	}))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://`+w.host.Relay(t, u.Host)+`"}}]
users: [{name: u, user: {}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	path, _ := workloadNS(t)
	args := "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1"
	conf := w.conf("1.0.0", map[string]any{"kubernetes": map[string]any{"kubeconfig": kc}})
	if o := run(t, w.host, call{cmd: "ADD", containerID: "c1", netns: path, args: args, conf: conf}); o.err != nil {
		t.Fatalf("ADD: %v\nstderr: %s", o.err, o.stderr)
	}
	rec, err := w.ds.Workloads(node).Get(t.Context(), "prod.web")
	if err != nil {
		t.Fatal(err)
	}
	wantPorts := []datastore.EndpointPort{{Name: "http", Protocol: 6, Port: 8080}, {Name: "dns", Protocol: 17, Port: 53}, {Name: "assoc", Protocol: 132, Port: 3868}}
	if !slices.Equal(rec.Value.Ports, wantPorts) {
		t.Errorf("record ports %v, want %v", rec.Value.Ports, wantPorts)
	}
	for k, v := range map[string]string{"app": "web", "pcns.team": "a", "pcns.projectcalico.org/name": "prod",
		"projectcalico.org/serviceaccount": "web-sa", "pcsa.projectcalico.org/name": "web-sa", "pcsa.role": "frontend"} {
		if rec.Value.Labels[k] != v {
			t.Errorf("record label %s = %q, want %q (labels %v)", k, rec.Value.Labels[k], v, rec.Value.Labels)
		}
	}
	w.mustDel(t, "c1", path, args)
	w.assertGone(t, "prod.web")
}
