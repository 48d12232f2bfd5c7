//go:build k8s

package k8s

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/k8s/k8stest"
	"github.com/margaynet/margay/tests/poll"
)

// These tests read pods, namespaces and service accounts from a real API server (k8stest), as
// margay-cni's service account with the ClusterRole of deploy/k8s/margay.yaml.

// captureLog points slog.Default at a buffer for the test.
func captureLog(t *testing.T) *bytes.Buffer {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	return &buf
}

// margayClient returns a client of a new service account with rules, in a namespace of its own.
func margayClient(t *testing.T, api *k8stest.API, rules []rbacv1.PolicyRule) kubernetes.Interface {
	t.Helper()
	return k8stest.Clientset(t, api.ServiceAccount(t, api.Namespace(t, "margay", nil), "margay-node", rules...))
}

// apiPod is a pod the API server accepts: it wants a container.
func apiPod(ns, name, sa string, labels map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	p := pod(ns, name, sa, labels)
	p.Spec.Containers = []corev1.Container{{Name: "app", Image: "busybox", Ports: ports}}
	return p
}

func createPod(t *testing.T, api *k8stest.API, p *corev1.Pod) {
	t.Helper()
	if _, err := api.Client.CoreV1().Pods(p.Namespace).Create(t.Context(), p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s/%s: %v", p.Namespace, p.Name, err)
	}
}

func createServiceAccount(t *testing.T, api *k8stest.API, ns, name string, labels map[string]string) {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
	if _, err := api.Client.CoreV1().ServiceAccounts(ns).Create(t.Context(), sa, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service account %s/%s: %v", ns, name, err)
	}
}

func TestWorkloadLabels(t *testing.T) {
	api := k8stest.Shared(t)
	logs := captureLog(t)
	long := strings.Repeat("k", 60) // a label key, but too long once prefixed with pcns.
	prod := api.Namespace(t, "prod", map[string]string{"team": "a", long: "long"})
	bare := api.Namespace(t, "bare", nil)
	createServiceAccount(t, api, prod, "web-sa", map[string]string{"role": "frontend"})
	createPod(t, api, apiPod(prod, "web-1", "web-sa", map[string]string{
		"app": "web", "example.com/tier": "fe",
		"projectcalico.org/namespace": "kube-system", // forged: dropped
		"pcns.team":                   "b",           // forged namespace label: dropped
	}))
	createPod(t, api, apiPod(prod, "web-2", "gone-sa", map[string]string{"app": "web"}))
	createPod(t, api, apiPod(bare, "job", "", nil))
	cs := margayClient(t, api, k8stest.MargayRules(t))

	got, err := WorkloadLabels(t.Context(), cs, prod, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"app": "web", "example.com/tier": "fe",
		"projectcalico.org/namespace":      prod,
		"projectcalico.org/orchestrator":   "k8s",
		"projectcalico.org/serviceaccount": "web-sa",
		"pcns.team":                        "a",
		"pcns.kubernetes.io/metadata.name": prod, // the API server's own label of every namespace
		"pcns.projectcalico.org/name":      prod,
		"pcsa.projectcalico.org/name":      "web-sa",
		"pcsa.role":                        "frontend",
	}
	if !maps.Equal(got, want) {
		t.Errorf("labels\n got %v\nwant %v", got, want)
	}
	for _, s := range []string{"projectcalico.org/namespace", "pcns.team", long} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("dropping %s was not logged:\n%s", s, logs)
		}
	}

	// No service account, no service account labels. (A namespace that lacks
	// kubernetes.io/metadata.name, which podlabels' tests cover, cannot be had from a real API
	// server: it gives the label to every namespace, also to one stored without it.)
	got, err = WorkloadLabels(t.Context(), cs, bare, "job")
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]string{
		"projectcalico.org/namespace":      bare,
		"projectcalico.org/orchestrator":   "k8s",
		"pcns.kubernetes.io/metadata.name": bare,
		"pcns.projectcalico.org/name":      bare,
	}
	if !maps.Equal(got, want) {
		t.Errorf("labels\n got %v\nwant %v", got, want)
	}

	// A service account that is gone costs its own labels; the name labels stay.
	logs.Reset()
	got, err = WorkloadLabels(t.Context(), cs, prod, "web-2")
	if err != nil {
		t.Fatal(err)
	}
	if got["pcsa.projectcalico.org/name"] != "gone-sa" || got["projectcalico.org/serviceaccount"] != "gone-sa" || got["app"] != "web" {
		t.Errorf("labels with the service account gone: %v", got)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), `serviceaccounts \"gone-sa\" not found`) {
		t.Errorf("the missing service account was not logged as a warning:\n%s", logs)
	}

	// Margay's RBAC role from before it read service accounts: the service account's own
	// labels go, with a warning, and the ADD does not fail.
	logs.Reset()
	old := margayClient(t, api, k8stest.Without(k8stest.MargayRules(t), "serviceaccounts"))
	got, err = WorkloadLabels(t.Context(), old, prod, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got["pcsa.role"]; ok || got["pcsa.projectcalico.org/name"] != "web-sa" || got["pcns.team"] != "a" {
		t.Errorf("labels with the service account forbidden: %v", got)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), `cannot get resource \"serviceaccounts\"`) {
		t.Errorf("the forbidden read was not logged as a warning:\n%s", logs)
	}
}

