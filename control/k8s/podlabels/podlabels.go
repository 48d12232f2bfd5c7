// Package podlabels derives what a pod gives its workload record, its policy labels and its
// named ports, from the pod, its namespace and its service account, as Calico does. It needs
// only the API types, not a client, so that margay-cni, which reads the objects over plain HTTP,
// does not link (and initialise) client-go's clientset and scheme.
package podlabels

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/policy"
)

// Labels Margay (as Calico) adds to every pod's workload.
const (
	// NamespaceLabel holds the pod's namespace.
	NamespaceLabel = policy.NamespaceLabel
	// OrchestratorLabel is "k8s" for a pod.
	OrchestratorLabel = "projectcalico.org/orchestrator"
	// ServiceAccountLabel holds the pod's spec.serviceAccountName.
	ServiceAccountLabel = policy.ServiceAccountLabel
	// Orchestrator is the value of OrchestratorLabel.
	Orchestrator = "k8s"
	// NamespaceLabelPrefix is put before the key of each of the namespace's labels.
	NamespaceLabelPrefix = policy.NamespacePrefix
	// ServiceAccountLabelPrefix is put before the key of each of the service account's labels.
	ServiceAccountLabelPrefix = policy.ServiceAccountPrefix
	// NameLabel, after NamespaceLabelPrefix, holds the namespace's name, and after
	// ServiceAccountLabelPrefix the service account's: Calico's profiles kns.<namespace> and
	// ksa.<namespace>.<account> apply these, so that a namespaceSelector or a service account
	// selector can name one by name.
	NameLabel = policy.NameLabel
	// reservedPrefix is the prefix of the labels Margay sets itself.
	reservedPrefix = "projectcalico.org/"
	// metadataNameLabel is the label Kubernetes gives every namespace: its name.
	metadataNameLabel = "kubernetes.io/metadata.name"
)

// reserved reports whether a pod label key would impersonate one that Margay derives itself:
// projectcalico.org/…, a namespace label (pcns.…) or a service account label (pcsa.…). A pod
// could otherwise claim another namespace's or service account's labels and pass the
// namespaceSelector and serviceAccounts rules meant for those.
func reserved(key string) bool {
	return strings.HasPrefix(key, reservedPrefix) || strings.HasPrefix(key, NamespaceLabelPrefix) ||
		strings.HasPrefix(key, ServiceAccountLabelPrefix)
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

// Source is where Read reads a pod, its namespace and its service account: the API server,
// through margay-cni's own HTTP client or a client-go clientset.
type Source interface {
	Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
	Namespace(ctx context.Context, name string) (*corev1.Namespace, error)
	ServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error)
}

// Workload is what a pod gives its workload record.
type Workload struct {
	Labels map[string]string        // Of
	Ports  []datastore.EndpointPort // Ports
}

// Read reads pod namespace/pod, its namespace and its service account from src and returns the
// workload's labels (Of) and named ports (Ports); log (nil: slog.Default()) gets what is left
// out.
//
// The namespace is read at once, side by side with the pod, and the service account as soon as
// the pod names it, side by side with the namespace: the reads take the time of two, the pod's
// and the service account's, as the pod's and the namespace's did when there were only those.
//
// A failure to read the pod or the namespace is an error, and so is one to read the service
// account unless the API server says it is not there or not for us to read (NotFound,
// Forbidden: an RBAC role from before Margay read service accounts): then the workload goes
// without the service account's own labels (pcsa.<key>), and log gets a warning. Its name
// labels come from the pod and stay.
func Read(ctx context.Context, src Source, namespace, pod string, log *slog.Logger) (Workload, error) {
	if err := CheckNames(namespace, pod); err != nil {
		return Workload{}, err
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("pod", namespace+"/"+pod)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type nsResult struct {
		ns  *corev1.Namespace
		err error
	}
	nsDone := make(chan nsResult, 1)
	go func() {
		ns, err := src.Namespace(ctx, namespace)
		nsDone <- nsResult{ns, err}
	}()
	p, err := src.Pod(ctx, namespace, pod)
	if err != nil {
		return Workload{}, fmt.Errorf("k8s: get pod %s/%s: %w", namespace, pod, err)
	}
	var sa *corev1.ServiceAccount
	if name := p.Spec.ServiceAccountName; name != "" {
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			log.Warn("not reading the service account: no valid name", "serviceAccount", name, "reason", strings.Join(errs, "; "))
		} else if sa, err = src.ServiceAccount(ctx, namespace, name); err != nil {
			if !apierrors.IsNotFound(err) && !apierrors.IsForbidden(err) {
				return Workload{}, fmt.Errorf("k8s: get service account %s/%s (of pod %s): %w", namespace, name, pod, err)
			}
			log.Warn("no labels of the service account: cannot read it; its name labels stay", "serviceAccount", name, "err", err)
			sa = nil
		}
	}
	r := <-nsDone
	if r.err != nil {
		return Workload{}, fmt.Errorf("k8s: get namespace %s (of pod %s): %w", namespace, pod, r.err)
	}
	labels, err := labelsOf(log, p, r.ns, sa)
	if err != nil {
		return Workload{}, err
	}
	return Workload{Labels: labels, Ports: portsOf(log, p)}, nil
}

