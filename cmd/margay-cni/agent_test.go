package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/margaynet/margay/control/cni"
	"github.com/margaynet/margay/control/datastore"
)

// serveEnv makes the test binary a test's agent: it serves CNI calls (cni.Server, as margay-agent
// does) in the network namespace it was started in, until SIGTERM.
const serveEnv = "MARGAY_CNI_TEST_SERVE"

// serveSpec is what serveEnv holds.
type serveSpec struct {
	Node     string `json:"node"`
	Endpoint string `json:"endpoint"`
	Log      string `json:"log"`
}

func serveForTest(raw string) int {
	var spec serveSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	f, err := os.OpenFile(spec.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer f.Close()
	log := slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	cfg := datastore.Config{Endpoints: []string{spec.Endpoint}}
	ds, err := datastore.New(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer ds.Close()
	ln, err := cni.Listen("@margay-cni")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	if err := cni.NewServer(spec.Node, ds, cfg, log).Serve(ctx, ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// testAgent is a test's agent, serving CNI calls in the world's host namespace.
type testAgent struct {
	cmd *exec.Cmd
	log string
}

// startAgent starts the world's agent and waits until it serves; it stops at the test's end.
func (w *world) startAgent(t testing.TB) *testAgent {
	t.Helper()
	a := &testAgent{log: filepath.Join(t.TempDir(), "agent.log")}
	spec, _ := json.Marshal(serveSpec{Node: node, Endpoint: w.endpoint, Log: a.log})
	a.cmd = exec.Command("nsenter", "--net="+w.host.Path, "--", os.Args[0], "-test.run=^$")
	a.cmd.Env = append(os.Environ(), serveEnv+"="+string(spec))
	a.cmd.Stderr = os.Stderr
	out, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.stop)
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("agent said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("test agent: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("test agent not serving after 30 s")
	}
	return a
}

func (a *testAgent) stop() {
	if a.cmd.ProcessState != nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	_ = a.cmd.Wait()
}

// served reports whether the agent's log shows msg for the container.
func (a *testAgent) served(t testing.TB, msg, containerID string) bool {
	t.Helper()
	b, err := os.ReadFile(a.log)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "msg=\""+msg+"\"") && strings.Contains(l, "container="+containerID) && strings.Contains(l, "via=agent") {
			return true
		}
	}
	return false
}

const fallbackNote = "running the call in margay-cni-direct"

// Every command runs in the agent when one serves the host: ADD, CHECK, DEL, GC and STATUS give
// what margay-cni-direct gives, and margay-cni does not start margay-cni-direct.
func TestAgentServes(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	a := w.startAgent(t)
	for _, version := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(version, func(t *testing.T) {
			path, _ := workloadNS(t)
			cid := "agent" + strings.ReplaceAll(version, ".", "")
			o := run(t, w.host, call{cmd: "ADD", containerID: cid, netns: path, conf: w.conf(version, nil)})
			if o.err != nil || strings.Contains(o.stderr, fallbackNote) {
				t.Fatalf("ADD: %v\nstderr: %s", o.err, o.stderr)
			}
			if !a.served(t, "add done", cid) {
				t.Errorf("the agent's log shows no ADD of %s", cid)
			}
			res := parseAdd(t, o.stdout, version)
			if len(res.IPs) != 1 || w.host.Link(t, res.Interfaces[0].Name) == nil {
				t.Errorf("ADD result %s", o.stdout)
			}
			prev, _ := json.Marshal(json.RawMessage(o.stdout))
			check := w.conf(version, map[string]any{"prevResult": json.RawMessage(prev)})
			if o := run(t, w.host, call{cmd: "CHECK", containerID: cid, netns: path, conf: check}); o.err != nil || strings.Contains(o.stderr, fallbackNote) {
				if version != "0.4.0" || o.err == nil || o.err.Code != types.ErrIncompatibleCNIVersion {
					t.Errorf("CHECK: %v\n%s", o.err, o.stderr)
				}
			}
			if o := run(t, w.host, call{cmd: "DEL", containerID: cid, netns: path, conf: w.conf(version, nil)}); o.err != nil || strings.Contains(o.stderr, fallbackNote) {
				t.Fatalf("DEL: %v\n%s", o.err, o.stderr)
			}
			w.assertGone(t, cid)
		})
	}
	// GC of the agent's network removes what the runtime no longer lists.
	path, _ := workloadNS(t)
	w.mustAdd(t, "1.1.0", "gone", path, "")
	gc := w.conf("1.1.0", map[string]any{"cni.dev/valid-attachments": []any{}})
	if o := run(t, w.host, call{cmd: "GC", conf: gc, env: noContainer}); o.err != nil || strings.Contains(o.stderr, fallbackNote) {
		t.Fatalf("GC: %v\n%s", o.err, o.stderr)
	}
	w.assertGone(t, "gone")
	if o := run(t, w.host, call{cmd: "STATUS", conf: w.conf("1.1.0", nil), env: noContainer}); o.err != nil || strings.Contains(o.stderr, fallbackNote) {
		t.Errorf("STATUS: %v\n%s", o.err, o.stderr)
	}
}

var noContainer = map[string]string{"CNI_CONTAINERID": "", "CNI_IFNAME": "", "CNI_NETNS": ""}

