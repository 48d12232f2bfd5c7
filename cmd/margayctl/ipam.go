package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/ipam"
)

// checkOutput rejects an unknown -o before a command changes anything, so that a typo never
// leaves a change done and its report lost.
func (g *globals) checkOutput(*cobra.Command, []string) error {
	switch g.output {
	case "table", "", "json":
		return nil
	}
	return fmt.Errorf("unknown output format %q (want table or json)", g.output)
}

// result prints what a command changed: text for people, jsonValue with -o json.
func (g *globals) result(w io.Writer, text string, jsonValue any) error {
	if g.output == "json" {
		return writeJSON(w, jsonValue)
	}
	_, err := fmt.Fprintln(w, text)
	return err
}

// parseIPv4Flag parses the value of an address flag such as --ip.
func parseIPv4Flag(flag, s string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(s)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("--%s %q: want an IPv4 address such as 198.19.0.5", flag, s)
	}
	return ip, nil
}

// newIPAM returns an IPAM that logs only warnings: the commands report what it did themselves.
func newIPAM(c *datastore.Client) *ipam.IPAM {
	return ipam.New(c, ipam.WithLogger(warnLogger(os.Stderr)))
}

// count writes n and the noun, plural unless n is 1: "1 block", "3 addresses".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	if strings.HasSuffix(noun, "s") {
		return fmt.Sprintf("%d %ses", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func fraction(used, capacity int) string { return fmt.Sprintf("%d/%d", used, capacity) }

// workloadsOf lists every workload record, keyed "<node>/<id>" as handles name them.
func workloadsOf(ctx context.Context, c *datastore.Client) (map[string]datastore.Workload, error) {
	items, _, err := c.AllWorkloads().List(ctx)
	if err != nil {
		return nil, err
	}
	m := make(map[string]datastore.Workload, len(items))
	for _, it := range items {
		m[it.Name] = it.Value
	}
	return m, nil
}

func newIPAMCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "ipam",
		Short:             "Show, check and repair address allocations",
		PersistentPreRunE: g.checkOutput,
	}
	cmd.AddCommand(newIPAMShowCmd(g), newIPAMCheckCmd(g), newIPAMReleaseCmd(g), newIPAMGCCmd(g))
	return cmd
}

type blockUsageJSON struct {
	CIDR     string `json:"cidr"`
	Node     string `json:"node,omitempty"`
	Used     int    `json:"used"`
	Capacity int    `json:"capacity"`
}

type ipamTotalJSON struct {
	Blocks   int `json:"blocks"`
	Used     int `json:"used"`
	Capacity int `json:"capacity"`
}

type ipamShowJSON struct {
	Blocks []blockUsageJSON `json:"blocks"`
	Total  ipamTotalJSON    `json:"total"`
}

// ipHolderJSON tells who holds an address, as `ipam show --ip` prints it.
type ipHolderJSON struct {
	IP        string `json:"ip"`
	Allocated bool   `json:"allocated"`
	Pool      string `json:"pool,omitempty"`
	Block     string `json:"block,omitempty"`
	BlockNode string `json:"blockNode,omitempty"`
	Handle    string `json:"handle,omitempty"`
	Workload  string `json:"workload,omitempty"` // "<node>/<id>"
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	Node      string `json:"node,omitempty"`
	// WorkloadGone: the handle names a workload whose record no longer exists (see ipam gc).
	WorkloadGone bool `json:"workloadGone,omitempty"`
}

func newIPAMShowCmd(g *globals) *cobra.Command {
	var ipFlag string
	cmd := &cobra.Command{
		Use:   "show [--ip ADDRESS]",
		Short: "Show the blocks with their node and occupancy, or who holds one address",
		Example: `  margayctl ipam show
  margayctl ipam show --ip 198.19.0.5`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ip netip.Addr
			if cmd.Flags().Changed("ip") {
				var err error
				if ip, err = parseIPv4Flag("ip", ipFlag); err != nil {
					return err
				}
			}
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			if ip.IsValid() {
				return g.showIP(ctx, cmd.OutOrStdout(), c, ip)
			}
			usage, err := newIPAM(c).Usage(ctx)
			if err != nil {
				return err
			}
			var rows [][]string
			js := ipamShowJSON{Blocks: []blockUsageJSON{}}
			for _, u := range usage {
				rows = append(rows, []string{u.CIDR.String(), orDash(u.Node), fraction(u.Used, u.Capacity)})
				js.Blocks = append(js.Blocks, blockUsageJSON{u.CIDR.String(), u.Node, u.Used, u.Capacity})
				js.Total.Blocks++
				js.Total.Used += u.Used
				js.Total.Capacity += u.Capacity
			}
			if len(usage) == 0 && g.output == "table" {
				fmt.Fprintf(cmd.ErrOrStderr(), "no blocks claimed yet: %s\n", g.where(""))
			}
			rows = append(rows, []string{"TOTAL", count(js.Total.Blocks, "block"), fraction(js.Total.Used, js.Total.Capacity)})
			return g.render(cmd.OutOrStdout(), []string{"BLOCK", "NODE", "USED/CAPACITY"}, rows, js)
		},
	}
	cmd.Flags().StringVar(&ipFlag, "ip", "", "tell who holds this address: handle, workload and node")
	return cmd
}

