package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/maps"
)

// ifName names an interface of this network namespace, or prints its index when it has none.
func ifName(ifindex uint32) string {
	if ifindex == 0 {
		return "-"
	}
	if iface, err := net.InterfaceByIndex(int(ifindex)); err == nil {
		return iface.Name
	}
	return strconv.FormatUint(uint64(ifindex), 10)
}

func (g *globals) open() (*maps.Set, error) {
	return maps.OpenPinned(g.root)
}

// render writes rows as JSON or as an aligned table.
func (g *globals) render(w io.Writer, header []string, rows [][]string, jsonValue any) error {
	switch g.output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(jsonValue)
	case "table", "":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for i, h := range header {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, h)
		}
		fmt.Fprintln(tw)
		for _, r := range rows {
			for i, c := range r {
				if i > 0 {
					fmt.Fprint(tw, "\t")
				}
				fmt.Fprint(tw, c)
			}
			fmt.Fprintln(tw)
		}
		return tw.Flush()
	}
	return fmt.Errorf("unknown output format %q (want table or json)", g.output)
}

type routeJSON struct {
	Prefix    string `json:"prefix"`
	Flags     string `json:"flags"`
	Interface string `json:"interface"`
	Ifindex   uint32 `json:"ifindex"`
	NextHop   string `json:"nextHop,omitempty"`
}

func newRoutesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "routes",
		Short: "Decode the routes map (LPM trie) of this host",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := g.open()
			if err != nil {
				return err
			}
			defer set.Close()
			routes, err := set.Routes.List()
			if err != nil {
				return err
			}
			var rows [][]string
			js := []routeJSON{}
			for _, r := range routes {
				nh := ""
				if r.NextHop.IsValid() {
					nh = r.NextHop.String()
				}
				rows = append(rows, []string{r.Prefix.String(), r.Flags.String(), ifName(r.Ifindex), orDash(nh)})
				js = append(js, routeJSON{r.Prefix.String(), r.Flags.String(), ifName(r.Ifindex), r.Ifindex, nh})
			}
			return g.render(cmd.OutOrStdout(), []string{"PREFIX", "FLAGS", "INTERFACE", "NEXT HOP"}, rows, js)
		},
	}
}

type endpointJSON struct {
	Interface string `json:"interface"`
	Ifindex   uint32 `json:"ifindex"`
	IPv4      string `json:"ipv4"`
	MAC       string `json:"mac"`
}

func newEndpointsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "endpoints",
		Short: "Decode the endpoints map: the workloads behind each cali* interface",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := g.open()
			if err != nil {
				return err
			}
			defer set.Close()
			eps, err := set.Endpoints.List()
			if err != nil {
				return err
			}
			var rows [][]string
			js := []endpointJSON{}
			for _, e := range eps {
				rows = append(rows, []string{ifName(e.Ifindex), strconv.FormatUint(uint64(e.Ifindex), 10), e.IPv4.String(), e.MAC.String()})
				js = append(js, endpointJSON{ifName(e.Ifindex), e.Ifindex, e.IPv4.String(), e.MAC.String()})
			}
			return g.render(cmd.OutOrStdout(), []string{"INTERFACE", "IFINDEX", "IPV4", "MAC"}, rows, js)
		},
	}
}

type counterJSON struct {
	Interface string `json:"interface"`
	Ifindex   uint32 `json:"ifindex"`
	Hook      string `json:"hook"`
	Reason    string `json:"reason"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

func newCountersCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "counters",
		Short: "Forwarding and drop counters by interface, hook and reason (summed over CPUs)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := g.open()
			if err != nil {
				return err
			}
			defer set.Close()
			cs, err := set.Counters.List()
			if err != nil {
				return err
			}
			var rows [][]string
			js := []counterJSON{}
			for _, c := range cs {
				rows = append(rows, []string{ifName(c.Ifindex), c.Hook.String(), c.Reason.String(),
					strconv.FormatUint(c.Packets, 10), strconv.FormatUint(c.Bytes, 10)})
				js = append(js, counterJSON{ifName(c.Ifindex), c.Ifindex, c.Hook.String(), c.Reason.String(), c.Packets, c.Bytes})
			}
			return g.render(cmd.OutOrStdout(), []string{"INTERFACE", "HOOK", "REASON", "PACKETS", "BYTES"}, rows, js)
		},
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
