package k8s

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/margaynet/margay/control/k8s/podlabels"
)

// Labels Margay (as Calico) adds to every pod's workload (see package podlabels).
const (
	NamespaceLabel            = podlabels.NamespaceLabel
	OrchestratorLabel         = podlabels.OrchestratorLabel
	ServiceAccountLabel       = podlabels.ServiceAccountLabel
	Orchestrator              = podlabels.Orchestrator
	NamespaceLabelPrefix      = podlabels.NamespaceLabelPrefix
	ServiceAccountLabelPrefix = podlabels.ServiceAccountLabelPrefix
	NameLabel                 = podlabels.NameLabel
)

// WorkloadLabels reads a pod, its namespace and its service account through client and returns
// the policy labels of the pod's workload (podlabels.Read, podlabels.Of). Every failure to read
// the pod or the namespace is an error; a service account that is not there or not readable
// only costs its pcsa.<key> labels.
func WorkloadLabels(ctx context.Context, client kubernetes.Interface, namespace, pod string) (map[string]string, error) {
	return WorkloadLabelsCoreV1(ctx, client.CoreV1(), namespace, pod)
}

// WorkloadLabelsCoreV1 is WorkloadLabels with only the core/v1 client, which is all it reads.
func WorkloadLabelsCoreV1(ctx context.Context, client corev1client.CoreV1Interface, namespace, pod string) (map[string]string, error) {
	w, err := ReadWorkload(ctx, client, namespace, pod)
	return w.Labels, err
}

// ReadWorkload is what margay-cni reads of a pod for its workload record, labels and named
// ports, read through a client-go client (podlabels.Read); logs go to slog.Default.
func ReadWorkload(ctx context.Context, client corev1client.CoreV1Interface, namespace, pod string) (podlabels.Workload, error) {
	return podlabels.Read(ctx, CoreV1Source{client}, namespace, pod, nil)
}

// CoreV1Source is a podlabels.Source reading through a client-go core/v1 client.
type CoreV1Source struct{ Client corev1client.CoreV1Interface }

// Pod reads a pod.
func (s CoreV1Source) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	return s.Client.Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

// Namespace reads a namespace.
func (s CoreV1Source) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	return s.Client.Namespaces().Get(ctx, name, metav1.GetOptions{})
}

// ServiceAccount reads a service account.
func (s CoreV1Source) ServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	return s.Client.ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
}
