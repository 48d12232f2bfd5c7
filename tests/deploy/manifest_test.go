package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const (
	manifestPath = "deploy/k8s/margay.yaml"
	namespace    = "kube-system"
	agentName    = "margay-agent"
	configName   = "margay-config"
	tlsSecret    = "margay-etcd-tls"
)

// manifest is deploy/k8s/margay.yaml decoded document by document into the API types.
type manifest struct {
	serviceAccounts map[string]*corev1.ServiceAccount
	clusterRoles    map[string]*rbacv1.ClusterRole
	bindings        map[string]*rbacv1.ClusterRoleBinding
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	daemonSets      map[string]*appsv1.DaemonSet
}

// loadManifest decodes every document strictly: duplicate keys and fields the API type does not
// have are errors, as are kinds the manifest should not hold.
func loadManifest(tb testing.TB) *manifest {
	tb.Helper()
	m := &manifest{map[string]*corev1.ServiceAccount{}, map[string]*rbacv1.ClusterRole{},
		map[string]*rbacv1.ClusterRoleBinding{}, map[string]*corev1.ConfigMap{},
		map[string]*corev1.Secret{}, map[string]*appsv1.DaemonSet{}}
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(readRepoFile(tb, manifestPath))))
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tb.Fatalf("%s: document %d: %v", manifestPath, i, err)
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			tb.Fatalf("%s: document %d: %v", manifestPath, i, err)
		}
		if string(bytes.TrimSpace(js)) == "null" {
			continue // comments only
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(js, &tm); err != nil {
			tb.Fatalf("%s: document %d: %v", manifestPath, i, err)
		}
		var obj interface {
			GetName() string
			GetNamespace() string
		}
		namespaced := true
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ServiceAccount":
			o := &corev1.ServiceAccount{}
			obj = o
			defer func() { m.serviceAccounts[o.Name] = o }()
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			o := &rbacv1.ClusterRole{}
			obj, namespaced = o, false
			defer func() { m.clusterRoles[o.Name] = o }()
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			o := &rbacv1.ClusterRoleBinding{}
			obj, namespaced = o, false
			defer func() { m.bindings[o.Name] = o }()
		case "v1 ConfigMap":
			o := &corev1.ConfigMap{}
			obj = o
			defer func() { m.configMaps[o.Name] = o }()
		case "v1 Secret":
			o := &corev1.Secret{}
			obj = o
			defer func() { m.secrets[o.Name] = o }()
		case "apps/v1 DaemonSet":
			o := &appsv1.DaemonSet{}
			obj = o
			defer func() { m.daemonSets[o.Name] = o }()
		default:
			tb.Fatalf("%s: document %d: unexpected %q %q", manifestPath, i, tm.APIVersion, tm.Kind)
		}
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(obj); err != nil {
			tb.Fatalf("%s: document %d (%s): %v", manifestPath, i, tm.Kind, err)
		}
		if obj.GetName() == "" {
			tb.Errorf("%s: document %d (%s) has no name", manifestPath, i, tm.Kind)
		}
		if namespaced && obj.GetNamespace() != namespace {
			tb.Errorf("%s: %s %s is in namespace %q, want %s", manifestPath, tm.Kind, obj.GetName(), obj.GetNamespace(), namespace)
		}
	}
	return m
}

func (m *manifest) daemonSet(tb testing.TB) *appsv1.DaemonSet {
	tb.Helper()
	ds := m.daemonSets["margay-node"]
	if ds == nil || len(m.daemonSets) != 1 {
		tb.Fatalf("%s: want one DaemonSet margay-node, have %v", manifestPath, keys(m.daemonSets))
	}
	return ds
}

func container(tb testing.TB, cs []corev1.Container, name string) *corev1.Container {
	tb.Helper()
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	tb.Fatalf("%s: no container %s", manifestPath, name)
	return nil
}

// hostMount is a container's mount of a hostPath volume.
type hostMount struct {
	corev1.VolumeMount
	hostPath string
}

// hostMounts maps the host paths a container mounts to its mounts of them.
func hostMounts(pod *corev1.PodSpec, c *corev1.Container) map[string]hostMount {
	out := map[string]hostMount{}
	for _, vm := range c.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name == vm.Name && v.HostPath != nil {
				out[v.HostPath.Path] = hostMount{vm, v.HostPath.Path}
			}
		}
	}
	return out
}