func (g *globals) showIP(ctx context.Context, w io.Writer, c *datastore.Client, ip netip.Addr) error {
	loc, err := newIPAM(c).Locate(ctx, ip)
	if err != nil {
		return err
	}
	js := ipHolderJSON{IP: ip.String(), Pool: loc.Pool, Handle: loc.Handle, Allocated: loc.Handle != ""}
	if loc.Block.CIDR.IsValid() {
		js.Block, js.BlockNode = loc.Block.CIDR.String(), loc.Block.Node()
	}
	if !js.Allocated {
		var text string
		switch {
		case js.Block != "":
			text = fmt.Sprintf("%s is free (block %s of node %s)", ip, js.Block, orDash(js.BlockNode))
		case js.Pool != "":
			text = fmt.Sprintf("%s is free (pool %s; no block claimed for it yet)", ip, js.Pool)
		default:
			text = fmt.Sprintf("%s is in no pool (margayctl pool list shows the pools)", ip)
		}
		return g.result(w, text, js)
	}

	h, err := newIPAM(c).HolderOf(ctx, js.Handle)
	if err != nil {
		return err
	}
	js.Node, js.Workload, js.Name, js.Namespace, js.WorkloadGone = h.Node, h.Workload, h.Name, h.Namespace, h.RecordGone
	name := js.Name
	if js.Namespace != "" {
		name = js.Namespace + "/" + js.Name
	}
	if js.WorkloadGone {
		name = "(record gone)"
	}
	handle := js.Handle
	if js.Node == "" {
		handle += " (handle record missing)"
	}
	return g.render(w, []string{"IP", "BLOCK", "HANDLE", "WORKLOAD", "NAME", "NODE"},
		[][]string{{js.IP, js.Block, handle, orDash(js.Workload), orDash(name), orDash(js.Node)}}, js)
}

type ipamCheckJSON struct {
	Problems []string `json:"problems"`
}

func newIPAMCheckCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check",
		Short: "Find inconsistencies between blocks, handles and workloads; exit 1 if there are any",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			found, err := newIPAM(c).Check(ctx)
			if err != nil {
				return err
			}
			problems := make([]string, 0, len(found))
			for _, p := range found {
				problems = append(problems, p.What)
			}
			text := "no problems found"
			if len(problems) > 0 {
				text = strings.Join(problems, "\n")
			}
			if err := g.result(cmd.OutOrStdout(), text, ipamCheckJSON{Problems: append([]string{}, problems...)}); err != nil {
				return err
			}
			if len(problems) > 0 {
				return fmt.Errorf("ipam check: %s; `margayctl ipam gc` frees what workloads that are gone still hold, `margayctl ipam release` frees single addresses", count(len(problems), "problem"))
			}
			return nil
		},
	}
}

type ipamReleaseJSON struct {
	Handle   string   `json:"handle,omitempty"`
	Released []string `json:"released"`
}

