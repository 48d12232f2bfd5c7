package k8stest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiruntime "k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"

	"github.com/margaynet/margay/tests/poll"
)

// rbacWithin bounds the wait for a new role binding to take effect (the API server's RBAC
// authorizer reads them through an informer).
const rbacWithin = 30 * time.Second

// Namespace creates a namespace named prefix-<random> with labels and returns its name: the
// tests sharing an API server each work in namespaces of their own.
func (a *API) Namespace(tb testing.TB, prefix string, labels map[string]string) string {
	tb.Helper()
	ns, err := a.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-", Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create namespace %s-…: %v", prefix, err)
	}
	return ns.Name
}

// User returns a config of the API server for user name in groups, authenticated by a client
// certificate.
func (a *API) User(tb testing.TB, name string, groups ...string) *rest.Config {
	tb.Helper()
	cert, key, err := a.ca.client(name, groups...)
	if err != nil {
		tb.Fatal(err)
	}
	return &rest.Config{Host: a.Config.Host, TLSClientConfig: rest.TLSClientConfig{CAData: a.ca.certPEM, CertData: cert, KeyData: key}}
}

// ServiceAccount creates the service account namespace/name (unless it exists) and a
// ClusterRole of rules bound to it (none without rules; both deleted at cleanup), and returns a
// config with a token of it from the TokenRequest API, once the API server grants every verb of
// the rules: as margay-cni's kubeconfig or margay-agent's in-cluster config authenticate.
func (a *API) ServiceAccount(tb testing.TB, namespace, name string, rules ...rbacv1.PolicyRule) *rest.Config {
	tb.Helper()
	ctx := context.Background()
	_, err := a.Client.CoreV1().ServiceAccounts(namespace).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		tb.Fatalf("create service account %s/%s: %v", namespace, name, err)
	}
	user := "system:serviceaccount:" + namespace + ":" + name
	if len(rules) > 0 {
		role := "k8stest:" + namespace + ":" + name
		rbac := a.Client.RbacV1()
		if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: rules},
			metav1.CreateOptions{}); err != nil {
			tb.Fatalf("create ClusterRole %s: %v", role, err)
		}
		tb.Cleanup(func() { _ = rbac.ClusterRoles().Delete(context.Background(), role, metav1.DeleteOptions{}) })
		if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: name}},
		}, metav1.CreateOptions{}); err != nil {
			tb.Fatalf("create ClusterRoleBinding %s: %v", role, err)
		}
		tb.Cleanup(func() { _ = rbac.ClusterRoleBindings().Delete(context.Background(), role, metav1.DeleteOptions{}) })
		a.waitAllowed(tb, user, []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}, rules)
	}
	expiry := int64(3600)
	tr, err := a.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("request a token of service account %s/%s: %v", namespace, name, err)
	}
	return &rest.Config{Host: a.Config.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: a.ca.certPEM}}
}

// waitAllowed waits until the API server's authorizer lets user do every verb of rules.
func (a *API) waitAllowed(tb testing.TB, user string, groups []string, rules []rbacv1.PolicyRule) {
	tb.Helper()
	var reviews []authorizationv1.ResourceAttributes
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					reviews = append(reviews, authorizationv1.ResourceAttributes{Group: g, Resource: res, Verb: v})
				}
			}
		}
	}
	poll.Until(tb, user+" granted its role", rbacWithin, func() error {
		for _, ra := range reviews {
			sar, err := a.Client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
				Spec: authorizationv1.SubjectAccessReviewSpec{User: user, Groups: groups, ResourceAttributes: &ra}}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			if !sar.Status.Allowed {
				return fmt.Errorf("%s %s.%s not allowed yet: %s", ra.Verb, ra.Resource, ra.Group, sar.Status.Reason)
			}
		}
		return nil
	})
}

