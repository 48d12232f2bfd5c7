package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/margaynet/margay/control/lab"
)

// labDeployment is LabDeployment's manifest: one pod per node (required anti-affinity), each
// sleeping until it is told to stop.
func labDeployment(replicas int, image string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[1]s
  namespace: default
spec:
  replicas: %[2]d
  selector:
    matchLabels: {app: %[1]s}
  template:
    metadata:
      labels: {app: %[1]s}
    spec:
      terminationGracePeriodSeconds: 2
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector:
                matchLabels: {app: %[1]s}
              topologyKey: kubernetes.io/hostname
      containers:
        - name: busybox
          image: %[3]s
          imagePullPolicy: Never
          command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 3600 & wait; done"]
`, LabDeployment, replicas, image)
}

// RunLabDeployment runs LabDeployment and waits until its pods run.
func (l *Lab) RunLabDeployment(ctx context.Context) error {
	c := l.Cluster
	c.say("▸ Deployment %s: one busybox pod per node", LabDeployment)
	if _, err := c.KubectlIn(ctx, strings.NewReader(labDeployment(len(l.Nodes), l.Images.Busybox)), "apply", "-f", "-"); err != nil {
		return err
	}
	_, err := c.Kubectl(ctx, "rollout", "status", "deployment/"+LabDeployment, "--timeout=120s")
	return err
}

// Pod is what the lab reads of a pod.
type Pod struct {
	Name, Namespace, Node string
	IP                    netip.Addr
	Ready                 bool
}

// Pods lists the running pods that match a label selector in a namespace.
func (c Cluster) Pods(ctx context.Context, namespace, selector string) ([]Pod, error) {
	out, err := c.Kubectl(ctx, "get", "pods", "-n", namespace, "-l", selector, "-o", "json")
	if err != nil {
		return nil, err
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name, Namespace   string
				DeletionTimestamp *string
			}
			Spec   struct{ NodeName string }
			Status struct {
				Phase      string
				PodIP      string
				Conditions []struct{ Type, Status string }
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, err
	}
	var pods []Pod
	for _, it := range list.Items {
		if it.Status.Phase != "Running" || it.Metadata.DeletionTimestamp != nil {
			continue
		}
		p := Pod{Name: it.Metadata.Name, Namespace: it.Metadata.Namespace, Node: it.Spec.NodeName}
		p.IP, _ = netip.ParseAddr(it.Status.PodIP)
		for _, cd := range it.Status.Conditions {
			if cd.Type == "Ready" && cd.Status == "True" {
				p.Ready = true
			}
		}
		pods = append(pods, p)
	}
	return pods, nil
}

// Exec runs a command in a pod's first container (kubectl exec).
func (c Cluster) Exec(ctx context.Context, p Pod, argv ...string) (string, error) {
	return c.Kubectl(ctx, append([]string{"exec", "-n", p.Namespace, p.Name, "--"}, argv...)...)
}

// Check checks the lab: every node Ready, the Deployment's pods on distinct nodes with addresses
// of the pool, and a ping from every pod to every other answered.
func (l *Lab) Check(ctx context.Context) error {
	var errs []error
	for _, n := range l.Nodes {
		errs = append(errs, n.Ready(ctx))
	}
	pods, err := l.Cluster.Pods(ctx, "default", "app="+LabDeployment)
	if err != nil {
		return err
	}
	if len(pods) != len(l.Nodes) {
		errs = append(errs, fmt.Errorf("%d pods of %s run, want %d", len(pods), LabDeployment, len(l.Nodes)))
	}
	nodes := map[string]bool{}
	for _, p := range pods {
		if !l.Cluster.PodCIDR.Contains(p.IP) {
			errs = append(errs, fmt.Errorf("pod %s has %s, outside the pool %s", p.Name, p.IP, l.Cluster.PodCIDR))
		}
		if nodes[p.Node] {
			errs = append(errs, fmt.Errorf("two pods on %s", p.Node))
		}
		nodes[p.Node] = true
	}
	for _, from := range pods {
		for _, to := range pods {
			if from.Name == to.Name {
				continue
			}
			errs = append(errs, lab.WaitFor(ctx, "ping "+from.Name+" → "+to.Name, 20*time.Second, func() error {
				_, err := l.Cluster.Exec(ctx, from, "ping", "-c", "1", "-W", "2", to.IP.String())
				return err
			}))
		}
	}
	return errors.Join(errs...)
}

// HostRun runs a command inside a lab host as `margayctl lab exec` does (lab.Config.Command: the
// node's namespaces, margayctl's config file) and returns its combined output.
func (l *Lab) HostRun(ctx context.Context, host string, argv ...string) (string, error) {
	cmd := l.cfg.Lab.Command(l.cfg.Lab.BinDir, host, argv...)
	c := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	c.Env = cmd.Env
	out, err := c.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s: %w: %s", host, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Report prints what a Kubernetes user of Calico looks at: the nodes and pods, each node's routes
// and Margay's view of it, and a ping matrix between the lab's pods.
func (l *Lab) Report(ctx context.Context, w io.Writer) {
	c := l.Cluster
	for _, args := range [][]string{{"get", "nodes", "-o", "wide"}, {"get", "pods", "-A", "-o", "wide"}} {
		out, err := c.Kubectl(ctx, args...)
		if err != nil {
			out = err.Error() + "\n"
		}
		fmt.Fprintf(w, "\n━━ kubectl %s\n%s", strings.Join(args, " "), out)
	}
	for _, n := range l.Nodes {
		for _, argv := range [][]string{{"margayctl", "node", "status"}, {"ip", "route"}} {
			out, err := l.HostRun(ctx, n.Name, argv...)
			if err != nil {
				out = err.Error() + "\n"
			}
			fmt.Fprintf(w, "\n━━ %s: %s\n%s", n.Name, strings.Join(argv, " "), out)
		}
	}
	pods, _ := c.Pods(ctx, "default", "app="+LabDeployment)
	fmt.Fprintf(w, "\n━━ ping matrix (kubectl exec, from row to column)\n%-28s", "")
	for _, to := range pods {
		fmt.Fprintf(w, "%-28s", to.Name)
	}
	fmt.Fprintln(w)
	for _, from := range pods {
		fmt.Fprintf(w, "%-28s", from.Name)
		for _, to := range pods {
			cell := "-"
			if from.Name != to.Name {
				cell = "ok " + to.IP.String()
				if _, err := c.Exec(ctx, from, "ping", "-c", "1", "-W", "2", to.IP.String()); err != nil {
					cell = "FAIL " + to.IP.String()
				}
			}
			fmt.Fprintf(w, "%-28s", cell)
		}
		fmt.Fprintln(w)
	}
}
