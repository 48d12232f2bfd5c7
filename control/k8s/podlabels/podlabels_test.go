package podlabels

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/margaynet/margay/control/datastore"
)

func logTo(buf *bytes.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(buf, nil)) }

func container(name string, ports ...corev1.ContainerPort) corev1.Container {
	return corev1.Container{Name: name, Ports: ports}
}

func cport(name string, proto corev1.Protocol, port int32) corev1.ContainerPort {
	return corev1.ContainerPort{Name: name, Protocol: proto, ContainerPort: port}
}

// A pod's named ports are its containers' and then its init containers' ports with a name, with
// their protocol (TCP when unset); what cannot be a named port is left out and logged, exact
// repeats are kept once, one name on several ports or protocols once each.
func TestPorts(t *testing.T) {
	var logs bytes.Buffer
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web"}, Spec: corev1.PodSpec{
		Containers: []corev1.Container{
			container("app",
				cport("http", corev1.ProtocolTCP, 8080),
				cport("", corev1.ProtocolTCP, 9090),  // unnamed: nothing can name it
				cport("metrics", "", 9100),           // protocol unset: TCP
				cport("dns", corev1.ProtocolUDP, 53), // the same name, two protocols:
				cport("dns", corev1.ProtocolTCP, 53), // both kept
				cport("assoc", corev1.ProtocolSCTP, 3868),
				cport("9p", corev1.ProtocolTCP, 564),     // a name may start with a digit
				cport("HTTP", corev1.ProtocolTCP, 8081),  // no port name: uppercase
				cport("way-too-long-name", "", 8082),     // no port name: 17 characters
				cport("quic", "ICMP", 443),               // no port protocol
				cport("zero", corev1.ProtocolTCP, 0),     // no port
				cport("big", corev1.ProtocolTCP, 70000)), // no port
			container("sidecar",
				cport("http", corev1.ProtocolTCP, 8080),  // an exact repeat: once
				cport("http", corev1.ProtocolTCP, 8443)), // the same name on another port: kept
		},
		InitContainers: []corev1.Container{container("proxy", cport("proxy", corev1.ProtocolTCP, 15001))},
	}}
	got := portsOf(logTo(&logs), p)
	want := []datastore.EndpointPort{
		{Name: "http", Protocol: 6, Port: 8080},
		{Name: "metrics", Protocol: 6, Port: 9100},
		{Name: "dns", Protocol: 17, Port: 53},
		{Name: "dns", Protocol: 6, Port: 53},
		{Name: "assoc", Protocol: 132, Port: 3868},
		{Name: "9p", Protocol: 6, Port: 564},
		{Name: "http", Protocol: 6, Port: 8443},
		{Name: "proxy", Protocol: 6, Port: 15001},
	}
	if !slices.Equal(got, want) {
		t.Errorf("ports\n got %v\nwant %v", got, want)
	}
	for _, left := range []string{"port=HTTP", "port=way-too-long-name", "port=quic", "port=zero", "port=big"} {
		if !strings.Contains(logs.String(), "leaving out named port") || !strings.Contains(logs.String(), left) {
			t.Errorf("leaving out %s was not logged:\n%s", left, logs.String())
		}
	}
	// Each is a valid workload port: the record they go into passes the datastore's check.
	w := datastore.Workload{Version: 1, ID: "prod.web", Name: "web", Node: "n", IfName: "cali0123456789a", MAC: "02:00:00:00:00:01", Ports: got}
	if err := w.Validate(); err != nil {
		t.Errorf("record with the ports: %v", err)
	}
	if got := Ports(&corev1.Pod{}); got != nil {
		t.Errorf("ports of a pod without containers: %v", got)
	}

	// More than a record holds: the first MaxMatchesPerList, and a warning.
	logs.Reset()
	var many []corev1.ContainerPort
	for i := range datastore.MaxMatchesPerList + 5 {
		many = append(many, cport(fmt.Sprintf("p%d", i), corev1.ProtocolTCP, int32(1+i)))
	}
	got = portsOf(logTo(&logs), &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{container("c", many...)}}})
	if len(got) != datastore.MaxMatchesPerList || got[len(got)-1].Name != fmt.Sprintf("p%d", datastore.MaxMatchesPerList-1) {
		t.Errorf("%d ports kept (last %v), want the first %d", len(got), got[len(got)-1], datastore.MaxMatchesPerList)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Errorf("%d warnings for the ports beyond the limit, want 1:\n%s", n, logs.String())
	}
}

func ns(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func pod(namespace, name, sa string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: sa}}
}

func sa(namespace, name string, labels map[string]string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels}}
}

