package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/margaynet/margay/control/lab"
)

// Version is the Kubernetes the lab runs, built by `make k8s-bins` from tests/k8s/kubernetes.
const Version = "v1.37.2"

// DefaultBinDir is where `make k8s-bins` puts the Kubernetes binaries.
const DefaultBinDir = "/var/cache/margay/kubernetes/" + Version + "/bin"

// Cluster is the lab's Kubernetes: the control plane in a namespace of its own on the lab's
// segment, and the nodes (Node) on the lab hosts.
type Cluster struct {
	// StateDir is the lab's: the control plane's pid files and logs are there (so that the lab's
	// Down stops it), the PKI in <StateDir>/k8s/pki, each node's state in <StateDir>/<node>.
	StateDir string
	BinDir   string // kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
	// Netns is the control plane's network namespace (a path); Addr its address on the segment,
	// where the apiserver serves (port 6443).
	Netns string
	Addr  netip.Addr
	// Etcd is the etcd the apiserver keeps the cluster in (the lab's, under /registry).
	Etcd string
	// ServiceCIDR holds the ClusterIPs (the kubernetes Service takes its first address); PodCIDR
	// is Margay's pool (kube-proxy's cluster CIDR).
	ServiceCIDR netip.Prefix
	PodCIDR     netip.Prefix
	Prefix      string // of cgroup names, as the lab's Prefix
	Out         io.Writer
}

// Server is the apiserver's URL.
func (c Cluster) Server() string { return "https://" + net.JoinHostPort(c.Addr.String(), "6443") }

// APIServiceIP is the kubernetes Service's ClusterIP.
func (c Cluster) APIServiceIP() netip.Addr { return c.ServiceCIDR.Addr().Next() }

// PauseImage is the pods' sandbox image (containerd's sandbox_image): Kubernetes' pause,
// built here (ImageBuild).
const PauseImage = "docker.io/margay/pause:lab"

func (c Cluster) pkiDir() string          { return filepath.Join(c.StateDir, "k8s", "pki") }
func (c Cluster) pkiFile(n string) string { return filepath.Join(c.pkiDir(), n) }

// AdminKubeconfig is the kubeconfig of the lab's user (system:masters).
func (c Cluster) AdminKubeconfig() string { return lab.Config{StateDir: c.StateDir}.AdminKubeconfig() }

// controlPlane is the control plane's host: no mounts of its own, the namespace only gives its
// processes pid files and logs.
func (c Cluster) controlPlane() lab.HostNS {
	return lab.HostNS{Name: "control-plane", Netns: c.Netns, Dir: c.StateDir}
}

func (c Cluster) say(format string, args ...any) {
	if c.Out != nil {
		fmt.Fprintf(c.Out, format+"\n", args...)
	}
}

func (c Cluster) bin(name string) string { return filepath.Join(c.BinDir, name) }

// CheckBinaries says which Kubernetes binary is missing, and how to build it.
func (c Cluster) CheckBinaries() error {
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"} {
		if _, err := os.Stat(c.bin(b)); err != nil {
			return fmt.Errorf("kubernetes: %w (make k8s-bins builds Kubernetes %s into %s)", err, Version, DefaultBinDir)
		}
	}
	return nil
}

