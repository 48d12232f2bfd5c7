package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/margaynet/margay/control/lab"
)

// Node is a Kubernetes node on a lab host: containerd, kubelet and kube-proxy in the host's
// network namespace and in a mount namespace of the node's own, in which:
//
//	/etc, /opt, /var/lib, /var/log   are overlays of the machine's, whose writes (/etc/cni/net.d,
//	                                 /opt/cni/bin, /etc/margay: what Margay's install-cni writes; pod
//	                                 logs, margay-cni's log) go to <Dir>/fs/upper
//	/var/lib/kubelet, /var/lib/containerd, /run/containerd, /run/netns
//	                                 are the node's own directories under <Dir>/fs (containerd's
//	                                 overlayfs snapshots cannot live on an overlay)
//	/sys/fs/bpf                      is a bpffs of the node's own (Margay's pins)
//
// and the kernel settings kubelet would set machine-wide (vm.overcommit_memory, kernel.panic, …)
// are files holding what it wants, so that it sets nothing. Nothing is written in the machine's
// file system outside <Dir>. The namespace's mounts are shared within it (a pod's Bidirectional
// mount of /sys/fs/bpf reaches the node), never with the machine's.
type Node struct {
	Name  string
	Netns string // a path: /run/netns/vm100
	Addr  netip.Addr
	c     Cluster
}

// loopbackPlugin is Debian's (containernetworking-plugins).
const loopbackPlugin = "/usr/lib/cni/loopback"

// Uplink is the lab hosts' uplink.
const Uplink = "ens32"

// Node is the node on a lab host.
func (c Cluster) Node(name, netns string, addr netip.Addr) Node {
	return Node{Name: name, Netns: netns, Addr: addr, c: c}
}

// Dir is the node's state directory.
func (n Node) Dir() string { return filepath.Join(n.c.StateDir, n.Name) }

// CgroupRoot is the cgroup (in every v1 hierarchy) under which the node's pods run.
func (n Node) CgroupRoot() string { return n.c.Prefix + "margay-lab-" + n.Name }

// overlays are the machine's directories a node sees with writes of its own; ownDirs its own
// directories (mount point → directory under <Dir>/fs).
var (
	overlays = []string{"/etc", "/opt", "/var/lib", "/var/log"}
	ownDirs  = [][2]string{{"/var/lib/kubelet", "kubelet"}, {"/var/lib/containerd", "containerd"},
		{"/run/containerd", "containerd-state"}, {"/run/netns", "netns"}}
)

// kernelTunables are what kubelet's container manager sets machine-wide unless they hold it.
var kernelTunables = [][2]string{
	{"vm/overcommit_memory", "1"}, {"vm/panic_on_oom", "0"}, {"kernel/panic", "10"}, {"kernel/panic_on_oops", "1"},
	{"kernel/keys/root_maxkeys", "1000000"}, {"kernel/keys/root_maxbytes", "25000000"},
}

// Host is the node's mount and network namespaces.
func (n Node) Host() lab.HostNS {
	var s strings.Builder
	// A peer group of the namespace's own: mounts propagate within it and to its containers.
	s.WriteString("mount --make-rshared /\n")
	for _, d := range overlays {
		fmt.Fprintf(&s, "mkdir -p \"$1/fs/upper%[1]s\" \"$1/fs/work%[1]s\"\n"+
			"mount -t overlay overlay -o \"lowerdir=%[1]s,upperdir=$1/fs/upper%[1]s,workdir=$1/fs/work%[1]s\" %[1]s\n", d)
	}
	for _, p := range ownDirs {
		fmt.Fprintf(&s, "mkdir -p \"$1/fs/%s\" %s && mount --bind \"$1/fs/%s\" %s\n", p[1], p[0], p[1], p[0])
	}
	s.WriteString("mount -t bpf bpf /sys/fs/bpf\n")
	for _, t := range kernelTunables {
		f := "$1/sysctl/" + strings.ReplaceAll(t[0], "/", ".")
		fmt.Fprintf(&s, "mkdir -p \"$1/sysctl\" && echo %s > \"%s\" && mount --bind \"%s\" /proc/sys/%s\n", t[1], f, f, t[0])
	}
	return lab.HostNS{Name: n.Name, Netns: n.Netns, Dir: n.Dir(), Setup: s.String()}
}

