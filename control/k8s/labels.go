package k8s

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/margaynet/margay/control/k8s/podlabels"
)

// Labels Margay (as Calico) adds to every pod's workload (see package podlabels).
const (
	NamespaceLabel       = podlabels.NamespaceLabel
	OrchestratorLabel    = podlabels.OrchestratorLabel
	ServiceAccountLabel  = podlabels.ServiceAccountLabel
	Orchestrator         = podlabels.Orchestrator
	NamespaceLabelPrefix = podlabels.NamespaceLabelPrefix
)

// WorkloadLabels reads a pod and its namespace through client and returns the policy labels of
// the pod's workload (podlabels.Of). Every failure to read the pod or the namespace is an error.
func WorkloadLabels(ctx context.Context, client kubernetes.Interface, namespace, pod string) (map[string]string, error) {
	return WorkloadLabelsCoreV1(ctx, client.CoreV1(), namespace, pod)
}

// WorkloadLabelsCoreV1 is WorkloadLabels with only the core/v1 client, which is all it reads.
func WorkloadLabelsCoreV1(ctx context.Context, client corev1client.CoreV1Interface, namespace, pod string) (map[string]string, error) {
	if err := podlabels.CheckNames(namespace, pod); err != nil {
		return nil, err
	}
	p, err := client.Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("k8s: get pod %s/%s: %w", namespace, pod, err)
	}
	ns, err := client.Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("k8s: get namespace %s (of pod %s): %w", namespace, pod, err)
	}
	return podlabels.Of(p, ns)
}
