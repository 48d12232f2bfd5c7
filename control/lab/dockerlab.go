package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/margaynet/margay/loader"
)

// DockerWorkload is one container of the Docker lab: its name, its Docker network and the index
// of its host (modulo the number of hosts).
type DockerWorkload struct {
	Name    string
	Network string
	Host    int
}

// DockerWorkloads are the containers `lab up --docker` runs, as the walkthrough does: on three
// hosts workload-A, B and C on net1 (vm100, vm101, vm102) and D and E on net2 (vm100, vm101), so
// that each network spans hosts and vm100 and vm101 each hold one container of each network;
// with two hosts workload-C lands on vm100 beside A.
var DockerWorkloads = []DockerWorkload{
	{"workload-A", "net1", 0}, {"workload-B", "net1", 1}, {"workload-C", "net1", 2},
	{"workload-D", "net2", 0}, {"workload-E", "net2", 1},
}

// DockerNetworks are the Docker networks created on every host (the plugin's scope is local: the
// same name on every host is one network, one Margay profile).
var DockerNetworks = []string{"net1", "net2"}

// busyboxTag is the lab's image, under the name the walkthrough's docker run uses.
const busyboxTag = "busybox:latest"

// DockerHost is host's Docker side in a lab of this configuration: its state in
// <StateDir>/<host> (short, for dockerd's containerd sockets), its containers under the cgroup
// <Prefix>margay-lab-<host>. Down finds it again from the name alone.
func (c Config) DockerHost(host string) DockerHost {
	c.defaults()
	return DockerHost{Name: host, Netns: "/run/netns/" + c.Prefix + host, Dir: filepath.Join(c.StateDir, host),
		CgroupParent: c.Prefix + "margay-lab-" + host}
}

// checkDocker checks what the Docker mode needs before anything starts: the plugin's binary, and a
// state directory short enough for dockerd's sockets.
func (c Config) checkDocker() error {
	if _, err := os.Stat(filepath.Join(c.BinDir, "margay-docker")); err != nil {
		return fmt.Errorf("--docker needs the plugin (make build): %w", err)
	}
	// dockerd's containerd listens on <exec root>/containerd/containerd-debug.sock: a unix
	// socket's path has at most 107 bytes.
	if sock := filepath.Join(c.DockerHost(c.hostName(0)).Dir, "x", "containerd", "containerd-debug.sock"); len(sock) > 107 {
		return fmt.Errorf("--docker: the state directory %s is too long for dockerd's sockets (%s: %d bytes, at most 107)",
			c.StateDir, sock, len(sock))
	}
	return nil
}

// startDocker does the Docker part of Up in the background (none of it needs the BGP sessions):
// every host's Docker started, all at once (startDockerHost), then the containers run
// (runDockerWorkloads). The returned function waits until that is done.
func (l *Lab) startDocker(ctx context.Context) (wait func() error) {
	l.DockerHosts = make([]DockerHost, len(l.Hosts))
	for i, h := range l.Hosts {
		l.DockerHosts[i] = l.cfg.DockerHost(h.Name)
	}
	done := make(chan error, 1)
	go func() {
		errs := make([]error, len(l.Hosts))
		var wg sync.WaitGroup
		for i := range l.Hosts {
			wg.Go(func() { errs[i] = l.startDockerHost(ctx, l.DockerHosts[i]) })
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			done <- err
			return
		}
		done <- l.runDockerWorkloads(ctx)
	}()
	return func() error { return <-done }
}