// The labels of namespace and service account, as Calico's kns. and ksa. profiles give them.
func TestOfNamespaceAndServiceAccount(t *testing.T) {
	var logs bytes.Buffer
	long := strings.Repeat("k", 60)
	got, err := labelsOf(logTo(&logs),
		pod("prod", "web", "web-sa", map[string]string{
			"app":                         "web",
			"pcsa.team":                   "forged", // poses as a service account label: dropped
			"pcsa.projectcalico.org/name": "admin",  // likewise
			"pcns.projectcalico.org/name": "kube-system",
		}),
		ns("prod", map[string]string{"team": "a", "projectcalico.org/name": "not-the-name"}),
		sa("prod", "web-sa", map[string]string{"team": "payments", "example.com/tier": "fe", long: "x",
			"projectcalico.org/name": "not-the-name"}))
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
		"pcns.projectcalico.org/name":      "prod", // the name wins over a label of that key, as in Calico
		"pcsa.projectcalico.org/name":      "web-sa",
		"pcsa.team":                        "payments",
		"pcsa.example.com/tier":            "fe",
	}
	if !maps.Equal(got, want) {
		t.Errorf("labels\n got %v\nwant %v", got, want)
	}
	for _, s := range []string{"label=pcsa.team", "label=pcsa.projectcalico.org/name", "label=pcns.projectcalico.org/name", "label=" + long} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("dropping %s was not logged:\n%s", s, logs.String())
		}
	}

	// The service account not read: its name labels, none of its own.
	got, err = Of(pod("prod", "web", "web-sa", nil), ns("prod", nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]string{
		"projectcalico.org/namespace":      "prod",
		"projectcalico.org/orchestrator":   "k8s",
		"projectcalico.org/serviceaccount": "web-sa",
		"pcns.kubernetes.io/metadata.name": "prod",
		"pcns.projectcalico.org/name":      "prod",
		"pcsa.projectcalico.org/name":      "web-sa",
	}
	if !maps.Equal(got, want) {
		t.Errorf("labels without the service account read\n got %v\nwant %v", got, want)
	}

	// A service account name longer than a label value: pcsa.projectcalico.org/name only, as
	// in Calico.
	name := strings.Repeat("s", 64)
	got, err = Of(pod("prod", "web", name, nil), ns("prod", nil), sa("prod", name, map[string]string{"a": "b"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got[ServiceAccountLabel]; ok || got["pcsa.projectcalico.org/name"] != name || got["pcsa.a"] != "b" {
		t.Errorf("labels of a pod with a 64-character service account name: %v", got)
	}

	// No service account: no service account labels.
	got, err = Of(pod("prod", "web", "", nil), ns("prod", nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	for k := range got {
		if strings.HasPrefix(k, "pcsa.") || k == ServiceAccountLabel {
			t.Errorf("label %s without a service account", k)
		}
	}
}

// fakeSource serves objects from maps; each call first runs hook (when set) with the kind read.
type fakeSource struct {
	pods   map[string]*corev1.Pod
	nss    map[string]*corev1.Namespace
	sas    map[string]*corev1.ServiceAccount
	saErr  error
	hook   func(ctx context.Context, kind string) error
	called chan string
}

func (f *fakeSource) enter(ctx context.Context, kind string) error {
	if f.called != nil {
		f.called <- kind
	}
	if f.hook != nil {
		return f.hook(ctx, kind)
	}
	return nil
}

func notFound(resource, name string) error {
	return apierrors.NewNotFound(schema.GroupResource{Resource: resource}, name)
}

func (f *fakeSource) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	if err := f.enter(ctx, "pod"); err != nil {
		return nil, err
	}
	if p, ok := f.pods[namespace+"/"+name]; ok {
		return p, nil
	}
	return nil, notFound("pods", name)
}

func (f *fakeSource) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	if err := f.enter(ctx, "namespace"); err != nil {
		return nil, err
	}
	if n, ok := f.nss[name]; ok {
		return n, nil
	}
	return nil, notFound("namespaces", name)
}

func (f *fakeSource) ServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	if err := f.enter(ctx, "serviceaccount"); err != nil {
		return nil, err
	}
	if f.saErr != nil {
		return nil, f.saErr
	}
	if s, ok := f.sas[namespace+"/"+name]; ok {
		return s, nil
	}
	return nil, notFound("serviceaccounts", name)
}

func world() *fakeSource {
	p := pod("prod", "web", "web-sa", map[string]string{"app": "web"})
	p.Spec.Containers = []corev1.Container{container("app", cport("http", "", 8080))}
	return &fakeSource{
		pods: map[string]*corev1.Pod{"prod/web": p, "prod/nosa": pod("prod", "nosa", "", nil)},
		nss:  map[string]*corev1.Namespace{"prod": ns("prod", map[string]string{"team": "a"})},
		sas:  map[string]*corev1.ServiceAccount{"prod/web-sa": sa("prod", "web-sa", map[string]string{"role": "frontend"})},
	}
}

// Read reads the three objects and returns labels and ports; the service account failing as
// NotFound or Forbidden costs only its own labels, any other failure is an error.
func TestRead(t *testing.T) {
	var logs bytes.Buffer
	w, err := Read(t.Context(), world(), "prod", "web", logTo(&logs))
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
	if !maps.Equal(w.Labels, want) || !slices.Equal(w.Ports, []datastore.EndpointPort{{Name: "http", Protocol: 6, Port: 8080}}) {
		t.Errorf("Read = %v %v\nwant labels %v and port http", w.Labels, w.Ports, want)
	}

	withoutSA := maps.Clone(want)
	delete(withoutSA, "pcsa.role")
	for _, c := range []struct {
		name string
		err  error
	}{
		{"not found", notFound("serviceaccounts", "web-sa")},
		{"forbidden", apierrors.NewForbidden(schema.GroupResource{Resource: "serviceaccounts"}, "web-sa",
			errors.New(`User "system:serviceaccount:kube-system:margay-node" cannot get resource "serviceaccounts"`))},
	} {
		t.Run("service account "+c.name, func(t *testing.T) {
			var logs bytes.Buffer
			src := world()
			src.saErr = c.err
			w, err := Read(t.Context(), src, "prod", "web", logTo(&logs))
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(w.Labels, withoutSA) || len(w.Ports) != 1 {
				t.Errorf("Read = %v %v\nwant labels %v", w.Labels, w.Ports, withoutSA)
			}
			if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "serviceAccount=web-sa") {
				t.Errorf("no warning:\n%s", logs.String())
			}
		})
	}
	t.Run("service account unreadable", func(t *testing.T) {
		src := world()
		src.saErr = apierrors.NewServiceUnavailable("the server is currently unable to handle the request")
		_, err := Read(t.Context(), src, "prod", "web", logTo(&bytes.Buffer{}))
		if !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "k8s: get service account prod/web-sa (of pod web)") {
			t.Errorf("Read: %v, want the service account's error", err)
		}
	})
	t.Run("no service account", func(t *testing.T) {
		src := world()
		src.called = make(chan string, 3)
		if _, err := Read(t.Context(), src, "prod", "nosa", nil); err != nil {
			t.Fatal(err)
		}
		close(src.called)
		for kind := range src.called {
			if kind == "serviceaccount" {
				t.Error("a service account read for a pod without one")
			}
		}
	})
	for _, c := range []struct{ name, ns, pod, want string }{
		{"no pod", "prod", "gone", `k8s: get pod prod/gone: pods "gone" not found`},
		{"no namespace", "dev", "web", `k8s: get namespace dev (of pod web)`},
		{"bad pod name", "prod", "a/b", `k8s: pod name "a/b"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := world()
			src.pods["dev/web"] = pod("dev", "web", "", nil)
			if w, err := Read(t.Context(), src, c.ns, c.pod, nil); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Read = %v, %v; want an error with %q", w, err, c.want)
			}
		})
	}
}

// The namespace is read side by side with the pod, and the service account side by side with
// the namespace: each read below waits (up to a deadline) until the one it should overlap has
// begun, so run one after the other they would all time out.
func TestReadConcurrent(t *testing.T) {
	src := world()
	started := map[string]chan struct{}{"pod": make(chan struct{}), "namespace": make(chan struct{}), "serviceaccount": make(chan struct{})}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	waitFor := func(ctx context.Context, kind string) error {
		select {
		case <-started[kind]:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("waited for the %s read: %w", kind, ctx.Err())
		}
	}
	src.hook = func(ctx context.Context, kind string) error {
		close(started[kind])
		switch kind {
		case "pod": // returns once the namespace read is under way
			return waitFor(ctx, "namespace")
		case "namespace": // returns once the service account read is under way
			return waitFor(ctx, "serviceaccount")
		}
		return nil
	}
	w, err := Read(ctx, src, "prod", "web", nil)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if w.Labels["pcsa.role"] != "frontend" || w.Labels["pcns.team"] != "a" {
		t.Errorf("labels %v", w.Labels)
	}
}

// A failed pod read ends the namespace read under way: Read returns and leaves nothing running.
func TestReadPodFailureCancels(t *testing.T) {
	src := world()
	nsEnded := make(chan error, 1)
	src.hook = func(ctx context.Context, kind string) error {
		switch kind {
		case "namespace":
			<-ctx.Done() // only Read's cancelling ends it
			nsEnded <- ctx.Err()
			return ctx.Err()
		case "pod":
			return errors.New("connection refused")
		}
		return nil
	}
	if _, err := Read(t.Context(), src, "prod", "web", nil); err == nil || !strings.Contains(err.Error(), "get pod prod/web: connection refused") {
		t.Errorf("Read: %v", err)
	}
	select {
	case err := <-nsEnded:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("namespace read ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the namespace read was not cancelled")
	}
}
