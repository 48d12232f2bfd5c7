// Package ctlconfig reads and writes margayctl's config file: how to reach etcd, the node name
// this host's agent registered and where it pins its maps. deploy/install.sh installs it as
// /etc/margay/margayctl.cfg (deploy/systemd/margayctl.cfg), and the lab writes one per host
// (Write).
package ctlconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

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
	if err := check(f.NodeName, f.BPFFSRoot); err != nil {
		return File{}, fmt.Errorf("read margayctl config %s: %w", path, err)
	}
	return File{Path: path, Datastore: ds, NodeName: f.NodeName, BPFFSRoot: f.BPFFSRoot}, nil
}

// check reports what is wrong with a file's own settings: an invalid nodeName, a relative
// bpffsRoot.
func check(nodeName, bpffsRoot string) error {
	if nodeName != "" {
		if err := datastore.ValidateName(nodeName); err != nil {
			return fmt.Errorf("nodeName: %w", err)
		}
	}
	if bpffsRoot != "" && !filepath.IsAbs(bpffsRoot) {
		return fmt.Errorf("bpffsRoot %q: want an absolute path", bpffsRoot)
	}
	return nil
}

// Marshal returns f as a config file (YAML) that Read reads back to f, its Path aside: comment
// first, each of its lines as a "# " line, then the settings, etcd's inline. A relative TLS file
// name is written as it is, and Read takes it relative to the file. Marshal refuses what Read
// would: an invalid nodeName, a relative bpffsRoot.
func Marshal(f File, comment string) ([]byte, error) {
	if err := check(f.NodeName, f.BPFFSRoot); err != nil {
		return nil, fmt.Errorf("write margayctl config: %w", err)
	}
	body, err := yaml.Marshal(format{FileConfig: f.Datastore.FileConfig(), NodeName: f.NodeName, BPFFSRoot: f.BPFFSRoot})
	if err != nil {
		return nil, fmt.Errorf("write margayctl config: %w", err)
	}
	var b bytes.Buffer
	if comment != "" {
		for line := range strings.SplitSeq(comment, "\n") {
			b.WriteString(strings.TrimRight("# "+line, " ") + "\n")
		}
	}
	b.Write(body)
	return b.Bytes(), nil
}

// Write writes Marshal(f, comment) to path. A file it creates is readable by everyone (0644)
// unless it holds an etcd password (0600).
func Write(path string, f File, comment string) error {
	b, err := Marshal(f, comment)
	if err != nil {
		return err
	}
	mode := os.FileMode(0o644)
	if f.Datastore.Password != "" {
		mode = 0o600
	}
	if err := os.WriteFile(path, b, mode); err != nil {
		return fmt.Errorf("write margayctl config: %w", err)
	}
	return nil
}
