package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/margaynet/margay/control/lab"
)

// LabConfig says what `margayctl lab up --k8s` builds.
type LabConfig struct {
	Lab     lab.Config // the hosts, etcd and the segment (K8s is set)
	KubeBin string     // the Kubernetes binaries (DefaultBinDir)
	// Repo is the repository: deploy/Dockerfile builds the node image, deploy/k8s/margay.yaml is
	// applied.
	Repo string
	// Images are built images (ImageBuild.Build), or nil to build them (cached).
	Images *Images
	// Workloads runs the lab's Deployment (LabDeployment) once Margay is up.
	Workloads bool
}

// ServiceCIDR holds the lab's ClusterIPs, inside the test range (the kubernetes Service is
// 198.18.128.1).
var ServiceCIDR = netip.MustParsePrefix("198.18.128.0/24")

// LabDeployment is the lab's test Deployment in the default namespace: one busybox pod per node.
const LabDeployment = "lab-ping"

// Lab is a running Kubernetes lab.
type Lab struct {
	*lab.Lab
	cfg     LabConfig
	Cluster Cluster
	Nodes   []Node
	Images  Images
}

func (c LabConfig) cluster() Cluster {
	lc := c.Lab
	if lc.StateDir == "" {
		lc.StateDir = "/run/margay-lab"
	}
	out := lc.Out
	if out == nil {
		out = os.Stdout
	}
	kb := c.KubeBin
	if kb == "" {
		kb = DefaultBinDir
	}
	return Cluster{StateDir: lc.StateDir, BinDir: kb, Netns: "/run/netns/" + lc.ControlPlaneNS(),
		Addr: netip.MustParseAddr(lab.ControlPlaneAddr), Etcd: "http://" + lab.EtcdAddr + ":2379",
		ServiceCIDR: ServiceCIDR, PodCIDR: netip.MustParsePrefix(lab.Pool), Prefix: lc.Prefix, Out: out}
}

