package benchsuite_test

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/docker"
	"github.com/margaynet/margay/control/lab"
	"github.com/margaynet/margay/tests/benchsuite"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/poll"
)

// Issue 21's benchmark: `docker run` until the container answers a ping from another host, with
// Margay's Docker plugin and with Docker's own bridge driver on the same dockerd, interleaved.

const (
	dockerResults = "docker-run.json" // beside the plots
	dockerImage   = "busybox:margay"
	driverMargay  = "margay"
	driverBridge  = "bridge"
	margayNet     = "net1"
	bridgeNet     = "br1"
	// bridgeSubnet is the bridge network's: used by no other test, routed to vm100 by vm101.
	bridgeSubnet = "198.18.72.0/24"
	// reachTimeout bounds one container's wait for its first echo reply.
	reachTimeout = 30 * time.Second
	// warmTimeout bounds the warm-up's: Margay's first container claims a block, which BGP
	// announces to vm101 only once the session is up.
	warmTimeout = 90 * time.Second
)

var (
	vm100Addr = netip.MustParseAddr("198.18.0.100")
	vm101Addr = netip.MustParseAddr("198.18.0.101")
	// hostsNet is the hosts' segment, where the prober's echo requests come from.
	hostsNet = netip.MustParsePrefix("198.18.0.0/24")
)

// dockerDrivers are the measured networks; the first is the ratios' numerator.
var dockerDrivers = []benchsuite.DockerDriver{
	{Key: driverMargay, Title: "Margay: margay-docker, its IPAM, the agent's eBPF dataplane",
		Create: "docker network create --driver margay --ipam-driver margay-ipam " + margayNet},
	{Key: driverBridge, Title: "Docker's bridge driver and default IPAM: a Linux bridge, the host kernel routing, no iptables",
		Create: "docker network create --driver bridge --subnet " + bridgeSubnet + " " + bridgeNet},
}

func plotsDir() string { return cmp.Or(os.Getenv("BENCH_PLOTS"), "../../docs/bench") }

// dockerClient is the docker client the benchmark runs: BENCH_DOCKER_CLIENT, else Debian's
// (/usr/bin/docker, the release of its dockerd), else the first on PATH.
func dockerClient() string {
	if c := os.Getenv("BENCH_DOCKER_CLIENT"); c != "" {
		return c
	}
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		return "/usr/bin/docker"
	}
	return "docker"
}

// margayDockerBinary is cmd/margay-docker, built with the cluster's binaries.
func margayDockerBinary(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(cluster.Binaries(tb), "margay-docker")
}

// dockerBench is the set-up: two hosts with their agents (BGP mesh), vm100's dockerd and
// margay-docker, both networks, the prober in vm101.
type dockerBench struct {
	dh           lab.DockerHost
	c            *cluster.Cluster
	vm100, vm101 *cluster.Host
	nets         map[string]string // driver → network name
	bridge       string            // the bridge network's Linux bridge in vm100, br-<id>
	prober       *icmpProber
	api          *http.Client // dockerd's API socket
	connects     sync.Map     // container ID → time.Time of its network connect event
	root         rootState    // the machine's own namespace before anything was set up
	checks       []string
	notes        []string
	machine      []string
}