func newIPAMReleaseCmd(g *globals) *cobra.Command {
	var (
		ipFlag, handle string
		force          bool
	)
	cmd := &cobra.Command{
		Use:   "release --ip ADDRESS | --handle HANDLE",
		Short: "Free one address, or every address of a handle",
		Long: `Free one address, or every address of a handle.

A workload whose record still exists keeps its addresses unless --force is given: IPAM would
hand them to the next workload while the first still uses them.`,
		Example: `  margayctl ipam release --ip 198.19.0.5
  margayctl ipam release --handle k8s-pod-network.0123abcd`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			byIP, byHandle := cmd.Flags().Changed("ip"), cmd.Flags().Changed("handle")
			if byIP == byHandle {
				return errors.New("ipam release: give either --ip or --handle")
			}
			var ip netip.Addr
			if byIP {
				var err error
				if ip, err = parseIPv4Flag("ip", ipFlag); err != nil {
					return err
				}
			} else if err := datastore.ValidateName(handle); err != nil {
				return fmt.Errorf("--handle: %w", err)
			}
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			rel, err := newIPAM(c).Release(ctx, ipam.ReleaseRequest{IP: ip, Handle: handle, Force: force})
			var live *ipam.LiveError
			switch {
			case errors.As(err, &live):
				return fmt.Errorf("ipam release: handle %s belongs to workload %s, which still exists; delete the workload first, or pass --force if it no longer runs", live.Handle, live.Workload)
			case errors.Is(err, ipam.ErrNotAllocated):
				return fmt.Errorf("ipam release: %s is not allocated (margayctl ipam show --ip %s tells where it lies)", ip, ip)
			case errors.Is(err, ipam.ErrNoHandle):
				return fmt.Errorf("ipam release: handle %s does not exist and holds no address", handle)
			case err != nil:
				return fmt.Errorf("ipam release: %w", err)
			}
			js := ipamReleaseJSON{Handle: rel.Handle, Released: []string{}}
			for _, a := range rel.IPs {
				js.Released = append(js.Released, a.String())
			}
			if byIP {
				return g.result(cmd.OutOrStdout(), fmt.Sprintf("released %s (handle %s)", ip, rel.Handle), js)
			}
			return g.result(cmd.OutOrStdout(), fmt.Sprintf("released handle %s: %s", rel.Handle, ipam.AddrList(rel.IPs)), js)
		},
	}
	cmd.Flags().StringVar(&ipFlag, "ip", "", "address to free")
	cmd.Flags().StringVar(&handle, "handle", "", "handle whose addresses to free; the handle is deleted")
	cmd.Flags().BoolVar(&force, "force", false, "free also when the workload holding the address still exists")
	return cmd
}

type ipamGCJSON struct {
	Released      []string `json:"released"`
	DeletedBlocks []string `json:"deletedBlocks"`
}

func newIPAMGCCmd(g *globals) *cobra.Command {
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Free the addresses of workloads whose record is gone, and allocations without a handle",
		Long: `Free the addresses of workloads whose record is gone, and allocations without a handle; delete
empty blocks that no registered node owns (left by node delete, or claimed for a node name no
agent runs as) or that lie outside every pool (left by pool delete --force). Agents give up their
own empty blocks themselves.

CNI ADD writes the handle and allocates before it writes the workload record. So that gc never
frees the address of a workload being created, a workload counts as gone only when its record is
missing at a first look and still missing --grace later.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if grace < 0 {
				return fmt.Errorf("--grace %s: want zero or more", grace)
			}
			ctx := cmd.Context()
			c, err := g.client(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			im := newIPAM(c)
			col := im.Collector("")
			// The first look frees nothing of a workload whose record is missing; the second,
			// --grace later, frees what is still missing.
			var released []netip.Addr
			for look := range 2 {
				if look == 1 && col.Suspects() == 0 {
					break
				}
				if look == 1 && grace > 0 {
					fmt.Fprintf(cmd.ErrOrStderr(), "%s without a record; looking again in %s (--grace)\n", count(col.Suspects(), "workload"), grace)
					select {
					case <-time.After(grace):
					case <-ctx.Done():
						return ctx.Err()
					}
				}
				records, err := workloadsOf(ctx, c)
				if err != nil {
					return err
				}
				freed, err := col.Run(ctx, records)
				released = append(released, freed...)
				if err != nil {
					if len(released) > 0 {
						return fmt.Errorf("%w (released %s before that)", err, ipam.AddrList(released))
					}
					return err
				}
			}
			js := ipamGCJSON{Released: strs(released)}
			deleted, err := im.DeleteStaleBlocks(ctx)
			js.DeletedBlocks = strs(deleted)
			if err != nil {
				return fmt.Errorf("ipam gc: %w (released %s before that)", err, ipam.AddrList(released))
			}
			var parts []string
			if len(released) > 0 {
				parts = append(parts, fmt.Sprintf("released %s: %s", count(len(released), "address"), ipam.AddrList(released)))
			}
			if len(js.DeletedBlocks) > 0 {
				parts = append(parts, fmt.Sprintf("deleted %s without a registered node or outside every pool: %s",
					count(len(js.DeletedBlocks), "empty block"), strings.Join(js.DeletedBlocks, ", ")))
			}
			text := "nothing to free"
			if len(parts) > 0 {
				text = strings.Join(parts, "\n")
			}
			return g.result(cmd.OutOrStdout(), text, js)
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 5*time.Second, "how long a workload record must stay missing before its addresses are freed")
	return cmd
}