// StartControlPlane makes the PKI and starts kube-apiserver, kube-controller-manager and
// kube-scheduler, and waits until the apiserver is ready and the default ServiceAccount exists.
func (c Cluster) StartControlPlane(ctx context.Context) error {
	if err := c.CheckBinaries(); err != nil {
		return err
	}
	svc := c.APIServiceIP()
	p, err := NewPKI(c.pkiDir(), []net.IP{c.Addr.AsSlice(), svc.AsSlice(), net.IPv4(127, 0, 0, 1)},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return err
	}
	kc := map[string]string{}
	for _, id := range []Identity{Admin, ControllerManager, Scheduler, KubeProxy} {
		if kc[id.File], err = p.Kubeconfig(id, c.Server()); err != nil {
			return err
		}
	}
	// The apiserver's client identity towards kubelets needs only its certificate.
	if _, err := p.Kubeconfig(KubeletClient, c.Server()); err != nil {
		return err
	}
	cp := c.controlPlane()
	if err := cp.StartNamespace(); err != nil {
		return err
	}
	c.say("▸ kube-apiserver %s at %s (etcd %s)", Version, c.Server(), c.Etcd)
	if err := cp.StartProcess("kube-apiserver", c.bin("kube-apiserver"),
		"--etcd-servers="+c.Etcd,
		"--bind-address="+c.Addr.String(), "--advertise-address="+c.Addr.String(), "--secure-port=6443",
		"--tls-cert-file="+p.File("apiserver.crt"), "--tls-private-key-file="+p.File("apiserver.key"),
		"--client-ca-file="+p.File("ca.crt"),
		"--service-account-key-file="+p.File("sa.pub"), "--service-account-signing-key-file="+p.File("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+c.ServiceCIDR.String(),
		"--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--kubelet-client-certificate="+p.File(KubeletClient.File+".crt"), "--kubelet-client-key="+p.File(KubeletClient.File+".key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false"); err != nil {
		return err
	}
	if err := c.waitReady(ctx, cp); err != nil {
		return err
	}
	c.say("▸ kube-controller-manager and kube-scheduler")
	cm := kc[ControllerManager.File]
	if err := cp.StartProcess("kube-controller-manager", c.bin("kube-controller-manager"),
		"--kubeconfig="+cm, "--authentication-kubeconfig="+cm, "--authorization-kubeconfig="+cm,
		"--bind-address=127.0.0.1", "--leader-elect=false",
		"--service-account-private-key-file="+p.File("sa.key"), "--root-ca-file="+p.File("ca.crt"),
		"--use-service-account-credentials=true",
		"--cluster-signing-cert-file="+p.File("ca.crt"), "--cluster-signing-key-file="+p.File("ca.key"),
		"--service-cluster-ip-range="+c.ServiceCIDR.String(), "--profiling=false"); err != nil {
		return err
	}
	sc := kc[Scheduler.File]
	if err := cp.StartProcess("kube-scheduler", c.bin("kube-scheduler"),
		"--kubeconfig="+sc, "--authentication-kubeconfig="+sc, "--authorization-kubeconfig="+sc,
		"--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"); err != nil {
		return err
	}
	// Pods need their namespace's default ServiceAccount, made by the controller manager.
	return lab.WaitFor(ctx, "the default ServiceAccount", 90*time.Second, func() error {
		if err := c.alive(cp, "kube-apiserver", "kube-controller-manager", "kube-scheduler"); err != nil {
			return err
		}
		_, err := c.Kubectl(ctx, "get", "serviceaccount", "default", "-n", "default")
		return err
	})
}

func (c Cluster) waitReady(ctx context.Context, cp lab.HostNS) error {
	return lab.WaitFor(ctx, "kube-apiserver ready", 90*time.Second, func() error {
		if err := c.alive(cp, "kube-apiserver"); err != nil {
			return err
		}
		_, err := c.Kubectl(ctx, "get", "--raw", "/readyz")
		return err
	})
}

// alive fails with lab.ErrStopped, and the end of its log, when one of the processes died.
func (c Cluster) alive(h lab.HostNS, names ...string) error {
	for _, n := range names {
		if _, ok := h.Alive(n); !ok {
			return errors.Join(lab.ErrStopped, fmt.Errorf("%s exited: %s", n, tail(h.LogFile(n), 20)))
		}
	}
	return nil
}

// Kubectl runs kubectl as the lab's user, in the control plane's namespace (the apiserver's
// address is the lab segment's), and returns its standard output.
func (c Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.KubectlIn(ctx, nil, args...)
}

// KubectlIn is Kubectl with stdin.
func (c Cluster) KubectlIn(ctx context.Context, stdin io.Reader, args ...string) (string, error) {
	cmd, err := c.controlPlane().Command(c.bin("kubectl"), append([]string{"--kubeconfig=" + c.AdminKubeconfig()}, args...)...)
	if err != nil {
		return "", err
	}
	var out, errb strings.Builder
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		err = ctx.Err()
	}
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Stop stops the control plane (stop the nodes first: Node.Stop) and removes none of its files.
func (c Cluster) Stop() {
	cp := c.controlPlane()
	for _, n := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver"} {
		cp.StopProcess(n, syscall.SIGTERM, 10*time.Second)
	}
	cp.StopNamespace()
}

// tail is the end of a log file, for errors.
func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}
