package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/agentapi"
	"github.com/margaynet/margay/control/hostconv"
)

// newNodeStatusCmd prints what `calicoctl node status` prints, from this host's agent.
func newNodeStatusCmd(g *globals) *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Is this host's agent running, and the state of its BGP sessions",
		Long: `Ask this host's margay-agent (its health and metrics address, --agent) whether it runs and
how its BGP sessions stand, in the form calicoctl node status prints.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, agent, out := cmd.Context(), agentapi.New(addr, 5*time.Second), cmd.OutOrStdout()
			if err := agent.Healthy(ctx); err != nil {
				fmt.Fprintln(out, "Margay process is not running.")
				return fmt.Errorf("node status: no healthy agent at %s", addr)
			}
			peers, err := agent.BGPPeers(ctx)
			bgpOff := errors.Is(err, agentapi.ErrBGPOff)
			if bgpOff {
				peers = []hostconv.PeerStatus{}
			} else if err != nil {
				return fmt.Errorf("node status: %w", err)
			}
			if g.output == "json" {
				return g.render(out, nil, nil, peers)
			}
			fmt.Fprint(out, "Margay process is running.\n\n")
			if bgpOff {
				fmt.Fprint(out, "BGP is not running on this node (margay-agent --bgp); remote routes come from the datastore.\n")
				return nil
			}
			fmt.Fprint(out, "IPv4 BGP status\n")
			if len(peers) == 0 {
				fmt.Fprint(out, "No IPv4 peers found.\n")
			} else {
				writeStatusTable(out, peers)
			}
			fmt.Fprint(out, "\nIPv6 BGP status\nNo IPv6 peers found.\n")
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "agent", agentapi.DefaultAddr, "health and metrics address of this host's margay-agent")
	return cmd
}

// writeStatusTable draws the peers as calicoctl does: up/down, and the session state as info.
func writeStatusTable(w io.Writer, peers []hostconv.PeerStatus) {
	header := []string{"PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"}
	rows := [][]string{}
	for _, p := range peers {
		state := "down"
		if p.State == "Established" {
			state = "up"
		}
		since := ""
		if !p.Since.IsZero() {
			since = p.Since.Local().Format("15:04:05")
		}
		info := p.State
		if p.Info != "" && p.State != "Established" {
			info += " " + p.Info
		}
		rows = append(rows, []string{p.Address, p.Type, state, since, info})
	}
	width := make([]int, len(header))
	for i, h := range header {
		width[i] = len(h)
	}
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	line := "+"
	for _, wd := range width {
		line += strings.Repeat("-", wd+2) + "+"
	}
	row := func(cells []string) {
		s := "|"
		for i, c := range cells {
			s += " " + c + strings.Repeat(" ", width[i]-len(c)) + " |"
		}
		fmt.Fprintln(w, s)
	}
	fmt.Fprintln(w, line)
	row(header)
	fmt.Fprintln(w, line)
	for _, r := range rows {
		row(r)
	}
	fmt.Fprintln(w, line)
}
