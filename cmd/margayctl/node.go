package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
)

func newNodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "node",
		Short:             "List and remove the nodes of the cluster; this node's BGP status",
		PersistentPreRunE: g.checkOutput,
	}
	cmd.AddCommand(newNodeListCmd(g), newNodeDeleteCmd(g), newNodeStatusCmd(g))
	return cmd
}

type nodeJSON struct {
	Name    string `json:"name"`
	Address string `json:"addressV4"`
	Uplink  string `json:"uplink,omitempty"`
	ASN     uint32 `json:"asn"`
	// ASNInherited: the node sets no AS number of its own and uses the cluster's.
	ASNInherited            bool              `json:"asnInherited"`
	RouteReflectorClusterID string            `json:"routeReflectorClusterID,omitempty"`
	Labels                  map[string]string `json:"labels,omitempty"`
	Blocks                  []string          `json:"blocks"`
	Workloads               int               `json:"workloads"`
}

func newNodeListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the nodes with their address, AS number, blocks and workloads",
		Long: `List the nodes with their address, AS number, blocks and workloads.

An AS number in parentheses is the cluster's, which the node inherits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			nodes, err := newIPAM(c).Nodes(ctx)
			if err != nil {
				return err
			}
			g.noteEmpty(cmd, len(nodes), "no nodes registered")
			var rows [][]string
			js := []nodeJSON{}
			for _, s := range nodes {
				n := s.Node
				nj := nodeJSON{Name: n.Name, Address: n.AddressV4.String(), Uplink: n.Uplink, ASN: s.ASN, ASNInherited: s.ASNInherited,
					RouteReflectorClusterID: n.RouteReflectorClusterID, Labels: n.Labels, Blocks: strs(s.Blocks), Workloads: s.Workloads}
				asnText := strconv.FormatUint(uint64(s.ASN), 10)
				if s.ASNInherited {
					asnText = "(" + asnText + ")"
				}
				rows = append(rows, []string{n.Name, nj.Address, orDash(n.Uplink), asnText,
					strconv.Itoa(len(nj.Blocks)), strconv.Itoa(nj.Workloads)})
				js = append(js, nj)
			}
			return g.render(cmd.OutOrStdout(), []string{"NAME", "ADDRESS", "UPLINK", "ASN", "BLOCKS", "WORKLOADS"}, rows, js)
		},
	}
}

type nodeDeleteJSON struct {
	Node          string   `json:"node"`
	Record        bool     `json:"record"` // the node record existed and was deleted
	Workloads     []string `json:"workloads"`
	Handles       []string `json:"handles"`
	Released      []string `json:"released"`
	DeletedBlocks []string `json:"deletedBlocks"`
	// OrphanedBlocks lost their affinity but stay: they hold addresses other nodes borrowed.
	OrphanedBlocks []string `json:"orphanedBlocks"`
}

func newNodeDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Remove a node: its record, its workloads, their addresses and its blocks",
		Long: `Remove a node: its record, its workloads' records, the handles and addresses they hold, and
its blocks, as calicoctl delete node does. Stop the node's agent first, or it registers the node
again. A block that still holds addresses other nodes borrowed stays, without affinity, until
they are released.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := datastore.ValidateName(name); err != nil {
				return fmt.Errorf("node delete: name: %w", err)
			}
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			rel, err := newIPAM(c).ReleaseNode(ctx, name)
			if errors.Is(err, ipam.ErrNodeNotFound) {
				return fmt.Errorf("node %q not found (margayctl node list shows the nodes)", name)
			}
			if err != nil {
				return fmt.Errorf("node delete: %w", err)
			}
			js := nodeDeleteJSON{Node: name, Record: rel.Record, Workloads: nonNil(rel.Workloads), Handles: nonNil(rel.Handles),
				Released: strs(rel.Released), DeletedBlocks: strs(rel.Deleted), OrphanedBlocks: strs(rel.Orphaned)}
			handles := count(len(js.Handles), "handle")
			if len(js.Released) > 0 {
				handles += " (" + strings.Join(js.Released, ", ") + ")"
			}
			text := fmt.Sprintf("deleted node %s: %s, %s, %s", name, count(len(js.Workloads), "workload"), handles,
				count(len(js.DeletedBlocks), "block"))
			if !js.Record {
				text += " (it had no node record, only these leftovers)"
			}
			if len(js.OrphanedBlocks) > 0 {
				text += fmt.Sprintf("; kept %s without affinity: other nodes' workloads borrowed addresses from them",
					strings.Join(js.OrphanedBlocks, ", "))
			}
			return g.result(cmd.OutOrStdout(), text, js)
		},
	}
}

// strs writes values for output: a list, empty rather than null in JSON.
func strs[T fmt.Stringer](vs []T) []string {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		out = append(out, v.String())
	}
	return out
}

// nonNil is s, or an empty list, which JSON writes as [] rather than null.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
