package cluster_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/margaynet/margay/control/docker"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/poll"
)

// dockerProbe is the containers' program: "serve" answers TCP on :8080 with what it reads,
// "connect ADDR" sends a line there and exits 0 when it comes back; "isolated OK BLOCKED"
// connects to OK (exit 1 if it cannot: not programmed yet), then must fail to reach BLOCKED
// (exit 2 and "LEAK" if it can).
const dockerProbe = `package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	switch os.Args[1] {
	case "serve":
		ln, err := net.Listen("tcp", ":8080")
		if err != nil {
			panic(err)
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				panic(err)
			}
			go func() {
				defer c.Close()
				l, _ := bufio.NewReader(c).ReadString('\n')
				c.Write([]byte(l))
			}()
		}
	case "connect":
		if err := echo(os.Args[2]); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		fmt.Println("echoed")
	case "isolated":
		if err := echo(os.Args[2]); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		if err := echo(os.Args[3]); err == nil {
			fmt.Println("LEAK: reached", os.Args[3])
			os.Exit(2)
		}
		fmt.Println("isolated")
	}
}

func echo(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintln(c, "hello")
	l, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || l != "hello\n" {
		return fmt.Errorf("echo: %q %v", l, err)
	}
	return nil
}
`

// pluginPort is where each host's plugin listens, on 127.0.0.1 of its own namespace: one spec
// file in /etc/docker/plugins serves every host's dockerd.
const pluginPort = "9876"

// TestDockerCrossHost is Calico's Docker flow on two hosts with their agents: the same network
// created on each, a container on each, TCP between them; a container of another network cannot
// reach them. It needs dockerd (Debian's docker.io) and MARGAY_DOCKER_TESTS=1; it writes
// /etc/docker/plugins/margay{,-ipam}.spec.
func TestDockerCrossHost(t *testing.T) {
	if os.Getenv("MARGAY_DOCKER_TESTS") == "" {
		t.Skip("MARGAY_DOCKER_TESTS not set")
	}
	if _, err := exec.LookPath("dockerd"); err != nil {
		t.Skip("no dockerd")
	}
	c := cluster.New(t)
	h1 := c.AddHost("vm100", "198.18.0.100/24")
	h2 := c.AddHost("vm101", "198.18.0.101/24")

	if err := os.MkdirAll("/etc/docker/plugins", 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"margay", "margay-ipam"} {
		path := filepath.Join("/etc/docker/plugins", name+".spec")
		if err := os.WriteFile(path, []byte("tcp://127.0.0.1:"+pluginPort+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(path) })
	}
	image := buildProbeImage(t)

	var hosts []dockerHost
	for _, h := range []*cluster.Host{h1, h2} {
		dir, err := os.MkdirTemp("", "mgyd") // short: dockerd's sockets live below it
		if err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(dir, "docker.sock")
		// The plugin of the host, in this process, listening in the host's namespace.
		srv := docker.New(c.DS, ipam.New(c.DS), h.Name, docker.WithNetns(h.NS.Do), docker.WithNetworkNamer(docker.DockerAPINamer(sock)))
		var ln net.Listener
		if err := h.NS.Do(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:"+pluginPort); return err }); err != nil {
			t.Fatal(err)
		}
		hs := &http.Server{Handler: srv.Handler()}
		go func() { _ = hs.Serve(ln) }()
		t.Cleanup(func() { hs.Close() })
		d := exec.Command("nsenter", "--net="+h.NS.Path, "--", "dockerd", "--data-root", filepath.Join(dir, "data"),
			"--exec-root", filepath.Join(dir, "x"), "-H", "unix://"+sock, "--pidfile", filepath.Join(dir, "pid"),
			"--bridge=none", "--iptables=false", "--ip-masq=false")
		logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
		if err != nil {
			t.Fatal(err)
		}
		d.Stdout, d.Stderr = logf, logf
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = d.Process.Signal(syscall.SIGTERM)
			done := make(chan error, 1)
			go func() { done <- d.Wait() }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = d.Process.Kill()
				<-done
			}
			logf.Close()
			_ = exec.Command("umount", "-R", filepath.Join(dir, "x")).Run()
			_ = os.RemoveAll(dir)
		})
		dh := dockerHost{h, sock}
		poll.Until(t, "dockerd of "+h.Name+" answers", 60*time.Second, func() error {
			_, err := dh.docker(t, "version")
			return err
		})
		imp := exec.Command("docker", "-H", "unix://"+sock, "import", "-", "margay-probe:test")
		imp.Stdin = bytes.NewReader(image)
		if out, err := imp.CombinedOutput(); err != nil {
			t.Fatalf("import on %s: %v\n%s", h.Name, err, out)
		}
		if _, err := dh.docker(t, "network", "create", "--driver", "margay", "--ipam-driver", "margay-ipam", "net1"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = dh.docker(t, "network", "rm", "net1") })
		hosts = append(hosts, dh)
	}

	// A server per network on vm100.
	servers := map[string]string{}
	for _, n := range []string{"net1", "net2"} {
		if n == "net2" {
			for _, h := range hosts {
				if _, err := h.docker(t, "network", "create", "--driver", "margay", "--ipam-driver", "margay-ipam", n); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _, _ = h.docker(t, "network", "rm", n) })
			}
		}
		name := "srv-" + n
		if _, err := hosts[0].docker(t, "run", "-d", "--net", n, "--name", name, "margay-probe:test", "/probe", "serve"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = hosts[0].docker(t, "rm", "-f", name) })
		ip, err := hosts[0].docker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
		if err != nil {
			t.Fatal(err)
		}
		servers[n] = net.JoinHostPort(strings.TrimSpace(ip), "8080")
	}

	// A client on vm101 reaches its network's server once the agents programmed both ends, and
	// then not the other network's: each profile admits only its own members.
	for _, tc := range []struct{ net, other string }{{"net1", "net2"}, {"net2", "net1"}} {
		poll.Until(t, "a container of "+tc.net+" on vm101 reaches "+servers[tc.net], 90*time.Second, func() error {
			out, err := hosts[1].docker(t, "run", "--rm", "--net", tc.net, "margay-probe:test", "/probe", "isolated", servers[tc.net], servers[tc.other])
			if strings.Contains(out, "LEAK") {
				t.Fatalf("a container of %s reached %s's server: %s", tc.net, tc.other, out)
			}
			if err != nil || !strings.Contains(out, "isolated") {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
	}
	ctx := context.Background()
	ws, _, _ := c.DS.Workloads("vm101").List(ctx)
	if len(ws) != 0 {
		t.Errorf("vm101 keeps records after its containers: %+v", ws)
	}
}

// dockerHost is a cluster host with its dockerd.
type dockerHost struct {
	*cluster.Host
	sock string // dockerd's API socket
}

// docker runs the docker CLI against the host's dockerd.
func (h dockerHost) docker(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("docker", append([]string{"-H", "unix://" + h.sock}, args...)...).CombinedOutput()
	t.Logf("%s: docker %s:\n%s", h.Name, strings.Join(args, " "), out)
	return string(out), err
}

// buildProbeImage builds dockerProbe static and returns a tar of it, for docker import.
func buildProbeImage(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(dockerProbe), 0o644); err != nil {
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
	if err := tw.WriteHeader(&tar.Header{Name: "probe", Mode: 0o755, Size: int64(len(bin))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(bin); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return tb.Bytes()
}
