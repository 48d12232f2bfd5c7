package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/loader"
)

// DefaultConfigPath is where margayctl finds its host's settings when neither --config nor
// MARGAYCTL_CONFIG names a file, as calicoctl reads /etc/calico/calicoctl.cfg.
const DefaultConfigPath = "/etc/margay/margayctl.cfg"

// ctlFile is margayctl's config file: how to reach etcd (the fields of a datastore config file,
// and/or datastoreConfig, the path of one such as the agent's /etc/margay/datastore.yaml), the
// name this host's agent registered, and where it pins its maps.
type ctlFile struct {
	datastore.FileConfig
	DatastoreConfig string `json:"datastoreConfig,omitempty"`
	NodeName        string `json:"nodeName,omitempty"`
	BPFFSRoot       string `json:"bpffsRoot,omitempty"`
}

// hostConfig is what margayctl's config file says, once loaded.
type hostConfig struct {
	path      string // the file read; "" when there is none
	ds        datastore.Config
	nodeName  string
	bpffsRoot string
}

// hostConfig loads the config file once: --config, else MARGAYCTL_CONFIG, else
// DefaultConfigPath when it exists. A file named explicitly must exist.
func (g *globals) hostConfig() (*hostConfig, error) {
	if g.host != nil {
		return g.host, nil
	}
	path, explicit := g.configFile, true
	if path == "" {
		path = os.Getenv("MARGAYCTL_CONFIG")
	}
	if path == "" {
		path, explicit = DefaultConfigPath, false
	}
	h := &hostConfig{}
	if _, err := os.Stat(path); !explicit && errors.Is(err, fs.ErrNotExist) {
		g.host = h
		return h, nil
	}
	var f ctlFile
	if err := datastore.LoadFileInto(path, &f); err != nil {
		return nil, fmt.Errorf("read margayctl config: %w", err)
	}
	ds, err := f.FileConfig.Config(path)
	if err != nil {
		return nil, fmt.Errorf("read margayctl config: %w", err)
	}
	if f.DatastoreConfig != "" {
		other, err := datastore.LoadConfigFile(relativeTo(path, f.DatastoreConfig))
		if err != nil {
			return nil, fmt.Errorf("read margayctl config %s: datastoreConfig: %w", path, err)
		}
		ds.FillFrom(other)
	}
	if f.NodeName != "" {
		if err := datastore.ValidateName(f.NodeName); err != nil {
			return nil, fmt.Errorf("read margayctl config %s: nodeName: %w", path, err)
		}
	}
	if f.BPFFSRoot != "" && !filepath.IsAbs(f.BPFFSRoot) {
		return nil, fmt.Errorf("read margayctl config %s: bpffsRoot %q: want an absolute path", path, f.BPFFSRoot)
	}
	h.path, h.ds, h.nodeName, h.bpffsRoot = path, ds, f.NodeName, f.BPFFSRoot
	g.host = h
	return h, nil
}

func relativeTo(file, name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(filepath.Dir(file), name)
}

// node returns the node a command works on: --node when given, else MARGAY_NODE_NAME (which the
// Kubernetes manifest sets in the agent's pod), else nodeName of the config file, else the
// hostname (the agent's default).
func (g *globals) node(flag string) (string, error) {
	if flag != "" {
		g.nodeFrom = "--node"
		return flag, nil
	}
	if env := os.Getenv("MARGAY_NODE_NAME"); env != "" {
		g.nodeFrom = "MARGAY_NODE_NAME"
		return env, nil
	}
	h, err := g.hostConfig()
	if err != nil {
		return "", err
	}
	if h.nodeName != "" {
		g.nodeFrom = "nodeName in " + h.path
		return h.nodeName, nil
	}
	g.nodeFrom = "the hostname"
	name, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("find this host's node name: %w (give --node, or nodeName in %s)", err, DefaultConfigPath)
	}
	return name, nil
}

// bpffsRoot returns --bpffs-root when given, else bpffsRoot of the config file, else
// loader.DefaultRoot.
func (g *globals) bpffsRoot() (string, error) {
	if g.flags != nil && g.flags.Changed("bpffs-root") {
		return g.root, nil
	}
	h, err := g.hostConfig()
	if err != nil {
		return "", err
	}
	if h.bpffsRoot != "" {
		return h.bpffsRoot, nil
	}
	return loader.DefaultRoot, nil
}

// noteEmpty says on stderr, for a table listing with no rows, which etcd (and config file) the
// command asked: an empty listing is often the wrong etcd (127.0.0.1 inside a lab host, say).
func (g *globals) noteEmpty(cmd *cobra.Command, n int, what string) {
	if n == 0 && g.output == "table" {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", what, g.where(""))
	}
}

// where says which node (when node is set) and etcd a command used and where they came from, for
// a listing that came out empty.
func (g *globals) where(node string) string {
	var parts []string
	if node != "" {
		parts = append(parts, fmt.Sprintf("node %s (from %s)", node, g.nodeFrom))
	}
	parts = append(parts, "etcd "+strings.Join(g.used.EndpointsOrDefault(), ","))
	if g.host != nil && g.host.path != "" {
		parts = append(parts, "config "+g.host.path)
	} else {
		parts = append(parts, fmt.Sprintf("no config file (--config, MARGAYCTL_CONFIG, %s)", DefaultConfigPath))
	}
	return strings.Join(parts, "; ")
}
