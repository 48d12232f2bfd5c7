package docker_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/docker"
)

// dockerd starts the containers of restart policies before it serves its API: their
// CreateEndpoint must not need dockerd's answer for a network this node has seen an endpoint of.
// The network's name is recorded at its first endpoint and forgotten at DeleteNetwork.
func TestNetworkNameRecorded(t *testing.T) {
	var down atomic.Bool // dockerd's API does not answer
	asked := 0
	n := func(ctx context.Context, id string) (string, error) {
		asked++
		if down.Load() {
			<-ctx.Done() // as a dockerd that accepts connections but does not serve yet
			return "", ctx.Err()
		}
		return namer("net1")(ctx, id)
	}
	e := newEnvWith(t, []docker.Option{docker.WithNetworkNamer(n)}, pool("main", "198.18.0.0/16", 26, false))
	ctx := t.Context()
	endpoint := func(eid string) (create, del, release map[string]any) {
		addr := e.ok(t, "/IpamDriver.RequestAddress", map[string]any{"PoolID": "margay-any"})["Address"].(string)
		return map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]any{"Address": addr}},
			map[string]any{"NetworkID": nid, "EndpointID": eid},
			map[string]any{"PoolID": "margay-any", "Address": addr}
	}

	create, del, release := endpoint(eid)
	e.ok(t, "/NetworkDriver.CreateEndpoint", create)
	rec, err := e.ds.DockerNetworks(node).Get(ctx, nid)
	if err != nil || rec.Value.Name != "net1" || asked != 1 {
		t.Fatalf("the network's record after its first endpoint: %+v, %v (dockerd asked %d times)", rec, err, asked)
	}
	e.ok(t, "/NetworkDriver.DeleteEndpoint", del)
	e.ok(t, "/IpamDriver.ReleaseAddress", release)

	// dockerd restarts: its API does not answer, and the container comes back all the same.
	down.Store(true)
	eid2 := "1f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
	create, del, release = endpoint(eid2)
	e.ok(t, "/NetworkDriver.CreateEndpoint", create)
	if w, err := e.ds.Workloads(node).Get(ctx, eid2); err != nil || w.Value.Network != "docker:net1" || asked != 1 {
		t.Errorf("record of the endpoint made while dockerd did not answer: %+v, %v (dockerd asked %d times)", w, err, asked)
	}
	e.ok(t, "/NetworkDriver.DeleteEndpoint", del)
	e.ok(t, "/IpamDriver.ReleaseAddress", release)

	// DeleteNetwork forgets the name (and again for a repeat).
	e.ok(t, "/NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": nid})
	e.ok(t, "/NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": nid})
	if _, err := e.ds.DockerNetworks(node).Get(ctx, nid); !errors.Is(err, datastore.ErrNotFound) {
		t.Errorf("the network's record after DeleteNetwork: %v", err)
	}
}
