package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config says what to build.
type Config struct {
	Hosts    int       // vm100 … ; default 3
	BinDir   string    // margay-agent, margay-cni and margayctl
	StateDir string    // pid files, logs, etcd data; default /run/margay-lab
	Prefix   string    // prefixed to namespace names, so tests do not meet a running lab
	BPFFS    string    // bpffs under which each agent pins; default /sys/fs/bpf
	Out      io.Writer // progress; default os.Stdout
	// Gateway adds a gateway router (BIRD at 198.18.0.1, peering with every host) and an
	// "outside" client behind it at 198.18.1.10 that reaches workload addresses directly.
	Gateway bool
	// Docker runs the Calico walkthrough with Docker instead of CNI workloads: a real dockerd
	// with the margay-docker plugin in every host (DockerHost, under <StateDir>/<host>), the
	// Docker networks net1 and net2 created on every host, and the containers of DockerWorkloads
	// on them (docker run … busybox). BinDir must hold margay-docker.
	Docker bool
	// K8s leaves the hosts without agents and workloads, and adds a namespace on the segment for
	// a Kubernetes control plane (ControlPlaneNS, at ControlPlaneAddr): package kube sets up the
	// cluster on them, whose DaemonSet runs the agents.
	K8s bool
}

const (
	etcdAddr    = "198.18.0.2"
	pool        = "198.19.0.0/16"
	gatewayAddr = "198.18.0.1"
	outsideNet  = "198.18.1.0/24"
	// OutsideAddr is the outside client's address, seen unchanged by workloads (no NAT).
	OutsideAddr = "198.18.1.10"
	// EtcdAddr is the lab's etcd's address (port 2379); Pool the workloads' pool.
	EtcdAddr = etcdAddr
	Pool     = pool
	// ControlPlaneAddr is the Kubernetes control plane's address, with K8s.
	ControlPlaneAddr = "198.18.0.3"
)