func newDockerBench(tb testing.TB) *dockerBench {
	tb.Helper()
	if _, err := exec.LookPath("dockerd"); err != nil {
		tb.Fatal("no dockerd: make deps installs docker.io")
	}
	ctx := context.Background()
	bin := margayDockerBinary(tb)
	d := &dockerBench{root: snapshotRoot(tb), nets: map[string]string{driverMargay: margayNet, driverBridge: bridgeNet}}
	d.c = cluster.New(tb)
	d.vm100 = d.c.AddHost("vm100", netip.PrefixFrom(vm100Addr, 24).String(), "--bgp")
	d.vm101 = d.c.AddHost("vm101", netip.PrefixFrom(vm101Addr, 24).String(), "--bgp")

	// The network's profile, written before the plugin would: its own rules (members reach each
	// other) and ICMP from the hosts' segment, so that vm101's echo requests are admitted. The
	// plugin never overwrites an existing profile.
	p := docker.Profile(margayNet)
	icmp := datastore.Protocol(1)
	p.Ingress = append(p.Ingress, datastore.Rule{Action: "allow", Protocol: &icmp, Source: datastore.EntityRule{Nets: []netip.Prefix{hostsNet}}})
	if _, err := d.c.DS.Profiles().Create(ctx, margayNet, p); err != nil {
		tb.Fatal(err)
	}

	dir, err := os.MkdirTemp("", "mgyd") // short: dockerd's containerd sockets live below it
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	d.dh = lab.DockerHost{Name: "vm100", Netns: d.vm100.NS.Path, Dir: dir, CgroupParent: filepath.Base(dir), Client: dockerClient()}
	tb.Cleanup(func() {
		if err := d.dh.StopDocker(context.Background()); err != nil {
			tb.Errorf("stop vm100's docker: %v", err)
		}
	})
	if err := d.dh.StartNamespace(); err != nil {
		tb.Fatal(err)
	}
	if err := d.dh.StartDockerd(ctx); err != nil {
		b, _ := os.ReadFile(d.dh.LogFile("dockerd"))
		tb.Fatalf("%v\n%s", err, b)
	}
	if err := d.dh.StartPlugin(ctx, bin, "--etcd-endpoints", d.c.Endpoint(d.vm100),
		"--policy-setup-timeout", "20s", "--bpffs-root", d.vm100.Root); err != nil {
		tb.Fatal(err)
	}
	if err := d.dh.ImportBusybox(ctx, dockerImage); err != nil {
		tb.Fatal(err)
	}
	d.api = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.dh.Sock())
		}}}
	d.machine = d.versions(ctx)
	d.watchConnects(tb)

	ids := map[string]string{}
	for _, drv := range dockerDrivers {
		out, err := d.dh.Docker(ctx, strings.Fields(drv.Create)[1:]...)
		if err != nil {
			tb.Fatal(err)
		}
		ids[drv.Key] = strings.TrimSpace(out)
	}
	tb.Cleanup(func() {
		// Before StopDocker (cleanups run last first), so that a failed round leaves nothing:
		// the containers, then the networks.
		d.removeAll(context.Background())
		for _, n := range d.nets {
			_, _ = d.dh.Docker(context.Background(), "network", "rm", n)
		}
	})

	// Docker's bridge driver made its bridge inside vm100, where dockerd runs.
	if len(ids[driverBridge]) < 12 {
		tb.Fatalf("bridge network ID %q", ids[driverBridge])
	}
	d.bridge = "br-" + ids[driverBridge][:12]
	br, err := d.vm100.NS.Netlink().LinkByName(d.bridge)
	if err != nil {
		tb.Fatalf("the bridge network's %s is not in vm100's namespace: %v", d.bridge, err)
	}
	addrs, err := d.vm100.NS.Netlink().AddrList(br, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "198.18.72.1/24" {
		tb.Fatalf("%s's addresses: %v %v", d.bridge, addrs, err)
	}
	// vm100 forwards between the bridge and its uplink: ip_forward in its own namespace.
	fwd := d.forwarding(tb)
	if fwd != "1" {
		d.vm100.NS.MustSysctl(tb, "ipv4/ip_forward", "1")
		d.checks = append(d.checks, "vm100's namespace had net.ipv4.ip_forward="+fwd+"; the benchmark set it to 1 there.")
	}
	// vm101 routes the bridge network's subnet to vm100, as a router of that network would.
	d.vm101.NS.RouteVia(tb, bridgeSubnet, vm100Addr.String(), "ens32")
	d.prober = newICMPProber(tb, d.vm101, vm101Addr, 5*time.Millisecond)

	// vm101 routes vm100's block, which vm100's agent claimed at its start, as BGP announced it.
	var block string
	poll.Until(tb, "vm101 has a BGP route to vm100's block", 60*time.Second, func() error {
		bs, _, err := d.c.DS.Blocks().List(ctx)
		if err != nil {
			return err
		}
		for _, b := range bs {
			if b.Value.Node() == d.vm100.Name {
				block = b.Value.CIDR.String()
				out, err := d.vm101.NS.Run("ip", "-4", "route", "show", block)
				if err != nil || !strings.Contains(out, "via "+vm100Addr.String()) {
					return fmt.Errorf("route to %s in vm101: %q %v", block, out, err)
				}
				return nil
			}
		}
		return fmt.Errorf("vm100 has no block yet")
	})

	// Warm-up, not counted: a container per driver, reached from vm101.
	var warm []string
	for _, drv := range dockerDrivers {
		s, id, err := d.measure(ctx, drv.Key, warmTimeout)
		if err != nil {
			d.diagnose(tb, drv.Key, id)
			tb.Fatalf("warm-up, %s: %v", drv.Key, err)
		}
		warm = append(warm, fmt.Sprintf("%s reachable at %.0f ms (endpoint joined at %.0f ms, `docker run` returned at %.0f ms, echo requests sent: %d)",
			drv.Key, s.ReachMs, s.JoinMs, s.RunMs, s.Probes))
	}
	d.notes = append(d.notes, "Warm-up, not counted: "+strings.Join(warm, "; ")+".")
	ports := d.bridgePorts(tb)
	if len(ports) != 1 {
		tb.Fatalf("%s has ports %v, want the warm-up container's veth", d.bridge, ports)
	}
	d.checkRoot(tb)
	d.checks = append(d.checks,
		fmt.Sprintf("`%s` made the Linux bridge %s with 198.18.72.1/24 inside vm100's network namespace (where dockerd runs), and the warm-up container's host-side veth %s is its port there; vm100's namespace has net.ipv4.ip_forward=1, vm101's a route to %s via 198.18.0.100.", dockerDrivers[1].Create, d.bridge, ports[0], bridgeSubnet),
		"The machine's own network namespace was compared before the set-up and with both networks and the warm-up containers in place (and again after the last round): no new link named br-*, veth*, docker*, cali* or tmp*, no route or iptables rule naming 198.18.* or Docker, and the same net.ipv4.ip_forward.",
		fmt.Sprintf("The profile %s was written before the network was used: the plugin's own rules (docker.Profile: ingress from the network's members, egress anywhere) and `allow icmp from %s`, the hosts' segment; without it Margay's policy drops vm101's echo requests, which do not come from a member. The bridge network has no policy (`--iptables=false`).", margayNet, hostsNet),
		fmt.Sprintf("vm101 had its BGP route to vm100's block %s before the first container.", block),
		"Both warm-up containers answered vm101's echo requests (below); then they were removed and Margay's record was gone before the first round.")
	d.removeAll(ctx)
	d.waitClean(tb)
	return d
}