// runDockerWorkloads runs the containers of DockerWorkloads and waits until each host's agent
// has programmed its containers.
func (l *Lab) runDockerWorkloads(ctx context.Context) error {
	// One after the other, so that the blocks go to the hosts in their order, as the CNI lab's.
	for _, dw := range DockerWorkloads {
		i := dw.Host % len(l.Hosts)
		h, d := l.Hosts[i], l.DockerHosts[i]
		l.say("▸ %s: docker run --name %s -tid --net %s --restart=always busybox", h.Name, dw.Name, dw.Network)
		if _, err := d.Docker(ctx, "run", "--name", dw.Name, "-tid", "--net", dw.Network, "--restart=always", "busybox"); err != nil {
			return fmt.Errorf("%w (logs: %s, %s)", err, d.LogFile("dockerd"), d.LogFile("margay-docker"))
		}
		out, err := d.Docker(ctx, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", dw.Name)
		if err != nil {
			return err
		}
		ip, err := netip.ParseAddr(strings.TrimSpace(out))
		if err != nil {
			return fmt.Errorf("%s: docker inspect %s: address %q: %w", h.Name, dw.Name, strings.TrimSpace(out), err)
		}
		l.Workloads = append(l.Workloads, Workload{Name: dw.Name, Host: h, IP: ip, Network: dw.Network})
	}
	// margay-docker starts a container only once the agent has programmed it
	// (--policy-setup-timeout); the lab checks that again from the pins, as the CNI lab's ADD
	// does, before it reports anything.
	for _, w := range l.Workloads {
		if err := l.wait(ctx, w.Name+" programmed by "+w.Host.Name+"'s agent", 60*time.Second, func() error {
			return l.programmed(w)
		}); err != nil {
			return err
		}
		l.say("▸ %s on %s (%s): %s", w.Name, w.Host.Name, w.Network, w.IP)
	}
	return nil
}

// startDockerHost starts the host's mount namespace, dockerd and margay-docker, imports the
// busybox image and creates the networks.
func (l *Lab) startDockerHost(ctx context.Context, d DockerHost) error {
	if err := d.StartNamespace(); err != nil {
		return err
	}
	if err := d.StartDockerd(ctx); err != nil {
		return fmt.Errorf("%w (log: %s)", err, d.LogFile("dockerd"))
	}
	if err := d.ImportBusybox(ctx, busyboxTag); err != nil {
		return err
	}
	if err := d.StartPlugin(ctx, filepath.Join(l.cfg.BinDir, "margay-docker"), "--etcd-endpoints", l.cfg.etcdEndpoint(),
		"--policy-setup-timeout", "20s", "--bpffs-root", l.cfg.bpffsRoot(d.Name)); err != nil {
		return fmt.Errorf("%w (log: %s)", err, d.LogFile("margay-docker"))
	}
	for _, n := range DockerNetworks {
		if _, err := d.Docker(ctx, "network", "create", "--driver", "margay", "--ipam-driver", "margay-ipam", n); err != nil {
			return fmt.Errorf("%w (log: %s)", err, d.LogFile("margay-docker"))
		}
	}
	l.say("▸ host %s: dockerd (%s), margay-docker, image %s, docker network create --driver margay --ipam-driver margay-ipam %s",
		d.Name, d.Sock(), busyboxTag, strings.Join(DockerNetworks, ", "))
	return nil
}

// programmed says whether w's host has programmed it as margay-cni's policySetupTimeout waits
// for: the kernel route to its veth, its endpoint entry with the ingress policy of its network's
// profile, and both programs attached to the veth.
func (l *Lab) programmed(w Workload) error {
	out, err := In(w.Host.NS, "ip", "route", "show", w.IP.String()+"/32")
	if err != nil {
		return err
	}
	f := strings.Fields(out)
	if len(f) < 3 || f[1] != "dev" || !strings.HasPrefix(f[2], "cali") {
		return fmt.Errorf("no route %s dev cali… yet: %q", w.IP, strings.TrimSpace(out))
	}
	veth := f[2]
	out, err = In(w.Host.NS, filepath.Join(l.cfg.BinDir, "margayctl"), "endpoints", "-o", "json",
		"--bpffs-root", l.cfg.bpffsRoot(w.Host.Name))
	if err != nil {
		return err
	}
	var eps []struct {
		Interface      string `json:"interface"`
		IPv4           string `json:"ipv4"`
		IngressProgram uint32 `json:"ingressProgram"`
	}
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		return fmt.Errorf("margayctl endpoints: %w: %s", err, out)
	}
	found := false
	for _, ep := range eps {
		if ep.Interface == veth && ep.IPv4 == w.IP.String() {
			if ep.IngressProgram == 0 {
				return fmt.Errorf("the endpoint of %s has no ingress policy yet", veth)
			}
			found = true
		}
	}
	if !found {
		return fmt.Errorf("no endpoint for %s %s yet", veth, w.IP)
	}
	for _, hook := range []loader.Hook{loader.HookFromWep, loader.HookToWep} {
		if _, err := os.Stat(loader.LinkPin(l.cfg.bpffsRoot(w.Host.Name), veth, hook)); err != nil {
			return fmt.Errorf("%s not attached to %s yet", hook, veth)
		}
	}
	return nil
}

func (l *Lab) dockerHostOf(h Host) DockerHost {
	for i := range l.Hosts {
		if l.Hosts[i].Name == h.Name && i < len(l.DockerHosts) {
			return l.DockerHosts[i]
		}
	}
	return l.cfg.DockerHost(h.Name)
}

