//go:build k8s

package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/lab"
	"github.com/margaynet/margay/control/lab/kube"
	"github.com/margaynet/margay/tests/cluster"
	"github.com/margaynet/margay/tests/netns"
	"github.com/margaynet/margay/tests/poll"
)

// The suite's tests share one lab (three nodes and the gateway with its outside client), brought
// up by the first test that needs it and taken down after the last.
var (
	labOnce sync.Once
	theLab  *kube.Lab
	labErr  error
	labCfg  kube.LabConfig
)

func TestMain(m *testing.M) {
	cluster.Main(m, func() {
		if labCfg.Lab.StateDir != "" {
			if err := kube.Down(labCfg); err != nil {
				fmt.Fprintln(os.Stderr, "k8s lab down:", err)
			}
		}
	})
}

func kubeBin() string {
	if d := os.Getenv("MARGAY_K8S_BIN_DIR"); d != "" {
		return d
	}
	return kube.DefaultBinDir
}

// labLog collects the lab's progress; it is printed when bringing the lab up fails.
type labLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *labLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// k8sLab returns the suite's lab, bringing it up first.
func k8sLab(t *testing.T) *kube.Lab {
	t.Helper()
	labOnce.Do(func() {
		log := &labLog{}
		labCfg = kube.LabConfig{Lab: lab.Config{Hosts: 3, Gateway: true, BinDir: cluster.Binaries(t),
			StateDir: filepath.Join("/run", netns.UniqueName("mk8s")), Prefix: "k8t-", Out: log},
			KubeBin: kubeBin(), Repo: "../..", Workloads: true}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		start := time.Now()
		theLab, labErr = kube.Up(ctx, labCfg)
		if labErr != nil {
			labErr = fmt.Errorf("%w\n%s", labErr, log.b.String())
			return
		}
		t.Logf("the lab came up in %s", time.Since(start).Round(time.Second))
	})
	if labErr != nil {
		t.Fatal(labErr)
	}
	return theLab
}

// kubectl runs kubectl as the lab's admin and fails the test on error.
func kubectl(t *testing.T, l *kube.Lab, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := l.Cluster.Kubectl(ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// apply applies a manifest.
func apply(t *testing.T, l *kube.Lab, manifest string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if _, err := l.Cluster.KubectlIn(ctx, strings.NewReader(manifest), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
}

// hostRun runs a command in a lab host (the node's namespaces, margayctl's config) and fails the
// test on error.
func hostRun(t *testing.T, l *kube.Lab, host string, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := l.HostRun(ctx, host, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitPods waits until n pods match selector in namespace, all Ready, and returns them.
func waitPods(t *testing.T, l *kube.Lab, namespace, selector string, n int) []kube.Pod {
	t.Helper()
	var pods []kube.Pod
	poll.Until(t, fmt.Sprintf("%d ready pods %s in %s", n, selector, namespace), 3*time.Minute, func() error {
		var err error
		pods, err = l.Cluster.Pods(t.Context(), namespace, selector)
		if err != nil {
			return err
		}
		ready := 0
		for _, p := range pods {
			if p.Ready {
				ready++
			}
		}
		if len(pods) != n || ready != n {
			return fmt.Errorf("%d pods, %d ready", len(pods), ready)
		}
		return nil
	})
	return pods
}

// exec runs a command in a pod.
func exec(t *testing.T, l *kube.Lab, p kube.Pod, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	return l.Cluster.Exec(ctx, p, argv...)
}

// workloads reads a node's workload records (margayctl workload list -o json inside it).
func workloads(t *testing.T, l *kube.Lab, node string) []datastore.Workload {
	t.Helper()
	out := hostRun(t, l, node, "margayctl", "workload", "list", "-o", "json")
	var ws []datastore.Workload
	if err := json.Unmarshal([]byte(out), &ws); err != nil {
		t.Fatalf("%s: workload list: %v\n%s", node, err, out)
	}
	return ws
}

// namespaceManifest is a namespace with labels.
func namespaceManifest(name string, labels map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n", name)
	for k, v := range labels {
		fmt.Fprintf(&b, "    %s: %q\n", k, v)
	}
	return b.String()
}

// echoPod is a pod on a node serving a TCP echo on 8080 (nc -ll -e cat) with labels.
func echoPod(name, namespace, node, image string, labels map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\n  labels:\n", name, namespace)
	for k, v := range labels {
		fmt.Fprintf(&b, "    %s: %q\n", k, v)
	}
	fmt.Fprintf(&b, `spec:
  nodeName: %s
  terminationGracePeriodSeconds: 2
  containers:
    - name: echo
      image: %s
      imagePullPolicy: Never
      command: ["sh", "-c", "trap 'exit 0' TERM; nc -ll -p 8080 -e cat & wait"]
      ports:
        - {name: echo, containerPort: 8080}
      readinessProbe:
        tcpSocket: {port: 8080}
        periodSeconds: 1
`, node, image)
	return b.String()
}

// tcpEcho sends a line from pod from to addr (host:port) with nc and wants it back.
func tcpEcho(t *testing.T, l *kube.Lab, from kube.Pod, addr string) error {
	t.Helper()
	want := fmt.Sprintf("echo-%d", time.Now().UnixNano())
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec(t, l, from, "sh", "-c", fmt.Sprintf("echo %s | nc -w 3 %s %s", want, host, port))
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) != want {
		return fmt.Errorf("%s → %s: got %q, want %q", from.Name, addr, out, want)
	}
	return nil
}

// ping pings addr once from a pod.
func ping(t *testing.T, l *kube.Lab, from kube.Pod, addr string) error {
	t.Helper()
	_, err := exec(t, l, from, "ping", "-c", "1", "-W", "2", addr)
	return err
}
