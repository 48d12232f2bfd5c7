package docker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/docker"
	"github.com/margaynet/margay/control/lab"
	"github.com/margaynet/margay/control/workload"
	"github.com/margaynet/margay/maps"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/poll"
)

// image is the containers' image: Debian's busybox-static (lab.BusyboxImage).
const image = "busybox:margay"

// The docker clients: the machine's current one, and Debian's docker.io of dockerd's version.
const (
	clientNew = "/usr/local/bin/docker" // 28.2
	clientOld = "/usr/bin/docker"       // 20.10, docker.io
)

// echoServer is every container's command: a persistent TCP echo server on 8080, under a shell
// that ends at SIGTERM (PID 1 ignores signals it has no handler for), so that docker stop is quick.
var echoServer = []string{"sh", "-c", `trap "exit 0" TERM; nc -ll -p 8080 -e cat & wait`}

// env is a cluster whose hosts each run dockerd and margay-docker.
type env struct {
	c     *cluster.Cluster
	hosts []*host
	bin   string // margay-docker

	mu       sync.Mutex
	etcdDown bool
}

// host is a cluster host with its Docker.
type host struct {
	*cluster.Host
	d    lab.DockerHost
	env  *env
	maps *maps.Set
}

// requireDocker fails the test when the machine lacks what it needs: the tests run by default,
// and a machine set up by make deps has it all.
func requireDocker(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"dockerd", clientOld, clientNew} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found (%v): the Docker end-to-end tests need Debian's docker.io (make deps installs it) and the machine's docker client in /usr/local/bin", bin, err)
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Fatalf("/bin/busybox: %v (make deps installs busybox-static)", err)
	}
}

