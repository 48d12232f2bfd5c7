package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/agentapi"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/datastore/etcdembed"
	"github.com/margaynet/margay/loader"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Main runs a test package that uses Binaries, then the package's own clean-ups (a lab its tests
// share, say), then removes the binaries: call it from the package's TestMain. Without it every
// test process would leave its ≈200 MB in the temporary directory.
func Main(m *testing.M, cleanups ...func()) {
	mainRuns.Store(true)
	code := m.Run()
	for _, c := range cleanups {
		c()
	}
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// mainRuns: Main runs the package's tests, and so removes what Binaries builds.
var mainRuns atomic.Bool

// Binaries builds margay-agent, margay-cni, margay-cni-direct, margay-docker and margayctl once per
// test process and returns their directory (the lab's --docker mode runs margay-docker). The
// package's TestMain must be Main, which removes them at the end.
func Binaries(tb testing.TB) string {
	tb.Helper()
	if !mainRuns.Load() {
		tb.Fatal("cluster.Binaries: the package's TestMain must call cluster.Main, which removes the binaries at exit")
	}
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "margay-bin-")
		if buildErr != nil {
			return
		}
		// Static, as make build and the image build them (no cgo resolver, no dynamic loader).
		build := exec.Command("go", "build", "-o", binDir, "github.com/margaynet/margay/cmd/margay-agent",
			"github.com/margaynet/margay/cmd/margay-cni", "github.com/margaynet/margay/cmd/margay-cni-direct", "github.com/margaynet/margay/cmd/margay-docker",
			"github.com/margaynet/margay/cmd/margayctl")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := build.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return binDir
}

// BuildAgent builds margay-agent with main.version set to version into a directory of its own
// and returns the binary's path: a second agent to upgrade to.
func BuildAgent(tb testing.TB, version string) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "margay-agent")
	out, err := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version="+version,
		"github.com/margaynet/margay/cmd/margay-agent").CombinedOutput()
	if err != nil {
		tb.Fatalf("go build margay-agent %s: %v\n%s", version, err, out)
	}
	return bin
}

// Cluster is an etcd and a segment that hosts join.
type Cluster struct {
	tb      testing.TB
	DS      *datastore.Client
	etcd    string // host:port of the embedded etcd, in the test's namespace
	segment *netns.NS
	hosts   []*Host
	ports   int // veths attached to the segment by Attach

	etcdMu  sync.Mutex
	etcdSrv *etcdembed.Etcd // nil while stopped (StopEtcd)
	etcdDir string

	secrets *secrets // strings no agent may write to its output
}

// secrets are strings (passwords) that must never appear in an agent's output.
type secrets struct {
	mu   sync.Mutex
	list []string
}

// Secret makes it an error for any agent of the cluster, running or started later, to write s to
// its log (or anywhere on its standard output or error).
func (c *Cluster) Secret(s string) {
	c.secrets.mu.Lock()
	defer c.secrets.mu.Unlock()
	c.secrets.list = append(c.secrets.list, s)
}

// secretCheck passes an agent's output on to w and fails the test on a line holding a secret.
type secretCheck struct {
	w       io.Writer
	secrets *secrets
	tb      testing.TB
	name    string
}

func (s secretCheck) Write(p []byte) (int, error) {
	s.secrets.mu.Lock()
	for _, secret := range s.secrets.list {
		if strings.Contains(string(p), secret) {
			s.tb.Errorf("%s: the agent wrote a secret to its output", s.name)
		}
	}
	s.secrets.mu.Unlock()
	return s.w.Write(p)
}

