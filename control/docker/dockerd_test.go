package docker_test

import (
	"archive/tar"
	"bytes"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/docker"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/tests/netns"
)

// probeMain is the container's program: it prints its interfaces, addresses and routes.
const probeMain = `package main

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	// The gateway's permanent neighbour entry is written by the plugin once the container's
	// namespace holds the interface, which is about when this starts: wait for it, 10 s at most.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile("/proc/net/arp"); strings.Contains(string(b), "169.254.1.1 ") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		addrs, _ := i.Addrs()
		fmt.Println("if", i.Name, i.HardwareAddr, addrs)
	}
	b, _ := os.ReadFile("/proc/net/route")
	fmt.Print(string(b))
	b, _ = os.ReadFile("/proc/net/arp")
	fmt.Print(string(b))
}
`

// TestDockerdSmoke runs the plugin against a real dockerd, when one is given: MARGAY_DOCKERD_NETNS
// names the network namespace it runs in (the plugin's host namespace), MARGAY_DOCKERD_SOCK its
// API socket. The plugin's sockets go to /run/docker/plugins, where that dockerd looks.
func TestDockerdSmoke(t *testing.T) {
	nsName, sock := os.Getenv("MARGAY_DOCKERD_NETNS"), os.Getenv("MARGAY_DOCKERD_SOCK")
	if nsName == "" || sock == "" {
		t.Skip("MARGAY_DOCKERD_NETNS and MARGAY_DOCKERD_SOCK not set")
	}
	host := netns.Open(t, nsName)
	ds := datastoretest.New(t)
	if _, err := ds.Pools().Create(t.Context(), "main", pool("main", "198.19.0.0/16", 26, false)); err != nil {
		t.Fatal(err)
	}
	datastoretest.RegisterNodes(t, ds, node)
	log := datastoretest.Logger(t)
	srv := docker.New(ds, ipam.New(ds, ipam.WithLogger(log)), node, docker.WithLogger(log), docker.WithNetns(host.Do),
		docker.WithNetworkNamer(docker.DockerAPINamer(sock)))
	if err := os.MkdirAll("/run/docker/plugins", 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"margay", "margay-ipam"} {
		path := filepath.Join("/run/docker/plugins", name+".sock")
		_ = os.Remove(path)
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: srv.Handler()}
		go func() { _ = hs.Serve(ln) }()
		t.Cleanup(func() { hs.Close(); os.Remove(path) })
	}
	dockerCmd := func(args ...string) (string, error) {
		out, err := exec.Command("docker", append([]string{"-H", "unix://" + sock}, args...)...).CombinedOutput()
		t.Logf("docker %s:\n%s", strings.Join(args, " "), out)
		return string(out), err
	}

	// The image: the probe, built static.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(probeMain), 0o644); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "probe"), "main.go")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build probe: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(filepath.Join(dir, "probe"))
	if err != nil {
		t.Fatal(err)
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	_ = tw.WriteHeader(&tar.Header{Name: "probe", Mode: 0o755, Size: int64(len(bin))})
	_, _ = tw.Write(bin)
	_ = tw.Close()
	imp := exec.Command("docker", "-H", "unix://"+sock, "import", "-", "margay-probe:smoke")
	imp.Stdin = &tb
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}

	if _, err := dockerCmd("network", "create", "--driver", "margay", "--ipam-driver", "margay-ipam", "smoke1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = dockerCmd("network", "rm", "smoke1") })
	_, _ = dockerCmd("network", "inspect", "smoke1")
	out, err := dockerCmd("run", "--rm", "--net", "smoke1", "margay-probe:smoke", "/probe")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"198.19.0.0/32", "cali0\t00000000\t0101FEA9", "cali0\t0101FEA9\t00000000", "169.254.1.1      0x1         0x6         ee:ee:ee:ee:ee:ee"} {
		if !strings.Contains(out, want) {
			t.Errorf("the container lacks %q", want)
		}
	}
	// --subnet and --ip; a subnet outside the pools is refused with the plugin's message.
	if out, err := dockerCmd("network", "create", "--driver", "margay", "--ipam-driver", "margay-ipam", "--subnet", "10.9.0.0/24", "smoke-bad"); err == nil ||
		!strings.Contains(out, "not inside a Margay IP pool") {
		t.Errorf("subnet outside the pools: %v", err)
		_, _ = dockerCmd("network", "rm", "smoke-bad")
	}
	if _, err := dockerCmd("network", "create", "--driver", "margay", "--ipam-driver", "margay-ipam", "--subnet", "198.19.4.0/24", "smoke2"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = dockerCmd("network", "rm", "smoke2") })
	if out, err := dockerCmd("run", "--rm", "--net", "smoke2", "--ip", "198.19.4.9", "margay-probe:smoke", "/probe"); err != nil || !strings.Contains(out, "198.19.4.9/32") {
		t.Errorf("--ip 198.19.4.9: %v", err)
	}
	if out, err := dockerCmd("run", "--rm", "--net", "smoke2", "margay-probe:smoke", "/probe"); err != nil || !strings.Contains(out, "198.19.4.0/32") {
		t.Errorf("--subnet 198.19.4.0/24: %v", err)
	}

	ws, _, err := ds.Workloads(node).List(t.Context())
	t.Logf("records after the container: %+v, %v", ws, err)
	if p, err := ds.Profiles().Get(t.Context(), "smoke1"); err != nil {
		t.Errorf("profile: %v", err)
	} else if p.Value.LabelsToApply[docker.NetworkLabel] != "smoke1" {
		t.Errorf("profile %+v", p.Value)
	}
	hs, _, _ := ds.Handles().List(t.Context())
	var left []datastore.Handle
	for _, h := range hs {
		left = append(left, h.Value)
	}
	t.Logf("handles after the container: %+v", left)
}
