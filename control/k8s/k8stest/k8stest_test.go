//go:build k8s

package k8stest

import (
	"context"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
)

// An API server of the test's own: its identities are who they say, RBAC holds them to their
// roles, Store's objects are served, and Stop leaves no process.
func TestStart(t *testing.T) {
	api := Start(t)
	ctx := t.Context()
	ns := api.Namespace(t, "prod", map[string]string{"team": "a"})
	if !strings.HasPrefix(ns, "prod-") {
		t.Errorf("namespace %q, want prod-…", ns)
	}

	// A user without a role may do nothing; a kubeconfig file of it reads as the same user.
	nobody := Clientset(t, api.User(t, "nobody", "margay-tests"))
	if _, err := nobody.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("user nobody read a namespace: %v, want forbidden", err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", Kubeconfig(t, api.User(t, "nobody")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Clientset(t, cfg).CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsForbidden(err) ||
		!strings.Contains(err.Error(), `User "nobody"`) {
		t.Errorf("user nobody through a kubeconfig: %v, want forbidden to user nobody", err)
	}

	// A service account with a role may do that, and only that.
	sa := Clientset(t, api.ServiceAccount(t, ns, "reader", rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get"}}))
	if _, err := sa.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
		t.Errorf("service account with get namespaces: %v", err)
	}
	if _, err := sa.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) ||
		!strings.Contains(err.Error(), "system:serviceaccount:"+ns+":reader") {
		t.Errorf("service account listing pods: %v, want forbidden to it", err)
	}

	// The manifest's role holds what Margay reads.
	rules := MargayRules(t)
	if len(rules) == 0 || len(Without(rules, "serviceaccounts")) != len(rules)-1 {
		t.Errorf("margay-node rules %v; without serviceaccounts %v", rules, Without(rules, "serviceaccounts"))
	}

	// Store: a label the API server would refuse, served all the same.
	api.Store(t, "pods", &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bad", Labels: map[string]string{"-app": "x"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox"}}}})
	p, err := api.Client.CoreV1().Pods(ns).Get(ctx, "bad", metav1.GetOptions{})
	if err != nil || p.Labels["-app"] != "x" {
		t.Errorf("stored pod: %v, %v", p, err)
	}
	if _, err := api.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "bad2", Labels: map[string]string{"-app": "x"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "busybox"}}}}, metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Errorf("creating the same pod: %v, want invalid", err)
	}

	pid := api.proc.cmd.Process.Pid
	api.Stop()
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("kube-apiserver (pid %d) still runs after Stop", pid)
	}
	if _, err := api.Client.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{}); err == nil {
		t.Error("the API server answers after Stop")
	}
}
