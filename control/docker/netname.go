package docker

import (
	"context"
	"errors"

	"github.com/margaynet/margay/control/datastore"
)

// networkNameOf tells the name of the network nid: from the network's record (a
// datastore.DockerNetwork of this node), written at the network's first endpoint here, else from
// dockerd (s.networkName), and then recorded says false. The record is what lets a container of a
// restart policy come back after dockerd restarts: dockerd starts those containers, and so calls
// their CreateEndpoint, before it serves its API, so asking it then waits for an answer that
// cannot come (docs/docker.md, "Idempotency and crash recovery").
func (s *Server) networkNameOf(ctx context.Context, nid string) (name string, recorded bool, err error) {
	it, err := s.ds.DockerNetworks(s.node).Get(ctx, nid)
	switch {
	case err == nil:
		return it.Value.Name, true, nil
	case !errors.Is(err, datastore.ErrNotFound) && !errors.Is(err, datastore.ErrMalformed):
		return "", false, err
	}
	name, err = s.networkName(ctx, nid)
	return name, false, err
}

// recordNetworkName writes the network's record. A failure is logged, not returned: the endpoint
// works without it, and the next endpoint of the network tries again.
func (s *Server) recordNetworkName(ctx context.Context, nid, name string) {
	if _, err := s.ds.DockerNetworks(s.node).Put(ctx, nid, datastore.DockerNetwork{Node: s.node, ID: nid, Name: name}); err != nil {
		s.log.Warn("cannot record the docker network's name; after a restart of dockerd, its containers may not come back",
			"network", nid, "name", name, "err", err)
		return
	}
	s.log.Info("docker network name recorded", "network", nid, "name", name)
}

// forgetNetwork deletes the network's record; a network without one is no error.
func (s *Server) forgetNetwork(ctx context.Context, nid string) error {
	if err := s.ds.DockerNetworks(s.node).Delete(ctx, nid, 0); err != nil && !errors.Is(err, datastore.ErrNotFound) {
		return err
	}
	return nil
}
