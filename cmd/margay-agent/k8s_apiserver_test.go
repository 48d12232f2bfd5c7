//go:build k8s

package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/k8s/k8stest"
	"github.com/margaynet/margay/tests/poll"
)

// The tests under the k8s build tag share one real kube-apiserver (make test-k8s).
func TestMain(m *testing.M) { k8stest.Main(m) }

// The syncer the agent starts (--k8s-policy-sync --kubeconfig, as the service account of
// deploy/k8s/margay.yaml) writes the policies of a real API server's NetworkPolicies, follows
// their changes, and stops when asked.
func TestPolicySyncStartStop(t *testing.T) {
	api := k8stest.Shared(t)
	ds := datastoretest.New(t)
	log := datastoretest.Logger(t)
	prod := api.Namespace(t, "prod", nil)
	nps := api.Client.NetworkingV1().NetworkPolicies(prod)
	if _, err := nps.Create(t.Context(), &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubeconfig := k8stest.Kubeconfig(t, api.ServiceAccount(t, api.Namespace(t, "margay", nil), "margay-node", k8stest.MargayRules(t)...))
	client, err := (options{k8sSync: true, kubeconfig: kubeconfig}).kubeClient(log)
	if err != nil {
		t.Fatal(err)
	}
	stop := startPolicySync(context.Background(), client, ds, log)
	// Stopped once, in the background: a stop that hangs fails the test instead of hanging it.
	stopped := make(chan struct{})
	var once sync.Once
	stopOnce := func() { once.Do(func() { go func() { stop(); close(stopped) }() }) }
	waitStopped := func() error {
		stopOnce()
		select {
		case <-stopped:
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("the syncer did not stop within 10s")
		}
	}
	t.Cleanup(func() { _ = waitStopped() })
	exists := func(name string) func() error {
		return func() error {
			_, err := ds.Policies().Get(t.Context(), name)
			return err
		}
	}
	const within = 30 * time.Second
	poll.Until(t, "policy of NetworkPolicy "+prod+"/deny written", within, exists("knp.default."+prod+".deny"))
	if _, err := nps.Create(t.Context(), &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "policy of NetworkPolicy "+prod+"/web written", within, exists("knp.default."+prod+".web"))
	if err := nps.Delete(t.Context(), "deny", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "policy of the deleted NetworkPolicy "+prod+"/deny deleted", within, func() error {
		if err := exists("knp.default." + prod + ".deny")(); !errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("policy: %v, want not found", err)
		}
		return nil
	})

	if err := waitStopped(); err != nil {
		t.Fatal(err)
	}
}
