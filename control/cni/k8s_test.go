package cni

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	k8stesting "k8s.io/client-go/testing"

	"github.com/margaynet/margay/control/datastore"
)

func TestParseConfKubernetes(t *testing.T) {
	conf := func(set map[string]any) []byte { return testConf("http://127.0.0.1:2379", "1.0.0", set) }
	host := func() (string, error) { return "h", nil }
	c, err := parseConf(conf(map[string]any{"kubernetes": map[string]any{"kubeconfig": "/etc/cni/net.d/margay-kubeconfig"}}), host)
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubernetes == nil || c.Kubernetes.Kubeconfig != "/etc/cni/net.d/margay-kubeconfig" {
		t.Errorf("kubernetes = %+v", c.Kubernetes)
	}
	if c, err := parseConf(conf(nil), host); err != nil || c.Kubernetes != nil {
		t.Errorf("without kubernetes: %+v, %v", c, err)
	}
	for _, bad := range []struct {
		v    any
		code uint
		want string
	}{
		{map[string]any{"kubeconfig": "/k", "k8s_api_root": "https://10.96.0.1"}, types.ErrUnsupportedField, `unknown field "k8s_api_root"`},
		{map[string]any{}, types.ErrInvalidNetworkConfig, `kubernetes.kubeconfig ""`},
		{map[string]any{"kubeconfig": "kubeconfig"}, types.ErrInvalidNetworkConfig, `kubernetes.kubeconfig "kubeconfig": want the absolute path`},
		{"/etc/kubeconfig", types.ErrInvalidNetworkConfig, "kubernetes"},
	} {
		_, err := parseConf(conf(map[string]any{"kubernetes": bad.v}), host)
		te, ok := errors.AsType[*types.Error](err)
		if !ok || te.Code != bad.code || !strings.Contains(te.Msg, bad.want) {
			t.Errorf("kubernetes %v: %v, want code %d with %q", bad.v, err, bad.code, bad.want)
		}
	}
}

// fakeAPI makes ADD's Kubernetes client a fake clientset holding objs, for the test; it returns
// the clientset and a pointer to the kubeconfig path ADD asked for.
func fakeAPI(t *testing.T, objs ...runtime.Object) (*fake.Clientset, *string) {
	cs := fake.NewClientset(objs...)
	var asked string
	old := newKubeAPI
	newKubeAPI = func(kubeconfig string) (kubeAPI, error) {
		asked = kubeconfig
		return clientsetAPI{cs.CoreV1()}, nil
	}
	t.Cleanup(func() { newKubeAPI = old })
	return cs, &asked
}

// clientsetAPI reads through a client-go client: the fake clientset in these tests.
type clientsetAPI struct{ c corev1client.CoreV1Interface }

func (a clientsetAPI) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return a.c.Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

func (a clientsetAPI) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	return a.c.Namespaces().Get(ctx, name, metav1.GetOptions{})
}

func (a clientsetAPI) ServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	return a.c.ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
}

// addInProcess runs ADD in this process, in the world's host namespace (where the plugin runs),
// so that the fake API server is what it reads.
func (w *world) addInProcess(t *testing.T, containerID, nsPath, args string, set map[string]any) error {
	t.Helper()
	return w.host.Do(func() error {
		_, err := (&Plugin{}).Run(t.Context(), "ADD", &skel.CmdArgs{ContainerID: containerID, Netns: nsPath, IfName: "eth0", Args: args, StdinData: w.conf("1.0.0", set)})
		return err
	})
}

var kubeConf = map[string]any{"kubernetes": map[string]any{"kubeconfig": "/etc/cni/net.d/margay-kubeconfig"}}

