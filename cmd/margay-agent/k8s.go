package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/k8s"
)

// kubeClient returns the Kubernetes client of --k8s-policy-sync, from --kubeconfig or, without
// it, the in-cluster config of the pod the agent runs in; nil without --k8s-policy-sync.
func (o options) kubeClient(log *slog.Logger) (kubernetes.Interface, error) {
	if !o.k8sSync {
		if o.kubeconfig != "" {
			return nil, errors.New("--kubeconfig is only used by --k8s-policy-sync, which is off")
		}
		return nil, nil
	}
	var cfg *rest.Config
	var err error
	if o.kubeconfig == "" {
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("--k8s-policy-sync without --kubeconfig needs the in-cluster config of a pod: %w", err)
		}
	} else if cfg, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig); err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", o.kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	klog.SetSlogLogger(log.With("component", "client-go")) // client-go's own messages, in the agent's log
	return client, nil
}

// startPolicySync runs the NetworkPolicy syncer until ctx ends; the returned func stops it and
// waits until it has.
func startPolicySync(ctx context.Context, client kubernetes.Interface, ds *datastore.Client, log *slog.Logger) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	s := k8s.NewSyncer(client, ds, k8s.WithLogger(log.With("component", "k8s-policy-sync")))
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil {
			log.Error("k8s policy sync stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
	}
}
