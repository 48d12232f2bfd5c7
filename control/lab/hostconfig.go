package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/margaynet/margay/control/ctlconfig"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/loader"
)

// HostConfig is the margayctl config file of a lab host (vm100, …): its etcd endpoint, node name
// and bpffs root, as deploy/install.sh writes /etc/margay/margayctl.cfg on a real host. The lab's
// hosts share the machine's file system, so each gets a file of its own, which Command selects
// through MARGAYCTL_CONFIG.
func (c Config) HostConfig(host string) string {
	c.defaults()
	return filepath.Join(c.StateDir, host, "margayctl.cfg")
}

// writeHostConfig writes the margayctl config file of host h.
func (l *Lab) writeHostConfig(h Host) error {
	path := l.cfg.HostConfig(h.Name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	root := l.cfg.bpffsRoot(h.Name)
	if l.cfg.K8s {
		// A Kubernetes node's agent pins where it does by default, in the node's own bpffs
		// (kube.Node), which Command's mount namespace shows.
		root = loader.DefaultRoot
	}
	return ctlconfig.Write(path, ctlconfig.File{NodeName: h.Name, BPFFSRoot: root,
		Datastore: datastore.Config{Endpoints: []string{l.cfg.etcdEndpoint()}}},
		fmt.Sprintf("margayctl's settings inside lab host %s (margayctl lab exec %s sets MARGAYCTL_CONFIG to this file)", h.Name, h.Name))
}

// K8sBinLink links to the Kubernetes binaries of a lab with K8s (package kube makes it), and
// AdminKubeconfig is its user's kubeconfig: Command puts both in a command's environment.
func (c Config) K8sBinLink() string { c.defaults(); return filepath.Join(c.StateDir, "k8s", "bin") }

// AdminKubeconfig is the kubeconfig of a lab with K8s (system:masters).
func (c Config) AdminKubeconfig() string {
	c.defaults()
	return filepath.Join(c.StateDir, "k8s", "pki", "admin.kubeconfig")
}

// Command returns the command that runs argv inside the lab host or workload name (vm100, w100,
// …), as `margayctl lab exec` does: in its network namespace (nsenter keeps /sys/fs/bpf visible),
// with binDir first in PATH and, in a host, MARGAYCTL_CONFIG set to the host's config file, so
// that margayctl there finds the lab's etcd, its node and its pins. In a host of a Docker lab
// the command runs in the host's mount namespace too (DockerHost.Command: /run/docker/plugins is
// the host's) with DOCKER_HOST naming the host's dockerd, so that `docker ps` there is the
// host's; in a Kubernetes node likewise (its /sys/fs/bpf, /etc/cni/net.d, … are the node's),
// with kubectl in PATH and KUBECONFIG set.
func (c Config) Command(binDir, name string, argv ...string) *exec.Cmd {
	c.defaults()
	path := binDir
	if _, err := os.Stat(c.K8sBinLink()); err == nil {
		path += ":" + c.K8sBinLink()
	}
	env := append(os.Environ(), "PATH="+path+":"+os.Getenv("PATH"))
	if _, err := os.Stat(c.HostConfig(name)); err == nil {
		env = append(env, "MARGAYCTL_CONFIG="+c.HostConfig(name))
	}
	if _, err := os.Stat(c.AdminKubeconfig()); err == nil {
		env = append(env, "KUBECONFIG="+c.AdminKubeconfig())
	}
	if d := c.DockerHost(name); len(argv) > 0 && strings.HasPrefix(name, "vm") && isLabName(name) {
		if cmd, err := d.Command(argv[0], argv[1:]...); err == nil {
			cmd.Env = env
			if _, err := os.Stat(d.Sock()); err == nil {
				cmd.Env = append(env, "DOCKER_HOST=unix://"+d.Sock())
			}
			// Entering a mount namespace moves to its root: keep the caller's directory (the
			// same file system there), so that relative paths (apply -f x.yaml) work.
			if wd, err := os.Getwd(); err == nil {
				cmd.Args = append([]string{cmd.Args[0], "--wd=" + wd}, cmd.Args[1:]...)
			}
			return cmd
		}
	}
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + c.Prefix + name, "--"}, argv...)...)
	cmd.Env = env
	return cmd
}

// upFile records the `lab up` process (its pid and start time) so that Down, run from another
// shell, can stop it. It does not end in .pid: Down kills the process groups of those.
const upFile = "lab-up.process"

// recordUp writes upFile for this process.
func recordUp(cfg Config) error {
	start, err := procStart(os.Getpid())
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(cfg.StateDir, upFile), fmt.Appendf(nil, "%d %d\n", os.Getpid(), start), 0o644)
}

// stopUp stops the `lab up` process that upFile records, unless it is this process or gone
// (its start time tells a reused pid apart), and waits until it has exited: on SIGTERM it takes
// its lab down itself.
func stopUp(cfg Config) error {
	b, err := os.ReadFile(filepath.Join(cfg.StateDir, upFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", upFile, err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return fmt.Errorf("read %s: %q is not \"<pid> <start time>\"", upFile, b)
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("read %s: %w", upFile, err)
	}
	// A killed lab up whose parent has not reaped it yet is a zombie: gone for this purpose.
	alive := func() bool { s, err := procStart(pid); return err == nil && s == start && !zombie(pid) }
	if pid == os.Getpid() || !alive() {
		return nil
	}
	fmt.Fprintf(cfg.Out, "stopping margayctl lab up (pid %d); it takes its lab down\n", pid)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop lab up (pid %d): %w", pid, err)
	}
	// Its Down stops agents (up to 5 s each) and cleans their pins.
	for end := time.Now().Add(2 * time.Minute); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if !alive() {
			return nil
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	return fmt.Errorf("stop lab up (pid %d): still running 2m after SIGTERM; killed it", pid)
}

// procStart returns the start time of process pid (field 22 of /proc/<pid>/stat, in clock ticks
// since boot).
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and parentheses
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields after the name", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 is the 20th after the name
}

// zombie says whether process pid has exited and waits for its parent to reap it.
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}
