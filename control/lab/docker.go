package lab

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DockerHost is the Docker side of one lab host: a mount namespace of its own, held by a small
// process, in which the host's dockerd and margay-docker run, both also in the host's network
// namespace.
//
// Why a mount namespace: dockerd finds plugins by name in /run/docker/plugins (then
// /etc/docker/plugins and /usr/lib/docker/plugins), one directory per machine. With one dockerd
// per lab host, each must find its own host's plugin. Inside the host's mount namespace
// /run/docker is a bind mount of <Dir>/run, so /run/docker/plugins/margay.sock is that host's
// margay-docker (production's default: a unix socket, no .spec file) and nothing is written in
// the machine's /run/docker or /etc/docker. dockerd and margay-docker share the namespace because
// dockerd bind-mounts each container's network namespace at <exec-root>/netns/<id> (Join's
// SandboxKey), and margay-docker opens that path to write the gateway's neighbour entry: a mount
// made in one mount namespace (propagation private) is an empty file in another. The holder keeps
// the namespace across restarts of either process.
//
// Everything is found again from <Dir> (pid files, the socket), so StopDocker works after a crash
// of the process that started it.
type DockerHost struct {
	Name  string // the host's name, vm100
	Netns string // the host's network namespace, a path (/run/netns/vm100)
	Dir   string // state: keep it short, dockerd's containerd sockets live below it (108-byte limit)
	// CgroupParent is the cgroup the host's containers go under (dockerd --cgroup-parent), so
	// that several dockerds do not share /docker and StopDocker can find what is left.
	CgroupParent string
	// Client is the docker client binary (default "docker", the first on PATH): Debian's is
	// /usr/bin/docker (20.10, as dockerd), a newer one may be in /usr/local/bin.
	Client string
}

func (h DockerHost) client() string {
	if h.Client == "" {
		return "docker"
	}
	return h.Client
}

// Sock is the host's dockerd API socket.
func (h DockerHost) Sock() string { return filepath.Join(h.Dir, "docker.sock") }

// PluginDir is where the host's dockerd finds plugins, seen from the root mount namespace; inside
// the host's it is /run/docker/plugins.
func (h DockerHost) PluginDir() string { return filepath.Join(h.Dir, "run", "plugins") }

// ns is the host's mount namespace: /run/docker is a bind mount of <Dir>/run in it.
func (h DockerHost) ns() HostNS {
	return HostNS{Name: h.Name, Netns: h.Netns, Dir: h.Dir, Setup: `mount --bind "$1/run" /run/docker`}
}

func (h DockerHost) pidFile(name string) string { return h.ns().pidFile(name) }

// LogFile is the log of one of the host's processes: "dockerd" or "margay-docker".
func (h DockerHost) LogFile(name string) string { return filepath.Join(h.Dir, name+".log") }

// StartNamespace creates the host's mount namespace (idempotent while its holder lives).
func (h DockerHost) StartNamespace() error {
	if err := os.MkdirAll(h.PluginDir(), 0o755); err != nil {
		return err
	}
	// /run/docker is docker.io's own directory (its package creates it); a machine without it
	// gets it, as dockerd would create it.
	if err := os.MkdirAll("/run/docker", 0o700); err != nil {
		return err
	}
	return h.ns().StartNamespace()
}

// Command is a command run inside the host: its network and mount namespaces.
func (h DockerHost) Command(name string, args ...string) (*exec.Cmd, error) {
	return h.ns().Command(name, args...)
}

// StartDockerd starts the host's dockerd (Debian's docker.io) and waits until its API answers.
// No bridge, no iptables, no masquerading: Margay routes.
func (h DockerHost) StartDockerd(ctx context.Context) error {
	args := []string{"--data-root", filepath.Join(h.Dir, "data"), "--exec-root", filepath.Join(h.Dir, "x"),
		"-H", "unix://" + h.Sock(), "--pidfile", filepath.Join(h.Dir, "dockerd.dpid"),
		"--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"}
	if h.CgroupParent != "" {
		args = append(args, "--cgroup-parent", h.CgroupParent)
	}
	if err := h.startProcess("dockerd", "dockerd", args...); err != nil {
		return err
	}
	return waitFor(ctx, h.Name+": dockerd answers", 60*time.Second, func() error {
		_, err := h.Docker(ctx, "version", "--format", "{{.Server.Version}}")
		return err
	})
}

// StartPlugin starts margay-docker (bin) for the host, serving /run/docker/plugins/margay.sock
// and margay-ipam.sock of its mount namespace, with the datastore flags given, and waits until
// both sockets are there.
func (h DockerHost) StartPlugin(ctx context.Context, bin string, args ...string) error {
	for _, s := range []string{"margay.sock", "margay-ipam.sock"} {
		_ = os.Remove(filepath.Join(h.PluginDir(), s))
	}
	args = append([]string{"--node-name", h.Name, "--listen", "unix", "--plugin-dir", "/run/docker/plugins",
		"--docker-socket", h.Sock()}, args...)
	if err := h.startProcess("margay-docker", bin, args...); err != nil {
		return err
	}
	return waitFor(ctx, h.Name+": margay-docker serves", 30*time.Second, func() error {
		if _, ok := alivePid(h.pidFile("margay-docker")); !ok {
			b, _ := os.ReadFile(h.LogFile("margay-docker"))
			return errors.Join(ErrStopped, fmt.Errorf("margay-docker exited: %s", b))
		}
		for _, s := range []string{"margay.sock", "margay-ipam.sock"} {
			if _, err := os.Stat(filepath.Join(h.PluginDir(), s)); err != nil {
				return err
			}
		}
		return nil
	})
}

