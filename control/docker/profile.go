package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"

	"github.com/margaynet/margay/control/datastore"
)

// NetworkLabel is the label a Docker network's profile gives its members, and its ingress rule
// allows from: the members of one network reach each other, other networks' do not.
const NetworkLabel = "margay.docker.network"

// Profile returns the profile of the Docker network name, as Calico's docker network profile:
// members carry NetworkLabel=name; ingress is allowed from members, egress everywhere.
func Profile(name string) datastore.Profile {
	return datastore.Profile{
		Version:       datastore.CurrentVersion,
		Name:          name,
		LabelsToApply: map[string]string{NetworkLabel: name},
		Ingress:       []datastore.Rule{{Action: "allow", Source: datastore.EntityRule{Selector: fmt.Sprintf("%s == '%s'", NetworkLabel, name)}}},
		Egress:        []datastore.Rule{{Action: "allow"}},
	}
}

// ensureProfile writes the network's profile unless it exists: an operator may have edited its
// rules, and the same-named networks of the other hosts share it.
func (s *Server) ensureProfile(ctx context.Context, name string) error {
	p := Profile(name)
	if err := p.Validate(); err != nil {
		return badf("network name %q cannot name a profile: %v", name, err)
	}
	_, err := s.ds.Profiles().Create(ctx, name, p)
	if err == nil {
		s.log.Info("docker network profile created", "profile", name)
	}
	if errors.Is(err, datastore.ErrExists) {
		return nil
	}
	return err
}

// collectProfile deletes the Docker network profile name once no workload of any node names it,
// so that `docker network rm` (after its containers) leaves no profile behind. The same-named
// networks of other hosts share the profile, and CreateEndpoint writes it again for the next
// member, so deleting it between members loses nothing: except an operator's edits, and a
// profile that differs from Profile(name) is therefore kept. The delete is a transaction that
// holds only while no workload record was written since the read that found no member, and
// CreateEndpoint ensures the profile again after writing its record: a member created at the
// same time on another host never ends up naming a missing profile.
func (s *Server) collectProfile(ctx context.Context, name string) error {
	var ws []datastore.Item[datastore.Workload]
	var prof datastore.Item[datastore.Profile]
	var perr error
	rev, err := s.ds.Fetch(ctx, s.ds.AllWorkloads().ListRead(&ws), s.ds.Profiles().GetRead(name, &prof, &perr))
	switch {
	case err != nil:
		return err
	case errors.Is(perr, datastore.ErrNotFound):
		return nil
	case perr != nil:
		return perr
	}
	for _, w := range ws {
		if slices.Contains(w.Value.Profiles, name) {
			return nil
		}
	}
	if !reflect.DeepEqual(normalProfile(prof.Value), normalProfile(Profile(name))) {
		s.log.Info("docker network profile has no member left; kept, since it was edited", "profile", name)
		return nil
	}
	_, err = s.ds.Commit(ctx, s.ds.Profiles().DeleteWrite(name, prof.ModRevision), s.ds.AllWorkloads().UnchangedSince(rev))
	if errors.Is(err, datastore.ErrConflict) {
		return nil // a workload was written meanwhile: the next member's removal looks again
	}
	if err == nil {
		s.log.Info("docker network profile deleted: no member left", "profile", name)
	}
	return err
}

// normalProfile is p as JSON decodes it, so that a stored profile compares equal to the value it
// was written from.
func normalProfile(p datastore.Profile) datastore.Profile {
	b, _ := json.Marshal(p)
	var n datastore.Profile
	_ = json.Unmarshal(b, &n)
	return n
}

// NetworkNamer returns the name of a Docker network from its ID.
type NetworkNamer func(ctx context.Context, networkID string) (string, error)

// DockerAPINamer asks the dockerd listening on the unix socket path (GET /networks/<id>).
func DockerAPINamer(socket string) NetworkNamer {
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	return func(ctx context.Context, id string) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/networks/"+url.PathEscape(id), nil)
		if err != nil {
			return "", err
		}
		resp, err := c.Do(req)
		if err != nil {
			return "", fmt.Errorf("ask dockerd (%s) for network %s: %w", socket, id, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		if err != nil {
			return "", fmt.Errorf("ask dockerd for network %s: %w", id, err)
		}
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("ask dockerd for network %s: %s: %s", id, resp.Status, body)
		}
		var n struct{ Name string }
		if err := json.Unmarshal(body, &n); err != nil || n.Name == "" {
			return "", fmt.Errorf("ask dockerd for network %s: no name in its answer (%v)", id, err)
		}
		return n.Name, nil
	}
}
