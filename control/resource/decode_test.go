package resource

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"sigs.k8s.io/yaml"
)

// decodeYAML converts a manifest to JSON strictly, as calicoctl reads YAML (a repeated key is
// an error), and decodes it.
func decodeYAML(tb testing.TB, manifest string) (Resource, error) {
	tb.Helper()
	doc, err := yaml.YAMLToJSONStrict([]byte(manifest))
	if err != nil {
		tb.Fatalf("YAML to JSON: %v", err)
	}
	return Decode(doc)
}

func readTestdata(tb testing.TB, name string) string {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "calico-docs", name))
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// fieldErrors returns the *FieldError values err joins, and fails if err holds anything else.
func fieldErrors(tb testing.TB, err error) []*FieldError {
	tb.Helper()
	if err == nil {
		return nil
	}
	list := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		list = joined.Unwrap()
	}
	out := make([]*FieldError, len(list))
	for i, e := range list {
		if !errors.As(e, &out[i]) {
			tb.Fatalf("error %q is no *FieldError", e)
		}
	}
	return out
}

// The examples of Calico's documentation (testdata/calico-docs) all decode, and validate but for
// the fields Margay reports as not supported.
func TestCalicoDocsExamples(t *testing.T) {
	tests := []struct {
		file        string
		kind        Kind
		unsupported []string // the paths Validate reports as not supported by Margay
	}{
		{"networkpolicy.yaml", KindNetworkPolicy, nil},
		{"globalnetworkpolicy.yaml", KindGlobalNetworkPolicy, nil},
		{"profile.yaml", KindProfile, nil},
		{"tier.yaml", KindTier, nil},
		{"ippool.yaml", KindIPPool, []string{"spec.ipipMode", "spec.natOutgoing"}},
		{"bgppeer.yaml", KindBGPPeer, nil},
		{"bgppeer-password.yaml", KindBGPPeer, []string{"spec.password.secretKeyRef"}},
		{"bgpconfig.yaml", KindBGPConfiguration, []string{"spec.serviceExternalIPs", "spec.serviceClusterIPs",
			"spec.communities", "spec.prefixAdvertisements", "spec.listenPort", "spec.nodeMeshMaxRestartTime", "spec.bindMode"}},
		{"node.yaml", KindNode, nil},
		{"workloadendpoint.yaml", KindWorkloadEndpoint, nil},
		{"block-icmp.yaml", KindGlobalNetworkPolicy, []string{"spec.ingress[1].protocol", "spec.egress[1].protocol"}},
		{"allow-ping-in-cluster.yaml", KindGlobalNetworkPolicy, []string{"spec.ingress[1].protocol"}},
		{"allow-host-unreachable.yaml", KindGlobalNetworkPolicy, nil},
		{"namespace-selector.yaml", KindNetworkPolicy, nil},
		{"restrict-development-access.yaml", KindGlobalNetworkPolicy, nil},
		{"service-account-names.yaml", KindNetworkPolicy, nil},
		{"service-account-labels.yaml", KindNetworkPolicy, nil},
		{"tier-devops.yaml", KindTier, nil},
		{"tiered-policy.yaml", KindGlobalNetworkPolicy, nil},
		{"allow-egress-external.yaml", KindNetworkPolicy, nil},
		{"ip-protect.yaml", KindGlobalNetworkPolicy, []string{"spec.doNotTrack", "spec.applyOnForward"}},
	}
	files, err := filepath.Glob(filepath.Join("testdata", "calico-docs", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(tests) {
		t.Errorf("%d files in testdata/calico-docs, %d in this table", len(files), len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			r, err := decodeYAML(t, readTestdata(t, tt.file))
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if r.Kind() != tt.kind {
				t.Errorf("kind %s, want %s", r.Kind(), tt.kind)
			}
			var got []string
			for _, fe := range fieldErrors(t, r.Validate()) {
				if !errors.Is(fe, ErrUnsupported) {
					t.Errorf("Validate: %v", fe)
					continue
				}
				got = append(got, fe.Path)
			}
			slices.Sort(got)
			want := slices.Sorted(slices.Values(tt.unsupported))
			if !slices.Equal(got, want) {
				t.Errorf("not supported: %q, want %q", got, want)
			}
		})
	}
}

func TestDecodeNamespace(t *testing.T) {
	r, err := decodeYAML(t, `
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: p}
`)
	if err != nil {
		t.Fatal(err)
	}
	if ns := r.Metadata().Namespace; ns != DefaultNamespace {
		t.Errorf("namespace %q, want %q", ns, DefaultNamespace)
	}
}

// Field names match as calicoctl matches them (encoding/json): exactly, else ignoring case.
// Calico's own tests apply a Tier with "Order" (calicoctl/tests/st/utils/data.py).
func TestDecodeFieldCase(t *testing.T) {
	r, err := decodeYAML(t, `
apiVersion: projectcalico.org/v3
kind: Tier
Metadata:
  Name: admin
spec:
  Order: 10000
`)
	if err != nil {
		t.Fatal(err)
	}
	tier := r.(*Tier)
	if tier.Name != "admin" || tier.Spec.Order == nil || *tier.Spec.Order != 10000 {
		t.Errorf("decoded %+v", tier)
	}
}

func TestDecodeMetadata(t *testing.T) {
	r, err := decodeYAML(t, `
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: p
  uid: 5b1a1b8e-0e1b-4c2b-a2a4-9e9d8b1c1f00
  resourceVersion: "1234"
  creationTimestamp: "2024-05-06T07:08:09.5+02:00"
  labels: {app: web}
  annotations: {note: "any text: at all"}
`)
	if err != nil {
		t.Fatal(err)
	}
	m := r.Metadata()
	if m.UID != "5b1a1b8e-0e1b-4c2b-a2a4-9e9d8b1c1f00" || m.ResourceVersion != "1234" ||
		m.Labels["app"] != "web" || m.Annotations["note"] != "any text: at all" {
		t.Errorf("metadata %+v", m)
	}
	if got, want := m.CreationTimestamp.Format("2006-01-02T15:04:05.999Z07:00"), "2024-05-06T05:08:09Z"; got != want {
		t.Errorf("creationTimestamp %s, want %s (UTC, whole seconds, as Kubernetes keeps it)", got, want)
	}
}

func TestNew(t *testing.T) {
	for _, k := range Kinds() {
		r := New(k)
		if r == nil || r.Kind() != k {
			t.Errorf("New(%s) = %#v", k, r)
		}
	}
	if r := New("HostEndpoint"); r != nil {
		t.Errorf("New(HostEndpoint) = %#v, want nil", r)
	}
}

func TestKindProperties(t *testing.T) {
	for _, k := range Kinds() {
		namespaced := k == KindNetworkPolicy || k == KindWorkloadEndpoint
		readOnly := k == KindNode || k == KindWorkloadEndpoint
		if k.Namespaced() != namespaced || k.ReadOnly() != readOnly {
			t.Errorf("%s: Namespaced %v ReadOnly %v", k, k.Namespaced(), k.ReadOnly())
		}
	}
}