// versions are the machine and the Docker binaries, for the report.
func (d *dockerBench) versions(ctx context.Context) []string {
	m := machine()[:2] // kernel, CPUs
	if v, err := d.dh.Docker(ctx, "version", "--format", "dockerd {{.Server.Version}} (API {{.Server.APIVersion}}), client {{.Client.Version}}"); err == nil {
		m = append(m, strings.TrimSpace(v)+" ("+d.dh.Client+")")
	}
	return append(m, "Go: "+runtime.Version())
}

// forwarding is vm100's net.ipv4.ip_forward, read inside its namespace.
func (d *dockerBench) forwarding(tb testing.TB) string {
	tb.Helper()
	var v []byte
	if err := d.vm100.NS.Do(func() (err error) { v, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward"); return err }); err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

// bridgePorts are the names of the links in vm100 whose master is the bridge network's bridge.
func (d *dockerBench) bridgePorts(tb testing.TB) []string {
	tb.Helper()
	nl := d.vm100.NS.Netlink()
	br, err := nl.LinkByName(d.bridge)
	if err != nil {
		tb.Fatal(err)
	}
	links, err := nl.LinkList()
	if err != nil {
		tb.Fatal(err)
	}
	var ports []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			ports = append(ports, l.Attrs().Name)
		}
	}
	return ports
}

// measure runs one container on a driver's network and times it until it answers vm101.
func (d *dockerBench) measure(ctx context.Context, driver string, timeout time.Duration) (benchsuite.DockerSample, string, error) {
	var s benchsuite.DockerSample
	t0 := time.Now()
	out, err := d.dh.Docker(ctx, "run", "-d", "--net", d.nets[driver], dockerImage, "sleep", "1000")
	tRun := time.Now()
	id := containerID(out)
	if err != nil {
		return s, id, err
	}
	addr, err := d.address(ctx, id, d.nets[driver])
	tAddr := time.Now()
	if err != nil {
		return s, id, err
	}
	t1, probes, err := d.prober.firstReply(addr, timeout)
	ms := func(t time.Time) float64 { return float64(t.Sub(t0).Nanoseconds()) / 1e6 }
	s = benchsuite.DockerSample{RunMs: ms(tRun), AddrMs: ms(tAddr), ReachMs: ms(t1), Probes: probes}
	if err != nil {
		return s, id, fmt.Errorf("%s container %.12s at %s: %w", driver, id, addr, err)
	}
	// After the timed part: the connect event came before `docker run` returned, but its
	// delivery may trail.
	if err := poll.Every(time.Millisecond, 5*time.Second, func() error {
		v, ok := d.connects.Load(id)
		if !ok {
			return fmt.Errorf("no network connect event for container %.12s", id)
		}
		s.JoinMs = ms(v.(time.Time))
		return nil
	}); err != nil {
		return s, id, err
	}
	return s, id, nil
}

// watchConnects follows dockerd's network connect events, which dockerd sends once a
// container's endpoint has joined its sandbox (after the driver's CreateEndpoint and Join),
// before the runtime starts the container: when each container's network was in place.
func (d *dockerBench) watchConnects(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	filters := url.QueryEscape(`{"type":["network"],"event":["connect"]}`)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/events?filters="+filters, nil)
	if err != nil {
		tb.Fatal(err)
	}
	// No timeout: the answer is a stream.
	resp, err := (&http.Client{Transport: d.api.Transport}).Do(req)
	if err != nil {
		cancel()
		tb.Fatalf("dockerd's events: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		dec := json.NewDecoder(resp.Body)
		for {
			var ev struct {
				Actor    struct{ Attributes map[string]string }
				TimeNano int64 `json:"timeNano"`
			}
			if dec.Decode(&ev) != nil {
				return
			}
			if c := ev.Actor.Attributes["container"]; c != "" {
				d.connects.Store(c, time.Unix(0, ev.TimeNano))
			}
		}
	}()
	tb.Cleanup(func() { cancel(); resp.Body.Close(); <-done })
}

// containerID is the last line of `docker run -d`'s output, the new container's ID.
func containerID(out string) string {
	lines := strings.Fields(out)
	if len(lines) == 0 {
		return ""
	}
	return lines[len(lines)-1]
}

// address asks dockerd for the container's address on the network.
func (d *dockerBench) address(ctx context.Context, id, network string) (netip.Addr, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/containers/"+url.PathEscape(id)+"/json", nil)
	if err != nil {
		return netip.Addr{}, err
	}
	resp, err := d.api.Do(req)
	if err != nil {
		return netip.Addr{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return netip.Addr{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return netip.Addr{}, fmt.Errorf("inspect %.12s: %s: %s", id, resp.Status, body)
	}
	var c struct {
		NetworkSettings struct {
			Networks map[string]struct{ IPAddress string }
		}
	}
	if err := json.Unmarshal(body, &c); err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(c.NetworkSettings.Networks[network].IPAddress)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("container %.12s has no address on %s: %w", id, network, err)
	}
	return a, nil
}

// removeAll removes every container of vm100's dockerd (all are the benchmark's).
func (d *dockerBench) removeAll(ctx context.Context) {
	out, err := d.dh.Docker(ctx, "ps", "-aq")
	if err != nil || strings.TrimSpace(out) == "" {
		return
	}
	_, _ = d.dh.Docker(ctx, append([]string{"rm", "-f"}, strings.Fields(out)...)...)
}

// waitClean waits until no container, Margay record or bridge port is left.
func (d *dockerBench) waitClean(tb testing.TB) {
	tb.Helper()
	poll.Until(tb, "vm100 holds no container, workload record or bridge port", 60*time.Second, func() error {
		out, err := d.dh.Docker(context.Background(), "ps", "-aq")
		if err != nil {
			return err
		}
		if s := strings.TrimSpace(out); s != "" {
			return fmt.Errorf("containers left: %s", s)
		}
		ws, _, err := d.c.DS.Workloads(d.vm100.Name).List(context.Background())
		if err != nil {
			return err
		}
		if len(ws) != 0 {
			return fmt.Errorf("%d workload records left", len(ws))
		}
		if ports := d.bridgePorts(tb); len(ports) != 0 {
			return fmt.Errorf("bridge ports left: %v", ports)
		}
		return nil
	})
}

// diagnose logs what shows why a container was not reached.
func (d *dockerBench) diagnose(tb testing.TB, driver, id string) {
	tb.Helper()
	ctx := context.Background()
	if id != "" {
		out, _ := d.dh.Docker(ctx, "inspect", id)
		tb.Logf("docker inspect %s:\n%s", id, out)
		for _, c := range [][]string{{"ip", "addr"}, {"ip", "route"}, {"ip", "neigh"}} {
			out, _ := d.dh.Docker(ctx, append([]string{"exec", id}, c...)...)
			tb.Logf("in the %s container, %s:\n%s", driver, strings.Join(c, " "), out)
		}
	}
	for _, h := range []*cluster.Host{d.vm100, d.vm101} {
		for _, c := range [][]string{{"ip", "-4", "route"}, {"ip", "-4", "neigh"}, {"ip", "-br", "link"}} {
			out, _ := h.NS.Run(c[0], c[1:]...)
			tb.Logf("%s: %s:\n%s", h.Name, strings.Join(c, " "), out)
		}
	}
	for _, f := range []string{"margay-docker", "dockerd"} {
		b, _ := os.ReadFile(d.dh.LogFile(f))
		tb.Logf("%s's log (end):\n%s", f, lastLines(string(b), 30))
	}
}

// run measures rounds rounds of n containers per driver, interleaved.
func (d *dockerBench) run(tb testing.TB, rounds, n int) *benchsuite.DockerRun {
	tb.Helper()
	ctx := context.Background()
	res := &benchsuite.DockerRun{Generated: time.Now().UTC(), Machine: d.machine, Containers: n,
		IntervalMs: float64(d.prober.interval) / float64(time.Millisecond), Drivers: dockerDrivers}
	for r := range rounds {
		order := []string{driverMargay, driverBridge}
		if r%2 == 1 {
			slices.Reverse(order)
		}
		round := benchsuite.DockerRound{Start: time.Now().UTC(), Load1: load1(), Order: order, Samples: map[string][]benchsuite.DockerSample{}}
		for i := range n {
			for _, drv := range order {
				s, id, err := d.measure(ctx, drv, reachTimeout)
				if err != nil {
					d.diagnose(tb, drv, id)
					tb.Fatalf("round %d, container %d: %v", r+1, i+1, err)
				}
				tb.Logf("round %d #%02d %-6s joined %6.0f ms, run returned %6.0f ms, address %6.0f ms, reachable %6.0f ms (echo requests sent: %d)",
					r+1, i+1, drv, s.JoinMs, s.RunMs, s.AddrMs, s.ReachMs, s.Probes)
				round.Samples[drv] = append(round.Samples[drv], s)
			}
		}
		res.Rounds = append(res.Rounds, round)
		var line []string
		for _, drv := range []string{driverMargay, driverBridge} {
			v := make([]float64, 0, n)
			for _, s := range round.Samples[drv] {
				v = append(v, s.ReachMs)
			}
			line = append(line, fmt.Sprintf("%s p50 %5.0f p99 %5.0f ms", drv, benchsuite.Percentile(v, 50), benchsuite.Percentile(v, 99)))
		}
		fmt.Fprintf(os.Stderr, "docker round %d (load %.1f, %s first): %s\n", r+1, round.Load1, order[0], strings.Join(line, ", "))
		d.removeAll(ctx)
		d.waitClean(tb)
	}
	res.Finished = time.Now().UTC()
	d.checkRoot(tb)
	res.Checks, res.Notes = d.checks, append(d.notes, d.pluginComplaints())
	return res
}

// pluginComplaints says what margay-docker logged at level WARN or ERROR during the run.
func (d *dockerBench) pluginComplaints() string {
	b, err := os.ReadFile(d.dh.LogFile("margay-docker"))
	if err != nil {
		return fmt.Sprintf("margay-docker's log could not be read: %v.", err)
	}
	var bad []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			bad = append(bad, l)
		}
	}
	if len(bad) == 0 {
		return "margay-docker logged no warning and no error during the run."
	}
	return fmt.Sprintf("margay-docker logged %d warnings or errors during the run; the first: `%s`.", len(bad), bad[0])
}

func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// rootState is what Docker might change in the machine's own network namespace. This process's
// threads are in it (netns.NS.Do switches a locked thread only), and so are the commands it
// starts.
type rootState struct {
	links   []string
	forward string
	routes  string
	rules   string
}

func snapshotRoot(tb testing.TB) rootState {
	tb.Helper()
	var s rootState
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.SplitN(l, ": ", 3); len(f) >= 2 {
			name, _, _ := strings.Cut(f[1], "@")
			s.links = append(s.links, name)
		}
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		tb.Fatal(err)
	}
	s.forward = strings.TrimSpace(string(b))
	if out, err = exec.Command("ip", "-4", "route", "show", "table", "all").Output(); err != nil {
		tb.Fatal(err)
	}
	s.routes = string(out)
	out, _ = exec.Command("iptables-save").Output() // none, without iptables
	s.rules = string(out)
	return s
}

