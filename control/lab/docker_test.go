package lab_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/lab"
	"github.com/margaynet/margay/tests/netns"
)

// A host's Docker comes up in its namespaces, runs the busybox image (ping inside the container
// answers), sees its own plugin directory and not the machine's, and StopDocker leaves no
// process, cgroup or mount namespace behind.
func TestDockerHost(t *testing.T) {
	ns := netns.New(t, "dk")
	dir, err := os.MkdirTemp("", "mgyd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	h := lab.DockerHost{Name: "vm100", Netns: ns.Path, Dir: dir, CgroupParent: filepath.Base(dir)}
	ctx := context.Background()
	t.Cleanup(func() { _ = h.StopDocker(ctx) })
	if err := h.StartNamespace(); err != nil {
		t.Fatal(err)
	}
	if err := h.StartDockerd(ctx); err != nil {
		b, _ := os.ReadFile(h.LogFile("dockerd"))
		t.Fatalf("%v\n%s", err, b)
	}
	if err := h.ImportBusybox(ctx, "busybox:margay"); err != nil {
		t.Fatal(err)
	}
	out, err := h.Docker(ctx, "run", "--rm", "--net", "none", "busybox:margay", "ping", "-c", "1", "127.0.0.1")
	if err != nil || !strings.Contains(out, "1 packets received") {
		t.Fatalf("ping in a container: %v\n%s", err, out)
	}
	// The host's /run/docker/plugins is its own directory.
	if err := os.WriteFile(filepath.Join(h.PluginDir(), "mark"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd, err := h.Command("ls", "/run/docker/plugins")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(b)) != "mark" {
		t.Fatalf("ls /run/docker/plugins inside the host: %v %q", err, b)
	}
	if _, err := os.Stat("/run/docker/plugins/mark"); err == nil {
		t.Fatal("the host's plugin directory shows in the machine's /run/docker")
	}
	if _, err := h.Docker(ctx, "run", "-d", "--net", "none", "busybox:margay", "sleep", "1000"); err != nil {
		t.Fatal(err)
	}
	if err := h.StopDocker(ctx); err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob("/sys/fs/cgroup/*/" + h.CgroupParent); len(m) != 0 {
		t.Errorf("cgroups left: %v", m)
	}
	if _, err := h.Command("true"); err == nil {
		t.Error("the mount namespace's holder still runs")
	}
	for _, f := range []string{"dockerd.pid", "mntns.pid"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s left", f)
		}
	}
}
