// Command margayctl is the operator's tool: it manages pools, IPAM, nodes and workloads in the
// datastore and decodes a host's dataplane maps (routes, endpoints, counters) from their pins.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/margaynet/margay/control/ctlconfig"
	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/loader"
)

type globals struct {
	root       string
	output     string
	ds         datastore.Config
	configFile string
	flags      *pflag.FlagSet // the root's persistent flags, to tell a given flag from its default

	host     *ctlconfig.File  // the config file, once loaded
	used     datastore.Config // what client connected with
	nodeFrom string           // where node() found the node name
}

// client connects to the datastore: flags first, then MARGAY_* variables, then the config file
// (--config, MARGAYCTL_CONFIG or /etc/margay/margayctl.cfg).
func (g *globals) client(ctx context.Context) (*datastore.Client, error) {
	cfg := g.ds
	if err := cfg.ApplyEnv(os.Getenv); err != nil {
		return nil, err
	}
	h, err := g.hostConfig()
	if err != nil {
		return nil, err
	}
	cfg.FillFrom(h.Datastore)
	g.used = cfg
	// Bounded by the dial timeout: an unreachable etcd answers quickly with what is wrong.
	return datastore.Dial(ctx, cfg, datastore.WithLogger(warnLogger(os.Stderr)))
}

// warnLogger logs warnings and errors to w: what margayctl calls reports what it did through
// the command's output, not its info logs.
func warnLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
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
	cmd.PersistentFlags().StringVar(&g.root, "bpffs-root", loader.DefaultRoot, "bpffs directory of the host's pinned maps (default: bpffsRoot of the config file, else "+loader.DefaultRoot+")")
	cmd.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table or json (get: also wide and yaml)")
	cmd.PersistentFlags().StringVar(&g.configFile, "config", "", "this host's config file (YAML or JSON: etcd settings, nodeName, bpffsRoot), below flags and MARGAY_* variables (default: MARGAYCTL_CONFIG, else "+ctlconfig.DefaultPath+" if it exists)")
	g.flags = cmd.PersistentFlags()
	g.ds.BindFlags(cmd.PersistentFlags())
	cmd.PersistentFlags().Lookup("etcd-dial-timeout").Usage = fmt.Sprintf(
		"how long to wait for etcd to answer before failing (default %s; env MARGAY_ETCD_DIAL_TIMEOUT)", datastore.DefaultCommandTimeout)
	cmd.AddCommand(newRoutesCmd(g), newEndpointsCmd(g), newCountersCmd(g), newPoolCmd(g), newIPAMCmd(g), newNodeCmd(g), newWorkloadCmd(g), newBGPCmd(g), newPolicyCmd(g), newConntrackCmd(g), newMonitorCmd(g), newLabCmd(),
		newApplyCmd(g), newCreateCmd(g), newReplaceCmd(g), newDeleteCmd(g), newGetCmd(g))
	return cmd
}
