package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listers "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/margaynet/margay/control/datastore"
)

// DefaultResync is how often a Syncer compares every NetworkPolicy with the datastore again, to
// repair what was changed there by other means.
const DefaultResync = 5 * time.Minute

// Syncer keeps the policies knp.default.* in the datastore equal to the cluster's Kubernetes
// NetworkPolicies: it lists and watches them with an informer, writes each converted policy
// (PolicyFromNetworkPolicy) whose stored copy differs, and deletes the knp.default.* policies
// whose NetworkPolicy is gone. It never touches a policy without that prefix.
//
// It writes only what changed, so any number of agents may run it side by side. A NetworkPolicy
// that cannot be converted is logged and skipped; a stored policy of it stays as it was.
type Syncer struct {
	client kubernetes.Interface
	ds     *datastore.Client
	log    *slog.Logger
	resync time.Duration

	queue  workqueue.TypedRateLimitingInterface[string]
	lister listers.NetworkPolicyLister

	// reported holds, per NetworkPolicy key, the last conversion problem logged, so that each is
	// logged once and not at every resync. Owned by the worker.
	reported map[string]string
}

// SyncerOption configures a Syncer.
type SyncerOption func(*Syncer)

// WithLogger sets the Syncer's logger; the default discards.
func WithLogger(l *slog.Logger) SyncerOption { return func(s *Syncer) { s.log = l } }

// WithResync sets how often every NetworkPolicy and every stored knp.default.* policy is checked
// again (default DefaultResync); 0 or less: only at the start and on events.
func WithResync(d time.Duration) SyncerOption { return func(s *Syncer) { s.resync = d } }

// NewSyncer returns a Syncer from the cluster of client to the datastore ds; nothing runs until Run.
func NewSyncer(client kubernetes.Interface, ds *datastore.Client, opts ...SyncerOption) *Syncer {
	s := &Syncer{client: client, ds: ds, log: slog.New(slog.DiscardHandler), resync: DefaultResync, reported: map[string]string{}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Run syncs until ctx is done, then stops its informer and worker and returns nil. It returns an
// error only when it cannot start. Failed datastore writes are retried with backoff; the first
// full reconcile (every NetworkPolicy and every stored knp.default.* policy) runs once the
// informer's cache holds the cluster's NetworkPolicies, and is retried until it succeeds.
func (s *Syncer) Run(ctx context.Context) error {
	if s.queue != nil {
		return errors.New("k8s: Syncer.Run called twice")
	}
	s.queue = workqueue.NewTypedRateLimitingQueue(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second))
	factory := informers.NewSharedInformerFactory(s.client, 0)
	npInformer := factory.Networking().V1().NetworkPolicies()
	s.lister = npInformer.Lister()
	enqueue := func(obj any) {
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			s.log.Warn("k8s policy sync: object without a key", "err", err)
			return
		}
		s.queue.Add(key)
	}
	if _, err := npInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("k8s: watch NetworkPolicies: %w", err)
	}

	var wg sync.WaitGroup
	defer func() {
		s.queue.ShutDown() // ends the worker after its current item
		wg.Wait()
		factory.Shutdown() // waits for the informer, which stops with ctx
	}()
	factory.Start(ctx.Done())
	s.log.Info("k8s policy sync: waiting for the NetworkPolicies of the cluster")
	if !cache.WaitForCacheSync(ctx.Done(), npInformer.Informer().HasSynced) {
		return nil // ctx done
	}
	nps, _ := s.lister.List(labels.Everything())
	s.log.Info("k8s policy sync: started", "networkPolicies", len(nps))
	wg.Go(func() {
		for s.next(ctx) {
		}
	})
	wg.Go(func() { s.reconcileLoop(ctx) })
	<-ctx.Done()
	return nil
}