// New starts an etcd with the pool 198.19.0.0/16 in /26 blocks and a segment (a bridge in a
// namespace of its own) for the hosts' uplinks.
func New(tb testing.TB) *Cluster {
	tb.Helper()
	c := &Cluster{tb: tb, etcdDir: tb.TempDir(), secrets: &secrets{}}
	e := c.startEtcd("http://127.0.0.1:0")
	tb.Cleanup(func() {
		c.etcdMu.Lock()
		defer c.etcdMu.Unlock()
		if c.etcdSrv != nil {
			c.etcdSrv.Close()
		}
	})
	ds := datastoretest.Connect(tb, datastore.Config{Endpoints: e.Endpoints()})
	if _, err := ds.Pools().Create(context.Background(), "lab", datastore.Pool{Version: 1, Name: "lab",
		CIDR: netip.MustParsePrefix("198.19.0.0/16"), BlockSize: 26}); err != nil {
		tb.Fatal(err)
	}
	seg := netns.New(tb, "mgyseg-")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := seg.Netlink().LinkAdd(br); err != nil {
		tb.Fatalf("add bridge: %v", err)
	}
	if err := seg.Netlink().LinkSetUp(seg.Link(tb, "br0")); err != nil {
		tb.Fatal(err)
	}
	c.DS, c.etcd, c.segment = ds, strings.TrimPrefix(e.Endpoints()[0], "http://"), seg
	return c
}

// startEtcd starts the cluster's etcd on its data directory at clientURL; port 0 picks a free
// port below the ephemeral range, so that a restart can bind it again (an outgoing connection
// elsewhere may take any free ephemeral port while etcd is stopped).
func (c *Cluster) startEtcd(clientURL string) *etcdembed.Etcd {
	tb := c.tb
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	urls := []string{clientURL}
	if strings.HasSuffix(clientURL, ":0") {
		urls = urls[:0]
		for range 20 {
			urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", 20000+rand.IntN(12000)))
		}
	}
	var err error
	for _, u := range urls {
		var e *etcdembed.Etcd
		if e, err = etcdembed.Start(ctx, c.etcdDir, etcdembed.WithClientURL(u), etcdembed.WithUnsafeNoFsync()); err == nil {
			c.etcdMu.Lock()
			c.etcdSrv = e
			c.etcdMu.Unlock()
			return e
		}
	}
	tb.Fatalf("start embedded etcd: %v", err)
	return nil
}

// StopEtcd stops the cluster's etcd, as an outage would: clients' connections break and new
// ones are refused until StartEtcd.
func (c *Cluster) StopEtcd() {
	c.etcdMu.Lock()
	e := c.etcdSrv
	c.etcdSrv = nil
	c.etcdMu.Unlock()
	if e != nil {
		e.Close()
	}
}

// StartEtcd starts the cluster's etcd again after StopEtcd, on the same data and port, and
// returns once it serves.
func (c *Cluster) StartEtcd() {
	c.tb.Helper()
	c.startEtcd("http://" + c.etcd)
}

// Host is a namespace with an uplink ens32 on the segment and a margay-agent process.
type Host struct {
	Name string
	NS   *netns.NS
	Addr netip.Prefix
	Root string // bpffs root of its agent
	http string // agent's HTTP address inside NS
	etcd string // etcd's address inside NS (a relay)
	cmd  *exec.Cmd
	args []string
	tb   testing.TB
	// secrets are the cluster's: its agent's output is checked for them.
	secrets *secrets
	done    chan error
	// stopped: the current process was stopped and waited for.
	stopped bool
}

// AddHost creates a host at addr (e.g. 198.18.0.100/24) and starts its agent with extra flags.
func (c *Cluster) AddHost(name, addr string, flags ...string) *Host {
	tb := c.tb
	tb.Helper()
	h := &Host{Name: name, NS: netns.New(tb, "mgy"+name+"-"), Addr: netip.MustParsePrefix(addr), Root: netns.BPFFS(tb),
		http: "127.0.0.1:9091", secrets: c.secrets}
	c.Attach(h.NS, "ens32", addr)
	h.etcd = "http://" + h.NS.Relay(tb, c.etcd)
	args := append([]string{"--node-name", name, "--uplink", "ens32", "--bpffs-root", h.Root,
		"--etcd-endpoints", h.etcd, "--http-addr", h.http, "--reconcile-interval", "2s", "--default-pool", ""}, flags...)
	h.args, h.tb = args, tb
	h.Start()
	tb.Cleanup(func() {
		h.Stop()
		_ = exec.Command(filepath.Join(Binaries(tb), "margay-agent"), "--cleanup", "--bpffs-root", h.Root).Run()
	})
	c.hosts = append(c.hosts, h)
	return h
}