// StopPlugin stops the host's margay-docker (SIGTERM, then SIGKILL after 10 s); kill sends
// SIGKILL at once, as a crash would.
func (h DockerHost) StopPlugin(kill bool) {
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	stopPid(h.pidFile("margay-docker"), sig, 10*time.Second)
}

// StopDockerd stops the host's dockerd as an init system would: SIGTERM, and dockerd stops its
// containers (SIGKILL after 60 s).
func (h DockerHost) StopDockerd() {
	stopPid(h.pidFile("dockerd"), syscall.SIGTERM, 60*time.Second)
}

// StopDocker takes the host's Docker down and leaves nothing: every container removed while
// dockerd answers, dockerd and margay-docker stopped, whatever survives in the host's cgroup
// killed, the cgroups and the mount namespace removed. It works from the files in Dir alone.
func (h DockerHost) StopDocker(ctx context.Context) error {
	if _, ok := alivePid(h.pidFile("dockerd")); ok {
		ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		if ids, err := h.Docker(ctx, "ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
			_, _ = h.Docker(ctx, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
		}
		cancel()
	}
	h.StopDockerd()
	h.StopPlugin(false)
	var errs []error
	if h.CgroupParent != "" {
		errs = append(errs, killCgroup(h.CgroupParent))
	}
	// What the daemons left in the namespace (containerd's shims after a crash).
	h.ns().KillAll()
	h.ns().StopNamespace()
	return errors.Join(errs...)
}

// Docker runs the docker client against the host's dockerd and returns its combined output.
func (h DockerHost) Docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, h.client(), append([]string{"-H", "unix://" + h.Sock()}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: docker %s: %w: %s", h.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// BusyboxApplets are the commands the lab's image has besides /bin/busybox.
var BusyboxApplets = []string{"sh", "ping", "nc", "ip", "ifconfig", "route", "sleep", "cat", "echo", "wget", "hostname", "ls", "ps", "top", "true", "false"}

// BusyboxImage is a tar of a root file system holding Debian's busybox-static (/bin/busybox) and
// links for BusyboxApplets, for `docker import` (no registry is reachable from the lab).
func BusyboxImage() ([]byte, error) {
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox image: %w (make deps installs busybox-static)", err)
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	hdrs := []*tar.Header{{Name: "bin/", Mode: 0o755, Typeflag: tar.TypeDir}, {Name: "tmp/", Mode: 0o1777, Typeflag: tar.TypeDir},
		{Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin)), Typeflag: tar.TypeReg}}
	for _, a := range BusyboxApplets {
		hdrs = append(hdrs, &tar.Header{Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, Typeflag: tar.TypeSymlink})
	}
	for _, hd := range hdrs {
		if err := tw.WriteHeader(hd); err != nil {
			return nil, err
		}
		if hd.Name == "bin/busybox" {
			if _, err := tw.Write(bin); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// ImportBusybox imports BusyboxImage into the host's dockerd as tag (e.g. busybox:margay), with
// /bin/sh as its command.
func (h DockerHost) ImportBusybox(ctx context.Context, tag string) error {
	img, err := BusyboxImage()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, h.client(), "-H", "unix://"+h.Sock(), "import", "--change", `CMD ["/bin/sh"]`, "-", tag)
	cmd.Stdin = bytes.NewReader(img)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: docker import: %w: %s", h.Name, err, out)
	}
	return nil
}

// startProcess runs bin inside the host, in its own process group, logging to LogFile(name),
// with its pid in a pid file.
func (h DockerHost) startProcess(name, bin string, args ...string) error {
	return h.ns().StartProcess(name, bin, args...)
}

// waitFor polls cond every 100 ms until it succeeds, fails with ErrStopped, or within passes.
func waitFor(ctx context.Context, what string, within time.Duration, cond func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrStopped) || time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %s: %w", what, within, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// alivePid reads a pid file and reports whether that process lives (and is no zombie).
func alivePid(file string) (int, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, false
	}
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// pid (comm) STATE …: comm may hold spaces and parentheses; the state follows the last ')'.
	s := string(st)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && len(s) > i+2 && s[i+2] == 'Z' {
		return 0, false
	}
	return pid, true
}

// stopPid signals a pid file's process (only it: dockerd stops its containerd itself), waits up
// to within for it to end, then kills its process group; the pid file is removed.
func stopPid(file string, sig syscall.Signal, within time.Duration) {
	pid, ok := alivePid(file)
	if ok {
		_ = syscall.Kill(pid, sig)
		for end := time.Now().Add(within); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
			if _, ok := alivePid(file); !ok {
				break
			}
		}
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if _, ok := alivePid(file); !ok {
				break
			}
		}
	}
	_ = os.Remove(file)
}

// killCgroup kills every process left under parent in each cgroup v1 hierarchy (or the v2
// tree) and removes the cgroups, deepest first.
func killCgroup(parent string) error {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + parent)
	if d := filepath.Join("/sys/fs/cgroup", parent); isDir(d) {
		roots = append(roots, d)
	}
	var errs []error
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				procs := cgroupProcs(dirs[i])
				for _, pid := range procs {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				err := syscall.Rmdir(dirs[i])
				if err == nil || errors.Is(err, syscall.ENOENT) {
					break
				}
				if time.Now().After(end) {
					errs = append(errs, fmt.Errorf("remove cgroup %s: %w (processes %v)", dirs[i], err, procs))
					break
				}
			}
		}
	}
	return errors.Join(errs...)
}

func cgroupProcs(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