func TestManifestRBAC(t *testing.T) {
	m := loadManifest(t)
	ds := m.daemonSet(t)
	sa := ds.Spec.Template.Spec.ServiceAccountName
	if m.serviceAccounts[sa] == nil {
		t.Fatalf("the DaemonSet's service account %q is not in the manifest", sa)
	}
	var role *rbacv1.ClusterRole
	for _, b := range m.bindings {
		for _, s := range b.Subjects {
			if s.Kind == rbacv1.ServiceAccountKind && s.Name == sa && s.Namespace == namespace {
				if b.RoleRef.Kind != "ClusterRole" || b.RoleRef.APIGroup != rbacv1.GroupName {
					t.Errorf("ClusterRoleBinding %s refers to %+v", b.Name, b.RoleRef)
				}
				role = m.clusterRoles[b.RoleRef.Name]
			}
		}
	}
	if role == nil {
		t.Fatalf("no ClusterRoleBinding binds a ClusterRole of the manifest to %s/%s", namespace, sa)
	}
	for _, want := range []struct {
		group, resource string
		verbs           []string
	}{
		{"", "pods", []string{"get", "list", "watch"}},
		{"", "namespaces", []string{"get", "list", "watch"}},
		{"", "nodes", []string{"get", "list", "watch"}},
		{"", "serviceaccounts", []string{"get"}}, // margay-cni, one at a time
		{"networking.k8s.io", "networkpolicies", []string{"get", "list", "watch"}},
	} {
		verbs := map[string]bool{}
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, want.group) && slices.Contains(r.Resources, want.resource) {
				for _, v := range r.Verbs {
					verbs[v] = true
				}
			}
		}
		for _, v := range want.verbs {
			if !verbs[v] {
				t.Errorf("ClusterRole %s does not grant %s on %q %s", role.Name, v, want.group, want.resource)
			}
		}
		for v := range verbs {
			if !slices.Contains(want.verbs, v) {
				t.Errorf("ClusterRole %s grants %s on %q %s: Margay only needs %v", role.Name, v, want.group, want.resource, want.verbs)
			}
		}
	}
}

