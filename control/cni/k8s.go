package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/margaynet/margay/control/k8s/podlabels"
)

// k8sTimeout bounds reading a pod's labels from the API server during ADD: a runtime would rather
// retry than wait.
const k8sTimeout = 10 * time.Second

// maxObject bounds the size of a pod, namespace or service account read from the API server.
const maxObject = 4 << 20

// kubeAPI is what ADD reads from the Kubernetes API server: a pod, its namespace and its service
// account.
type kubeAPI = podlabels.Source

// newKubeAPI returns the API server client of the kubeconfig file. It speaks plain HTTP through
// client-go's transport (TLS, tokens, client certificates and exec plugins as the kubeconfig
// says) and decodes into the API types: client-go's clientset and its scheme of every API group
// would double the plugin's start-up time, which every ADD pays.
func newKubeAPI(kubeconfig string) (kubeAPI, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.Timeout = k8sTimeout
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return nil, err
	}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	return &restAPI{base: base, client: hc}, nil
}

// restAPI reads core/v1 objects over HTTP.
type restAPI struct {
	base   *url.URL
	client *http.Client
}

func (r *restAPI) Pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	var p corev1.Pod
	err := r.get(ctx, "pods", name, &p, "api", "v1", "namespaces", namespace, "pods", name)
	return &p, err
}

func (r *restAPI) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	var ns corev1.Namespace
	err := r.get(ctx, "namespaces", name, &ns, "api", "v1", "namespaces", name)
	return &ns, err
}

func (r *restAPI) ServiceAccount(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	var sa corev1.ServiceAccount
	err := r.get(ctx, "serviceaccounts", name, &sa, "api", "v1", "namespaces", namespace, "serviceaccounts", name)
	return &sa, err
}

// get reads the object at the path of segments into into. A status other than 200 becomes the
// API error client-go would return for it (NotFound, Forbidden, ServiceUnavailable …).
func (r *restAPI) get(ctx context.Context, resource, name string, into any, segments ...string) error {
	u := r.base.JoinPath(segments...)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxObject+1))
	if err != nil {
		return err
	}
	if len(body) > maxObject {
		return fmt.Errorf("%s %s: response larger than %d bytes", resource, name, maxObject)
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(body))
		var st struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(body, &st) == nil && st.Message != "" {
			msg = st.Message
		}
		// The API error (for apierrors.IsNotFound and the like), with the server's own words.
		apiErr := apierrors.NewGenericServerResponse(resp.StatusCode, "get", schema.GroupResource{Resource: resource}, name, msg, 0, false)
		return fmt.Errorf("%w: %s", apiErr, msg)
	}
	if err := json.Unmarshal(body, into); err != nil {
		return fmt.Errorf("%s %s: decode the API server's answer: %w", resource, name, err)
	}
	return nil
}

// podWorkload reads what the pod's workload record takes from Kubernetes (podlabels.Read: the
// labels of the pod, its namespace and its service account, and the pod's named ports) from the
// API server that "kubernetes": {"kubeconfig": …} names; log gets what is left out. An API
// server that cannot be reached, times out or is overloaded is code 11 (try again later); any
// other failure code 999 with what went wrong.
func podWorkload(ctx context.Context, conf *kubernetesConf, namespace, pod string, log *slog.Logger) (podlabels.Workload, error) {
	api, err := newKubeAPI(conf.Kubeconfig)
	if err != nil {
		return podlabels.Workload{}, invalidConf("kubernetes.kubeconfig %s: %v", conf.Kubeconfig, err)
	}
	ctx, cancel := context.WithTimeout(ctx, k8sTimeout)
	defer cancel()
	w, err := podlabels.Read(ctx, api, namespace, pod, log)
	if err != nil {
		code := uint(types.ErrInternal)
		if unreachable(err) {
			code = types.ErrTryAgainLater
		}
		return podlabels.Workload{}, types.NewError(code, fmt.Sprintf("margay-cni: cannot read the labels of pod %s/%s from the Kubernetes API server "+
			"(kubeconfig %s)", namespace, pod, conf.Kubeconfig), err.Error())
	}
	return w, nil
}

// unreachable reports errors that go away by themselves: the API server unreachable, slow or
// overloaded.
func unreachable(err error) bool {
	var netErr net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) ||
		apierrors.IsTimeout(err) || apierrors.IsServerTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) || apierrors.IsUnexpectedServerError(err)
}