// ADD of a pod reads its labels, its namespace's and its service account's, and its named
// ports, from the API server into the record.
func TestAddKubernetesLabels(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	_, asked := fakeAPI(t,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod", Labels: map[string]string{"team": "a"}}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web-sa", Labels: map[string]string{"role": "frontend"}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web", Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{ServiceAccountName: "web-sa", Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: 8080},
				{ContainerPort: 9090}, // no name: no named port
				{Name: "dns", Protocol: corev1.ProtocolUDP, ContainerPort: 53},
			}}}}})
	path, _ := workloadNS(t)
	args := "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1"
	if err := w.addInProcess(t, "c1", path, args, kubeConf); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if *asked != "/etc/cni/net.d/margay-kubeconfig" {
		t.Errorf("client made from kubeconfig %q", *asked)
	}
	rec, err := w.ds.Workloads(node).Get(t.Context(), "prod.web")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"app":                              "web",
		"projectcalico.org/namespace":      "prod",
		"projectcalico.org/orchestrator":   "k8s",
		"projectcalico.org/serviceaccount": "web-sa",
		"pcns.team":                        "a",
		"pcns.kubernetes.io/metadata.name": "prod",
		"pcns.projectcalico.org/name":      "prod",
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
	w.assertGone(t, "prod.web")

	// A container that is no pod asks the API server nothing.
	*asked = ""
	p2, _ := workloadNS(t)
	if err := w.addInProcess(t, "plain", p2, "", kubeConf); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if rec, err := w.ds.Workloads(node).Get(t.Context(), "plain"); err != nil || rec.Value.Labels != nil || rec.Value.Ports != nil || *asked != "" {
		t.Errorf("plain container: labels %v, ports %v (%v), API asked with %q", rec.Value.Labels, rec.Value.Ports, err, *asked)
	}
	w.mustDel(t, "plain", p2, "")
}

// When the labels cannot be read, ADD fails with a CNI error that says so, and leaves nothing.
func TestAddKubernetesFailure(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	args := "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web"
	check := func(t *testing.T, err error, code uint, msg string) {
		t.Helper()
		te, ok := errors.AsType[*types.Error](err)
		if !ok || te.Code != code || !strings.Contains(te.Msg+" "+te.Details, msg) {
			t.Errorf("ADD: %v, want code %d with %q", err, code, msg)
		}
		w.assertGone(t, "prod.web")
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
		cs, _ := fakeAPI(t)
		cs.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
		})
		path, _ := workloadNS(t)
		err := w.addInProcess(t, "c1", path, args, kubeConf)
		check(t, err, types.ErrTryAgainLater, "cannot read the labels of pod prod/web from the Kubernetes API server (kubeconfig /etc/cni/net.d/margay-kubeconfig)")
		noEth0(t, path)
	})
	t.Run("service account unreadable", func(t *testing.T) {
		cs, _ := fakeAPI(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod"}},
			&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web"}, Spec: corev1.PodSpec{ServiceAccountName: "web-sa"}})
		cs.PrependReactor("get", "serviceaccounts", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewServiceUnavailable("the server is currently unable to handle the request")
		})
		path, _ := workloadNS(t)
		check(t, w.addInProcess(t, "c1", path, args, kubeConf), types.ErrTryAgainLater, "get service account prod/web-sa")
		noEth0(t, path)
	})
	t.Run("no such pod", func(t *testing.T) {
		fakeAPI(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod"}})
		path, _ := workloadNS(t)
		check(t, w.addInProcess(t, "c1", path, args, kubeConf), types.ErrInternal, `pods "web" not found`)
		noEth0(t, path)
	})
}

// A service account that the API server does not let margay-cni read (an RBAC role from before
// it read them) or that is gone costs the workload only that account's own labels: ADD works.
func TestAddKubernetesServiceAccountForbidden(t *testing.T) {
	w := newWorld(t, "198.19.0.0/16")
	cs, _ := fakeAPI(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "prod"}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web-sa", Labels: map[string]string{"role": "frontend"}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web"}, Spec: corev1.PodSpec{ServiceAccountName: "web-sa"}})
	cs.PrependReactor("get", "serviceaccounts", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "serviceaccounts"}, "web-sa", errors.New("RBAC: not allowed"))
	})
	path, _ := workloadNS(t)
	args := "K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web"
	if err := w.addInProcess(t, "c1", path, args, kubeConf); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	rec, err := w.ds.Workloads(node).Get(t.Context(), "prod.web")
	if err != nil {
		t.Fatal(err)
	}
	if l := rec.Value.Labels; l["pcsa.projectcalico.org/name"] != "web-sa" || l["projectcalico.org/serviceaccount"] != "web-sa" || l["pcsa.role"] != "" {
		t.Errorf("record labels %v: want the service account's name labels, not its own", l)
	}
	w.mustDel(t, "c1", path, args)
	w.assertGone(t, "prod.web")
}

