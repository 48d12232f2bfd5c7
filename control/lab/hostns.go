package lab

import (
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

// HostNS is a lab host's mount namespace, held by a small process, together with the host's
// network namespace: the daemons a host runs (dockerd, containerd, kubelet, …) are started in
// both, so that each host sees its own /run/docker, /var/lib/kubelet or /etc/cni/net.d, as a
// machine of its own would, and nothing is written in the machine's. The namespace is made with
// private propagation (no mount made in it reaches the machine's), then Setup runs in it. The
// holder keeps the namespace across restarts of the daemons.
//
// Everything is found again from Dir (pid files, logs), so a crashed caller's host can be stopped.
type HostNS struct {
	Name  string // the host's name, vm100
	Netns string // the host's network namespace, a path (/run/netns/vm100)
	Dir   string // pid files and logs
	// Setup is a shell script run in the new mount namespace before it is ready; "$1" is Dir.
	Setup string
}

func (h HostNS) pidFile(name string) string { return filepath.Join(h.Dir, name+".pid") }

// LogFile is the log of one of the host's processes, started by StartProcess.
func (h HostNS) LogFile(name string) string { return filepath.Join(h.Dir, name+".log") }

// Alive reports the pid of a process StartProcess started, if it lives.
func (h HostNS) Alive(name string) (int, bool) { return alivePid(h.pidFile(name)) }

// StartNamespace creates the mount namespace (idempotent while its holder lives).
func (h HostNS) StartNamespace() error {
	if _, ok := alivePid(h.pidFile("mntns")); ok {
		return nil
	}
	if err := os.MkdirAll(h.Dir, 0o755); err != nil {
		return err
	}
	ready := filepath.Join(h.Dir, "mntns.ready")
	_ = os.Remove(ready)
	script := "set -e\n" + h.Setup + "\ntouch \"$2\"\nexec sleep infinity\n"
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", h.Dir, ready)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: mount namespace: %w", h.Name, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for end := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		select {
		case err := <-done:
			return fmt.Errorf("%s: mount namespace: %v: %s", h.Name, err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(end) {
			_ = cmd.Process.Kill()
			return fmt.Errorf("%s: mount namespace not ready within 10s: %s", h.Name, out.String())
		}
	}
	return os.WriteFile(h.pidFile("mntns"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
}

// StopNamespace ends the holder: the namespace goes once no process is left in it.
func (h HostNS) StopNamespace() { stopPid(h.pidFile("mntns"), syscall.SIGKILL, 5*time.Second) }

// Command is a command run inside the host: its network and mount namespaces.
func (h HostNS) Command(name string, args ...string) (*exec.Cmd, error) {
	pid, ok := alivePid(h.pidFile("mntns"))
	if !ok {
		return nil, fmt.Errorf("%s: no mount namespace (StartNamespace first)", h.Name)
	}
	return exec.Command("nsenter", append([]string{"--mount=/proc/" + strconv.Itoa(pid) + "/ns/mnt",
		"--net=" + h.Netns, "--", name}, args...)...), nil
}

// Run runs a command inside the host and returns its combined output, or an error carrying it.
func (h HostNS) Run(ctx context.Context, name string, args ...string) (string, error) {
	cmd, err := h.Command(name, args...)
	if err != nil {
		return "", err
	}
	c := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	out, err := c.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s %s: %w: %s", h.Name, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// StartProcess runs bin inside the host, in its own process group, logging to LogFile(name),
// with its pid in a pid file.
func (h HostNS) StartProcess(name, bin string, args ...string) error {
	cmd, err := h.Command(bin, args...)
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(h.LogFile(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: start %s: %w", h.Name, name, err)
	}
	go func() { _ = cmd.Wait() }()
	return os.WriteFile(h.pidFile(name), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
}

// StopProcess signals a process StartProcess started (sig, then SIGKILL to its process group
// after within) and waits for its end.
func (h HostNS) StopProcess(name string, sig syscall.Signal, within time.Duration) {
	stopPid(h.pidFile(name), sig, within)
}

// ErrStopped, wrapped in a condition's error, ends WaitFor at once.
var ErrStopped = errors.New("stopped")

// WaitFor polls cond every 100 ms until it succeeds, fails with ErrStopped, or within passes.
func WaitFor(ctx context.Context, what string, within time.Duration, cond func() error) error {
	return waitFor(ctx, what, within, cond)
}

// KillCgroup kills every process left under the cgroup parent, in each cgroup v1 hierarchy (or
// the v2 tree), and removes the cgroups, deepest first.
func KillCgroup(parent string) error { return killCgroup(parent) }

// KillAll kills every process in the host's mount namespace but its holder (what a crashed
// daemon left: containerd's shims, a container's processes), and waits until they are gone.
func (h HostNS) KillAll() {
	pid, ok := alivePid(h.pidFile("mntns"))
	if !ok {
		return
	}
	ns, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/mnt")
	if err != nil {
		return
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		left := 0
		procs, _ := filepath.Glob("/proc/[0-9]*/ns/mnt")
		for _, p := range procs {
			other, err := strconv.Atoi(strings.Split(p, "/")[2])
			if err != nil || other == pid {
				continue
			}
			if l, err := os.Readlink(p); err == nil && l == ns {
				_ = syscall.Kill(other, syscall.SIGKILL)
				left++
			}
		}
		if left == 0 {
			return
		}
	}
}