// Up builds the Kubernetes lab: the lab's hosts and etcd (lab.Up with K8s), the control plane,
// a node on every host with the images imported, then Margay's DaemonSet applied from
// deploy/k8s/margay.yaml with the lab's ConfigMap values, and waits until the DaemonSet and the
// nodes are Ready.
func Up(ctx context.Context, cfg LabConfig) (*Lab, error) {
	cfg.Lab.K8s = true
	c := cfg.cluster()
	if err := c.CheckBinaries(); err != nil {
		return nil, err
	}
	manifest, err := LabManifest(filepath.Join(cfg.Repo, "deploy", "k8s", "margay.yaml"))
	if err != nil {
		return nil, err
	}
	var imgs Images
	if cfg.Images != nil {
		imgs = *cfg.Images
	} else {
		fmt.Fprintln(c.Out, "▸ images (deploy/Dockerfile, busybox, pause), built here or from the cache")
		if imgs, err = (ImageBuild{Repo: cfg.Repo, Out: c.Out}).Build(ctx); err != nil {
			return nil, err
		}
	}
	base, err := lab.Up(ctx, cfg.Lab)
	if err != nil {
		return nil, err
	}
	l := &Lab{Lab: base, cfg: cfg, Cluster: c, Images: imgs}
	link := cfg.Lab.K8sBinLink()
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return nil, err
	}
	if err := os.Symlink(c.BinDir, link); err != nil {
		return nil, err
	}
	if err := c.StartControlPlane(ctx); err != nil {
		return nil, err
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, h := range base.Hosts {
		n := c.Node(h.Name, "/run/netns/"+h.NS, h.Addr)
		l.Nodes = append(l.Nodes, n)
		wg.Go(func() {
			if err := n.Start(ctx, imgs.Archive); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	c.say("▸ kubectl apply -f deploy/k8s/margay.yaml (ConfigMap: the lab's etcd, pool and uplink)")
	if _, err := c.KubectlIn(ctx, bytes.NewReader(manifest), "apply", "-f", "-"); err != nil {
		return nil, err
	}
	if err := l.WaitMargay(ctx); err != nil {
		return nil, err
	}
	if cfg.Workloads {
		if err := l.RunLabDeployment(ctx); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// WaitMargay waits until the DaemonSet runs a ready agent on every node and every node is Ready.
func (l *Lab) WaitMargay(ctx context.Context) error {
	c := l.Cluster
	c.say("▸ waiting for the DaemonSet margay-node and the nodes to be Ready")
	if err := lab.WaitFor(ctx, "DaemonSet margay-node ready on every node", 3*time.Minute, func() error {
		out, err := c.Kubectl(ctx, "get", "daemonset", "-n", "kube-system", "margay-node", "-o", "json")
		if err != nil {
			return err
		}
		var ds struct {
			Metadata struct{ Generation int64 }
			Status   struct {
				DesiredNumberScheduled, NumberReady, UpdatedNumberScheduled int
				ObservedGeneration                                          int64
			}
		}
		if err := json.Unmarshal([]byte(out), &ds); err != nil {
			return err
		}
		s := ds.Status
		if s.ObservedGeneration < ds.Metadata.Generation || s.DesiredNumberScheduled != len(l.Nodes) ||
			s.NumberReady != len(l.Nodes) || s.UpdatedNumberScheduled != len(l.Nodes) {
			return fmt.Errorf("%d of %d desired, %d ready, %d updated", s.DesiredNumberScheduled, len(l.Nodes), s.NumberReady, s.UpdatedNumberScheduled)
		}
		return nil
	}); err != nil {
		pods, _ := c.Kubectl(ctx, "get", "pods", "-n", "kube-system", "-o", "wide")
		return fmt.Errorf("%w\n%s", err, pods)
	}
	for _, n := range l.Nodes {
		if err := lab.WaitFor(ctx, n.Name+" Ready", time.Minute, func() error { return n.Ready(ctx) }); err != nil {
			return err
		}
	}
	return nil
}

// LabManifest is deploy/k8s/margay.yaml with the lab's values in its ConfigMap, nothing else
// changed: the lab's etcd, its pool, ens32 as the uplink and XDP on (the lab's uplinks are
// veths, where auto leaves it off; the lab shows every hook).
func LabManifest(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return SetConfig(b, map[string]string{
		"etcd_endpoints": "http://" + lab.EtcdAddr + ":2379",
		"default_pool":   lab.Pool,
		"uplink":         "ens32",
		"xdp":            "on",
	})
}

// SetConfig sets keys of the margay-config ConfigMap in a manifest (each a one-line string
// value there) and changes nothing else; a key that is not there is an error.
func SetConfig(manifest []byte, values map[string]string) ([]byte, error) {
	docs := strings.Split(string(manifest), "\n---\n")
	found := false
	for i, d := range docs {
		if !strings.Contains(d, "\nkind: ConfigMap\n") || !strings.Contains(d, "\n  name: margay-config\n") {
			continue
		}
		found = true
		for k, v := range values {
			re := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(k) + `: ".*"$`)
			if !re.MatchString(d) {
				return nil, fmt.Errorf("margay-config has no one-line key %q", k)
			}
			val, _ := json.Marshal(v)
			d = re.ReplaceAllLiteralString(d, "  "+k+": "+string(val))
		}
		docs[i] = d
	}
	if !found {
		return nil, errors.New("the manifest has no ConfigMap margay-config")
	}
	return []byte(strings.Join(docs, "\n---\n")), nil
}

// Down takes down a Kubernetes lab of this configuration: the nodes (their pods through
// containerd, kubelet, kube-proxy, containerd), then everything else as lab.Down does.
func Down(cfg LabConfig) error {
	c := cfg.cluster()
	var errs []error
	if ents, err := os.ReadDir(c.StateDir); err == nil {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, e := range ents {
			if !e.IsDir() || !strings.HasPrefix(e.Name(), "vm") {
				continue
			}
			n := c.Node(e.Name(), "/run/netns/"+cfg.Lab.Prefix+e.Name(), netip.Addr{})
			if _, err := os.Stat(filepath.Join(n.Dir(), "kubelet.yaml")); err != nil {
				continue
			}
			wg.Go(func() {
				if err := n.Stop(context.Background()); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	c.Stop()
	errs = append(errs, lab.Down(cfg.Lab))
	return errors.Join(errs...)
}