func TestManifestDaemonSet(t *testing.T) {
	m := loadManifest(t)
	ds := m.daemonSet(t)
	pod := &ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("hostNetwork is not true")
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", pod.PriorityClassName)
	}
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType {
		t.Errorf("updateStrategy %q, want RollingUpdate", ds.Spec.UpdateStrategy.Type)
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tol corev1.Toleration) bool {
		return tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == ""
	}) {
		t.Errorf("no toleration {operator: Exists} (every node, every taint): %+v", pod.Tolerations)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() {
		t.Errorf("selector %v: %v", ds.Spec.Selector, err)
	}

	agent := container(t, pod.Containers, agentName)
	sc := agent.SecurityContext
	if sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Errorf("%s is not privileged", agentName)
	}
	var caps []corev1.Capability
	if sc != nil && sc.Capabilities != nil {
		caps = sc.Capabilities.Add
	}
	for _, c := range []corev1.Capability{"BPF", "NET_ADMIN", "SYS_ADMIN"} {
		if !slices.Contains(caps, c) {
			t.Errorf("%s lacks capability %s (has %v)", agentName, c, caps)
		}
	}
	// NODENAME for the agent's --node-name, MARGAY_NODE_NAME for margayctl run in the pod.
	for _, name := range []string{"NODENAME", "MARGAY_NODE_NAME"} {
		if !slices.ContainsFunc(agent.Env, func(e corev1.EnvVar) bool {
			return e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
		}) {
			t.Errorf("%s has no %s from spec.nodeName", agentName, name)
		}
	}

	mounts := hostMounts(pod, agent)
	for _, want := range []struct {
		host, path  string
		propagation corev1.MountPropagationMode
		readOnly    bool
	}{
		{"/sys/fs/bpf", "/sys/fs/bpf", corev1.MountPropagationBidirectional, false},
		{"/var/run/netns", "/var/run/netns", corev1.MountPropagationHostToContainer, false},
		{"/lib/modules", "/lib/modules", "", true},
	} {
		got, ok := mounts[want.host]
		if !ok {
			t.Errorf("%s does not mount the host's %s (mounts %v)", agentName, want.host, keys(mounts))
			continue
		}
		if got.MountPath != want.path {
			t.Errorf("%s mounts the host's %s at %s, want %s", agentName, want.host, got.MountPath, want.path)
		}
		if want.propagation != "" && (got.MountPropagation == nil || *got.MountPropagation != want.propagation) {
			t.Errorf("%s mounts %s with propagation %s, want %s", agentName, want.host, ptrString(got.MountPropagation), want.propagation)
		}
		if got.ReadOnly != want.readOnly {
			t.Errorf("%s mounts %s readOnly=%v, want %v", agentName, want.host, got.ReadOnly, want.readOnly)
		}
	}

	// The flags: every one must be margay-agent's, and every $(VAR) a variable of the container.
	if len(agent.Command) > 0 && agent.Command[len(agent.Command)-1] != "/usr/local/bin/margay-agent" {
		t.Errorf("%s runs %v, want /usr/local/bin/margay-agent", agentName, agent.Command)
	}
	checkInvocation(t, manifestPath+" "+agentName+" args", "margay-agent", agent.Args)
	env := map[string]bool{}
	for _, e := range agent.Env {
		env[e.Name] = true
	}
	for _, a := range agent.Args {
		for _, ref := range regexp.MustCompile(`\$\((\w+)\)`).FindAllStringSubmatch(a, -1) {
			if !env[ref[1]] {
				t.Errorf("%s arg %q refers to $(%s), which the container does not define", agentName, a, ref[1])
			}
		}
	}
	// With the ConfigMap's values, as the kubelet expands them, the flags must parse.
	values := map[string]string{}
	for _, e := range agent.Env {
		switch {
		case e.ValueFrom == nil:
			values[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			values[e.Name] = "node-1"
		case e.ValueFrom.ConfigMapKeyRef != nil && m.configMaps[e.ValueFrom.ConfigMapKeyRef.Name] != nil:
			values[e.Name] = m.configMaps[e.ValueFrom.ConfigMapKeyRef.Name].Data[e.ValueFrom.ConfigMapKeyRef.Key]
		}
	}
	var expanded []string
	for _, a := range agent.Args {
		expanded = append(expanded, regexp.MustCompile(`\$\((\w+)\)`).ReplaceAllStringFunc(a, func(ref string) string {
			return values[ref[2:len(ref)-1]]
		}))
	}
	checkFlagValues(t, manifestPath+" "+agentName+" args", "margay-agent", expanded)

	// Probes: /healthz and /readyz on the port --http-addr sets.
	port := 9091 // margay-agent's default --http-addr is :9091
	if def := help(t, "margay-agent"); !def.flags["http-addr"] {
		t.Fatal("margay-agent has no --http-addr")
	}
	for _, a := range agent.Args {
		if v, ok := strings.CutPrefix(a, "--http-addr="); ok {
			_, p, _ := strings.Cut(v, ":")
			if port, err = strconv.Atoi(p); err != nil {
				t.Fatalf("--http-addr=%s: no port", v)
			}
		}
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", agent.LivenessProbe, "/healthz"}, {"readiness", agent.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s has no HTTP %s probe", agentName, p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s probe path %s, want %s", p.name, p.probe.HTTPGet.Path, p.path)
		}
		got := p.probe.HTTPGet.Port.IntValue()
		if name := p.probe.HTTPGet.Port.StrVal; name != "" {
			got = 0
			for _, cp := range agent.Ports {
				if cp.Name == name {
					got = int(cp.ContainerPort)
				}
			}
		}
		if got != port {
			t.Errorf("%s probe port %v is %d, the agent listens on %d", p.name, p.probe.HTTPGet.Port.String(), got, port)
		}
	}

	// The init container installs the CNI plugin and config into the host's directories.
	install := container(t, pod.InitContainers, "install-cni")
	if !slices.ContainsFunc(append(slices.Clone(install.Command), install.Args...), func(s string) bool {
		return strings.HasSuffix(s, "/install-cni.sh")
	}) {
		t.Errorf("install-cni runs %v %v, not install-cni.sh", install.Command, install.Args)
	}
	im := hostMounts(pod, install)
	for _, host := range []string{"/opt/cni/bin", "/etc/cni/net.d"} {
		if got, ok := im[host]; !ok || got.ReadOnly {
			t.Errorf("install-cni does not mount the host's %s writable (mounts %v)", host, keys(im))
		}
	}
}