// margay-cni runs the call itself (margay-cni-direct), saying why on stderr, when no agent
// serves the host, when the agent serves another etcd, and always with "agentSocket": "off".
func TestAgentFallback(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	path, _ := workloadNS(t)
	add := func(cid string, set map[string]any) outcome {
		t.Helper()
		o := run(t, w.host, call{cmd: "ADD", containerID: cid, netns: path, conf: w.conf("1.1.0", set)})
		if o.err == nil {
			w.mustDel(t, cid, path, "")
		}
		return o
	}
	if o := add("c1", nil); o.err != nil || !strings.Contains(o.stderr, "no margay-agent answers on @margay-cni") || !strings.Contains(o.stderr, fallbackNote) {
		t.Errorf("ADD without an agent: %v\nstderr: %s", o.err, o.stderr)
	}
	a := w.startAgent(t)
	if o := add("c2", map[string]any{"agentSocket": "off"}); o.err != nil || strings.Contains(o.stderr, fallbackNote) || a.served(t, "add done", "c2") {
		t.Errorf(`ADD with "agentSocket": "off": %v, served by the agent %v\nstderr: %s`, o.err, a.served(t, "add done", "c2"), o.stderr)
	}
	// Another prefix is another datastore: margay-cni-direct runs it there, where the node is not
	// registered.
	o := add("c3", map[string]any{"datastore": map[string]any{"endpoints": []string{w.endpoint}, "prefix": "/elsewhere/"}})
	if o.err == nil || o.err.Code != types.ErrTryAgainLater || !strings.Contains(o.err.Msg, `node "node-1" is not registered`) ||
		!strings.Contains(o.stderr, "margay-agent does not serve this network config: the network config's datastore ("+w.endpoint+", prefix /elsewhere/)") {
		t.Errorf("ADD to another datastore: %v, want margay-cni-direct's code %d\nstderr: %s", o.err, types.ErrTryAgainLater, o.stderr)
	}
	if o := add("c4", map[string]any{"agentSocket": "@margay-cni-nobody"}); o.err != nil || !strings.Contains(o.stderr, "no margay-agent answers on @margay-cni-nobody") {
		t.Errorf("ADD with an agentSocket nobody serves: %v\nstderr: %s", o.err, o.stderr)
	}
	// A config the agent cannot use: margay-cni-direct says what is wrong with it.
	o = add("c5", map[string]any{"mtuu": 1400})
	if o.err == nil || o.err.Code != types.ErrUnsupportedField || !strings.Contains(o.stderr, "the agent cannot use the network config: margay-cni: invalid network config: unknown field") {
		t.Errorf("ADD with an unknown field: %v, want margay-cni-direct's code %d\nstderr: %s", o.err, types.ErrUnsupportedField, o.stderr)
	}
	// Files the agent cannot see (in a container it would not): the kubeconfig, the netns.
	o = add("c6", map[string]any{"kubernetes": map[string]any{"kubeconfig": "/nonexistent/kubeconfig"}})
	if !strings.Contains(o.stderr, "the agent cannot read kubernetes.kubeconfig: stat /nonexistent/kubeconfig") {
		t.Errorf("ADD with a kubeconfig the agent cannot read: %v\nstderr: %s", o.err, o.stderr)
	}
	o = run(t, w.host, call{cmd: "DEL", containerID: "c7", netns: "/nonexistent/netns", conf: w.conf("1.1.0", nil)})
	if o.err != nil || !strings.Contains(o.stderr, "the agent cannot see the container's network namespace: stat /nonexistent/netns") {
		t.Errorf("DEL with a netns the agent cannot see: %v\nstderr: %s", o.err, o.stderr)
	}
}

// A caller that is not root is refused; an agent that closes the connection mid-call is code 11;
// without margay-cni-direct beside it, margay-cni says so.
func TestAgentFailures(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	path, _ := workloadNS(t)
	w.startAgent(t)
	cmd := exec.Command("nsenter", "--net="+w.host.Path, "--setuid=65534", "--setgid=65534", "--", pluginBin)
	cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_NETNS=" + path, "CNI_IFNAME=eth0", "CNI_PATH=/nonexistent"}
	cmd.Stdin = strings.NewReader(string(w.conf("1.1.0", nil)))
	out, err := cmd.Output()
	var e types.Error
	if err == nil || json.Unmarshal(out, &e) != nil || !strings.Contains(e.Msg, "serves CNI calls to root only") {
		t.Errorf("ADD as uid 65534: %v, %s", err, out)
	}

	// A socket that takes the call and closes.
	w2 := newWorld(t, "198.19.0.0/16")
	var ln net.Listener
	if err := w2.host.Do(func() (err error) { ln, err = net.Listen("unix", "@margay-cni"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	p2, _ := workloadNS(t)
	if o := run(t, w2.host, call{cmd: "ADD", containerID: "c1", netns: p2, conf: w2.conf("1.1.0", nil)}); o.err == nil || o.err.Code != types.ErrTryAgainLater ||
		!strings.Contains(o.err.Msg, "margay-agent did not answer the ADD call") {
		t.Errorf("ADD with an agent that hangs up: %v, want code %d", o.err, types.ErrTryAgainLater)
	}

	// margay-cni alone.
	alone := filepath.Join(t.TempDir(), "margay-cni")
	b, err := os.ReadFile(pluginBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(alone, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command("nsenter", "--net="+w2.host.Path, "--", alone)
	cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_NETNS=" + p2, "CNI_IFNAME=eth0", "CNI_PATH=/nonexistent", "PATH=/usr/bin:/bin"}
	cmd.Stdin = strings.NewReader(string(w2.conf("1.1.0", map[string]any{"agentSocket": "off"})))
	out, err = cmd.Output()
	e = types.Error{}
	if err == nil || json.Unmarshal(out, &e) != nil || e.Code != types.ErrTryAgainLater || !strings.Contains(e.Details, "margay-cni-direct is neither beside margay-cni nor in CNI_PATH") {
		t.Errorf("ADD without margay-cni-direct: %v, %s", err, out)
	}
}