// newEnv starts a cluster of n hosts (vm100, vm101, …), each with its agent, dockerd, the real
// margay-docker binary and the busybox image; everything is stopped at cleanup, also when the
// test fails, and the processes' logs are then shown.
func newEnv(t *testing.T, n int) *env {
	t.Helper()
	requireDocker(t)
	e := &env{c: cluster.New(t)}
	e.bin = filepath.Join(cluster.Binaries(t), "margay-docker")
	t.Logf("%s binaries built", stamp())
	for i := range n {
		e.hosts = append(e.hosts, &host{Host: e.c.AddHost(fmt.Sprintf("vm%d", 100+i), fmt.Sprintf("198.18.0.%d/24", 100+i)), env: e})
	}
	// After the hosts' own cleanups are registered, so that it runs before them, while the
	// agents and the etcd relays in the hosts still run.
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, h := range e.hosts {
			wg.Go(func() { h.stop(t) })
		}
		wg.Wait()
	})
	for _, h := range e.hosts {
		dir, err := os.MkdirTemp("", "mgyd") // short: containerd's sockets live below it
		if err != nil {
			t.Fatal(err)
		}
		h.d = lab.DockerHost{Name: h.Name, Netns: h.NS.Path, Dir: dir, CgroupParent: filepath.Base(dir)}
	}
	ctx := t.Context()
	start := time.Now()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, h := range e.hosts {
		wg.Go(func() {
			if err := h.d.StartNamespace(); err != nil {
				errs[i] = err
				return
			}
			if err := h.d.StartDockerd(ctx); err != nil {
				errs[i] = fmt.Errorf("%w\n%s", err, tail(h.d.LogFile("dockerd"), 40))
				return
			}
			if err := h.startPlugin(ctx); err != nil {
				errs[i] = err
				return
			}
			errs[i] = h.d.ImportBusybox(ctx, image)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s dockerd, margay-docker and the image on %d hosts in %s", stamp(), n, time.Since(start).Round(time.Millisecond))
	for _, h := range e.hosts {
		h.maps = h.Maps(t)
	}
	return e
}

// stop takes the host's Docker down (also after a failure: everything is found from its
// directory), shows the ends of the logs if the test failed, and removes the directory.
func (h *host) stop(t *testing.T) {
	if h.d.Dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := h.d.StopDocker(ctx); err != nil {
		t.Errorf("%s: stop docker: %v", h.Name, err)
	}
	t.Logf("%s %s: docker stopped in %s", stamp(), h.Name, time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		for _, name := range []string{"dockerd", "margay-docker"} {
			t.Logf("%s: the end of %s's log:\n%s", h.Name, name, tail(h.d.LogFile(name), 80))
		}
	}
	// MARGAY_DOCKER_LOGS=DIR keeps the whole logs, as DIR/mgyd…-<host>-dockerd.log and so on.
	if keep := os.Getenv("MARGAY_DOCKER_LOGS"); keep != "" {
		for _, name := range []string{"dockerd", "margay-docker"} {
			if b, err := os.ReadFile(h.d.LogFile(name)); err == nil {
				_ = os.WriteFile(filepath.Join(keep, filepath.Base(h.d.Dir)+"-"+h.Name+"-"+name+".log"), b, 0o644)
			}
		}
	}
	_ = os.RemoveAll(h.d.Dir)
}

// startPlugin starts the host's margay-docker with the cluster's etcd.
func (h *host) startPlugin(ctx context.Context) error {
	if err := h.d.StartPlugin(ctx, h.env.bin, "--etcd-endpoints", h.env.c.Endpoint(h.Host), "--log-level", "debug",
		"--call-timeout", callTimeout.String(), "--policy-setup-timeout", policySetupTimeout.String(), "--bpffs-root", h.Root); err != nil {
		return fmt.Errorf("%w\n%s", err, tail(h.d.LogFile("margay-docker"), 40))
	}
	return nil
}

// ensurePlugin starts the host's margay-docker unless it runs: a test that stops it restores it
// at cleanup, so that the next test finds it whatever happened.
func (h *host) ensurePlugin(t *testing.T) {
	t.Helper()
	if pidAlive(filepath.Join(h.d.Dir, "margay-docker.pid")) {
		return
	}
	if err := h.startPlugin(context.Background()); err != nil {
		t.Error(err)
	}
}

// ensureDockerd starts the host's dockerd unless it runs.
func (h *host) ensureDockerd(t *testing.T) {
	t.Helper()
	if pidAlive(filepath.Join(h.d.Dir, "dockerd.pid")) {
		return
	}
	if err := h.d.StartDockerd(context.Background()); err != nil {
		t.Errorf("%v\n%s", err, tail(h.d.LogFile("dockerd"), 40))
	}
}

// stopEtcd stops the cluster's etcd until startEtcd, which cleanup calls when a test did not.
func (e *env) stopEtcd(t *testing.T) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.c.StopEtcd()
	e.etcdDown = true
	t.Cleanup(e.startEtcd)
}

func (e *env) startEtcd() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.etcdDown {
		e.c.StartEtcd()
		e.etcdDown = false
	}
}

func pidAlive(file string) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 1 {
		return false
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(st)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || len(s) <= i+2 || s[i+2] != 'Z'
}

// t0 is when the tests started; stamp tells the time since, for the logs.
var t0 = time.Now()

func stamp() string { return fmt.Sprintf("+%.1fs", time.Since(t0).Seconds()) }

// tail returns the last n lines of a file.
func tail(file string, n int) string {
	b, err := os.ReadFile(file)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// callTimeout is the plugins' --call-timeout: how long docker run waits for an etcd that is down.
const callTimeout = 15 * time.Second

// policySetupTimeout is the plugin's wait for the agent before each container starts: a
// container runs only once its policy is in force, as in production.
const policySetupTimeout = 12 * time.Second

// dockerTimeout bounds one docker command; dockerd waits for the plugin without a limit of its own.
const dockerTimeout = 2 * time.Minute

// dockerWith runs the docker client (client "" is the default, the machine's) against the host's
// dockerd, and logs the command with its duration.
func (h *host) dockerWith(t testing.TB, client string, args ...string) (string, error) {
	t.Helper()
	d := h.d
	d.Client = client
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	start := time.Now()
	out, err := d.Docker(ctx, args...)
	t.Logf("%s %s: docker %s (%s): %v", stamp(), h.Name, shortArgs(args), time.Since(start).Round(time.Millisecond), err)
	return out, err
}

// shortArgs is a command line for the log, long arguments (scripts) cut.
func shortArgs(args []string) string {
	var b strings.Builder
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if len(a) > 40 || strings.Contains(a, "\n") {
			a = strings.ReplaceAll(a[:min(len(a), 30)], "\n", " ") + "…"
		}
		b.WriteString(a)
	}
	return b.String()
}

