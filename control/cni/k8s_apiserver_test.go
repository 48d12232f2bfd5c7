//go:build k8s

package cni

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/k8s/k8stest"
)

// These tests run ADD against a real API server (k8stest): margay-cni reads the pod, its
// namespace and its service account with the kubeconfig file its network config names, as a
// service account with the ClusterRole of deploy/k8s/margay.yaml (or a narrower one).

// The tests under the k8s build tag share one real kube-apiserver (make test-k8s).
func TestMain(m *testing.M) { k8stest.Main(m) }

// margayKubeconfig writes the kubeconfig of a new service account with rules, in a namespace of
// its own, and returns its path.
func margayKubeconfig(t *testing.T, api *k8stest.API, rules []rbacv1.PolicyRule) string {
	t.Helper()
	return k8stest.Kubeconfig(t, api.ServiceAccount(t, api.Namespace(t, "margay", nil), "margay-node", rules...))
}

// kubeConf is the network config's "kubernetes" naming the kubeconfig file.
func kubeConf(kubeconfig string) map[string]any {
	return map[string]any{"kubernetes": map[string]any{"kubeconfig": kubeconfig}}
}

// addInProcess runs ADD in this process, in the world's host namespace (where the plugin runs),
// logging to log (nil: as the config says). The API server client's connections are dialled by
// goroutines of their own, in the test's namespace, where the API server listens.
func (w *world) addInProcess(t *testing.T, containerID, nsPath, args string, set map[string]any, log *slog.Logger) error {
	t.Helper()
	return w.host.Do(func() error {
		_, err := (&Plugin{Log: log}).Run(t.Context(), "ADD", &skel.CmdArgs{ContainerID: containerID, Netns: nsPath, IfName: "eth0", Args: args, StdinData: w.conf("1.0.0", set)})
		return err
	})
}