var errNoAnswer = errors.New("no answer")

// dockerPing runs `docker exec <from> ping -c 1 -W 2 <to>` on from's host: nil when to answered,
// errNoAnswer when it did not, another error when the ping did not run.
func (l *Lab) dockerPing(ctx context.Context, from Workload, to netip.Addr) error {
	out, err := l.dockerHostOf(from.Host).Docker(ctx, "exec", from.Name, "ping", "-c", "1", "-W", "2", to.String())
	if err != nil && strings.Contains(out, " 0 packets received") {
		return errNoAnswer
	}
	return err
}

// pair is a ping from one container to another.
type pair struct{ from, to Workload }

func (p pair) same() bool     { return p.from.Network == p.to.Network }
func (p pair) String() string { return p.from.Name + " → " + p.to.Name + " " + p.to.IP.String() }

func (l *Lab) pairs() []pair {
	var ps []pair
	for _, from := range l.Workloads {
		for _, to := range l.Workloads {
			if from.Name != to.Name {
				ps = append(ps, pair{from, to})
			}
		}
	}
	return ps
}

// parallel runs f(0) … f(n-1), at most limit at once (docker exec costs CPU, and blocked pings
// wait their 2 s).
func parallel(n, limit int, f func(i int)) {
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			f(i)
		})
	}
	wg.Wait()
}

// checkDocker checks the Docker lab: every host's routes (checkDockerRoutes); every pair of
// containers on the same network answers a ping, retried until a deadline; then every pair on
// different networks does not (the profile of the destination's network admits only its
// members). The isolation is checked once the same-network pings answer, i.e. once every
// container has been reached.
func (l *Lab) checkDocker(ctx context.Context) error {
	errs := []error{l.checkDockerRoutes(ctx)}
	var same, cross []pair
	for _, p := range l.pairs() {
		if p.same() {
			same = append(same, p)
		} else {
			cross = append(cross, p)
		}
	}
	results := make([]error, len(same))
	parallel(len(same), 8, func(i int) {
		p := same[i]
		results[i] = l.wait(ctx, "ping "+p.String()+" (both on "+p.from.Network+")", 30*time.Second, func() error {
			return l.dockerPing(ctx, p.from, p.to.IP)
		})
	})
	errs = append(errs, results...)
	results = make([]error, len(cross))
	parallel(len(cross), 12, func(i int) {
		p := cross[i]
		switch err := l.dockerPing(ctx, p.from, p.to.IP); {
		case err == nil:
			results[i] = fmt.Errorf("LEAK: ping %s answered (%s is on %s, %s on %s)", p, p.from.Name, p.from.Network, p.to.Name, p.to.Network)
		case errors.Is(err, errNoAnswer):
		default:
			results[i] = fmt.Errorf("ping %s: %w", p, err)
		}
	})
	return errors.Join(append(errs, results...)...)
}

// checkDockerRoutes waits until each host's kernel routes are the walkthrough's: a blackhole for
// its own block, a /32 to the cali… veth of each of its containers, and each other host's block
// through that host, proto margay (77).
func (l *Lab) checkDockerRoutes(ctx context.Context) error {
	var errs []error
	for _, h := range l.Hosts {
		var want []*regexp.Regexp
		for _, w := range l.Workloads {
			block := netip.PrefixFrom(w.IP, 26).Masked().String()
			if w.Host.Name == h.Name {
				want = append(want, regexp.MustCompile(`(?m)^blackhole `+regexp.QuoteMeta(block)+` proto (margay|77)`),
					regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(w.IP.String())+` dev cali[0-9a-f]{11} `))
			} else {
				want = append(want, regexp.MustCompile(`(?m)^`+regexp.QuoteMeta(block)+` via `+
					regexp.QuoteMeta(w.Host.Addr.String())+` dev ens32 proto (margay|77)`))
			}
		}
		errs = append(errs, l.wait(ctx, h.Name+": routes", 60*time.Second, func() error {
			out, err := In(h.NS, "ip", "route")
			if err != nil {
				return err
			}
			for _, re := range want {
				if !re.MatchString(out) {
					return fmt.Errorf("no route matching %s in\n%s", re, out)
				}
			}
			return nil
		}))
	}
	return errors.Join(errs...)
}

