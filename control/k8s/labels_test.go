package k8s

import (
	"bytes"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/margaynet/margay/control/datastore"
)

func namespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func pod(ns, name, sa string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: sa}}
}

// captureLog points slog.Default at a buffer for the test.
func captureLog(t *testing.T) *bytes.Buffer {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	return &buf
}

func TestWorkloadLabels(t *testing.T) {
	logs := captureLog(t)
	cs := fake.NewClientset(
		namespace("prod", map[string]string{"team": "a", "kubernetes.io/metadata.name": "prod", strings.Repeat("k", 60): "long"}),
		namespace("bare", nil),
		pod("prod", "web-1", "web-sa", map[string]string{
			"app": "web", "example.com/tier": "fe",
			"projectcalico.org/namespace": "kube-system", // forged: dropped
			"pcns.team":                   "b",           // forged namespace label: dropped
		}),
		pod("bare", "job", "", nil),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web-sa", Labels: map[string]string{"role": "frontend"}}},
	)
	got, err := WorkloadLabels(t.Context(), cs, "prod", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"app": "web", "example.com/tier": "fe",
		"projectcalico.org/namespace":      "prod",
		"projectcalico.org/orchestrator":   "k8s",
		"projectcalico.org/serviceaccount": "web-sa",
		"pcns.team":                        "a",
		"pcns.kubernetes.io/metadata.name": "prod",
		"pcns.projectcalico.org/name":      "prod",
		"pcsa.projectcalico.org/name":      "web-sa",
		"pcsa.role":                        "frontend",
	}
	if !maps.Equal(got, want) {
		t.Errorf("labels\n got %v\nwant %v", got, want)
	}
	for _, s := range []string{"projectcalico.org/namespace", "pcns.team", strings.Repeat("k", 60)} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("dropping %s was not logged:\n%s", s, logs)
		}
	}

	// A namespace without kubernetes.io/metadata.name still gets it; no service account, no label.
	got, err = WorkloadLabels(t.Context(), cs, "bare", "job")
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]string{
		"projectcalico.org/namespace":      "bare",
		"projectcalico.org/orchestrator":   "k8s",
		"pcns.kubernetes.io/metadata.name": "bare",
		"pcns.projectcalico.org/name":      "bare",
	}
	if !maps.Equal(got, want) {
		t.Errorf("labels\n got %v\nwant %v", got, want)
	}

	// Margay's RBAC role from before it read service accounts: the service account's own
	// labels go, the ADD does not fail.
	cs.PrependReactor("get", "serviceaccounts", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "serviceaccounts"}, "web-sa", errors.New("RBAC: not allowed"))
	})
	got, err = WorkloadLabels(t.Context(), cs, "prod", "web-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got["pcsa.role"]; ok || got["pcsa.projectcalico.org/name"] != "web-sa" || got["pcns.team"] != "a" {
		t.Errorf("labels with the service account forbidden: %v", got)
	}
	if !strings.Contains(logs.String(), "RBAC: not allowed") {
		t.Errorf("the forbidden read was not logged:\n%s", logs)
	}
}

// ReadWorkload gives the pod's named ports too, as margay-cni records them.
func TestReadWorkloadPorts(t *testing.T) {
	captureLog(t)
	p := pod("prod", "web", "", nil)
	p.Spec.Containers = []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{
		{Name: "http", ContainerPort: 8080}, {ContainerPort: 9090}, {Name: "dns", Protocol: corev1.ProtocolUDP, ContainerPort: 53}}}}
	w, err := ReadWorkload(t.Context(), fake.NewClientset(namespace("prod", nil), p).CoreV1(), "prod", "web")
	if err != nil {
		t.Fatal(err)
	}
	if want := []datastore.EndpointPort{{Name: "http", Protocol: 6, Port: 8080}, {Name: "dns", Protocol: 17, Port: 53}}; !slices.Equal(w.Ports, want) {
		t.Errorf("ports %v, want %v", w.Ports, want)
	}
}

func TestWorkloadLabelsErrors(t *testing.T) {
	captureLog(t)
	objs := []runtime.Object{
		namespace("prod", nil),
		namespace("badns", map[string]string{"team": "a b"}),
		pod("prod", "web", "", nil),
		pod("prod", "bad", "", map[string]string{"-app": "x"}),
		pod("prod", "badval", "", map[string]string{"app": strings.Repeat("v", 64)}),
		pod("badns", "web", "", nil),
		pod("nons", "web", "", nil),
	}
	for _, c := range []struct{ name, ns, pod, want string }{
		{"no pod", "prod", "gone", `k8s: get pod prod/gone: pods "gone" not found`},
		{"no namespace", "nons", "web", `k8s: get namespace nons (of pod web)`},
		{"bad pod label key", "prod", "bad", `k8s: pod prod/bad: label key "-app"`},
		{"bad pod label value", "prod", "badval", `k8s: pod prod/badval: label "app": value`},
		{"bad namespace label", "badns", "web", `k8s: namespace badns: label "team": value "a b"`},
		{"bad namespace name", "Prod", "web", `k8s: namespace "Prod"`},
		{"bad pod name", "prod", "a/b", `k8s: pod name "a/b"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := WorkloadLabels(t.Context(), fake.NewClientset(objs...), c.ns, c.pod)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("WorkloadLabels = %v, %v; want an error with %q", l, err, c.want)
			}
		})
	}

	// The API server failing: the error says so and wraps the cause.
	cs := fake.NewClientset(objs...)
	refused := errors.New("dial tcp 10.96.0.1:443: connect: connection refused")
	cs.PrependReactor("get", "namespaces", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, refused })
	_, err := WorkloadLabels(t.Context(), cs, "prod", "web")
	if !errors.Is(err, refused) || !strings.Contains(err.Error(), "get namespace prod") {
		t.Errorf("WorkloadLabels with the API server failing: %v", err)
	}
}
