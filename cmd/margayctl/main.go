// Command margayctl is the operator's tool: it manages pools, IPAM, nodes and workloads in the
// datastore and decodes a host's dataplane maps (routes, endpoints, counters) from their pins.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/loader"
)

type globals struct {
	root       string
	output     string
	ds         datastore.Config
	configFile string
}

// client connects to the datastore: flags first, then MARGAY_* variables, then --config.
func (g *globals) client(ctx context.Context) (*datastore.Client, error) {
	cfg := g.ds
	if err := cfg.ApplyEnv(os.Getenv); err != nil {
		return nil, err
	}
	if g.configFile != "" {
		fileCfg, err := datastore.LoadConfigFile(g.configFile)
		if err != nil {
			return nil, err
		}
		cfg.FillFrom(fileCfg)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// Bounded by the dial timeout: an unreachable etcd answers quickly with what is wrong.
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = datastore.DefaultCommandTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	return datastore.New(ctx, cfg, datastore.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))))
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
	cmd.PersistentFlags().StringVar(&g.configFile, "config", "", "datastore config file (YAML or JSON), below flags and MARGAY_* variables")
	g.ds.BindFlags(cmd.PersistentFlags())
	cmd.PersistentFlags().Lookup("etcd-dial-timeout").Usage = fmt.Sprintf(
		"how long to wait for etcd to answer before failing (default %s; env MARGAY_ETCD_DIAL_TIMEOUT)", datastore.DefaultCommandTimeout)
	cmd.AddCommand(newRoutesCmd(g), newEndpointsCmd(g), newCountersCmd(g), newPoolCmd(g), newIPAMCmd(g), newNodeCmd(g), newWorkloadCmd(g), newBGPCmd(g), newPolicyCmd(g), newConntrackCmd(g), newMonitorCmd(g), newLabCmd())
	return cmd
}
