package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
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
	root, err := g.bpffsRoot()
	if err != nil {
		return nil, err
	}
	return maps.OpenPinned(root)
}

// render writes rows as JSON or as an aligned table.
func (g *globals) render(w io.Writer, header []string, rows [][]string, jsonValue any) error {
	if err := g.checkOutput(nil, nil); err != nil {
		return err
	}
	if g.output == "json" {
		return writeJSON(w, jsonValue)
	}
	return renderTable(w, header, rows)
}

// renderTable writes rows as an aligned table under header.
func renderTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, r := range append([][]string{header}, rows...) {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// writeJSON writes v as indented JSON, as every command's -o json does (monitor's lines aside).
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// mapCmd is a command that lists one pinned map: each entry becomes a table row and a JSON value.
func mapCmd[E, J any](g *globals, use, short string, header []string, list func(*maps.Set) ([]E, error),
	row func(E) []string, asJSON func(E) J) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return listMap(g, cmd.OutOrStdout(), header, list, row, asJSON)
		},
	}
}

// listMap prints the entries list reads from the pinned maps, each as a table row or a JSON value.
func listMap[E, J any](g *globals, w io.Writer, header []string, list func(*maps.Set) ([]E, error),
	row func(E) []string, asJSON func(E) J) error {
	set, err := g.open()
	if err != nil {
		return err
	}
	defer set.Close()
	entries, err := list(set)
	if err != nil {
		return err
	}
	var rows [][]string
	js := []J{}
	for _, e := range entries {
		rows = append(rows, row(e))
		js = append(js, asJSON(e))
	}
	return g.render(w, header, rows, js)
}

type routeJSON struct {
	Prefix    string `json:"prefix"`
	Flags     string `json:"flags"`
	Interface string `json:"interface"`
	Ifindex   uint32 `json:"ifindex"`
	NextHop   string `json:"nextHop,omitempty"`
}

func newRoutesCmd(g *globals) *cobra.Command {
	toJSON := func(r maps.Route) routeJSON {
		j := routeJSON{Prefix: r.Prefix.String(), Flags: r.Flags.String(), Interface: ifName(r.Ifindex), Ifindex: r.Ifindex}
		if r.NextHop.IsValid() {
			j.NextHop = r.NextHop.String()
		}
		return j
	}
	return mapCmd(g, "routes", "Decode the routes map (LPM trie) of this host",
		[]string{"PREFIX", "FLAGS", "INTERFACE", "NEXT HOP"},
		func(s *maps.Set) ([]maps.Route, error) { return s.Routes.List() },
		func(r maps.Route) []string {
			j := toJSON(r)
			return []string{j.Prefix, j.Flags, j.Interface, orDash(j.NextHop)}
		}, toJSON)
}

type endpointJSON struct {
	Interface string `json:"interface"`
	Ifindex   uint32 `json:"ifindex"`
	IPv4      string `json:"ipv4"`
	MAC       string `json:"mac"`
	// The compiled policy of each direction in the policy map; 0: no policy selects it.
	IngressProgram uint32 `json:"ingressProgram"`
	EgressProgram  uint32 `json:"egressProgram"`
}

func newEndpointsCmd(g *globals) *cobra.Command {
	toJSON := func(e maps.Endpoint) endpointJSON {
		return endpointJSON{ifName(e.Ifindex), e.Ifindex, e.IPv4.String(), e.MAC.String(), e.IngressProgram, e.EgressProgram}
	}
	program := func(p uint32) string {
		if p == 0 {
			return "-"
		}
		return strconv.FormatUint(uint64(p), 10)
	}
	return mapCmd(g, "endpoints", "Decode the endpoints map: the workloads behind each cali* interface",
		[]string{"INTERFACE", "IFINDEX", "IPV4", "MAC", "INGRESS", "EGRESS"},
		func(s *maps.Set) ([]maps.Endpoint, error) { return s.Endpoints.List() },
		func(e maps.Endpoint) []string {
			j := toJSON(e)
			return []string{j.Interface, strconv.FormatUint(uint64(j.Ifindex), 10), j.IPv4, j.MAC,
				program(j.IngressProgram), program(j.EgressProgram)}
		}, toJSON)
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
	toJSON := func(c maps.Counter) counterJSON {
		return counterJSON{ifName(c.Ifindex), c.Ifindex, c.Hook.String(), c.Reason.String(), c.Packets, c.Bytes}
	}
	return mapCmd(g, "counters", "Forwarding and drop counters by interface, hook and reason (summed over CPUs)",
		[]string{"INTERFACE", "HOOK", "REASON", "PACKETS", "BYTES"},
		func(s *maps.Set) ([]maps.Counter, error) { return s.Counters.List() },
		func(c maps.Counter) []string {
			j := toJSON(c)
			return []string{j.Interface, j.Hook, j.Reason, strconv.FormatUint(j.Packets, 10), strconv.FormatUint(j.Bytes, 10)}
		}, toJSON)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