// ReadWorkload gives the pod's named ports too, as margay-cni records them.
func TestReadWorkloadPorts(t *testing.T) {
	api := k8stest.Shared(t)
	captureLog(t)
	prod := api.Namespace(t, "prod", nil)
	createPod(t, api, apiPod(prod, "web", "", nil,
		corev1.ContainerPort{Name: "http", ContainerPort: 8080}, corev1.ContainerPort{ContainerPort: 9090},
		corev1.ContainerPort{Name: "dns", Protocol: corev1.ProtocolUDP, ContainerPort: 53}))
	w, err := ReadWorkload(t.Context(), margayClient(t, api, k8stest.MargayRules(t)).CoreV1(), prod, "web")
	if err != nil {
		t.Fatal(err)
	}
	if want := []datastore.EndpointPort{{Name: "http", Protocol: 6, Port: 8080}, {Name: "dns", Protocol: 17, Port: 53}}; !slices.Equal(w.Ports, want) {
		t.Errorf("ports %v, want %v", w.Ports, want)
	}
}

func TestWorkloadLabelsErrors(t *testing.T) {
	api := k8stest.Shared(t)
	captureLog(t)
	prod := api.Namespace(t, "prod", nil)
	createPod(t, api, apiPod(prod, "web", "", nil))
	// The API server refuses to create objects with labels that are no labels, but serves them
	// once stored (by a version with laxer validation): Store writes them into its etcd.
	api.Store(t, "pods", apiPod(prod, "bad", "", map[string]string{"-app": "x"}))
	api.Store(t, "pods", apiPod(prod, "badval", "", map[string]string{"app": strings.Repeat("v", 64)}))
	badns := api.Namespace(t, "badns", nil)
	api.Store(t, "namespaces", namespace(badns, map[string]string{"team": "a b", "kubernetes.io/metadata.name": badns}))
	createPod(t, api, apiPod(badns, "web", "", nil))
	// A pod whose namespace is gone: no namespace controller runs here to delete its pods first.
	nons := api.Namespace(t, "nons", nil)
	createPod(t, api, apiPod(nons, "web", "", nil))
	deleteNamespace(t, api, nons)

	cs := margayClient(t, api, k8stest.MargayRules(t))
	for _, c := range []struct{ name, ns, pod, want string }{
		{"no pod", prod, "gone", `k8s: get pod ` + prod + `/gone: pods "gone" not found`},
		{"no namespace", nons, "web", `k8s: get namespace ` + nons + ` (of pod web)`},
		{"bad pod label key", prod, "bad", `k8s: pod ` + prod + `/bad: label key "-app"`},
		{"bad pod label value", prod, "badval", `k8s: pod ` + prod + `/badval: label "app": value`},
		{"bad namespace label", badns, "web", `k8s: namespace ` + badns + `: label "team": value "a b"`},
		{"bad namespace name", "Prod", "web", `k8s: namespace "Prod"`},
		{"bad pod name", prod, "a/b", `k8s: pod name "a/b"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := WorkloadLabels(t.Context(), cs, c.ns, c.pod)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("WorkloadLabels = %v, %v; want an error with %q", l, err, c.want)
			}
		})
	}

	// The API server refusing the namespace read (a role without namespaces): the error says
	// which read failed and wraps the cause.
	podsOnly := margayClient(t, api, []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}})
	_, err := WorkloadLabels(t.Context(), podsOnly, prod, "web")
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "k8s: get namespace "+prod) {
		t.Errorf("WorkloadLabels with the namespace forbidden: %v", err)
	}
	// The API server down: nothing listens where the client points.
	cfg := api.User(t, "margay")
	cfg.Host = k8stest.ClosedAddress(t)
	_, err = WorkloadLabels(t.Context(), k8stest.Clientset(t, cfg), prod, "web")
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "k8s: get pod "+prod+"/web") {
		t.Errorf("WorkloadLabels with the API server down: %v", err)
	}
}

// deleteNamespace deletes namespace ns and, as no namespace controller runs with the test's API
// server, finalizes it: its objects stay, it goes.
func deleteNamespace(t *testing.T, api *k8stest.API, ns string) {
	t.Helper()
	nss := api.Client.CoreV1().Namespaces()
	if err := nss.Delete(t.Context(), ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	n, err := nss.Get(t.Context(), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Spec.Finalizers = nil
	if _, err := nss.Finalize(t.Context(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("finalize namespace %s: %v", ns, err)
	}
	poll.Until(t, "namespace "+ns+" gone", 30*time.Second, func() error {
		_, err := nss.Get(context.Background(), ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return errors.New("still there")
	})
}