// Clientset returns a clientset of cfg.
func Clientset(tb testing.TB, cfg *rest.Config) kubernetes.Interface {
	tb.Helper()
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Kubeconfig writes cfg as a kubeconfig file (its CA, client certificate and token inline) into
// tb.TempDir() and returns its path: what margay-cni and margay-agent --kubeconfig read.
func Kubeconfig(tb testing.TB, cfg *rest.Config) string {
	tb.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["k8stest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["k8stest"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken, ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData}
	kc.Contexts["k8stest"] = &clientcmdapi.Context{Cluster: "k8stest", AuthInfo: "k8stest"}
	kc.CurrentContext = "k8stest"
	p := filepath.Join(tb.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, p); err != nil {
		tb.Fatalf("write kubeconfig: %v", err)
	}
	return p
}

// Store writes obj straight into the API server's etcd at /registry/<resource>/[<namespace>/]<name>,
// past admission and validation, and waits until the API server serves it. It is for objects
// the API server refuses to create but serves once they are stored, as one stored by an older
// version with laxer validation: a pod with a label that is no label.
func (a *API) Store(tb testing.TB, resource string, obj apiruntime.Object) {
	tb.Helper()
	gvks, _, err := scheme.Scheme.ObjectKinds(obj)
	if err != nil {
		tb.Fatalf("store %s: %v", resource, err)
	}
	if gvks[0].Group != "" {
		tb.Fatalf("store %s: only core/v1 objects", resource)
	}
	obj = obj.DeepCopyObject()
	obj.GetObjectKind().SetGroupVersionKind(gvks[0])
	m, err := meta.Accessor(obj)
	if err != nil {
		tb.Fatalf("store %s: %v", resource, err)
	}
	if ts := m.GetCreationTimestamp(); ts.IsZero() {
		m.SetCreationTimestamp(metav1.Now())
	}
	b, err := json.Marshal(obj)
	if err != nil {
		tb.Fatal(err)
	}
	key := path.Join("/registry", resource, m.GetNamespace(), m.GetName())
	if _, err := a.kv.Put(context.Background(), key, string(b)); err != nil {
		tb.Fatalf("store %s in etcd: %v", key, err)
	}
	rc := a.Client.CoreV1().RESTClient()
	poll.Until(tb, "the API server serves "+key, rbacWithin, func() error {
		req := rc.Get().Resource(resource).Name(m.GetName())
		if ns := m.GetNamespace(); ns != "" {
			req = req.Namespace(ns)
		}
		return req.Do(context.Background()).Error()
	})
}

// MargayRules returns the rules of the ClusterRole margay-node of deploy/k8s/margay.yaml: what
// margay-cni and margay-agent may do in a cluster.
func MargayRules(tb testing.TB) []rbacv1.PolicyRule {
	tb.Helper()
	_, file, _, _ := runtime.Caller(0)
	manifest := filepath.Join(filepath.Dir(file), "..", "..", "..", "deploy", "k8s", "margay.yaml")
	f, err := os.Open(manifest)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tb.Fatalf("%s: %v", manifest, err)
		}
		var head struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			tb.Fatalf("%s: %v", manifest, err)
		}
		if head.Kind != "ClusterRole" || head.Metadata.Name != "margay-node" {
			continue
		}
		var role rbacv1.ClusterRole
		if err := yaml.UnmarshalStrict(doc, &role); err != nil {
			tb.Fatalf("%s: ClusterRole margay-node: %v", manifest, err)
		}
		return role.Rules
	}
	tb.Fatalf("%s: no ClusterRole margay-node", manifest)
	return nil
}

// Without returns rules without resource in any of them: a role from before Margay needed it.
func Without(rules []rbacv1.PolicyRule, resource string) []rbacv1.PolicyRule {
	var out []rbacv1.PolicyRule
	for _, r := range rules {
		r = *r.DeepCopy()
		r.Resources = slices.DeleteFunc(r.Resources, func(s string) bool { return s == resource })
		if len(r.Resources) > 0 {
			out = append(out, r)
		}
	}
	return out
}