// checkRoot fails the test if the machine's namespace gained anything Docker or the benchmark
// would make.
func (d *dockerBench) checkRoot(tb testing.TB) {
	tb.Helper()
	now := snapshotRoot(tb)
	for _, l := range now.links {
		if slices.Contains(d.root.links, l) {
			continue
		}
		for _, p := range []string{"br-", "veth", "docker", "cali", "tmp"} {
			if strings.HasPrefix(l, p) {
				tb.Fatalf("the machine's own namespace has a new link %s", l)
			}
		}
	}
	if now.forward != d.root.forward {
		tb.Fatalf("the machine's net.ipv4.ip_forward went from %s to %s", d.root.forward, now.forward)
	}
	count := func(s string, subs ...string) (n int) {
		for _, sub := range subs {
			n += strings.Count(s, sub)
		}
		return n
	}
	if count(now.routes, "198.18.", "198.19.", "br-") != count(d.root.routes, "198.18.", "198.19.", "br-") {
		tb.Fatalf("the machine's routes changed:\n%s", now.routes)
	}
	if count(now.rules, "DOCKER", "198.18.", "br-") != count(d.root.rules, "DOCKER", "198.18.", "br-") {
		tb.Fatalf("the machine's iptables rules changed:\n%s", now.rules)
	}
}