// Endpoint is the etcd endpoint to use from inside host h, for margayctl run there.
func (c *Cluster) Endpoint(h *Host) string { return h.etcd }

// Start starts the host's agent process (again, after Stop).
func (h *Host) Start() {
	h.tb.Helper()
	h.StartBinary(filepath.Join(Binaries(h.tb), "margay-agent"))
}

// StartBinary starts the host's agent from another margay-agent binary (an upgrade, say), with
// the same flags.
func (h *Host) StartBinary(bin string) {
	h.tb.Helper()
	h.cmd = h.NS.Command(bin, h.args...)
	h.cmd.Stdout, h.cmd.Stderr = h.output(), h.output()
	if err := h.cmd.Start(); err != nil {
		h.tb.Fatal(err)
	}
	done := make(chan error, 1)
	h.done, h.stopped = done, false
	cmd := h.cmd
	go func() { err := cmd.Wait(); done <- err }()
}

// output is where the agent's standard output and error go: the test log, checked for the
// cluster's secrets.
func (h *Host) output() io.Writer {
	w := netns.LogWriter(h.tb, h.Name+": ")
	if h.secrets == nil {
		return w
	}
	return secretCheck{w: w, secrets: h.secrets, tb: h.tb, name: h.Name}
}

// Stop ends the host's agent with SIGTERM, as systemctl stop or a DaemonSet rollout does, and
// waits for it.
func (h *Host) Stop() {
	if h.stopped {
		return
	}
	h.stopped = true
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(10 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.done
	}
}

// Get fetches a path of the agent's HTTP server from inside the host.
func (h *Host) Get(path string) (int, string, error) { return h.GetWithin(path, 5*time.Second) }

