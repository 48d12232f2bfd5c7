package cni

import (
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

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

// The plugin's own API client, against an HTTP server speaking the API server's protocol: the
// requests it sends for a pod, and the CNI code of a 503, which a real API server gives when it
// cannot serve, not on demand. The rest runs against a real API server in k8s_apiserver_test.go
// (build tag k8s).
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
		case "/api/v1/namespaces/prod/pods/busysa":
			_, _ = w.Write([]byte(strings.Replace(pod, `"web-sa"`, `"busy-sa"`, 1)))
		case "/api/v1/namespaces/busy/pods/web", "/api/v1/namespaces/prod/serviceaccounts/busy-sa":
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
	log := slog.New(slog.DiscardHandler)
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
	for _, c := range []struct {
		ns, pod string
		code    uint
		want    string
	}{
		{"busy", "web", types.ErrTryAgainLater, "unable to handle"},
		// Not NotFound or Forbidden: ADD fails, to be tried again, rather than go without the
		// service account's labels.
		{"prod", "busysa", types.ErrTryAgainLater, "get service account prod/busy-sa (of pod busysa): the server is currently unable"},
	} {
		_, err := podWorkload(t.Context(), conf, c.ns, c.pod, log)
		te, ok := errors.AsType[*types.Error](err)
		if !ok || te.Code != c.code || !strings.Contains(te.Details, c.want) {
			t.Errorf("%s/%s: %v, want code %d with %q", c.ns, c.pod, err, c.code, c.want)
		}
	}
}