func (h *host) docker(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return h.dockerWith(t, "", args...)
}

// mustDocker runs docker and fails the test on error.
func (h *host) mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := h.docker(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ctr is a container on a host.
type ctr struct {
	h    *host
	name string
}

func (c ctr) String() string { return c.h.Name + "/" + c.name }

// run starts a container of network net running the echo server (docker run -d), with extra
// options before the image; it is removed at cleanup.
func (h *host) run(t *testing.T, name, net string, extra ...string) ctr {
	t.Helper()
	c, err := h.tryRun(t, "", name, net, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tryRun is run with a docker client of choice that returns docker's error.
func (h *host) tryRun(t *testing.T, client, name, net string, extra ...string) (ctr, error) {
	t.Helper()
	c := ctr{h, name}
	t.Cleanup(func() { h.remove(t, name) })
	args := append([]string{"run", "-d", "--name", name, "--net", net}, extra...)
	_, err := h.dockerWith(t, client, append(append(args, image), echoServer...)...)
	return c, err
}

// ip is the container's address on its (only) network.
func (c ctr) ip(t *testing.T) netip.Addr {
	t.Helper()
	eps := c.h.endpoints(t, c.name)
	if len(eps) != 1 {
		t.Fatalf("%s: want one network, have %+v", c, eps)
	}
	return eps[0].ip
}

// endpointInfo is a container's attachment to a network, as docker inspect shows it.
type endpointInfo struct {
	container, network, id string
	ip                     netip.Addr
}

func (ep endpointInfo) String() string {
	return fmt.Sprintf("%s on %s: %s (endpoint %.12s)", ep.container, ep.network, ep.ip, ep.id)
}

// endpoints inspects containers (through dockerd's API) and returns their attachments.
func (h *host) endpoints(t *testing.T, names ...string) []endpointInfo {
	t.Helper()
	var eps []endpointInfo
	for _, name := range names {
		var c struct {
			Name            string
			NetworkSettings struct {
				Networks map[string]struct{ EndpointID, IPAddress string }
			}
		}
		if err := h.api(http.MethodGet, "/containers/"+name+"/json", &c); err != nil {
			t.Fatal(err)
		}
		for n, ep := range c.NetworkSettings.Networks {
			ip, err := netip.ParseAddr(ep.IPAddress)
			if err != nil {
				t.Fatalf("%s: container %s on %s: address %q: %v", h.Name, name, n, ep.IPAddress, err)
			}
			eps = append(eps, endpointInfo{container: strings.TrimPrefix(c.Name, "/"), network: n, id: ep.EndpointID, ip: ip})
		}
	}
	return eps
}

// running lists the names of the host's running containers (through dockerd's API).
func (h *host) running(t *testing.T) []string {
	t.Helper()
	var list []struct{ Names []string }
	if err := h.api(http.MethodGet, "/containers/json", &list); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range list {
		for _, n := range c.Names {
			names = append(names, strings.TrimPrefix(n, "/"))
		}
	}
	slices.Sort(names)
	return names
}

// api calls dockerd's API: the tests' own look-ups and clean-ups, cheaper than a docker command
// each. A 404 of a DELETE is no error; out, if not nil, receives the decoded answer.
func (h *host) api(method, path string, out any) error {
	c := &http.Client{Timeout: dockerTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", h.d.Sock())
		}}}
	req, err := http.NewRequest(method, "http://docker/v1.41"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s: dockerd API %s %s: %w", h.Name, method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	switch {
	case method == http.MethodDelete && resp.StatusCode == http.StatusNotFound:
		return nil
	case resp.StatusCode >= 300:
		return fmt.Errorf("%s: dockerd API %s %s: %s: %s", h.Name, method, path, resp.Status, body)
	case out != nil:
		return json.Unmarshal(body, out)
	}
	return nil
}

// remove removes a container if it exists, at the end of a test (through dockerd's API).
func (h *host) remove(t *testing.T, name string) {
	if err := h.api(http.MethodDelete, "/containers/"+name+"?force=1", nil); err != nil && pidAlive(filepath.Join(h.d.Dir, "dockerd.pid")) {
		t.Errorf("clean-up: %v", err)
	}
}

// createNetwork creates a margay network on each host (with extra options, e.g. --subnet), which
// is removed at cleanup.
func createNetwork(t *testing.T, hosts []*host, client, name string, extra ...string) {
	t.Helper()
	for _, h := range hosts {
		t.Cleanup(func() {
			if err := h.api(http.MethodDelete, "/networks/"+name, nil); err != nil && pidAlive(filepath.Join(h.d.Dir, "dockerd.pid")) {
				t.Errorf("clean-up: %v", err)
			}
		})
		args := append([]string{"network", "create", "--driver", "margay", "--ipam-driver", "margay-ipam"}, extra...)
		if _, err := h.dockerWith(t, client, append(args, name)...); err != nil {
			t.Fatal(err)
		}
	}
}

// probeScript probes every address given, all at once, by ICMP (one ping) and by TCP (a line
// through the echo server on 8080), and prints "icmp ok IP" or "icmp no IP", "tcp ok IP" or "tcp no
// IP" for each.
const probeScript = `for ip in "$@"; do
(if ping -c1 -W2 "$ip" >/dev/null 2>&1; then echo "icmp ok $ip"; else echo "icmp no $ip"; fi) &
(if [ "$(echo hi | nc -w 2 "$ip" 8080 2>/dev/null)" = hi ]; then echo "tcp ok $ip"; else echo "tcp no $ip"; fi) &
done; wait`

// probe runs probeScript in container c towards ips and returns "icmp IP" and "tcp IP" for
// those that answered, and those that did not.
func (c ctr) probe(t testing.TB, ips ...netip.Addr) (ok, no []string, err error) {
	t.Helper()
	args := []string{"exec", c.name, "sh", "-c", probeScript, "sh"}
	for _, ip := range ips {
		args = append(args, ip.String())
	}
	out, err := c.h.docker(t, args...)
	if err != nil {
		return nil, nil, err
	}
	for l := range strings.Lines(out) {
		f := strings.Fields(l)
		if len(f) != 3 {
			continue
		}
		switch f[1] {
		case "ok":
			ok = append(ok, f[0]+" "+f[2])
		case "no":
			no = append(no, f[0]+" "+f[2])
		}
	}
	if len(ok)+len(no) != 2*len(ips) {
		return nil, nil, fmt.Errorf("%s: %d probe results for %d addresses: %s", c, len(ok)+len(no), len(ips), out)
	}
	slices.Sort(ok)
	slices.Sort(no)
	return ok, no, nil
}

// reachWithin is how long a new container may take to be reachable: its agent programs it, and
// the other hosts' agents learn its route (BGP) and its profile's members.
const reachWithin = 60 * time.Second

// reach is what containers are to reach (or not): each container's target addresses.
type reach map[ctr][]netip.Addr

// mustReach waits until every container reaches each of its targets by ICMP and TCP; the
// containers probe at once.
func (r reach) mustReach(t *testing.T) {
	t.Helper()
	r.each(t, func(c ctr, ips []netip.Addr) error {
		return poll.Every(200*time.Millisecond, reachWithin, func() error {
			_, no, err := c.probe(t, ips...)
			if err == nil && len(no) > 0 {
				err = fmt.Errorf("no answer within %s to %v", reachWithin, no)
			}
			return err
		})
	})
}

// mustNotReach checks that no container reaches any of its targets, by ICMP or TCP. Call it once
// the targets are known to be reachable from their own network, so that a failure to reach them
// is the policy's doing.
func (r reach) mustNotReach(t *testing.T) {
	t.Helper()
	r.each(t, func(c ctr, ips []netip.Addr) error {
		ok, _, err := c.probe(t, ips...)
		if err == nil && len(ok) > 0 {
			err = fmt.Errorf("answers from another network's containers: %v", ok)
		}
		return err
	})
}

// each runs fn for every container at once and fails the test with the errors.
func (r reach) each(t *testing.T, fn func(ctr, []netip.Addr) error) {
	t.Helper()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for c, ips := range r {
		wg.Go(func() {
			if err := fn(c, ips); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s probing %v: %w", c, ips, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
}

// stateWithin is how long a host's Margay state may take to match its containers after a docker
// command returned: the plugin's etcd writes are done by then; the agent's maps follow its watch.
const stateWithin = 30 * time.Second

// assertState checks that the Margay state of every host is exactly that of the running
// containers given (those of each host, on margay networks; a host not named has none): docker
// ps on each host lists exactly them, and for each host, waiting at most stateWithin,
//
//   - the workload records in etcd are the containers' endpoints (ID, /32, profile, network, veth);
//   - IPAM: its handles are docker-… handles keyed to those records, holding their addresses,
//     and the blocks allocate exactly those addresses, each to its handle;
//   - the BPF endpoints map holds exactly their addresses;
//   - the kernel has a /32 route via cali… exactly for their addresses, through their veths;
//   - the cali… links are exactly their veths, and no tmp… link is left.
//
// No address is held twice, across all hosts.
func (e *env) assertState(t *testing.T, running ...ctr) {
	t.Helper()
	want := map[*host][]endpointInfo{}
	owner := map[netip.Addr]string{}
	for _, h := range e.hosts {
		var names []string
		for _, c := range running {
			if c.h == h {
				names = append(names, c.name)
			}
		}
		slices.Sort(names)
		if len(names) > 0 || pidAlive(filepath.Join(h.d.Dir, "dockerd.pid")) {
			if ps := h.running(t); !slices.Equal(ps, names) {
				t.Fatalf("%s: running containers %v, want %v", h.Name, ps, names)
			}
		}
		if len(names) == 0 {
			continue
		}
		for _, ep := range h.endpoints(t, names...) {
			if prev, dup := owner[ep.ip]; dup {
				t.Errorf("address %s given to %s and %s/%s", ep.ip, prev, h.Name, ep.container)
			}
			owner[ep.ip] = h.Name + "/" + ep.container
			want[h] = append(want[h], ep)
		}
	}
	for _, h := range e.hosts {
		poll.UntilEvery(t, h.Name+"'s state is that of its containers "+fmt.Sprint(want[h]), 100*time.Millisecond, stateWithin,
			func() error { return h.stateDiff(t, want[h]) })
	}
}

// stateDiff says how the host's state differs from that of the endpoints, or nil.
func (h *host) stateDiff(t *testing.T, eps []endpointInfo) error {
	ctx := t.Context()
	ds := h.env.c.DS
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	byID := map[string]endpointInfo{}
	byIP := map[netip.Addr]endpointInfo{}
	for _, ep := range eps {
		byID[ep.id] = ep
		byIP[ep.ip] = ep
	}

	// Workload records.
	recs, _, err := ds.Workloads(h.Name).List(ctx)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, it := range recs {
		w := it.Value
		ep, ok := byID[w.ID]
		if !ok {
			bad("workload record %s (%v, %s) of no running container", w.ID, w.IPv4, w.Network)
			continue
		}
		seen[w.ID] = true
		if !slices.Equal(w.IPv4, []netip.Prefix{netip.PrefixFrom(ep.ip, 32)}) || w.Network != docker.NetworkPrefix+ep.network ||
			!slices.Equal(w.Profiles, []string{ep.network}) || w.IfName != workload.HostVethName(ep.id) {
			bad("workload record of %s: %+v", ep.container, w)
		}
	}
	for _, ep := range eps {
		if !seen[ep.id] {
			bad("no workload record for %s (%s)", ep.container, ep.ip)
		}
	}

	// IPAM: handles and allocations.
	handles, _, err := ds.Handles().List(ctx)
	if err != nil {
		return err
	}
	handleOf := map[string]datastore.Handle{}
	held := map[netip.Addr]bool{}
	for _, it := range handles {
		hd := it.Value
		handleOf[it.Name] = hd
		if hd.Node != h.Name {
			continue
		}
		if len(hd.IPs) != 1 {
			bad("IPAM handle %s holds %v", it.Name, hd.IPs)
			continue
		}
		ep, ok := byIP[hd.IPs[0]]
		switch {
		case !ok:
			bad("IPAM handle %s (%s, workload %q) of no running container", it.Name, hd.IPs[0], hd.Workload)
		case !strings.HasPrefix(it.Name, docker.HandlePrefix) || hd.Workload != h.Name+"/"+ep.id:
			bad("IPAM handle %s of %s: %+v", it.Name, ep.container, hd)
		default:
			held[hd.IPs[0]] = true
		}
	}
	blocks, _, err := ds.Blocks().List(ctx)
	if err != nil {
		return err
	}
	allocated := map[netip.Addr]bool{}
	for _, b := range blocks {
		for _, al := range b.Value.Allocations {
			hd, ok := handleOf[al.Handle]
			if !ok {
				bad("block %s allocates %s to handle %s, which does not exist", b.Name, al.IP, al.Handle)
				continue
			}
			if !slices.Contains(hd.IPs, al.IP) {
				bad("block %s allocates %s to handle %s, which holds %v", b.Name, al.IP, al.Handle, hd.IPs)
			}
			if hd.Node != h.Name {
				continue
			}
			allocated[al.IP] = true
			if _, ok := byIP[al.IP]; !ok {
				bad("block %s allocates %s (handle %s) to no running container", b.Name, al.IP, al.Handle)
			}
		}
	}
	for _, ep := range eps {
		if !held[ep.ip] || !allocated[ep.ip] {
			bad("%s's address %s: handle found %v, allocated %v", ep.container, ep.ip, held[ep.ip], allocated[ep.ip])
		}
	}

	// The BPF endpoints map.
	mapped, err := h.maps.Endpoints.List()
	if err != nil {
		return err
	}
	inMap := map[netip.Addr]bool{}
	for _, m := range mapped {
		inMap[m.IPv4] = true
		if _, ok := byIP[m.IPv4]; !ok {
			bad("endpoints map: %s (ifindex %d) of no running container", m.IPv4, m.Ifindex)
		}
	}
	for _, ep := range eps {
		if !inMap[ep.ip] {
			bad("endpoints map: no entry for %s (%s)", ep.ip, ep.container)
		}
	}

	// Links and kernel routes.
	nl := h.NS.Netlink()
	links, err := nl.LinkList()
	if err != nil {
		return err
	}
	names := map[int]string{}
	var calis []string
	for _, l := range links {
		name := l.Attrs().Name
		names[l.Attrs().Index] = name
		switch {
		case strings.HasPrefix(name, "cali"):
			calis = append(calis, name)
		case strings.HasPrefix(name, "tmp"):
			bad("link %s left in the host namespace", name)
		}
	}
	var wantCalis []string
	for _, ep := range eps {
		wantCalis = append(wantCalis, workload.HostVethName(ep.id))
	}
	slices.Sort(calis)
	slices.Sort(wantCalis)
	if !slices.Equal(calis, wantCalis) {
		bad("cali links %v, want %v", calis, wantCalis)
	}
	routes, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: syscall.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return err
	}
	routed := map[netip.Addr]bool{}
	for _, r := range routes {
		dev := names[r.LinkIndex]
		if r.Dst == nil || !strings.HasPrefix(dev, "cali") {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		ip, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		ep, ok := byIP[ip]
		switch {
		case ones != 32 || !ok:
			bad("kernel route %s dev %s of no running container", r.Dst, dev)
		case dev != workload.HostVethName(ep.id):
			bad("kernel route %s dev %s, want dev %s", r.Dst, dev, workload.HostVethName(ep.id))
		default:
			routed[ip] = true
		}
	}
	for _, ep := range eps {
		if !routed[ep.ip] {
			bad("no kernel route %s/32 dev %s (%s)", ep.ip, workload.HostVethName(ep.id), ep.container)
		}
	}
	return errors.Join(errs...)
}