// reportDockerNetworks prints every host's `docker network ls`.
func (l *Lab) reportDockerNetworks(ctx context.Context, w io.Writer) {
	for i, h := range l.Hosts {
		if i >= len(l.DockerHosts) {
			break
		}
		out, err := l.DockerHosts[i].Docker(ctx, "network", "ls")
		if err != nil {
			out = err.Error() + "\n"
		}
		fmt.Fprintf(w, "\n━━ %s: docker network ls\n%s", h.Name, out)
	}
}

// reportDockerWorkloads prints the first container's `ip a` and `ip route` (cali0 with its /32,
// the default route through 169.254.1.1), then the ping matrix between the containers, each
// cell a `docker exec <row> ping -c 1 -W 2 <column>`: ok or FAIL on the same network, blocked or
// LEAK across networks.
func (l *Lab) reportDockerWorkloads(ctx context.Context, w io.Writer) {
	if len(l.Workloads) == 0 {
		return
	}
	first := l.Workloads[0]
	d := l.dockerHostOf(first.Host)
	for _, args := range [][]string{{"ip", "a"}, {"ip", "route"}} {
		out, err := d.Docker(ctx, append([]string{"exec", first.Name}, args...)...)
		if err != nil {
			out = err.Error() + "\n"
		}
		fmt.Fprintf(w, "\n━━ %s: docker exec %s %s\n%s", first.Host.Name, first.Name, strings.Join(args, " "), out)
	}
	cells := map[[2]string]string{}
	var mu sync.Mutex
	ps := l.pairs()
	parallel(len(ps), 12, func(i int) {
		p := ps[i]
		err := l.dockerPing(ctx, p.from, p.to.IP)
		cell := "FAIL"
		switch {
		case p.same() && err == nil:
			cell = "ok"
		case !p.same() && err == nil:
			cell = "LEAK"
		case !p.same() && errors.Is(err, errNoAnswer):
			cell = "blocked"
		}
		mu.Lock()
		cells[[2]string{p.from.Name, p.to.Name}] = cell
		mu.Unlock()
	})
	fmt.Fprintf(w, "\n━━ ping matrix: docker exec ROW ping -c 1 -W 2 COLUMN (same network: ok or FAIL; other network: blocked or LEAK)\n")
	const first1, col = 24, 20
	line := func(head string, cell func(to Workload) string) {
		var b strings.Builder
		fmt.Fprintf(&b, "%-*s", first1, head)
		for _, to := range l.Workloads {
			fmt.Fprintf(&b, "%-*s", col, cell(to))
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	line("", func(to Workload) string { return to.Name })
	line("", func(to Workload) string { return to.IP.String() + " " + to.Network })
	for _, from := range l.Workloads {
		line(from.Name+" "+from.Host.Name+" "+from.Network, func(to Workload) string {
			if from.Name == to.Name {
				return "-"
			}
			return cells[[2]string{from.Name, to.Name}]
		})
	}
}

// downDocker takes down the Docker (or the Kubernetes node) of every host a lab of cfg may have left, from what is on
// disk alone (after a crash or kill of lab up too): each host directory <StateDir>/vm1NN and each
// cgroup named <Prefix>margay-lab-vm1NN. DockerHost.StopDocker removes the containers while
// dockerd answers, stops dockerd and margay-docker, kills what is left in the cgroups and ends
// the mount namespace's holder; the hosts in parallel.
func downDocker(cfg Config) error {
	names := map[string]bool{}
	if ents, err := os.ReadDir(cfg.StateDir); err == nil {
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), "vm") && isLabName(e.Name()) {
				names[e.Name()] = true
			}
		}
	}
	cgPrefix := cfg.Prefix + "margay-lab-"
	for _, pattern := range []string{"/sys/fs/cgroup/*/" + cgPrefix + "vm*", "/sys/fs/cgroup/" + cgPrefix + "vm*"} {
		m, _ := filepath.Glob(pattern)
		for _, p := range m {
			if name := strings.TrimPrefix(filepath.Base(p), cgPrefix); isLabName(name) {
				names[name] = true
			}
		}
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for name := range names {
		wg.Go(func() {
			// A Kubernetes node's daemons (kube.Node) first: kubelet, kube-proxy, containerd.
			d := cfg.DockerHost(name)
			pids, _ := filepath.Glob(filepath.Join(d.Dir, "*.pid"))
			for _, p := range pids {
				if n := strings.TrimSuffix(filepath.Base(p), ".pid"); n != "mntns" && n != "dockerd" && n != "margay-docker" {
					stopPid(p, syscall.SIGTERM, 10*time.Second)
				}
			}
			if err := d.StopDocker(ctx); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
