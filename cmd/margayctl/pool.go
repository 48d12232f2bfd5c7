package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
)

func newPoolCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "pool",
		Short:             "Manage the IP pools that workload addresses come from",
		PersistentPreRunE: g.checkOutput,
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

// parsePoolCIDR parses --cidr and says how to fix what is wrong with it.
func parsePoolCIDR(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, errors.New("--cidr is required, e.g. --cidr 198.19.0.0/16")
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("--cidr %q: want an IPv4 CIDR such as 198.19.0.0/16", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("--cidr %s has host bits set: did you mean %s?", p, p.Masked())
	}
	return p, nil
}

// poolNotFound says where to look for the pools.
func poolNotFound(name string) error {
	return fmt.Errorf("pool %q not found (margayctl pool list shows the pools)", name)
}

func newPoolAddCmd(g *globals) *cobra.Command {
	var (
		cidr      string
		blockSize int
		disabled  bool
	)
	cmd := &cobra.Command{
		Use:     "add NAME --cidr CIDR",
		Short:   "Create an IP pool",
		Example: "  margayctl pool add lab --cidr 198.19.0.0/16 --block-size 26",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			prefix, err := parsePoolCIDR(cidr)
			if err != nil {
				return err
			}
			pool := datastore.Pool{Version: datastore.CurrentVersion, Name: name, CIDR: prefix, BlockSize: blockSize, Disabled: disabled}
			if err := pool.Validate(); err != nil {
				return fmt.Errorf("pool add %s: %w", name, err)
			}
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			pools, _, err := c.Pools().List(ctx)
			if err != nil {
				return err
			}
			for _, p := range pools {
				if p.Name == name {
					return fmt.Errorf("pool add: pool %q already exists with %s (margayctl pool delete %s removes it)", name, p.Value.CIDR, name)
				}
			}
			nodes, _, err := c.Nodes().List(ctx)
			if err != nil {
				return err
			}
			if err := ipam.PoolConflict(pool, pools, nodes); err != nil {
				return fmt.Errorf("pool add %s: %w; pick a CIDR outside every pool and every node's subnet", name, err)
			}
			if _, err := c.Pools().Create(ctx, name, pool); err != nil {
				if errors.Is(err, datastore.ErrExists) {
					return fmt.Errorf("pool add: pool %q already exists", name)
				}
				return err
			}
			state := ""
			if disabled {
				state = ", disabled"
			}
			return g.result(cmd.OutOrStdout(), fmt.Sprintf("created pool %s: %s in /%d blocks%s", name, prefix, blockSize, state), toPoolSpecJSON(pool))
		},
	}
	cmd.Flags().StringVar(&cidr, "cidr", "", "IPv4 CIDR of the pool, e.g. 198.19.0.0/16")
	cmd.Flags().IntVar(&blockSize, "block-size", datastore.DefaultBlockSize,
		fmt.Sprintf("prefix length of the blocks a node claims (%d..%d)", datastore.MinBlockSize, datastore.MaxBlockSize))
	cmd.Flags().BoolVar(&disabled, "disabled", false, "create the pool disabled: IPAM assigns no address from it")
	return cmd
}

func newPoolListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the IP pools with their blocks and the addresses in use",
		Args:    cobra.NoArgs,
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
		Use:   "delete NAME",
		Short: "Delete an IP pool and its empty blocks",
		Long: `Delete an IP pool and its empty blocks.

A pool whose blocks still hold addresses is kept unless --force is given; with --force the pool
goes, and the blocks in use stay until their workloads release the addresses. To drain a pool,
disable it first (margayctl pool disable NAME) so that IPAM assigns no new address from it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			del, use, err := newIPAM(c).DeletePool(ctx, name, force)
			if errors.Is(err, ipam.ErrPoolInUse) {
				var where []string
				for _, b := range use.Blocks {
					where = append(where, fmt.Sprintf("%s on %s", b.CIDR, orDash(b.Node())))
				}
				return fmt.Errorf("pool delete %s: in use: %s in %s (%s); delete those workloads first (margayctl pool disable %s stops new assignments), or pass --force to delete the pool anyway",
					name, count(use.Addresses, "address"), count(len(use.Blocks), "block"), strings.Join(where, ", "), name)
			}
			if errors.Is(err, datastore.ErrNotFound) {
				return poolNotFound(name)
			}
			if err != nil {
				return fmt.Errorf("pool delete: %w", err)
			}
			pool := del.Pool
			js := poolDeleteJSON{Pool: name, DeletedBlocks: strs(del.Deleted), KeptBlocks: strs(del.Kept)}
			text := fmt.Sprintf("deleted pool %s (%s) and %s", name, pool.CIDR, count(len(js.DeletedBlocks), "empty block"))
			if len(js.KeptBlocks) > 0 {
				text += fmt.Sprintf("; kept %s with addresses in use (%s) until their workloads release them",
					count(len(js.KeptBlocks), "block"), strings.Join(js.KeptBlocks, ", "))
			}
			return g.result(cmd.OutOrStdout(), text, js)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "delete the pool even though its blocks hold addresses")
	return cmd
}

func newPoolSetDisabledCmd(g *globals, disable bool) *cobra.Command {
	verb, short := "enable", "Let IPAM assign addresses from a pool again"
	if disable {
		verb, short = "disable", "Stop IPAM assigning addresses from a pool (no new blocks either); addresses in use stay"
	}
	return &cobra.Command{
		Use:   verb + " NAME",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			p, err := newIPAM(c).SetPoolDisabled(ctx, name, disable)
			if errors.Is(err, datastore.ErrNotFound) {
				return poolNotFound(name)
			}
			if err != nil {
				return fmt.Errorf("pool %s %s: %w", name, verb, err)
			}
			return g.result(cmd.OutOrStdout(), fmt.Sprintf("pool %s (%s) %sd", name, p.CIDR, verb), toPoolSpecJSON(p))
		},
	}
}
