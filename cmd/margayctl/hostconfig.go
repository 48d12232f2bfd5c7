package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/ctlconfig"
	"github.com/margaynet/margay/loader"
)

// hostConfig loads the config file once: --config, else MARGAYCTL_CONFIG, else
// ctlconfig.DefaultPath when it exists.
func (g *globals) hostConfig() (*ctlconfig.File, error) {
	if g.host != nil {
		return g.host, nil
	}
	h, err := ctlconfig.Load(g.configFile, os.Getenv)
	if err != nil {
		return nil, err
	}
	g.host = &h
	return g.host, nil
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
	if h.NodeName != "" {
		g.nodeFrom = "nodeName in " + h.Path
		return h.NodeName, nil
	}
	g.nodeFrom = "the hostname"
	name, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("find this host's node name: %w (give --node, or nodeName in %s)", err, ctlconfig.DefaultPath)
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
	if h.BPFFSRoot != "" {
		return h.BPFFSRoot, nil
	}
	return loader.DefaultRoot, nil
}

// noteEmpty says on stderr, for a table listing with no rows, which etcd (and config file) the
// command asked: an empty listing is often the wrong etcd (127.0.0.1 inside a lab host, say).
func (g *globals) noteEmpty(cmd *cobra.Command, n int, what string) {
	if n == 0 && (g.output == "table" || g.output == "wide") {
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
	if g.host != nil && g.host.Path != "" {
		parts = append(parts, "config "+g.host.Path)
	} else {
		parts = append(parts, fmt.Sprintf("no config file (--config, MARGAYCTL_CONFIG, %s)", ctlconfig.DefaultPath))
	}
	return strings.Join(parts, "; ")
}
