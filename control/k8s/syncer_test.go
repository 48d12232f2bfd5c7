//go:build k8s

package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/datastore/datastoretest"
	"github.com/margaynet/margay/control/k8s/k8stest"
	"github.com/margaynet/margay/tests/poll"
)

// These tests run Syncers against a real API server (k8stest), as margay-agent's service
// account with the ClusterRole of deploy/k8s/margay.yaml: NetworkPolicies are created, updated
// and deleted through it, and the syncer lists and watches them there.

// startSyncer runs a Syncer until the returned stop is called (or the test ends); stop fails the
// test unless Run returns nil within 10 s.
func startSyncer(t *testing.T, client kubernetes.Interface, ds *datastore.Client, opts ...SyncerOption) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	s := NewSyncer(client, ds, append([]SyncerOption{WithLogger(datastoretest.Logger(t))}, opts...)...)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Syncer.Run: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Syncer.Run did not return within 10s of its context's end")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// recorder is a Syncer's logger that also counts the messages it logged, by message and by the
// NetworkPolicy they name: what a test waits for to know the syncer did something, where the
// datastore alone cannot show it (nothing changed, as it should not).
type recorder struct {
	slog.Handler
	mu    *sync.Mutex
	count map[string]int
}

func newRecorder(t *testing.T) *recorder {
	return &recorder{Handler: datastoretest.Logger(t).Handler(), mu: &sync.Mutex{}, count: map[string]int{}}
}

func (r *recorder) Handle(ctx context.Context, rec slog.Record) error {
	key := rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "networkPolicy" {
			key += " " + a.Value.String()
		}
		return true
	})
	r.mu.Lock()
	r.count[key]++
	r.mu.Unlock()
	return r.Handler.Handle(ctx, rec)
}

func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &recorder{Handler: r.Handler.WithAttrs(as), mu: r.mu, count: r.count}
}

func (r *recorder) WithGroup(name string) slog.Handler {
	return &recorder{Handler: r.Handler.WithGroup(name), mu: r.mu, count: r.count}
}

// logged returns how often the message was logged (followed by " namespace/name" for one that
// names a NetworkPolicy).
func (r *recorder) logged(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count[key]
}

func (r *recorder) option() SyncerOption { return WithLogger(slog.New(r)) }

// atLeast waits until the message was logged n times more than it had been before.
func (r *recorder) atLeast(t *testing.T, key string, n int) {
	t.Helper()
	from := r.logged(key)
	poll.Until(t, fmt.Sprintf("%d more times %q", n, key), within, func() error {
		if got := r.logged(key) - from; got < n {
			return fmt.Errorf("%d times so far", got)
		}
		return nil
	})
}

// inAll waits until the message was logged n times since the recorder was made.
func (r *recorder) inAll(t *testing.T, key string, n int) {
	t.Helper()
	poll.Until(t, fmt.Sprintf("%d times %q", n, key), within, func() error {
		if got := r.logged(key); got < n {
			return fmt.Errorf("%d times so far", got)
		}
		return nil
	})
}

const reconciled = "k8s policy sync: reconciled"

// within is how long a test waits for a syncer to do something: through a real API server,
// on a loaded machine.
const within = 30 * time.Second

// stored returns the names of the stored policies with their ModRevisions, leaving out those of
// the NetworkPolicies of other namespaces than the test's: every syncer writes every
// NetworkPolicy of the API server that the tests share.
func stored(t *testing.T, ds *datastore.Client, namespaces ...string) map[string]int64 {
	t.Helper()
	resp, err := ds.Raw().Get(t.Context(), ds.Policies().Key(""), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), ds.Policies().Key(""))
		if ns, _, ok := networkPolicyOf(name); ok && !slices.Contains(namespaces, ns) {
			continue
		}
		out[name] = kv.ModRevision
	}
	return out
}

// syncerClient returns a client of a new service account with margay-node's ClusterRole.
func syncerClient(t *testing.T, api *k8stest.API) kubernetes.Interface {
	t.Helper()
	return margayClient(t, api, k8stest.MargayRules(t))
}