// Start starts the node: its mount namespace, containerd with the images of archive imported,
// kubelet and kube-proxy; it returns once the node is registered (it is Ready only once a
// network plugin is installed: Margay's DaemonSet).
func (n Node) Start(ctx context.Context, archive string) error {
	if err := os.MkdirAll(n.Dir(), 0o755); err != nil {
		return err
	}
	if err := n.makeCgroupRoot(); err != nil {
		return err
	}
	h := n.Host()
	if err := h.StartNamespace(); err != nil {
		return err
	}
	if err := n.writeConfigs(); err != nil {
		return err
	}
	n.c.say("▸ node %s: containerd, kubelet %s, kube-proxy", n.Name, Version)
	// containerd 1.6 brings a pod's lo up with the loopback CNI plugin, which a node has from its
	// distribution (Debian's containernetworking-plugins, kubeadm's kubernetes-cni).
	if _, err := h.Run(ctx, "sh", "-c", "mkdir -p /opt/cni/bin && install -m 0755 "+loopbackPlugin+" /opt/cni/bin/loopback"); err != nil {
		return fmt.Errorf("%w (make deps installs containernetworking-plugins)", err)
	}
	if err := h.StartProcess("containerd", "containerd", "--config", filepath.Join(n.Dir(), "containerd.toml")); err != nil {
		return err
	}
	if err := lab.WaitFor(ctx, n.Name+": containerd answers", 30*time.Second, func() error {
		if err := n.c.alive(h, "containerd"); err != nil {
			return err
		}
		_, err := h.Run(ctx, "ctr", "-n", "k8s.io", "version")
		return err
	}); err != nil {
		return err
	}
	if archive != "" {
		if _, err := h.Run(ctx, "ctr", "-n", "k8s.io", "images", "import", archive); err != nil {
			return err
		}
	}
	p, err := LoadPKI(n.c.pkiDir())
	if err != nil {
		return err
	}
	kc, err := p.Kubeconfig(NodeIdentity(n.Name), n.c.Server())
	if err != nil {
		return err
	}
	if err := h.StartProcess("kubelet", n.c.bin("kubelet"), "--config="+filepath.Join(n.Dir(), "kubelet.yaml"),
		"--kubeconfig="+kc, "--hostname-override="+n.Name, "--node-ip="+n.Addr.String()); err != nil {
		return err
	}
	// The lab's hosts have no default route: without a route to the Service CIDR, a connection
	// from the node to a ClusterIP (margay-cni and the agent to the kubernetes Service) fails
	// with ENETUNREACH before kube-proxy's DNAT in OUTPUT can translate it.
	if _, err := h.Run(ctx, "ip", "route", "replace", n.c.ServiceCIDR.String(), "dev", Uplink); err != nil {
		return err
	}
	if err := h.StartProcess("kube-proxy", n.c.bin("kube-proxy"), "--config="+filepath.Join(n.Dir(), "kube-proxy.yaml")); err != nil {
		return err
	}
	return lab.WaitFor(ctx, n.Name+": registered", 90*time.Second, func() error {
		if err := n.c.alive(h, "containerd", "kubelet", "kube-proxy"); err != nil {
			return err
		}
		_, err := n.c.Kubectl(ctx, "get", "node", n.Name)
		return err
	})
}

func (n Node) writeConfigs() error {
	d := n.Dir()
	containerd := fmt.Sprintf(`version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  # The lab's sandbox lacks CAP_SYS_RESOURCE: runc may only raise a container's oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
`, PauseImage)
	proxy := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: %s
bindAddress: %s
clusterCIDR: %s
clientConnection:
  kubeconfig: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
# The conntrack table's size is the machine's, not a namespace's: leave it alone.
conntrack:
  maxPerCore: 0
  min: 0
`, n.Name, n.Addr, n.c.PodCIDR, n.c.pkiFile(KubeProxy.File+".kubeconfig"))
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine is cgroup v1.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%s
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
failSwapOn: false
clusterDomain: cluster.local
resolvConf: %s
# Several nodes share one disk and its free space: no eviction, no image garbage collection.
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
`, n.CgroupRoot(), n.Addr, n.c.pkiFile("ca.crt"), filepath.Join(d, "resolv.conf"))
	for name, body := range map[string]string{"containerd.toml": containerd, "kube-proxy.yaml": proxy, "kubelet.yaml": kubelet, "resolv.conf": ""} {
		if err := os.WriteFile(filepath.Join(d, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// makeCgroupRoot creates the node's cgroup in every v1 hierarchy (with cpuset's cpus and mems
// from the parent, which a new cpuset lacks).
func (n Node) makeCgroupRoot() error {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, r := range roots {
		if st, err := os.Stat(r); err != nil || !st.IsDir() || filepath.Base(r) == "unified" {
			continue
		}
		d := filepath.Join(r, n.CgroupRoot())
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if filepath.Base(r) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(r, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// Stop stops the node: every pod's containers (through containerd, while it runs), kube-proxy,
// kubelet and containerd, what is left in its cgroup, and its mount namespace. Its directory
// stays.
func (n Node) Stop(ctx context.Context) error {
	h := n.Host()
	h.StopProcess("kubelet", syscall.SIGTERM, 10*time.Second)
	h.StopProcess("kube-proxy", syscall.SIGTERM, 10*time.Second)
	if _, ok := h.Alive("containerd"); ok {
		n.removePods(ctx, h)
	}
	h.StopProcess("containerd", syscall.SIGTERM, 10*time.Second)
	err := lab.KillCgroup(n.CgroupRoot())
	h.StopNamespace()
	return err
}

// removePods stops and removes every pod sandbox through the CRI (crictl is not here: ctr's
// tasks and containers).
func (n Node) removePods(ctx context.Context, h lab.HostNS) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := h.Run(ctx, "ctr", "-n", "k8s.io", "containers", "list", "-q")
	if err != nil {
		return
	}
	for _, id := range strings.Fields(out) {
		_, _ = h.Run(ctx, "ctr", "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id)
	}
	for _, id := range strings.Fields(out) {
		_, _ = h.Run(ctx, "ctr", "-n", "k8s.io", "tasks", "delete", "-f", id)
		_, _ = h.Run(ctx, "ctr", "-n", "k8s.io", "containers", "delete", id)
	}
}

// nodeStatus is what the lab reads of a node.
type nodeStatus struct {
	Status struct {
		Conditions []struct{ Type, Status, Reason, Message string }
	}
}

// Ready reports whether the node is Ready, or why not.
func (n Node) Ready(ctx context.Context) error {
	out, err := n.c.Kubectl(ctx, "get", "node", n.Name, "-o", "json")
	if err != nil {
		return err
	}
	var st nodeStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return err
	}
	for _, c := range st.Status.Conditions {
		if c.Type == "Ready" {
			if c.Status == "True" {
				return nil
			}
			return fmt.Errorf("%s not Ready: %s %s", n.Name, c.Reason, c.Message)
		}
	}
	return fmt.Errorf("%s: no Ready condition yet", n.Name)
}