func (c *Config) defaults() {
	if c.Hosts == 0 {
		c.Hosts = 3
	}
	if c.StateDir == "" {
		c.StateDir = "/run/margay-lab"
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.BPFFS == "" {
		c.BPFFS = "/sys/fs/bpf"
	}
}

// Lab is a running lab.
type Lab struct {
	cfg       Config
	Hosts     []Host
	Workloads []Workload
	// DockerHosts are the hosts' Docker sides, with Docker (in the order of Hosts).
	DockerHosts []DockerHost
	sayMu       sync.Mutex
}

// Host is one namespace host.
type Host struct {
	Name string // vm100
	NS   string // its namespace name
	Addr netip.Addr
}

// Workload is a container on a host.
type Workload struct {
	Name string
	NS   string // its network namespace's name; "" for a Docker container
	Host Host
	IP   netip.Addr
	// Network is the Docker network of a Docker container (docker exec runs commands in it),
	// "" for a CNI workload.
	Network string
}

func (c Config) etcdEndpoint() string { return "http://" + etcdAddr + ":2379" }
func (c Config) segNS() string        { return c.Prefix + "margay-seg" }
func (c Config) etcdNS() string       { return c.Prefix + "margay-etcd" }
func (c Config) gatewayNS() string    { return c.Prefix + "margay-gw" }

// ControlPlaneNS is the Kubernetes control plane's namespace, with K8s.
func (c Config) ControlPlaneNS() string { return c.Prefix + "margay-k8s" }

// OutsideNS is the namespace of the outside client, with Gateway.
func (c Config) OutsideNS() string { return c.Prefix + "margay-outside" }
func (c Config) hostName(i int) string {
	return fmt.Sprintf("vm%d", 100+i)
}
func (c Config) bpffsRoot(host string) string {
	return filepath.Join(c.BPFFS, c.Prefix+"margay-lab", host)
}

// run runs a command and returns its combined output, or an error carrying it.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// In runs a command inside a namespace (nsenter keeps /sys/fs/bpf visible).
func In(ns string, name string, args ...string) (string, error) {
	return run("nsenter", append([]string{"--net=/run/netns/" + ns, "--", name}, args...)...)
}

func (l *Lab) say(format string, args ...any) {
	l.sayMu.Lock()
	defer l.sayMu.Unlock()
	fmt.Fprintf(l.cfg.Out, format+"\n", args...)
}

// Up builds the lab, first removing what an earlier one left.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	cfg.defaults()
	l := &Lab{cfg: cfg}
	if cfg.K8s && cfg.Docker {
		return nil, errors.New("--k8s and --docker together are not supported")
	}
	if cfg.Docker && cfg.Gateway {
		// The outside client is no member of any Docker network, whose profiles admit only their
		// members: it would reach no container.
		return nil, errors.New("--docker and --gateway together are not supported")
	}
	if cfg.Docker {
		if err := cfg.checkDocker(); err != nil {
			return nil, err
		}
	}
	if err := Down(cfg); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, err
	}
	if err := recordUp(cfg); err != nil {
		return nil, err
	}
	l.say("▸ segment %s with a bridge", cfg.segNS())
	steps := [][]string{
		{"ip", "netns", "add", cfg.segNS()},
		{"ip", "-n", cfg.segNS(), "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", cfg.segNS(), "link", "set", "br0", "up"},
	}
	for _, s := range steps {
		if _, err := run(s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	if err := l.attach(cfg.etcdNS(), "eth0", etcdAddr+"/24", 0); err != nil {
		return nil, err
	}
	l.say("▸ etcd at %s", cfg.etcdEndpoint())
	if err := l.start("etcd", cfg.etcdNS(), filepath.Join(cfg.BinDir, "margayctl"), "lab", "etcd",
		"--listen", cfg.etcdEndpoint(), "--data-dir", filepath.Join(cfg.StateDir, "etcd")); err != nil {
		return nil, err
	}
	if err := l.wait(ctx, "etcd answers", 30*time.Second, func() error {
		_, err := In(cfg.etcdNS(), filepath.Join(cfg.BinDir, "margayctl"), "pool", "list", "--etcd-endpoints", cfg.etcdEndpoint())
		return err
	}); err != nil {
		return nil, err
	}
	if _, err := In(cfg.etcdNS(), filepath.Join(cfg.BinDir, "margayctl"), "pool", "add", "lab", "--cidr", pool,
		"--block-size", "26", "--etcd-endpoints", cfg.etcdEndpoint()); err != nil {
		return nil, err
	}
	if cfg.Gateway {
		if err := l.gatewayPeer(); err != nil {
			return nil, err
		}
	}
	if cfg.K8s {
		if err := l.attach(cfg.ControlPlaneNS(), "eth0", ControlPlaneAddr+"/24", 98); err != nil {
			return nil, err
		}
	}
	for i := range cfg.Hosts {
		h := Host{Name: cfg.hostName(i), NS: cfg.Prefix + cfg.hostName(i), Addr: netip.AddrFrom4([4]byte{198, 18, 0, byte(100 + i)})}
		if cfg.K8s {
			l.say("▸ host %s: ens32 %s/24", h.Name, h.Addr)
			if err := l.attach(h.NS, "ens32", h.Addr.String()+"/24", i+1); err != nil {
				return nil, err
			}
			if err := l.writeHostConfig(h); err != nil {
				return nil, err
			}
			l.Hosts = append(l.Hosts, h)
			continue
		}
		l.say("▸ host %s: ens32 %s/24, margay-agent", h.Name, h.Addr)
		if err := l.attach(h.NS, "ens32", h.Addr.String()+"/24", i+1); err != nil {
			return nil, err
		}
		if err := l.start(h.Name, h.NS, filepath.Join(cfg.BinDir, "margay-agent"), "--node-name", h.Name, "--uplink", "ens32",
			"--bpffs-root", cfg.bpffsRoot(h.Name), "--etcd-endpoints", cfg.etcdEndpoint(), "--http-addr", "127.0.0.1:9091",
			"--default-pool", "", "--bgp", "--bgp-connect-retry", "1s",
			// The reference picture's ens32 is a NIC that runs XDP natively; here it is a veth,
			// which auto would leave without the prefilter. The lab shows every hook.
			"--xdp", "on"); err != nil {
			return nil, err
		}
		if err := l.writeHostConfig(h); err != nil {
			return nil, err
		}
		l.Hosts = append(l.Hosts, h)
	}
	if cfg.Gateway {
		l.say("▸ gateway router %s (BIRD) and outside client %s", gatewayAddr, OutsideAddr)
		if err := l.startGateway(); err != nil {
			return nil, err
		}
	}
	// Each host's Docker and the containers come up while the BGP sessions do.
	dockerUp, stopDocker := func() error { return nil }, func() {}
	if cfg.Docker {
		var dctx context.Context
		dctx, stopDocker = context.WithCancel(ctx)
		defer stopDocker()
		dockerUp = l.startDocker(dctx)
	}
	if cfg.K8s {
		return l, nil
	}
	peers := len(l.Hosts) - 1
	if cfg.Gateway {
		peers++
	}
	for _, h := range l.Hosts {
		if err := l.wait(ctx, h.Name+": BGP sessions Established", 60*time.Second, func() error {
			out, err := In(h.NS, filepath.Join(cfg.BinDir, "margayctl"), "node", "status")
			if err != nil {
				return err
			}
			if n := strings.Count(out, "| up "); n != peers {
				return fmt.Errorf("%d of %d peers up", n, peers)
			}
			return nil
		}); err != nil {
			stopDocker()
			return nil, errors.Join(err, dockerUp())
		}
	}
	if cfg.Docker {
		if err := dockerUp(); err != nil {
			return nil, err
		}
		return l, nil
	}
	for _, h := range l.Hosts {
		w, err := l.addWorkload(h, "w"+strings.TrimPrefix(h.Name, "vm"))
		if err != nil {
			return nil, err
		}
		l.say("▸ workload %s on %s: %s", w.Name, h.Name, w.IP)
		l.Workloads = append(l.Workloads, w)
	}
	return l, nil
}

// gatewayPeer makes the gateway an explicit BGP peer of every node, allowed to send the outside
// network.
func (l *Lab) gatewayPeer() error {
	_, err := In(l.cfg.etcdNS(), filepath.Join(l.cfg.BinDir, "margayctl"), "bgp", "peer", "add", "gateway",
		"--peer-ip", gatewayAddr, "--asn", "64512", "--accept", outsideNet, "--etcd-endpoints", l.cfg.etcdEndpoint())
	return err
}

// startGateway puts BIRD on the segment at 198.18.0.1, peering over iBGP with every host: it
// installs the blocks it learns into its kernel and originates the outside network, where the
// outside client lives.
func (l *Lab) startGateway() error {
	cfg := l.cfg
	gw, out := cfg.gatewayNS(), cfg.OutsideNS()
	if err := l.attach(gw, "ens32", gatewayAddr+"/24", 99); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"ip", "netns", "add", out},
		{"ip", "-n", out, "link", "set", "lo", "up"},
		{"ip", "-n", gw, "link", "add", "outside", "type", "veth", "peer", "name", "eth0", "netns", out},
		{"ip", "-n", gw, "addr", "add", "198.18.1.1/24", "dev", "outside"},
		{"ip", "-n", gw, "link", "set", "outside", "up"},
		{"ip", "-n", out, "addr", "add", OutsideAddr + "/24", "dev", "eth0"},
		{"ip", "-n", out, "link", "set", "eth0", "up"},
		{"ip", "-n", out, "route", "add", "default", "via", "198.18.1.1"},
		{"ip", "netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_forward=1"},
	} {
		if _, err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	var conf strings.Builder
	fmt.Fprintf(&conf, "router id %s;\nprotocol device {}\nprotocol direct { ipv4; interface \"outside\"; }\n", gatewayAddr)
	conf.WriteString("protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }\n")
	// Graceful restart on: an agent restart (planned, crash or upgrade) keeps the hosts' blocks.
	fmt.Fprintf(&conf, "template bgp node { local %s as 64512; direct; connect retry time 1; graceful restart on;\n"+
		"\tipv4 { import all; export where source = RTS_DEVICE; next hop self; }; }\n", gatewayAddr)
	for _, h := range l.Hosts {
		fmt.Fprintf(&conf, "protocol bgp %s from node { neighbor %s as 64512; }\n", h.Name, h.Addr)
	}
	path := filepath.Join(cfg.StateDir, "bird.conf")
	if err := os.WriteFile(path, []byte(conf.String()), 0o644); err != nil {
		return err
	}
	return l.start("bird", gw, "bird", "-f", "-c", path, "-s", filepath.Join(cfg.StateDir, "bird.ctl"))
}