// Of returns the policy labels of the workload of pod p in namespace ns with service account
// sa (nil: not read), as Calico gives them (its workload endpoint's labels and those of its
// kns. and ksa. profiles):
//
//   - the pod's labels;
//   - projectcalico.org/namespace (the namespace), projectcalico.org/orchestrator ("k8s");
//   - every label of the namespace as pcns.<key>; pcns.kubernetes.io/metadata.name holding the
//     namespace's name even when the namespace lacks that label, and
//     pcns.projectcalico.org/name holding it always;
//   - with spec.serviceAccountName set: pcsa.projectcalico.org/name and
//     projectcalico.org/serviceaccount holding it (the second, as in Calico, only when the name
//     is a label value: at most 63 characters), and every label of sa as pcsa.<key>.
//
// Pod labels under projectcalico.org/, pcns. or pcsa. are dropped and logged (slog.Default):
// they would override or forge the labels derived here. A namespace or service account label
// whose prefixed key is no valid label key (too long once prefixed), and a service account
// label that is no valid label, are dropped and logged too: no selector could name them. Any
// other invalid key or value is an error.
func Of(p *corev1.Pod, ns *corev1.Namespace, sa *corev1.ServiceAccount) (map[string]string, error) {
	return labelsOf(slog.Default().With("pod", ns.Name+"/"+p.Name), p, ns, sa)
}

func labelsOf(log *slog.Logger, p *corev1.Pod, ns *corev1.Namespace, sa *corev1.ServiceAccount) (map[string]string, error) {
	namespace, pod := ns.Name, p.Name
	n := len(p.Labels) + len(ns.Labels) + 6
	if sa != nil {
		n += len(sa.Labels)
	}
	labels := make(map[string]string, n)
	for _, k := range slices.Sorted(maps.Keys(p.Labels)) {
		v := p.Labels[k]
		if reserved(k) {
			log.Warn("dropping pod label: projectcalico.org/, pcns. and pcsa. labels are Margay's own", "label", k, "value", v)
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
	labels[NamespaceLabelPrefix+NameLabel] = namespace
	labels[NamespaceLabel] = namespace
	labels[OrchestratorLabel] = Orchestrator
	name := p.Spec.ServiceAccountName
	if name == "" {
		return labels, nil
	}
	if sa != nil {
		for _, k := range slices.Sorted(maps.Keys(sa.Labels)) {
			v := sa.Labels[k]
			key := ServiceAccountLabelPrefix + k
			if err := CheckLabel(key, v); err != nil {
				log.Warn("dropping service account label: no valid pcsa. label", "serviceAccount", name, "label", k, "reason", err)
				continue
			}
			labels[key] = v
		}
	}
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		log.Warn("no service account labels: no valid service account name", "serviceAccount", name, "reason", strings.Join(errs, "; "))
		return labels, nil
	}
	// As Calico: the profile's name label always, the endpoint's label when the name is a
	// label value (at most 63 characters).
	labels[ServiceAccountLabelPrefix+NameLabel] = name
	if errs := validation.IsValidLabelValue(name); len(errs) > 0 {
		log.Warn("no service account label: the name is no label value", "label", ServiceAccountLabel, "serviceAccount", name, "reason", strings.Join(errs, "; "))
	} else {
		labels[ServiceAccountLabel] = name
	}
	return labels, nil
}

// Ports returns the named ports of pod p, as Calico's workload endpoint of a pod has them: every
// port with a name of its containers and then of its init containers (sidecars serve on
// theirs), in that order, with protocol TCP (also when unset), UDP or SCTP and the container
// port. Repeats of the same name, protocol and port are kept once; one name on several ports
// or protocols is kept for each (a rule naming it matches each, as in Calico). What cannot be a
// named port is left out and logged (slog.Default): a port of another protocol, a name that is
// no port name, a port outside 1-65535, and ports beyond datastore.MaxMatchesPerList. Unnamed
// ports give nothing: no rule can name them.
func Ports(p *corev1.Pod) []datastore.EndpointPort {
	return portsOf(slog.Default().With("pod", p.Namespace+"/"+p.Name), p)
}

func portsOf(log *slog.Logger, p *corev1.Pod) []datastore.EndpointPort {
	var out []datastore.EndpointPort
	seen := map[datastore.EndpointPort]bool{}
	for _, containers := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for _, c := range containers {
			for _, cp := range c.Ports {
				if cp.Name == "" {
					continue
				}
				skip := func(why string) {
					log.Warn("leaving out named port: "+why, "container", c.Name, "port", cp.Name,
						"containerPort", cp.ContainerPort, "protocol", string(cp.Protocol))
				}
				var proto datastore.Protocol
				switch cp.Protocol {
				case corev1.ProtocolTCP, "":
					proto = 6
				case corev1.ProtocolUDP:
					proto = 17
				case corev1.ProtocolSCTP:
					proto = 132
				default:
					skip("protocol is not TCP, UDP or SCTP")
					continue
				}
				if err := datastore.ValidatePortName(cp.Name); err != nil {
					skip(err.Error())
					continue
				}
				if cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
					skip("containerPort outside 1-65535")
					continue
				}
				ep := datastore.EndpointPort{Name: cp.Name, Protocol: proto, Port: uint16(cp.ContainerPort)}
				if seen[ep] {
					continue
				}
				if len(out) == datastore.MaxMatchesPerList {
					skip(fmt.Sprintf("more than %d named ports; leaving out the rest", datastore.MaxMatchesPerList))
					return out
				}
				seen[ep] = true
				out = append(out, ep)
			}
		}
	}
	return out
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