// The plugin's own API client, against an HTTP server speaking the API server's protocol: the
// objects it serves become labels, and its error statuses the right CNI codes.
func TestKubeAPIOverHTTP(t *testing.T) {
	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"prod","labels":{"app":"web"}},"spec":{"serviceAccountName":"web-sa",` +
		`"containers":[{"name":"app","ports":[{"name":"http","containerPort":8080,"protocol":"TCP"},{"containerPort":9090}]}]}}`
	ns := `{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"prod","labels":{"team":"a"}}}`
	sa := `{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"web-sa","namespace":"prod","labels":{"role":"frontend"}}}`
	var (
		mu    sync.Mutex
		paths []string
	)
	// TLS, as clientcmd hands a token only to an https server.
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		paths = append(paths, r.URL.Path)
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer t0ken" {
			http.Error(w, `{"kind":"Status","message":"no token"}`, http.StatusUnauthorized)
			return
		}
		switch r.URL.Path {
		case "/api/v1/namespaces/prod/pods/web":
			_, _ = w.Write([]byte(pod))
		case "/api/v1/namespaces/prod":
			_, _ = w.Write([]byte(ns))
		case "/api/v1/namespaces/prod/serviceaccounts/web-sa":
			_, _ = w.Write([]byte(sa))
		case "/api/v1/namespaces/prod/pods/nosa":
			_, _ = w.Write([]byte(strings.Replace(pod, `"web-sa"`, `"gone-sa"`, 1)))
		case "/api/v1/namespaces/prod/serviceaccounts/gone-sa":
			http.Error(w, `{"kind":"Status","message":"serviceaccounts \"gone-sa\" is forbidden: User \"system:serviceaccount:kube-system:margay-node\" cannot get resource \"serviceaccounts\""}`, http.StatusForbidden)
		case "/api/v1/namespaces/busy/pods/web":
			http.Error(w, `{"kind":"Status","message":"the server is currently unable to handle the request"}`, http.StatusServiceUnavailable)
		default:
			http.Error(w, `{"kind":"Status","message":"pods \"x\" not found"}`, http.StatusNotFound)
		}
	}))
	defer srv.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority-data: %s}}]
users: [{name: u, user: {token: t0ken}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`, srv.URL, base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})))
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := &kubernetesConf{Kubeconfig: kubeconfig}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	pw, err := podWorkload(t.Context(), conf, "prod", "web", log)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"app": "web", "projectcalico.org/namespace": "prod", "projectcalico.org/orchestrator": "k8s",
		"projectcalico.org/serviceaccount": "web-sa", "pcns.team": "a", "pcns.kubernetes.io/metadata.name": "prod",
		"pcns.projectcalico.org/name": "prod", "pcsa.projectcalico.org/name": "web-sa", "pcsa.role": "frontend"}
	if !maps.Equal(pw.Labels, want) {
		t.Errorf("labels %v, want %v", pw.Labels, want)
	}
	if want := []datastore.EndpointPort{{Name: "http", Protocol: 6, Port: 8080}}; !slices.Equal(pw.Ports, want) {
		t.Errorf("ports %v, want %v", pw.Ports, want)
	}
	mu.Lock()
	got := slices.Sorted(slices.Values(paths))
	mu.Unlock()
	if !slices.Equal(got, []string{"/api/v1/namespaces/prod", "/api/v1/namespaces/prod/pods/web", "/api/v1/namespaces/prod/serviceaccounts/web-sa"}) {
		t.Errorf("requests %v", got)
	}
	// Forbidden to read the service account: its own labels go, with a warning, and nothing fails.
	pw, err = podWorkload(t.Context(), conf, "prod", "nosa", log)
	if err != nil {
		t.Fatal(err)
	}
	if pw.Labels["pcsa.projectcalico.org/name"] != "gone-sa" || pw.Labels["pcsa.role"] != "" || len(pw.Ports) != 1 {
		t.Errorf("service account forbidden: labels %v, ports %v", pw.Labels, pw.Ports)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "cannot get resource") {
		t.Errorf("the forbidden read was not logged as a warning:\n%s", logs.String())
	}
	for _, c := range []struct {
		ns, pod string
		code    uint
		want    string
	}{
		{"prod", "gone", types.ErrInternal, "not found"},
		{"busy", "web", types.ErrTryAgainLater, "unable to handle"},
	} {
		_, err := podWorkload(t.Context(), conf, c.ns, c.pod, log)
		te, ok := errors.AsType[*types.Error](err)
		if !ok || te.Code != c.code || !strings.Contains(te.Details, c.want) {
			t.Errorf("%s/%s: %v, want code %d with %q", c.ns, c.pod, err, c.code, c.want)
		}
	}
	// Without the token the server refuses: an error, not labels.
	if err := os.WriteFile(kubeconfig, []byte(strings.Replace(cfg, "token: t0ken", "token: wrong", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := podWorkload(t.Context(), conf, "prod", "web", log); err == nil || !strings.Contains(err.Error(), "no token") {
		t.Errorf("wrong token: %v", err)
	}
}