// GetWithin is Get with another timeout (a profile, say).
func (h *Host) GetWithin(path string, timeout time.Duration) (int, string, error) {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := h.NS.Do(func() (err error) { c, err = net.Dial(network, addr); return err })
			return c, err
		}}}
	resp, err := client.Get("http://" + h.http + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// Maps opens the host's pinned maps (closed at cleanup), waiting for its agent to pin them.
func (h *Host) Maps(tb testing.TB) *maps.Set {
	tb.Helper()
	var set *maps.Set
	poll.Until(tb, h.Name+" pinned its maps", 20*time.Second, func() (err error) { set, err = maps.OpenPinned(h.Root); return err })
	tb.Cleanup(func() { set.Close() })
	return set
}

// Attach puts a namespace on the segment with an interface ifname at addr, e.g. a gateway router.
func (c *Cluster) Attach(ns *netns.NS, ifname, addr string) {
	tb := c.tb
	tb.Helper()
	port := fmt.Sprintf("x%d", c.ports)
	c.ports++
	netns.Veth(tb, ns, ifname, c.segment, port)
	if err := c.segment.Netlink().LinkSetMaster(c.segment.Link(tb, port), c.segment.Link(tb, "br0").(*netlink.Bridge)); err != nil {
		tb.Fatal(err)
	}
	ns.AddAddr(tb, ifname, addr)
}

// Workload is a container on a host, connected by the real CNI plugin.
type Workload struct {
	Name string
	NS   *netns.NS
	IP   netip.Addr
	Host *Host
	cni  func(command string) ([]byte, error)
	gone bool
}

// Del runs margay-cni DEL for the workload, as a runtime does when the container goes.
func (w *Workload) Del() error {
	out, err := w.cni("DEL")
	if err != nil {
		return fmt.Errorf("margay-cni DEL %s: %w\n%s", w.Name, err, out)
	}
	w.gone = true
	return nil
}

// AddWorkload creates a namespace and runs margay-cni ADD for it on h, exactly as a container
// runtime does (environment and stdin); DEL runs at cleanup.
func (c *Cluster) AddWorkload(h *Host, name string) *Workload {
	c.tb.Helper()
	return c.StartWorkload(h, name)()
}

// WaitCompiled waits until the agent of every host reports (on /policy) that the policy in force
// was compiled with each of the workload records at least at the given revision (key:
// "<node>/<id>", as EditRecord returns): its labels, profiles and named ports count.
func WaitCompiled(tb testing.TB, hosts []*Host, revs map[string]int64) {
	tb.Helper()
	for _, h := range hosts {
		poll.Until(tb, "the agent of "+h.Name+" compiles the workload records", 60*time.Second, func() error {
			code, body, err := h.Get(agentapi.PathPolicy)
			if err != nil {
				return err
			}
			var st struct {
				Workloads map[string]int64 `json:"workloads"`
			}
			if code != 200 || json.Unmarshal([]byte(body), &st) != nil {
				return fmt.Errorf("/policy: %d %s", code, body)
			}
			for key, rev := range revs {
				if st.Workloads[key] < rev {
					return fmt.Errorf("workload %s at revision %d, want %d", key, st.Workloads[key], rev)
				}
			}
			return nil
		})
	}
}

// EditRecord changes the workload's record in ds as an orchestrator would: the CNI plugin writes
// neither namespace nor labels, profiles or named ports. edit gets the record as stored; it is
// written back by compare-and-swap, read and edited again after a conflict.
//
// It returns the record's key ("<node>/<id>") and its new revision, for WaitCompiled.
func (w *Workload) EditRecord(tb testing.TB, ds *datastore.Client, edit func(*datastore.Workload)) (string, int64) {
	tb.Helper()
	ctx := tb.Context()
	want := netip.PrefixFrom(w.IP, 32)
	for attempt := 0; ; attempt++ {
		items, _, err := ds.AllWorkloads().List(ctx)
		if err != nil {
			tb.Fatal(err)
		}
		i := slices.IndexFunc(items, func(it datastore.Item[datastore.Workload]) bool {
			return slices.Contains(it.Value.IPv4, want)
		})
		if i < 0 {
			tb.Fatalf("no workload record holds %s (%s)", w.IP, w.Name)
		}
		v := items[i].Value
		edit(&v)
		rev, err := ds.Workloads(v.Node).Update(ctx, v.ID, v, items[i].ModRevision)
		if err == nil {
			return items[i].Name, rev
		}
		if !errors.Is(err, datastore.ErrConflict) || attempt > 5 {
			tb.Fatalf("edit the record of %s: %v", w.Name, err)
		}
	}
}

// WaitProgrammed waits until the workload's host agent has programmed it: its endpoint in the
// endpoints map and the programs attached to its cali* interface (the last step), so that all its
// traffic from then on takes the eBPF paths.
func (w *Workload) WaitProgrammed(tb testing.TB) {
	tb.Helper()
	set := w.Host.Maps(tb)
	poll.Until(tb, fmt.Sprintf("%s programmed on %s", w.Name, w.Host.Name), 30*time.Second, func() error {
		eps, err := set.Endpoints.List()
		if err != nil {
			return err
		}
		for _, ep := range eps {
			if ep.IPv4 != w.IP {
				continue
			}
			link, err := w.Host.NS.Netlink().LinkByIndex(int(ep.Ifindex))
			if err != nil {
				return err
			}
			for _, hook := range []loader.Hook{loader.HookFromWep, loader.HookToWep} {
				if _, err := os.Stat(loader.LinkPin(w.Host.Root, link.Attrs().Name, hook)); err != nil {
					return fmt.Errorf("%s not attached yet: %w", hook, err)
				}
			}
			return nil
		}
		return fmt.Errorf("no endpoint for %v yet", w.IP)
	})
}

// SetSegmentMTU sets the MTU of the segment's bridge and of every port on it.
func (c *Cluster) SetSegmentMTU(tb testing.TB, mtu int) {
	tb.Helper()
	links, err := c.segment.Netlink().LinkList()
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range links {
		if l.Attrs().Name == "lo" {
			continue
		}
		if err := c.segment.Netlink().LinkSetMTU(l, mtu); err != nil {
			tb.Fatalf("set MTU of %s: %v", l.Attrs().Name, err)
		}
	}
}