// icmpProber sends ICMP echo requests from a host's namespace over a raw socket.
type icmpProber struct {
	conn     *net.IPConn
	interval time.Duration
	id       uint16 // the last probe's ICMP id; every probe takes the next
}

func newICMPProber(tb testing.TB, h *cluster.Host, src netip.Addr, interval time.Duration) *icmpProber {
	tb.Helper()
	p := &icmpProber{interval: interval, id: uint16(rand.Uint32())}
	// The socket stays in the namespace it was made in.
	if err := h.NS.Do(func() (err error) {
		p.conn, err = net.ListenIP("ip4:icmp", &net.IPAddr{IP: src.AsSlice()})
		return err
	}); err != nil {
		tb.Fatalf("raw ICMP socket in %s: %v", h.Name, err)
	}
	tb.Cleanup(func() { p.conn.Close() })
	return p
}

// firstReply sends dst an echo request every interval, from now, until one is answered, and
// returns when the first reply arrived and how many requests were sent until then.
func (p *icmpProber) firstReply(dst netip.Addr, timeout time.Duration) (time.Time, int, error) {
	p.id++
	id := p.id
	to := &net.IPAddr{IP: dst.AsSlice()}
	var sent atomic.Int64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(p.interval)
		defer tick.Stop()
		for seq := uint16(0); ; seq++ {
			// Counted before it leaves, so that a fast reply never finds it uncounted. Errors (no
			// route yet, say) are no reason to stop: the next request may pass.
			sent.Add(1)
			_, _ = p.conn.WriteToIP(echoRequest(id, seq), to)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { close(stop); <-done }()
	if err := p.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return time.Time{}, 0, err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFromIP(buf)
		now := time.Now()
		if err != nil {
			return now, int(sent.Load()), fmt.Errorf("no echo reply within %v (%d requests): %w", timeout, sent.Load(), err)
		}
		// The IPv4 header is stripped: type, code, checksum, id, sequence.
		if n < 8 || buf[0] != 0 || binary.BigEndian.Uint16(buf[4:6]) != id {
			continue
		}
		if a, ok := netip.AddrFromSlice(from.IP); !ok || a.Unmap() != dst {
			continue
		}
		return now, int(sent.Load()), nil
	}
}

