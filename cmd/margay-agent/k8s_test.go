package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKubeClientFlags(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cmd := newCommand()
	for name, def := range map[string]string{"k8s-policy-sync": "false", "kubeconfig": ""} {
		if f := cmd.Flags().Lookup(name); f == nil || f.DefValue != def {
			t.Errorf("flag --%s: %+v, want default %q", name, f, def)
		}
	}
	if c, err := (options{}).kubeClient(log); c != nil || err != nil {
		t.Errorf("without --k8s-policy-sync: %v, %v; want no client", c, err)
	}
	if _, err := (options{kubeconfig: "/etc/kubeconfig"}).kubeClient(log); err == nil || !strings.Contains(err.Error(), "--k8s-policy-sync") {
		t.Errorf("--kubeconfig alone: %v, want an error naming --k8s-policy-sync", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	if _, err := (options{k8sSync: true}).kubeClient(log); err == nil || !strings.Contains(err.Error(), "in-cluster") {
		t.Errorf("--k8s-policy-sync outside a pod without --kubeconfig: %v, want an in-cluster config error", err)
	}
	missing := filepath.Join(t.TempDir(), "nope")
	if _, err := (options{k8sSync: true, kubeconfig: missing}).kubeClient(log); err == nil || !strings.Contains(err.Error(), "--kubeconfig "+missing) {
		t.Errorf("missing kubeconfig: %v", err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://192.0.2.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := (options{k8sSync: true, kubeconfig: kc}).kubeClient(log); c == nil || err != nil {
		t.Errorf("--k8s-policy-sync --kubeconfig %s: %v, %v", kc, c, err)
	}
}
