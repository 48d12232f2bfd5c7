// Command margayctl is the operator's tool: it decodes a host's dataplane maps (routes,
// endpoints, counters) from their pins.
package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/loader"
)

type globals struct {
	root   string
	output string
}

func main() {
	if err := newRoot().Execute(); err != nil {
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	g := &globals{}
	cmd := &cobra.Command{
		Use:          "margayctl",
		Short:        "Inspect and operate a Margay host",
		SilenceUsage: true,
	}
	cmd.PersistentFlags().StringVar(&g.root, "bpffs-root", loader.DefaultRoot, "bpffs directory of the host's pinned maps")
	cmd.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json")
	cmd.AddCommand(newRoutesCmd(g), newEndpointsCmd(g), newCountersCmd(g))
	return cmd
}