func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 16)
	b[0] = 8 // echo request, code 0
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], "margay21")
	binary.BigEndian.PutUint16(b[2:], icmpChecksum(b))
	return b
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// TestDockerRunReachable is the docker run benchmark's set-up with two containers per driver,
// no timing asserted: the hosts, dockerd and margay-docker in vm100, both networks, the
// machine's own namespace untouched, and every container of both drivers answering vm101.
func TestDockerRunReachable(t *testing.T) {
	d := newDockerBench(t)
	res := d.run(t, 1, 2)
	for _, drv := range dockerDrivers {
		if got := len(res.Rounds[0].Samples[drv.Key]); got != 2 {
			t.Fatalf("%s: %d containers answered, want 2", drv.Key, got)
		}
	}
	t.Logf("\n%s\n%s", res.Table(), strings.Join(res.Notes, "\n"))
}

// BenchmarkDockerRun is issue 21's benchmark: `docker run` until the container answers a ping
// from another host, Margay's plugin against Docker's bridge driver on the same dockerd,
// interleaved over rounds. It writes docker-run.json beside the plots (BENCH_PLOTS,
// ../../docs/bench), which the suite renders into BENCHMARKS.md (make bench-docker does both).
// Settings: BENCH_DOCKER_ROUNDS (5), BENCH_DOCKER_CONTAINERS (20 per driver and round),
// BENCH_DOCKER_CLIENT (the docker client; Debian's /usr/bin/docker by default).
func BenchmarkDockerRun(b *testing.B) {
	rounds := envInt("BENCH_DOCKER_ROUNDS", 5)
	n := envInt("BENCH_DOCKER_CONTAINERS", 20)
	for b.Loop() {
	}
	b.ReportMetric(0, "ns/op")
	d := newDockerBench(b)
	res := d.run(b, rounds, n)
	res.Command = fmt.Sprintf("BENCH_DOCKER_ROUNDS=%d BENCH_DOCKER_CONTAINERS=%d %s", rounds, n, dockerCommand)
	if c := os.Getenv("BENCH_DOCKER_CLIENT"); c != "" {
		res.Command = "BENCH_DOCKER_CLIENT=" + c + " " + res.Command
	}
	if err := os.MkdirAll(plotsDir(), 0o755); err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(plotsDir(), dockerResults)
	if err := res.Save(path); err != nil {
		b.Fatal(err)
	}
	for _, m := range benchsuite.DockerMeasures[:2] {
		unit := strings.Fields(m.Name)[1] // p50, p99
		for _, drv := range dockerDrivers {
			b.ReportMetric(benchsuite.Summarize(res.PerRound(drv.Key, m)).Med, "ms-"+drv.Key+"-"+unit)
		}
		b.ReportMetric(benchsuite.Summarize(res.Ratios(m)).Med, "x-"+unit)
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n%s\n%s", path, res.Table(), res.RoundsTable())
}