// attach creates namespace ns (unless it exists) with an interface ifname on the segment.
func (l *Lab) attach(ns, ifname, cidr string, port int) error {
	cfg := l.cfg
	seg := fmt.Sprintf("p%d", port)
	for _, s := range [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", cfg.segNS(), "link", "add", seg, "type", "veth", "peer", "name", ifname, "netns", ns},
		{"ip", "-n", cfg.segNS(), "link", "set", seg, "master", "br0", "up"},
		{"ip", "-n", ns, "addr", "add", cidr, "dev", ifname},
		{"ip", "-n", ns, "link", "set", ifname, "up"},
	} {
		if _, err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// start runs a process inside ns in its own process group, logging to <StateDir>/<name>.log,
// and records its pid so that Down finds it even after a crash.
func (l *Lab) start(name, ns, bin string, args ...string) error {
	logf, err := os.Create(filepath.Join(l.cfg.StateDir, name+".log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns, "--", bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait() }() // reap it if it dies while we run
	return os.WriteFile(filepath.Join(l.cfg.StateDir, name+".pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
}

func (l *Lab) wait(ctx context.Context, what string, within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	var err error
	for {
		if err = cond(); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s: %w", what, within, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// addWorkload creates a namespace and runs margay-cni ADD for it in the host, as a runtime does.
func (l *Lab) addWorkload(h Host, name string) (Workload, error) {
	ns := l.cfg.Prefix + name
	if _, err := run("ip", "netns", "add", ns); err != nil {
		return Workload{}, err
	}
	// ADD returns once the host's agent has programmed the workload, policy included.
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"margay","type":"margay-cni","nodeName":%q,`+
		`"policySetupTimeout":"20s","bpffsRoot":%q,"datastore":{"endpoints":[%q]}}`,
		h.Name, l.cfg.bpffsRoot(h.Name), l.cfg.etcdEndpoint())
	cmd := exec.Command("nsenter", "--net=/run/netns/"+h.NS, "--", filepath.Join(l.cfg.BinDir, "margay-cni"))
	cmd.Env = append(os.Environ(), "CNI_COMMAND=ADD", "CNI_CONTAINERID="+name, "CNI_NETNS=/run/netns/"+ns,
		"CNI_IFNAME=eth0", "CNI_PATH="+l.cfg.BinDir)
	cmd.Stdin = strings.NewReader(conf)
	out, err := cmd.Output()
	if err != nil {
		return Workload{}, fmt.Errorf("margay-cni ADD %s: %w: %s", name, err, out)
	}
	var res struct {
		IPs []struct{ Address string } `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		return Workload{}, fmt.Errorf("margay-cni ADD %s: result %s: %v", name, out, err)
	}
	p, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		return Workload{}, err
	}
	return Workload{Name: name, NS: ns, Host: h, IP: p.Addr()}, nil
}

// Check pings between every pair of workloads, and from the outside client to every workload
// with Gateway, and returns the failures. With Docker it checks the hosts' routes, that the
// containers of a network reach each other and that no container reaches another network's
// (checkDocker).
func (l *Lab) Check(ctx context.Context) error {
	if l.cfg.Docker {
		return l.checkDocker(ctx)
	}
	var errs []error
	if l.cfg.Gateway {
		for _, to := range l.Workloads {
			errs = append(errs, l.wait(ctx, "ping outside → "+to.Name, 30*time.Second, func() error {
				_, err := In(l.cfg.OutsideNS(), "ping", "-c", "1", "-W", "2", to.IP.String())
				return err
			}))
		}
	}
	for _, from := range l.Workloads {
		for _, to := range l.Workloads {
			if from.Name == to.Name {
				continue
			}
			err := l.wait(ctx, "ping "+from.Name+" → "+to.Name, 20*time.Second, func() error {
				_, err := In(from.NS, "ping", "-c", "1", "-W", "2", to.IP.String())
				return err
			})
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Report prints what a Calico user looks at: node status, routes, the BPF routes map, a ping
// matrix and the forwarding counters.
func (l *Lab) Report(ctx context.Context, w io.Writer) {
	ctl := filepath.Join(l.cfg.BinDir, "margayctl")
	for _, h := range l.Hosts {
		out, _ := In(h.NS, ctl, "node", "status")
		fmt.Fprintf(w, "\n━━ %s: margayctl node status\n%s", h.Name, out)
	}
	if l.cfg.Docker {
		l.reportDockerNetworks(ctx, w)
	}
	for _, h := range l.Hosts {
		out, _ := In(h.NS, "ip", "route")
		fmt.Fprintf(w, "\n━━ %s: ip route\n%s", h.Name, out)
	}
	if len(l.Hosts) > 0 {
		h := l.Hosts[0]
		out, _ := In(h.NS, ctl, "routes", "--bpffs-root", l.cfg.bpffsRoot(h.Name))
		fmt.Fprintf(w, "\n━━ %s: margayctl routes (the BPF routes map)\n%s", h.Name, out)
	}
	if l.cfg.Docker {
		l.reportDockerWorkloads(ctx, w)
		l.reportCounters(w)
		return
	}
	fmt.Fprintf(w, "\n━━ ping matrix (from row to column; the outside client with --gateway)\n%-8s", "")
	for _, to := range l.Workloads {
		fmt.Fprintf(w, "%-20s", to.Name+" "+to.IP.String())
	}
	fmt.Fprintln(w)
	rows := []struct{ name, ns string }{}
	for _, from := range l.Workloads {
		rows = append(rows, struct{ name, ns string }{from.Name, from.NS})
	}
	if l.cfg.Gateway {
		rows = append(rows, struct{ name, ns string }{"outside", l.cfg.OutsideNS()})
	}
	for _, from := range rows {
		fmt.Fprintf(w, "%-8s", from.name)
		for _, to := range l.Workloads {
			cell := "-"
			if from.name != to.Name {
				cell = "ok"
				if _, err := In(from.ns, "ping", "-c", "1", "-W", "2", to.IP.String()); err != nil {
					cell = "FAIL"
				}
			}
			fmt.Fprintf(w, "%-20s", cell)
		}
		fmt.Fprintln(w)
	}
	l.reportCounters(w)
}

func (l *Lab) reportCounters(w io.Writer) {
	for _, h := range l.Hosts {
		out, _ := In(h.NS, filepath.Join(l.cfg.BinDir, "margayctl"), "counters", "--bpffs-root", l.cfg.bpffsRoot(h.Name))
		fmt.Fprintf(w, "\n━━ %s: margayctl counters\n%s", h.Name, out)
	}
}

// Down removes everything a lab with this configuration left: the `lab up` process (another
// process than this one: Down waits until it has taken its lab down), processes, pins,
// namespaces, state. It works after a crash or kill of `lab up`, and when nothing is there.
func Down(cfg Config) error {
	cfg.defaults()
	var errs []error
	if err := stopUp(cfg); err != nil {
		errs = append(errs, err)
	}
	// Docker first: its containers removed through dockerd while the agents and etcd still run
	// (the plugin deletes each container's endpoint there), dockerd and the plugin stopped
	// properly before the namespaces they run in go.
	if err := downDocker(cfg); err != nil {
		errs = append(errs, err)
	}
	pids, _ := filepath.Glob(filepath.Join(cfg.StateDir, "*.pid"))
	for _, p := range pids {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			// The whole process group: nsenter and the program it runs.
			_ = syscall.Kill(-pid, syscall.SIGTERM)
			for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && syscall.Kill(pid, 0) == nil; {
				time.Sleep(50 * time.Millisecond)
			}
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	out, _ := run("ip", "netns", "list")
	sc := bufio.NewScanner(strings.NewReader(out))
	var nss []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		name := strings.TrimPrefix(f[0], cfg.Prefix)
		if !strings.HasPrefix(f[0], cfg.Prefix) {
			continue
		}
		if name == "margay-seg" || name == "margay-etcd" || name == "margay-gw" || name == "margay-outside" || name == "margay-k8s" || isLabName(name) {
			nss = append(nss, f[0])
		}
	}
	for _, ns := range nss {
		if host := strings.TrimPrefix(ns, cfg.Prefix); strings.HasPrefix(host, "vm") && cfg.BinDir != "" {
			_, _ = In(ns, filepath.Join(cfg.BinDir, "margay-agent"), "--cleanup", "--bpffs-root", cfg.bpffsRoot(host))
		}
	}
	for _, ns := range nss {
		if _, err := run("ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	_ = os.RemoveAll(filepath.Join(cfg.BPFFS, cfg.Prefix+"margay-lab"))
	if err := os.RemoveAll(cfg.StateDir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// isLabName: vm100…vm199 (hosts) and w100…w199 (workloads).
func isLabName(s string) bool {
	for _, p := range []string{"vm", "w"} {
		if rest, ok := strings.CutPrefix(s, p); ok && len(rest) == 3 {
			if n, err := strconv.Atoi(rest); err == nil && n >= 100 && n <= 199 {
				return true
			}
		}
	}
	return false
}
