package datastore

import "fmt"

// DockerNetwork is a Docker network of one node as margay-docker learnt it, at
// docker/networks/<node>/<network ID>: the network's name, which names its profile. dockerd
// gives the plugin only the network's ID, and the plugin asks dockerd's API for the name; but
// when dockerd starts, it starts the containers of restart policies before it serves its API, so
// their endpoints could never learn the name (docs/docker.md). The record keeps it from the
// network's first endpoint until its DeleteNetwork.
type DockerNetwork struct {
	Version int    `json:"version"`
	Node    string `json:"node"`
	ID      string `json:"id"`   // the network's ID on the node's dockerd
	Name    string `json:"name"` // the network's name
}

// Validate reports the first thing wrong with n.
func (n DockerNetwork) Validate() error {
	if err := checkVersion(n.Version); err != nil {
		return err
	}
	if err := ValidateName(n.Node); err != nil {
		return fmt.Errorf("node: %w", err)
	}
	if err := ValidateName(n.ID); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	if err := ValidateName(n.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	return nil
}

func (n *DockerNetwork) version() *int { return &n.Version }
func (n *DockerNetwork) setDefaults()  {}

// nodeDockerNetworksKind is the kind of the Docker networks of one node, named by their ID.
func nodeDockerNetworksKind(node string) *kind[DockerNetwork] {
	return newKind("dockernetwork", ValidateName, func(name string, v *DockerNetwork) error {
		if err := bindField(&v.Node, "node", node); err != nil {
			return err
		}
		return bindField(&v.ID, "id", name)
	})
}

// DockerNetworks stores the Docker networks of one node at docker/networks/<node>/<network ID>.
// node must be a valid name; if it is not, every operation of the store fails.
func (c *Client) DockerNetworks(node string) Store[DockerNetwork] {
	s := newStore(c, nodeDockerNetworksKind(node), "docker/networks/"+node+"/", "")
	if err := ValidateName(node); err != nil {
		s.err = fmt.Errorf("node: %w", err)
	}
	return s
}