func createObjects(t *testing.T, api *k8stest.API, sa *corev1.ServiceAccount, pod *corev1.Pod) {
	t.Helper()
	if sa != nil {
		if _, err := api.Client.CoreV1().ServiceAccounts(sa.Namespace).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if pod != nil {
		if len(pod.Spec.Containers) == 0 {
			pod.Spec.Containers = []corev1.Container{{Name: "app", Image: "busybox"}}
		}
		if _, err := api.Client.CoreV1().Pods(pod.Namespace).Create(t.Context(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// ADD of a pod reads its labels, its namespace's and its service account's, and its named
// ports, from the API server into the record.
func TestAddKubernetesLabels(t *testing.T) {
	api := k8stest.Shared(t)
	w := newWorld(t, "198.19.0.0/16")
	prod := api.Namespace(t, "prod", map[string]string{"team": "a"})
	createObjects(t, api,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: prod, Name: "web-sa", Labels: map[string]string{"role": "frontend"}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: prod, Name: "web", Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{ServiceAccountName: "web-sa", Containers: []corev1.Container{{Name: "app", Image: "busybox", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080},
				{ContainerPort: 9090}, // no name: no named port
				{Name: "dns", Protocol: corev1.ProtocolUDP, ContainerPort: 53},
			}}}}})
	kubeconfig := margayKubeconfig(t, api, k8stest.MargayRules(t))
	path, _ := workloadNS(t)
	args := "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + prod + ";K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1"
	if err := w.addInProcess(t, "c1", path, args, kubeConf(kubeconfig), nil); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	rec, err := w.ds.Workloads(node).Get(t.Context(), prod+".web")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"app":                              "web",
		"projectcalico.org/namespace":      prod,
		"projectcalico.org/orchestrator":   "k8s",
		"projectcalico.org/serviceaccount": "web-sa",
		"pcns.team":                        "a",
		"pcns.kubernetes.io/metadata.name": prod,
		"pcns.projectcalico.org/name":      prod,
		"pcsa.projectcalico.org/name":      "web-sa",
		"pcsa.role":                        "frontend",
	}
	if !maps.Equal(rec.Value.Labels, want) {
		t.Errorf("record labels\n got %v\nwant %v", rec.Value.Labels, want)
	}
	if want := []datastore.EndpointPort{{Name: "http", Protocol: 6, Port: 8080}, {Name: "dns", Protocol: 17, Port: 53}}; !slices.Equal(rec.Value.Ports, want) {
		t.Errorf("record ports %v, want %v", rec.Value.Ports, want)
	}
	w.mustDel(t, "c1", path, args)
	w.assertGone(t, prod+".web")

	// A container that is no pod asks the API server nothing: its kubeconfig points where
	// nothing listens, and ADD works.
	down := api.User(t, "margay")
	down.Host = k8stest.ClosedAddress(t)
	p2, _ := workloadNS(t)
	if err := w.addInProcess(t, "plain", p2, "", kubeConf(k8stest.Kubeconfig(t, down)), nil); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if rec, err := w.ds.Workloads(node).Get(t.Context(), "plain"); err != nil || rec.Value.Labels != nil || rec.Value.Ports != nil {
		t.Errorf("plain container: labels %v, ports %v (%v)", rec.Value.Labels, rec.Value.Ports, err)
	}
	w.mustDel(t, "plain", p2, "")
}

// When the labels cannot be read, ADD fails with a CNI error that says so, and leaves nothing.
// (A service account read that fails for a while, which a real API server does not give on
// demand, is TestKubeAPIOverHTTP's.)
func TestAddKubernetesFailure(t *testing.T) {
	api := k8stest.Shared(t)
	w := newWorld(t, "198.19.0.0/16")
	prod := api.Namespace(t, "prod", nil)
	args := "K8S_POD_NAMESPACE=" + prod + ";K8S_POD_NAME=web"
	check := func(t *testing.T, err error, code uint, msgs ...string) {
		t.Helper()
		te, ok := errors.AsType[*types.Error](err)
		for _, msg := range msgs {
			if !ok || te.Code != code || !strings.Contains(te.Msg+" "+te.Details, msg) {
				t.Errorf("ADD: %v, want code %d with %q", err, code, msg)
			}
		}
		w.assertGone(t, prod+".web")
	}
	noEth0 := func(t *testing.T, path string) {
		inNS(t, path, func() error {
			if _, err := netlink.LinkByName("eth0"); err == nil {
				t.Error("eth0 left in the workload namespace")
			}
			return nil
		})
	}

	t.Run("api server down", func(t *testing.T) {
		// Nothing listens where the kubeconfig points, as when the API server is stopped.
		cfg := api.User(t, "margay")
		cfg.Host = k8stest.ClosedAddress(t)
		kubeconfig := k8stest.Kubeconfig(t, cfg)
		path, _ := workloadNS(t)
		err := w.addInProcess(t, "c1", path, args, kubeConf(kubeconfig), nil)
		check(t, err, types.ErrTryAgainLater,
			"cannot read the labels of pod "+prod+"/web from the Kubernetes API server (kubeconfig "+kubeconfig+")", "connection refused")
		noEth0(t, path)
	})
	t.Run("no such pod", func(t *testing.T) {
		path, _ := workloadNS(t)
		check(t, w.addInProcess(t, "c1", path, args, kubeConf(margayKubeconfig(t, api, k8stest.MargayRules(t))), nil),
			types.ErrInternal, `pods "web" not found`)
		noEth0(t, path)
	})
	t.Run("token refused", func(t *testing.T) {
		cfg := api.User(t, "margay")
		cfg.CertData, cfg.KeyData, cfg.BearerToken = nil, nil, "not-a-token"
		path, _ := workloadNS(t)
		check(t, w.addInProcess(t, "c1", path, args, kubeConf(k8stest.Kubeconfig(t, cfg)), nil), types.ErrInternal, "Unauthorized")
		noEth0(t, path)
	})
}

// lockedBuffer is a bytes.Buffer for a logger that goroutines may share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A service account that the API server does not let margay-cni read (Margay's RBAC role from
// before it read them, which deploy/k8s/margay.yaml's comment describes) costs the workload only
// that account's own labels: margay-cni logs a warning and ADD works.
func TestAddKubernetesServiceAccountForbidden(t *testing.T) {
	api := k8stest.Shared(t)
	w := newWorld(t, "198.19.0.0/16")
	prod := api.Namespace(t, "prod", nil)
	createObjects(t, api,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: prod, Name: "web-sa", Labels: map[string]string{"role": "frontend"}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: prod, Name: "web"}, Spec: corev1.PodSpec{ServiceAccountName: "web-sa"}})
	kubeconfig := margayKubeconfig(t, api, k8stest.Without(k8stest.MargayRules(t), "serviceaccounts"))
	path, _ := workloadNS(t)
	args := "K8S_POD_NAMESPACE=" + prod + ";K8S_POD_NAME=web"
	var logs lockedBuffer
	if err := w.addInProcess(t, "c1", path, args, kubeConf(kubeconfig), slog.New(slog.NewTextHandler(&logs, nil))); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	rec, err := w.ds.Workloads(node).Get(t.Context(), prod+".web")
	if err != nil {
		t.Fatal(err)
	}
	if l := rec.Value.Labels; l["pcsa.projectcalico.org/name"] != "web-sa" || l["projectcalico.org/serviceaccount"] != "web-sa" || l["pcsa.role"] != "" {
		t.Errorf("record labels %v: want the service account's name labels, not its own", l)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), `cannot get resource \"serviceaccounts\"`) {
		t.Errorf("the forbidden read was not logged as a warning:\n%s", logs.String())
	}
	w.mustDel(t, "c1", path, args)
	w.assertGone(t, prod+".web")
}
