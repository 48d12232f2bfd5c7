// Package ctlconfig reads margayctl's config file: how to reach etcd, the node name this host's
// agent registered and where it pins its maps. deploy/install.sh installs it as
// /etc/margay/margayctl.cfg (deploy/systemd/margayctl.cfg), and the lab writes one per host.
package ctlconfig

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/margaynet/margay/control/datastore"
)

// DefaultPath is where margayctl finds its host's settings when neither --config nor
// MARGAYCTL_CONFIG names a file, as calicoctl reads /etc/calico/calicoctl.cfg.
const DefaultPath = "/etc/margay/margayctl.cfg"

// Env is the variable that names the file when --config does not.
const Env = "MARGAYCTL_CONFIG"

// File is what a config file says.
type File struct {
	Path      string           // the file read; "" when there was none
	Datastore datastore.Config // the file's etcd settings, over those of its datastoreConfig
	NodeName  string           // the node name this host's agent registered; "" unless set
	BPFFSRoot string           // the agent's --bpffs-root; "" unless set
}

// format is the file as written: the fields of a datastore config file, and/or datastoreConfig,
// the path of one such as the agent's /etc/margay/datastore.yaml, relative to this file.
type format struct {
	datastore.FileConfig
	DatastoreConfig string `json:"datastoreConfig,omitempty"`
	NodeName        string `json:"nodeName,omitempty"`
	BPFFSRoot       string `json:"bpffsRoot,omitempty"`
}

// Load reads the config file that path names (--config), else the one getenv(Env) names, else
// DefaultPath when it exists. A file named must exist; with none, the File is empty.
func Load(path string, getenv func(string) string) (File, error) {
	explicit := true
	if path == "" {
		path = getenv(Env)
	}
	if path == "" {
		path, explicit = DefaultPath, false
	}
	if _, err := os.Stat(path); !explicit && errors.Is(err, fs.ErrNotExist) {
		return File{}, nil
	}
	return Read(path)
}

// Read reads and checks the config file at path: unknown fields, a datastoreConfig that cannot
// be read, an invalid nodeName and a relative bpffsRoot are errors.
func Read(path string) (File, error) {
	var f format
	if err := datastore.LoadFileInto(path, &f); err != nil {
		return File{}, fmt.Errorf("read margayctl config: %w", err)
	}
	ds, err := f.FileConfig.Config(path)
	if err != nil {
		return File{}, fmt.Errorf("read margayctl config: %w", err)
	}
	if f.DatastoreConfig != "" {
		other, err := datastore.LoadConfigFile(datastore.RelativeTo(path, f.DatastoreConfig))
		if err != nil {
			return File{}, fmt.Errorf("read margayctl config %s: datastoreConfig: %w", path, err)
		}
		ds.FillFrom(other)
	}
	if f.NodeName != "" {
		if err := datastore.ValidateName(f.NodeName); err != nil {
			return File{}, fmt.Errorf("read margayctl config %s: nodeName: %w", path, err)
		}
	}
	if f.BPFFSRoot != "" && !filepath.IsAbs(f.BPFFSRoot) {
		return File{}, fmt.Errorf("read margayctl config %s: bpffsRoot %q: want an absolute path", path, f.BPFFSRoot)
	}
	return File{Path: path, Datastore: ds, NodeName: f.NodeName, BPFFSRoot: f.BPFFSRoot}, nil
}
