package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/calicov3"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/control/resource"
)

func newPoolCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pool",
		Short: "Aliases of the Calico forms for IPPools, and the pools' occupancy",
		Long: `Margay's first pool commands, kept for the scripts that use them. add, delete, enable and disable
are aliases of the Calico forms and run them (control/calicov3):

  margayctl pool add NAME --cidr CIDR [--block-size N] [--disabled]
                                  margayctl create -f with an IPPool {cidr, blockSize, disabled}
  margayctl pool delete NAME      margayctl delete ippool NAME
  margayctl pool disable NAME     margayctl get ippool NAME -o yaml, spec.disabled: true,
  margayctl pool enable NAME      margayctl replace -f (false to enable)

list shows what no Calico form shows, each pool's blocks and addresses in use (the pools
themselves: margayctl get ippool), and delete --force deletes a pool whose blocks hold
addresses, which margayctl delete ippool refuses.`,
	}
	cmd.AddCommand(newPoolAddCmd(g), newPoolListCmd(g), newPoolDeleteCmd(g),
		newPoolSetDisabledCmd(g, true), newPoolSetDisabledCmd(g, false))
	return cmd
}

// poolSpecJSON is a pool as stored.
type poolSpecJSON struct {
	Name      string `json:"name"`
	CIDR      string `json:"cidr"`
	BlockSize int    `json:"blockSize"`
	Disabled  bool   `json:"disabled"`
}

func toPoolSpecJSON(p datastore.Pool) poolSpecJSON {
	return poolSpecJSON{Name: p.Name, CIDR: p.CIDR.String(), BlockSize: p.BlockSize, Disabled: p.Disabled}
}

// poolJSON is a pool with its occupancy, as pool list prints it.
type poolJSON struct {
	poolSpecJSON
	Blocks int    `json:"blocks"`
	Used   int    `json:"ipsUsed"`
	Size   uint64 `json:"ipsTotal"`
}

func newPoolAddCmd(g *globals) *cobra.Command {
	var (
		cidr      string
		blockSize int
		disabled  bool
	)
	cmd := &cobra.Command{
		Use:     "add NAME --cidr CIDR",
		Short:   "Alias of margayctl create -f with an IPPool: create an IP pool",
		Example: "  margayctl pool add lab --cidr 198.19.0.0/16 --block-size 26",
		Args:    cobra.ExactArgs(1),
		PreRunE: g.checkNoOutput,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cidr == "" {
				return errors.New("--cidr is required, e.g. --cidr 198.19.0.0/16")
			}
			pool := &resource.IPPool{ObjectMeta: resource.ObjectMeta{Name: args[0]},
				Spec: resource.IPPoolSpec{CIDR: cidr, BlockSize: blockSize, Disabled: disabled}}
			return g.calicoWriteResources(cmd, calicov3.ActionCreate, calicov3.Create, pool)
		},
	}
	cmd.Flags().StringVar(&cidr, "cidr", "", "IPv4 CIDR of the pool, e.g. 198.19.0.0/16 (spec.cidr)")
	cmd.Flags().IntVar(&blockSize, "block-size", datastore.DefaultBlockSize,
		fmt.Sprintf("prefix length of the blocks a node claims, %d..%d (spec.blockSize)", datastore.MinBlockSize, datastore.MaxBlockSize))
	cmd.Flags().BoolVar(&disabled, "disabled", false, "create the pool disabled: IPAM assigns no address from it (spec.disabled)")
	return cmd
}

func newPoolListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the IP pools with their blocks and the addresses in use (the pools themselves: margayctl get ippool)",
		Args:    cobra.NoArgs,
		PreRunE: g.checkOutput,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			pools, err := newIPAM(c).Pools(ctx)
			if err != nil {
				return err
			}
			var rows [][]string
			js := []poolJSON{}
			for _, s := range pools {
				pj := poolJSON{poolSpecJSON: toPoolSpecJSON(s.Pool), Blocks: s.Blocks, Used: s.Used, Size: s.Capacity}
				rows = append(rows, []string{pj.Name, pj.CIDR, strconv.Itoa(pj.BlockSize), strconv.FormatBool(pj.Disabled),
					strconv.Itoa(pj.Blocks), fmt.Sprintf("%d/%d", pj.Used, pj.Size)})
				js = append(js, pj)
			}
			g.noteEmpty(cmd, len(pools), "no pools")
			return g.render(cmd.OutOrStdout(), []string{"NAME", "CIDR", "BLOCK SIZE", "DISABLED", "BLOCKS", "IPS USED"}, rows, js)
		},
	}
}

type poolDeleteJSON struct {
	Pool          string   `json:"pool"`
	DeletedBlocks []string `json:"deletedBlocks"`
	KeptBlocks    []string `json:"keptBlocks"` // still holding addresses (--force)
}

func newPoolDeleteCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete NAME [--force]",
		Short: "Alias of margayctl delete ippool NAME: delete an IP pool and its empty blocks (--force: also one in use)",
		Long: `Alias of margayctl delete ippool NAME: delete an IP pool and its empty blocks.

A pool whose blocks still hold addresses is kept. --force, which has no Calico form, deletes
it anyway: the pool goes, and the blocks in use stay until their workloads release the
addresses. To drain a pool, disable it first (margayctl pool disable NAME) so that IPAM assigns
no new address from it.`,
		Args: cobra.ExactArgs(1),
		PreRunE: func(cmd *cobra.Command, args []string) error {
			if force {
				return g.checkOutput(cmd, args)
			}
			return g.checkNoOutput(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if !force {
				err := g.calicoDelete(cmd, resource.KindIPPool, "", args)
				if errors.Is(err, ipam.ErrPoolInUse) {
					return fmt.Errorf("%w; or margayctl pool delete %s --force deletes the pool anyway", err, args[0])
				}
				return err
			}
			return g.forceDeletePool(cmd, args[0])
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete the pool even though its blocks hold addresses (no Calico form)")
	return cmd
}

// forceDeletePool is pool delete --force: IPAM's deletion of a pool (the one margayctl delete
// ippool runs), told to go on although the pool's blocks hold addresses.
func (g *globals) forceDeletePool(cmd *cobra.Command, name string) error {
	ctx := cmd.Context()
	c, err := g.client(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	del, _, err := newIPAM(c).DeletePool(ctx, name, true)
	if errors.Is(err, datastore.ErrNotFound) {
		return fmt.Errorf("pool %q not found (margayctl get ippool shows the pools)", name)
	}
	if err != nil {
		return fmt.Errorf("pool delete: %w", err)
	}
	js := poolDeleteJSON{Pool: name, DeletedBlocks: strs(del.Deleted), KeptBlocks: strs(del.Kept)}
	text := fmt.Sprintf("deleted pool %s (%s) and %s", name, del.Pool.CIDR, count(len(js.DeletedBlocks), "empty block"))
	if len(js.KeptBlocks) > 0 {
		text += fmt.Sprintf("; kept %s with addresses in use (%s) until their workloads release them",
			count(len(js.KeptBlocks), "block"), strings.Join(js.KeptBlocks, ", "))
	}
	return g.result(cmd.OutOrStdout(), text, js)
}

func newPoolSetDisabledCmd(g *globals, disable bool) *cobra.Command {
	verb, short := "enable", "Let IPAM assign addresses from a pool again (spec.disabled: false, through margayctl replace)"
	if disable {
		verb, short = "disable", "Stop IPAM assigning addresses from a pool, no new blocks either (spec.disabled: true, through margayctl replace); addresses in use stay"
	}
	return &cobra.Command{
		Use:     verb + " NAME",
		Short:   short,
		Args:    cobra.ExactArgs(1),
		PreRunE: g.checkNoOutput,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.calicoUpdate(cmd, resource.KindIPPool, args[0], "", func(r resource.Resource) {
				r.(*resource.IPPool).Spec.Disabled = disable
			})
		},
	}
}