// createNP creates the NetworkPolicy of the YAML in namespace ns and returns it as the API
// server stored it (with its defaults, e.g. policyTypes), which is what the syncer converts.
func createNP(t *testing.T, api *k8stest.API, ns, y string) *networkingv1.NetworkPolicy {
	t.Helper()
	p := np(t, y)
	p.Namespace = ns
	got, err := api.Client.NetworkingV1().NetworkPolicies(ns).Create(t.Context(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create NetworkPolicy %s/%s: %v", ns, p.Name, err)
	}
	return got
}

// wantConverted checks that the stored policy of np is its conversion.
func wantConverted(t *testing.T, ds *datastore.Client, np *networkingv1.NetworkPolicy) func() error {
	return func() error {
		want, err := PolicyFromNetworkPolicy(np)
		if err != nil {
			return err
		}
		got, err := ds.Policies().Get(t.Context(), want.Name)
		if err != nil {
			return err
		}
		if !got.Value.Same(want) {
			return fmt.Errorf("stored %s, want %s", mustJSON(got.Value), mustJSON(want))
		}
		return nil
	}
}

func wantGone(t *testing.T, ds *datastore.Client, name string) func() error {
	return func() error {
		if _, err := ds.Policies().Get(t.Context(), name); !errors.Is(err, datastore.ErrNotFound) {
			return fmt.Errorf("policy %s: %v, want not found", name, err)
		}
		return nil
	}
}

func putPolicy(t *testing.T, ds *datastore.Client, j string) datastore.Policy {
	t.Helper()
	p := policyJSON(t, j)
	if _, err := ds.Policies().Put(t.Context(), p.Name, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSyncer(t *testing.T) {
	api := k8stest.Shared(t)
	ds := datastoretest.New(t)
	prod, dev := api.Namespace(t, "prod", nil), api.Namespace(t, "dev", nil)
	deny := createNP(t, api, prod, `
metadata: {name: deny}
spec: {podSelector: {}, policyTypes: [Ingress]}`)
	web := createNP(t, api, prod, `
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {role: fe}}}], ports: [{port: 80}]}]`)
	named := createNP(t, api, dev, `
metadata: {name: named}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}, {port: 443}]}]`)
	// Valid for Kubernetes, not for Margay: no pcns. label can have a key that long.
	unconvertible := metav1.LabelSelector{MatchLabels: map[string]string{strings.Repeat("k", 60): "x"}}
	broken := np(t, `
metadata: {name: broken}
spec: {podSelector: {}}`)
	broken.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &unconvertible}}}}
	broken.Namespace = prod
	if _, err := api.Client.NetworkingV1().NetworkPolicies(prod).Create(t.Context(), broken, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Before the start: Margay's own policy, a stale copy of web, the policy of a NetworkPolicy
	// that is gone, a malformed one likewise, a stray knp name, and an old copy of broken.
	own := putPolicy(t, ds, `{"name": "web", "selector": "app == 'web'", "ingress": [{"action": "allow"}]}`)
	// A name that only looks like ours: no knp.default. prefix.
	lookalike := putPolicy(t, ds, `{"name": "knp.defaults.`+prod+`.web", "ingress": [{"action": "deny"}]}`)
	putPolicy(t, ds, `{"name": "knp.default.`+prod+`.web", "order": 1000, "selector": "projectcalico.org/namespace == '`+prod+`'"}`)
	putPolicy(t, ds, `{"name": "knp.default.`+prod+`.gone", "order": 1000}`)
	putPolicy(t, ds, `{"name": "knp.default.stray", "order": 1000}`)
	oldBroken := putPolicy(t, ds, `{"name": "knp.default.`+prod+`.broken", "order": 1000, "types": ["Ingress"]}`)
	if _, err := ds.Raw().Put(t.Context(), ds.Policies().Key("knp.default."+prod+".malformed"), "{not json"); err != nil {
		t.Fatal(err)
	}
	before := stored(t, ds, prod, dev)

	cs := syncerClient(t, api)
	rec := newRecorder(t)
	stop := startSyncer(t, cs, ds, WithResync(100*time.Millisecond), rec.option())
	poll.Until(t, "deny written", within, wantConverted(t, ds, deny))
	poll.Until(t, "stale web rewritten", within, wantConverted(t, ds, web))
	poll.Until(t, "named written with its named port", within, wantConverted(t, ds, named))
	for _, name := range []string{"knp.default." + prod + ".gone", "knp.default.stray", "knp.default." + prod + ".malformed"} {
		poll.Until(t, "orphan "+name+" deleted", within, wantGone(t, ds, name))
	}
	if got, err := ds.Policies().Get(t.Context(), "knp.default."+dev+".named"); err != nil || len(got.Value.Ingress) != 1 ||
		fmt.Sprint(got.Value.Ingress[0].Destination.Ports) != "[http 443]" {
		t.Errorf("named: %+v, %v; want one rule, for ports http and 443", got.Value, err)
	}

	// Idempotent: several resyncs later nothing was written again, and what is not ours was
	// never touched.
	settled := stored(t, ds, prod, dev)
	rec.atLeast(t, reconciled, 3)
	if after := stored(t, ds, prod, dev); fmt.Sprint(after) != fmt.Sprint(settled) {
		t.Errorf("resyncs rewrote policies:\nbefore %v\nafter  %v", settled, after)
	}
	for _, name := range []string{own.Name, lookalike.Name, oldBroken.Name} {
		if settled[name] != before[name] {
			t.Errorf("policy %s was touched (ModRevision %d -> %d)", name, before[name], settled[name])
		}
	}

	// Events: create, update, delete.
	nps := api.Client.NetworkingV1().NetworkPolicies(dev)
	added := createNP(t, api, dev, `
metadata: {name: egress}
spec: {podSelector: {}, policyTypes: [Egress]}`)
	poll.Until(t, "created NetworkPolicy written", within, wantConverted(t, ds, added))
	added.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8"}}}}}
	added, err := nps.Update(t.Context(), added, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "updated NetworkPolicy rewritten", within, wantConverted(t, ds, added))
	if err := nps.Delete(t.Context(), "egress", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, "deleted NetworkPolicy's policy deleted", within, wantGone(t, ds, "knp.default."+dev+".egress"))
	// A NetworkPolicy turning unconvertible keeps its last good policy.
	lastGood := web.DeepCopy()
	web.Spec.Ingress[0].From = append(web.Spec.Ingress[0].From, networkingv1.NetworkPolicyPeer{NamespaceSelector: &unconvertible})
	skipped := "k8s policy sync: skipping NetworkPolicy; a stored policy of it stays as it was " + prod + "/web"
	reported := rec.logged(skipped)
	if _, err := api.Client.NetworkingV1().NetworkPolicies(prod).Update(t.Context(), web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The syncer saw the broken version (it says so once), and resynced over it since.
	poll.Until(t, "the broken NetworkPolicy reported", within, func() error {
		if rec.logged(skipped) == reported {
			return errors.New("not yet")
		}
		return nil
	})
	rec.atLeast(t, reconciled, 2)
	if err := wantConverted(t, ds, lastGood)(); err != nil {
		t.Errorf("the last good policy of a broken NetworkPolicy: %v", err)
	}
	if n := rec.logged(skipped); n != reported+1 {
		t.Errorf("the broken NetworkPolicy was reported %d times, want once", n-reported)
	}

	// Restart: while no syncer runs, a NetworkPolicy goes and a policy is edited by hand; the
	// next syncer repairs both in its first reconcile.
	stop()
	if err := api.Client.NetworkingV1().NetworkPolicies(prod).Delete(t.Context(), "deny", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	putPolicy(t, ds, `{"name": "knp.default.`+dev+`.named", "order": 1}`)
	restarted := newRecorder(t)
	startSyncer(t, cs, ds, WithResync(0), restarted.option())
	poll.Until(t, "policy of a NetworkPolicy deleted while stopped removed", within, wantGone(t, ds, "knp.default."+prod+".deny"))
	poll.Until(t, "hand-edited policy restored", within, wantConverted(t, ds, named))
	// Its first (and, without resync, only) reconcile is over: whatever it would have done to
	// the policies that are not its own, it has.
	restarted.inAll(t, reconciled, 1)
	if got := stored(t, ds, prod, dev); got[own.Name] != before[own.Name] || got[lookalike.Name] != before[lookalike.Name] {
		t.Errorf("policies without the knp.default. prefix were touched: %v, before %v", got, before)
	}
}

// With the datastore unreachable the syncer keeps retrying, never crashes, and still stops
// cleanly; the next one writes everything.
func TestSyncerDatastoreDown(t *testing.T) {
	api := k8stest.Shared(t)
	e := datastoretest.Start(t)
	deny := createNP(t, api, api.Namespace(t, "prod", nil), `
metadata: {name: deny}
spec: {podSelector: {}, policyTypes: [Ingress]}`)
	cs := syncerClient(t, api)
	closed := datastoretest.Connect(t, datastore.Config{Endpoints: e.Endpoints()})
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	rec := newRecorder(t)
	stop := startSyncer(t, cs, closed, WithResync(50*time.Millisecond), rec.option())
	rec.atLeast(t, "k8s policy sync: full reconcile failed; retrying", 2) // tried again, after a second
	stop()
	ds := datastoretest.Connect(t, datastore.Config{Endpoints: e.Endpoints()})
	startSyncer(t, cs, ds, WithResync(0))
	poll.Until(t, "written by a syncer with a working datastore", within, wantConverted(t, ds, deny))
}

// Two syncers (two agents) on one datastore agree: each change is written, nothing flaps, and
// the periodic resync repairs what is changed in the datastore behind their backs.
func TestSyncersSideBySide(t *testing.T) {
	api := k8stest.Shared(t)
	ds := datastoretest.New(t)
	prod := api.Namespace(t, "prod", nil)
	deny := createNP(t, api, prod, `
metadata: {name: deny}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}`)
	rec1, rec2 := newRecorder(t), newRecorder(t)
	startSyncer(t, syncerClient(t, api), ds, WithResync(50*time.Millisecond), rec1.option())
	startSyncer(t, syncerClient(t, api), ds, WithResync(70*time.Millisecond), rec2.option())
	poll.Until(t, "deny written", within, wantConverted(t, ds, deny))

	web := createNP(t, api, prod, `
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}, {protocol: UDP, port: 53, endPort: 54}]}]`)
	poll.Until(t, "web written", within, wantConverted(t, ds, web))
	settled := stored(t, ds, prod)
	rec1.atLeast(t, reconciled, 3)
	rec2.atLeast(t, reconciled, 3)
	if after := stored(t, ds, prod); fmt.Sprint(after) != fmt.Sprint(settled) {
		t.Errorf("policies flapped between two syncers:\nbefore %v\nafter  %v", settled, after)
	}

	// Behind their backs: a policy edited, one deleted, an orphan added.
	putPolicy(t, ds, `{"name": "knp.default.`+prod+`.web", "order": 1, "ingress": [{"action": "allow"}]}`)
	if err := ds.Policies().Delete(t.Context(), "knp.default."+prod+".deny", 0); err != nil {
		t.Fatal(err)
	}
	putPolicy(t, ds, `{"name": "knp.default.`+prod+`.orphan", "order": 1000}`)
	poll.Until(t, "edited policy restored", within, wantConverted(t, ds, web))
	poll.Until(t, "deleted policy restored", within, wantConverted(t, ds, deny))
	poll.Until(t, "orphan deleted", within, wantGone(t, ds, "knp.default."+prod+".orphan"))
}
