// Package podlabels derives the policy labels of a pod's workload from the pod and its namespace,
// as Calico does. It needs only the API types, not a client, so that margay-cni, which reads the
// two objects over plain HTTP, does not link (and initialise) client-go's clientset and scheme.
package podlabels

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/margaynet/margay/control/policy"
)

// Labels Margay (as Calico) adds to every pod's workload.
const (
	// NamespaceLabel holds the pod's namespace.
	NamespaceLabel = policy.NamespaceLabel
	// OrchestratorLabel is "k8s" for a pod.
	OrchestratorLabel = "projectcalico.org/orchestrator"
	// ServiceAccountLabel holds the pod's spec.serviceAccountName.
	ServiceAccountLabel = "projectcalico.org/serviceaccount"
	// Orchestrator is the value of OrchestratorLabel.
	Orchestrator = "k8s"
	// NamespaceLabelPrefix is put before the key of each of the namespace's labels.
	NamespaceLabelPrefix = "pcns."
	// reservedPrefix is the prefix of the labels Margay sets itself.
	reservedPrefix = "projectcalico.org/"
	// metadataNameLabel is the label Kubernetes gives every namespace: its name.
	metadataNameLabel = "kubernetes.io/metadata.name"
)

// reserved reports whether a pod label key would impersonate one that Margay derives itself:
// projectcalico.org/… or a namespace label (pcns.…). A pod could otherwise claim another
// namespace's labels and pass namespaceSelector rules meant for that namespace.
func reserved(key string) bool {
	return strings.HasPrefix(key, reservedPrefix) || strings.HasPrefix(key, NamespaceLabelPrefix)
}

// CheckNames checks a namespace and a pod name before they go into an API request.
func CheckNames(namespace, pod string) error {
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return fmt.Errorf("k8s: namespace %q: %s", namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(pod); len(errs) > 0 {
		return fmt.Errorf("k8s: pod name %q: %s", pod, strings.Join(errs, "; "))
	}
	return nil
}

// Of returns the policy labels of the workload of pod p in namespace ns: the pod's labels, plus
// projectcalico.org/namespace (the namespace), projectcalico.org/orchestrator ("k8s"),
// projectcalico.org/serviceaccount (spec.serviceAccountName, when set) and every label of the
// namespace as pcns.<key>, with pcns.kubernetes.io/metadata.name holding the namespace's name
// even when the namespace lacks that label.
//
// Pod labels under projectcalico.org/ or pcns. are dropped and logged (slog.Default): they would
// override or forge the labels derived here. A namespace label whose pcns. key is no valid label
// key (too long once prefixed), and a service account name longer than a label value, are
// dropped and logged too: no selector could name them. Any other invalid key or value is an
// error.
func Of(p *corev1.Pod, ns *corev1.Namespace) (map[string]string, error) {
	namespace, pod := ns.Name, p.Name
	log := slog.Default().With("pod", namespace+"/"+pod)
	labels := make(map[string]string, len(p.Labels)+len(ns.Labels)+4)
	for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
		v := p.Labels[k]
		if reserved(k) {
			log.Warn("dropping pod label: projectcalico.org/ and pcns. labels are Margay's own", "label", k, "value", v)
			continue
		}
		if err := CheckLabel(k, v); err != nil {
			return nil, fmt.Errorf("k8s: pod %s/%s: %w", namespace, pod, err)
		}
		labels[k] = v
	}
	for _, k := range slices.Sorted(maps.Keys(ns.Labels)) {
		v := ns.Labels[k]
		if err := CheckLabel(k, v); err != nil {
			return nil, fmt.Errorf("k8s: namespace %s: %w", namespace, err)
		}
		key := NamespaceLabelPrefix + k
		if errs := validation.IsQualifiedName(key); len(errs) > 0 {
			log.Warn("dropping namespace label: too long as a pcns. label", "label", k, "reason", strings.Join(errs, "; "))
			continue
		}
		labels[key] = v
	}
	if _, ok := ns.Labels[metadataNameLabel]; !ok {
		labels[NamespaceLabelPrefix+metadataNameLabel] = namespace
	}
	labels[NamespaceLabel] = namespace
	labels[OrchestratorLabel] = Orchestrator
	if sa := p.Spec.ServiceAccountName; sa != "" {
		if errs := validation.IsValidLabelValue(sa); len(errs) > 0 {
			log.Warn("no service account label: the name is no label value", "serviceAccount", sa, "reason", strings.Join(errs, "; "))
		} else {
			labels[ServiceAccountLabel] = sa
		}
	}
	return labels, nil
}

// CheckLabel checks a Kubernetes label key and value.
func CheckLabel(k, v string) error {
	if errs := validation.IsQualifiedName(k); len(errs) > 0 {
		return fmt.Errorf("label key %q: %s", k, strings.Join(errs, "; "))
	}
	if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
		return fmt.Errorf("label %q: value %q: %s", k, v, strings.Join(errs, "; "))
	}
	return nil
}