// reconcileLoop runs a full reconcile now, retried until it succeeds, and then every resync.
func (s *Syncer) reconcileLoop(ctx context.Context) {
	backoff := time.Second
	for {
		err := s.reconcileAll(ctx)
		if err == nil {
			break
		}
		s.log.Warn("k8s policy sync: full reconcile failed; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
	if s.resync <= 0 {
		return
	}
	t := time.NewTicker(s.resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.reconcileAll(ctx); err != nil {
				s.log.Warn("k8s policy sync: full reconcile failed", "err", err)
			}
		}
	}
}

// reconcileAll reads every stored knp.default.* policy at once and queues the NetworkPolicies
// whose policy is missing or differs, and the stored policies whose NetworkPolicy is gone: the
// worker writes the first and deletes the second. One read per pass however many policies there
// are, so every agent may resync often. Going through the queue, one key is never handled twice
// at once, so a policy just created is never deleted as an orphan seen a moment earlier.
func (s *Syncer) reconcileAll(ctx context.Context) error {
	base := s.ds.Policies().Key("")
	resp, err := s.ds.Raw().Get(ctx, base+PolicyPrefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list stored %s* policies: %w", PolicyPrefix, err)
	}
	stored := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		stored[strings.TrimPrefix(string(kv.Key), base)] = kv.Value
	}
	nps, err := s.lister.List(labels.Everything())
	if err != nil {
		return err
	}
	queued := 0
	for _, np := range nps {
		name := PolicyName(np.Namespace, np.Name)
		data, ok := stored[name]
		delete(stored, name)
		if ok {
			want, err := PolicyFromNetworkPolicy(np)
			if err != nil {
				continue // unconvertible: its stored policy stays
			}
			if have, err := datastore.DecodePolicy(data); err == nil && have.Name == name && have.Same(want) {
				continue
			}
		}
		s.queue.Add(np.Namespace + "/" + np.Name)
		queued++
	}
	for name := range stored { // no NetworkPolicy of that name
		ns, np, ok := networkPolicyOf(name)
		if !ok {
			// No NetworkPolicy converts to this name, so none can own it.
			if err := s.delete(ctx, name); err != nil {
				s.log.Warn("k8s policy sync: delete stray policy", "policy", name, "err", err)
			}
			continue
		}
		s.queue.Add(ns + "/" + np)
		queued++
	}
	if queued > 0 {
		s.log.Info("k8s policy sync: reconcile found policies to write or delete", "count", queued)
	}
	s.log.Debug("k8s policy sync: reconciled", "networkPolicies", len(nps), "queued", queued)
	return nil
}

// next handles one key of the queue; false when the queue is shut down.
func (s *Syncer) next(ctx context.Context) bool {
	key, shutdown := s.queue.Get()
	if shutdown {
		return false
	}
	defer s.queue.Done(key)
	if err := s.sync(ctx, key); err != nil {
		if ctx.Err() != nil {
			return true
		}
		level := slog.LevelWarn
		if errors.Is(err, datastore.ErrConflict) || errors.Is(err, datastore.ErrExists) {
			level = slog.LevelDebug // another agent wrote it first: compare again
		}
		s.log.Log(ctx, level, "k8s policy sync: will retry", "networkPolicy", key, "err", err)
		s.queue.AddRateLimited(key)
		return true
	}
	s.queue.Forget(key)
	return true
}

// sync makes the stored policy of NetworkPolicy key (namespace/name) equal to it, or deletes it
// when the NetworkPolicy is gone.
func (s *Syncer) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil || ns == "" {
		s.log.Warn("k8s policy sync: ignoring key", "key", key)
		return nil
	}
	np, err := s.lister.NetworkPolicies(ns).Get(name)
	if apierrors.IsNotFound(err) {
		delete(s.reported, key)
		return s.delete(ctx, PolicyName(ns, name))
	}
	if err != nil {
		return err
	}
	p, err := PolicyFromNetworkPolicy(np)
	if err != nil {
		s.report(key, "k8s policy sync: skipping NetworkPolicy; a stored policy of it stays as it was", err)
		return nil
	}
	delete(s.reported, key)
	return s.write(ctx, p, np)
}

// report logs a conversion problem of key once, until it changes.
func (s *Syncer) report(key string, msg string, err error) {
	if s.reported[key] == err.Error() {
		return
	}
	s.reported[key] = err.Error()
	s.log.Error(msg, "networkPolicy", key, "err", err)
}

// write stores p unless the stored copy equals it. It writes by compare-and-swap, so that of
// several agents writing the same change one does and the others find it done when they retry.
func (s *Syncer) write(ctx context.Context, p datastore.Policy, np *networkingv1.NetworkPolicy) error {
	old, err := s.ds.Policies().Get(ctx, p.Name)
	switch {
	case err == nil && old.Value.Same(p):
		return nil
	case err == nil, errors.Is(err, datastore.ErrMalformed): // the Item of a malformed value has its ModRevision
		_, err = s.ds.Policies().Update(ctx, p.Name, p, old.ModRevision)
	case errors.Is(err, datastore.ErrNotFound):
		_, err = s.ds.Policies().Create(ctx, p.Name, p)
	}
	if err != nil {
		return err
	}
	s.log.Info("k8s policy sync: wrote policy", "policy", p.Name, "networkPolicy", np.Namespace+"/"+np.Name,
		"ingressRules", len(p.Ingress), "egressRules", len(p.Egress))
	return nil
}

// delete removes a knp.default.* policy; one that is not there is fine.
func (s *Syncer) delete(ctx context.Context, name string) error {
	if !strings.HasPrefix(name, PolicyPrefix) {
		return fmt.Errorf("k8s: refusing to delete policy %q without the %s prefix", name, PolicyPrefix)
	}
	err := s.ds.Policies().Delete(ctx, name, 0)
	switch {
	case err == nil:
		s.log.Info("k8s policy sync: deleted policy, its NetworkPolicy is gone", "policy", name)
		return nil
	case errors.Is(err, datastore.ErrNotFound), errors.Is(err, datastore.ErrInvalid):
		return nil // nothing there, or a name nothing can be stored under
	}
	return err
}
