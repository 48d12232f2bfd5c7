package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/workload"
)

// workloadTimeout bounds one workload command, etcd connection included.
const workloadTimeout = 60 * time.Second

func newWorkloadCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "workload",
		Short: "Add, list and delete workloads: network namespaces wired to this host as the CNI plugin does",
	}
	cmd.AddCommand(newWorkloadAddCmd(g), newWorkloadListCmd(g), newWorkloadDeleteCmd(g))
	return cmd
}

// nodeFlagHelp is how every --node flag says where its default comes from.
const nodeFlagHelp = " (default: MARGAY_NODE_NAME, else nodeName of the config file, else the hostname)"

// quietWorkloadLogs keeps the workload code path's info logs off the terminal; warnings still show.
func quietWorkloadLogs(w io.Writer) {
	slog.SetDefault(warnLogger(w))
}

func parseWorkloadLabels(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	labels := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("parse label %q: want key=value", kv)
		}
		labels[k] = v
	}
	return labels, nil
}

func newWorkloadAddCmd(g *globals) *cobra.Command {
	var (
		spec   workload.Spec
		labels []string
	)
	cmd := &cobra.Command{
		Use:   "add NAME --netns PATH",
		Short: "Wire the network namespace PATH to this host as workload NAME (veth, /32 from IPAM, routes, endpoint)",
		Long: `Add gives an existing network namespace a Margay workload network, through the same code path as
margay-cni: a veth pair (cali… on this host, --ifname inside), a /32 from the IP pools, the default
route via 169.254.1.1 and the endpoint record the agent programs. Run it on the host, in the host's
network namespace — for a Docker container: docker run --net=none, then
--netns /proc/<pid>/ns/net.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			quietWorkloadLogs(cmd.ErrOrStderr())
			var err error
			if spec.Labels, err = parseWorkloadLabels(labels); err != nil {
				return err
			}
			spec.ID, spec.Name = args[0], args[0]
			if spec.Node, err = g.node(spec.Node); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), workloadTimeout)
			defer cancel()
			ds, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer ds.Close()
			res, err := workload.Add(ctx, ds, ipam.New(ds), spec)
			if err != nil {
				return err
			}
			return g.renderWorkloads(cmd.OutOrStdout(), []datastore.Workload{res.Workload})
		},
	}
	cmd.Flags().StringVar(&spec.Netns, "netns", "", "path of the workload's network namespace, e.g. /var/run/netns/web or /proc/<pid>/ns/net (required)")
	cmd.Flags().StringVar(&spec.Node, "node", "", "node the workload runs on: this host"+nodeFlagHelp)
	cmd.Flags().StringVar(&spec.IfName, "ifname", workload.DefaultIfName, "interface name inside the workload")
	cmd.Flags().IntVar(&spec.MTU, "mtu", 0, "MTU of the veth (default: the MTU of the host's default-route interface, else 1500)")
	cmd.Flags().StringArrayVar(&labels, "label", nil, "policy label key=value (repeatable)")
	_ = cmd.MarkFlagRequired("netns")
	return cmd
}

func newWorkloadListCmd(g *globals) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the workloads of a node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			node, err := g.node(node)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), workloadTimeout)
			defer cancel()
			ds, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer ds.Close()
			items, _, err := ds.Workloads(node).List(ctx)
			if err != nil {
				return err
			}
			if len(items) == 0 && g.output == "table" {
				fmt.Fprintf(cmd.ErrOrStderr(), "no workloads on this node: %s\n", g.where(node))
			}
			ws := make([]datastore.Workload, 0, len(items))
			for _, it := range items {
				ws = append(ws, it.Value)
			}
			return g.renderWorkloads(cmd.OutOrStdout(), ws)
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "node whose workloads to list"+nodeFlagHelp)
	return cmd
}

func newWorkloadDeleteCmd(g *globals) *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Remove workload NAME: its veth, routes, address and endpoint (the namespace itself stays)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			quietWorkloadLogs(cmd.ErrOrStderr())
			name := args[0]
			node, err := g.node(node)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), workloadTimeout)
			defer cancel()
			ds, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer ds.Close()
			if _, err := ds.Workloads(node).Get(ctx, name); errors.Is(err, datastore.ErrNotFound) {
				return fmt.Errorf("delete workload %s: not found on node %s (see margayctl workload list --node %s)", name, node, node)
			}
			if err := workload.Del(ctx, ds, ipam.New(ds), workload.Spec{ID: name, Node: node}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted workload %s on node %s\n", name, node)
			return nil
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "node the workload runs on"+nodeFlagHelp)
	return cmd
}

// renderWorkloads prints NODE, NAME, INTERFACE, IPV4, MAC, or the records as JSON.
func (g *globals) renderWorkloads(w io.Writer, ws []datastore.Workload) error {
	rows := make([][]string, 0, len(ws))
	for _, wl := range ws {
		ips := make([]string, 0, len(wl.IPv4))
		for _, p := range wl.IPv4 {
			ips = append(ips, p.String())
		}
		rows = append(rows, []string{wl.Node, wl.ID, wl.IfName, orDash(strings.Join(ips, ",")), wl.MAC})
	}
	return g.render(w, []string{"NODE", "NAME", "INTERFACE", "IPV4", "MAC"}, rows, ws)
}
