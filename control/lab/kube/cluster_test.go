//go:build k8s

package kube

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/margaynet/margay/control/lab"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/netns"
)

func TestMain(m *testing.M) { cluster.Main(m) }

func kubeBin() string {
	if d := os.Getenv("MARGAY_K8S_BIN_DIR"); d != "" {
		return d
	}
	return DefaultBinDir
}

// The control plane comes up on the lab's etcd and a node registers, in its own mount namespace
// (its /etc/cni/net.d, /sys/fs/bpf and kernel settings are its own, the machine's untouched), and
// Down leaves nothing: no process, cgroup, mount point or namespace.
func TestControlPlaneAndNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cfg := LabConfig{Lab: lab.Config{Hosts: 1, BinDir: cluster.Binaries(t), StateDir: filepath.Join("/run", netns.UniqueName("mk8s")),
		Prefix: "kt-", Out: netns.LogWriter(t, "lab")}, KubeBin: kubeBin()}
	cfg.Lab.K8s = true
	before, _ := os.ReadFile("/proc/sys/kernel/panic")
	t.Cleanup(func() {
		if err := Down(cfg); err != nil {
			t.Errorf("down: %v", err)
		}
	})
	base, err := lab.Up(ctx, cfg.Lab)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.cluster()
	if err := c.StartControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	h := base.Hosts[0]
	n := c.Node(h.Name, "/run/netns/"+h.NS, h.Addr)
	if err := n.Start(ctx, ""); err != nil {
		for _, p := range []string{"containerd", "kubelet", "kube-proxy"} {
			t.Logf("%s: %s", p, tail(n.Host().LogFile(p), 30))
		}
		t.Fatal(err)
	}
	out, err := c.Kubectl(ctx, "get", "nodes", "-o", "wide")
	if err != nil || !strings.Contains(out, h.Addr.String()) {
		t.Fatalf("kubectl get nodes: %v\n%s", err, out)
	}
	t.Logf("kubectl get nodes:\n%s", out)
	// The node's own paths and settings.
	out, err = n.Host().Run(ctx, "sh", "-c", "cat /proc/sys/kernel/panic; stat -f -c %T /sys/fs/bpf; mkdir -p /etc/cni/net.d && ls /etc/cni/net.d | wc -l")
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(out); len(f) != 3 || f[0] != "10" || f[1] != "bpf_fs" || f[2] != "0" {
		t.Errorf("inside the node: kernel.panic, /sys/fs/bpf's type, files in /etc/cni/net.d = %q, want 10 bpf_fs 0", out)
	}
	if now, _ := os.ReadFile("/proc/sys/kernel/panic"); string(now) != string(before) {
		t.Errorf("the machine's kernel.panic changed: %q → %q", before, now)
	}
	if err := Down(cfg); err != nil {
		t.Fatal(err)
	}
	if out, _ := exec.Command("pgrep", "-af", cfg.Lab.StateDir).Output(); len(out) > 0 {
		t.Errorf("processes of the lab left:\n%s", out)
	}
	if m, _ := filepath.Glob("/sys/fs/cgroup/*/" + n.CgroupRoot()); len(m) > 0 {
		t.Errorf("cgroups left: %v", m)
	}
	for _, d := range []string{"/etc/cni", "/opt/cni", "/var/lib/kubelet", "/etc/margay"} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s in the machine's file system", d)
		}
	}
}
