package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/datastore"
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

// clusterASN is the AS number of nodes that set none: config/bgp's, else the default.
func clusterASN(ctx context.Context, c *datastore.Client) (uint32, error) {
	cfg, err := c.BGPConfig().Get(ctx)
	if errors.Is(err, datastore.ErrNotFound) {
		return datastore.DefaultBGPConfig().ASN, nil
	}
	if err != nil {
		return 0, err
	}
	return cfg.Value.ASN, nil
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
			asn, err := clusterASN(ctx, c)
			if err != nil {
				return err
			}
			nodes, _, err := c.Nodes().List(ctx)
			if err != nil {
				return err
			}
			g.noteEmpty(cmd, len(nodes), "no nodes registered")
			blocks, _, err := c.Blocks().List(ctx)
			if err != nil {
				return err
			}
			workloads, _, err := c.AllWorkloads().List(ctx)
			if err != nil {
				return err
			}
			var rows [][]string
			js := []nodeJSON{}
			for _, it := range nodes {
				n := it.Value
				nj := nodeJSON{Name: n.Name, Address: n.AddressV4.String(), Uplink: n.Uplink, ASN: n.ASN,
					RouteReflectorClusterID: n.RouteReflectorClusterID, Labels: n.Labels, Blocks: []string{}}
				asnText := strconv.FormatUint(uint64(n.ASN), 10)
				if n.ASN == 0 {
					nj.ASN, nj.ASNInherited = asn, true
					asnText = "(" + strconv.FormatUint(uint64(asn), 10) + ")"
				}
				for _, b := range blocks {
					if b.Value.Node() == n.Name {
						nj.Blocks = append(nj.Blocks, b.Value.CIDR.String())
					}
				}
				for _, w := range workloads {
					if strings.HasPrefix(w.Name, n.Name+"/") {
						nj.Workloads++
					}
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
			js, err := deleteNode(ctx, c, name)
			if err != nil {
				return err
			}
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

// deleteNode removes what belongs to the node. The node record goes last, so that running the
// command again after a failure finds the node and finishes the job.
func deleteNode(ctx context.Context, c *datastore.Client, name string) (nodeDeleteJSON, error) {
	js := nodeDeleteJSON{Node: name, Workloads: []string{}, Handles: []string{}, Released: []string{},
		DeletedBlocks: []string{}, OrphanedBlocks: []string{}}
	fail := func(err error) (nodeDeleteJSON, error) {
		return js, fmt.Errorf("node delete %s: %w (run the command again to finish)", name, err)
	}
	node, err := c.Nodes().Get(ctx, name)
	switch {
	case err == nil:
		js.Record = true
	case errors.Is(err, datastore.ErrNotFound):
	default:
		return js, err
	}
	workloads, _, err := c.Workloads(name).List(ctx)
	if err != nil {
		return js, err
	}
	handles, _, err := c.Handles().List(ctx)
	if err != nil {
		return js, err
	}
	var ownHandles []string
	for _, h := range handles {
		if h.Value.Node == name || strings.HasPrefix(h.Value.Workload, name+"/") {
			ownHandles = append(ownHandles, h.Name)
		}
	}
	blocks, _, err := c.Blocks().List(ctx)
	if err != nil {
		return js, err
	}
	affinity := datastore.AffinityForNode(name)
	hasBlocks := false
	for _, b := range blocks {
		hasBlocks = hasBlocks || b.Value.Affinity == affinity
	}
	if !js.Record && len(workloads) == 0 && len(ownHandles) == 0 && !hasBlocks {
		return js, fmt.Errorf("node %q not found (margayctl node list shows the nodes)", name)
	}

	for _, w := range workloads {
		if err := c.Workloads(name).Delete(ctx, w.Name, 0); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			return fail(err)
		}
		js.Workloads = append(js.Workloads, name+"/"+w.Name)
	}
	im := newIPAM(c)
	for _, h := range ownHandles {
		released, err := im.ReleaseHandle(ctx, h)
		if err != nil {
			return fail(err)
		}
		js.Handles = append(js.Handles, h)
		for _, a := range released {
			js.Released = append(js.Released, a.String())
		}
	}
	if err := releaseBlocks(ctx, c, affinity, &js); err != nil {
		return fail(err)
	}
	if js.Record {
		if err := c.Nodes().Delete(ctx, name, node.ModRevision); err != nil && !errors.Is(err, datastore.ErrNotFound) {
			if errors.Is(err, datastore.ErrConflict) {
				return fail(errors.New("the node record changed meanwhile: is its agent still running?"))
			}
			return fail(err)
		}
	}
	return js, nil
}

// releaseBlocks deletes the empty blocks with the given affinity and takes the affinity off the
// others, each by compare-and-swap.
func releaseBlocks(ctx context.Context, c *datastore.Client, affinity string, js *nodeDeleteJSON) error {
	for range 10 {
		blocks, _, err := c.Blocks().List(ctx)
		if err != nil {
			return err
		}
		retry := false
		for _, b := range blocks {
			if b.Value.Affinity != affinity {
				continue
			}
			if len(b.Value.Allocations) == 0 {
				err = c.Blocks().Delete(ctx, b.Name, b.ModRevision)
			} else {
				nb := b.Value
				nb.Affinity = ""
				nb.Seq++
				_, err = c.Blocks().Update(ctx, b.Name, nb, b.ModRevision)
			}
			switch {
			case errors.Is(err, datastore.ErrConflict):
				retry = true
			case errors.Is(err, datastore.ErrNotFound):
			case err != nil:
				return err
			case len(b.Value.Allocations) == 0:
				js.DeletedBlocks = append(js.DeletedBlocks, b.Value.CIDR.String())
			default:
				js.OrphanedBlocks = append(js.OrphanedBlocks, b.Value.CIDR.String())
			}
		}
		if !retry {
			return nil
		}
	}
	return errors.New("release blocks: they kept changing")
}