// TestManifestConfig checks that every key of margay-config reaches a real setting: a MARGAY_*
// variable margay-agent reads, a variable a flag of its args expands, or a variable of
// install-cni.sh; and that the etcd TLS Secret is mounted.
func TestManifestConfig(t *testing.T) {
	m := loadManifest(t)
	cm := m.configMaps[configName]
	if cm == nil {
		t.Fatalf("no ConfigMap %s", configName)
	}
	ds := m.daemonSet(t)
	pod := &ds.Spec.Template.Spec
	installScript := readRepoFile(t, "deploy/k8s/install-cni.sh")
	agentEnv := help(t, "margay-agent").env
	used := map[string]bool{}
	for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		for _, ef := range c.EnvFrom {
			if ef.ConfigMapRef != nil && ef.ConfigMapRef.Name == configName {
				t.Errorf("%s: envFrom %s: name each variable instead, so that the test can follow it", c.Name, configName)
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil || e.ValueFrom.ConfigMapKeyRef == nil {
				continue
			}
			ref := e.ValueFrom.ConfigMapKeyRef
			if ref.Name != configName {
				t.Errorf("%s: %s refers to ConfigMap %s, not in the manifest", c.Name, e.Name, ref.Name)
				continue
			}
			if _, ok := cm.Data[ref.Key]; !ok {
				t.Errorf("%s: %s refers to key %s, which %s does not have", c.Name, e.Name, ref.Key, configName)
				continue
			}
			used[ref.Key] = true
			var reader string
			switch {
			case c.Name == agentName && agentEnv[e.Name]:
				reader = "margay-agent"
			case c.Name == agentName && slices.ContainsFunc(c.Args, func(a string) bool { return strings.Contains(a, "$("+e.Name+")") }):
				reader = "an arg"
			case c.Name == "install-cni" && regexp.MustCompile(`\$\{?`+e.Name+`\b`).MatchString(installScript):
				reader = "install-cni.sh"
			}
			if reader == "" {
				t.Errorf("%s: variable %s (from %s) is read by nothing: not a MARGAY_* variable of margay-agent --help, not in an arg, not in install-cni.sh",
					c.Name, e.Name, ref.Key)
			}
		}
	}
	for k := range cm.Data {
		if !used[k] {
			t.Errorf("ConfigMap key %s is consumed by no container", k)
		}
	}

	sec := m.secrets[tlsSecret]
	if sec == nil {
		t.Fatalf("no Secret %s", tlsSecret)
	}
	for _, k := range []string{"etcd-ca", "etcd-cert", "etcd-key"} {
		if _, ok := sec.Data[k]; !ok {
			t.Errorf("Secret %s has no key %s", tlsSecret, k)
		}
	}
	mounted := false
	agent := container(t, pod.Containers, agentName)
	for _, v := range pod.Volumes {
		if v.Secret == nil || v.Secret.SecretName != tlsSecret {
			continue
		}
		for _, vm := range agent.VolumeMounts {
			if vm.Name == v.Name {
				mounted = true
				// A TLS file the ConfigMap names must lie in the Secret's mount.
				for _, key := range []string{"etcd_ca", "etcd_cert", "etcd_key"} {
					if p := cm.Data[key]; p != "" && !strings.HasPrefix(p, vm.MountPath+"/") {
						t.Errorf("%s %s=%s is not in %s, where %s is mounted", configName, key, p, vm.MountPath, tlsSecret)
					}
				}
			}
		}
	}
	if !mounted {
		t.Errorf("%s does not mount Secret %s", agentName, tlsSecret)
	}
	for name, s := range m.secrets {
		if s.Type == corev1.SecretTypeServiceAccountToken && s.Annotations[corev1.ServiceAccountNameKey] != pod.ServiceAccountName {
			t.Errorf("token Secret %s is for service account %q, the DaemonSet runs as %q", name, s.Annotations[corev1.ServiceAccountNameKey], pod.ServiceAccountName)
		}
	}
}

func ptrString[T ~string](p *T) string {
	if p == nil {
		return "(none)"
	}
	return string(*p)
}
