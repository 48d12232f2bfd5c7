package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/datastore/etcdembed"
	"github.com/margaynet/margay/tests/lab"
)

func newLabCmd() *cobra.Command {
	var cfg lab.Config
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "The reference multi-host network on this machine, in network namespaces",
	}
	cmd.PersistentFlags().StringVar(&cfg.StateDir, "state-dir", "/run/margay-lab", "pid files, logs and etcd data of the lab")
	binDir := func() string {
		exe, err := os.Executable()
		if err != nil {
			return "bin"
		}
		return filepath.Dir(exe)
	}

	var check bool
	up := &cobra.Command{
		Use:   "up",
		Short: "Build the lab, show it, and keep it up until Ctrl-C (or exit after --check)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			cfg.BinDir, cfg.Out = binDir(), cmd.OutOrStdout()
			l, err := lab.Up(ctx, cfg)
			if err != nil {
				_ = lab.Down(cfg)
				return fmt.Errorf("lab up: %w", err)
			}
			l.Report(ctx, cmd.OutOrStdout())
			if check {
				err := l.Check(ctx)
				_ = lab.Down(cfg)
				if err != nil {
					return fmt.Errorf("lab check: %w", err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), "\nlab check passed")
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), `
The lab is up. Explore it from another shell:
  margayctl lab exec vm100 -- ip route
  margayctl lab exec vm100 -- margayctl node status
  margayctl lab exec vm100 -- margayctl routes --bpffs-root /sys/fs/bpf/margay-lab/vm100
  margayctl lab exec w100 -- ping 198.19.0.64
  bpftool map dump pinned /sys/fs/bpf/margay-lab/vm100/routes
Each agent serves /metrics, /healthz and /readyz at 127.0.0.1:9091 inside its host.
Logs are in %s. Ctrl-C takes the lab down (or: margayctl lab down).
`, cfg.StateDir)
			<-ctx.Done()
			fmt.Fprintln(cmd.OutOrStdout(), "\ntaking the lab down")
			return lab.Down(cfg)
		},
	}
	up.Flags().IntVar(&cfg.Hosts, "hosts", 3, "number of hosts (vm100, vm101, …)")
	up.Flags().BoolVar(&cfg.Gateway, "gateway", false, "add a gateway router (BIRD) peering with every host and an outside client behind it")
	up.Flags().BoolVar(&check, "check", false, "verify (ping between every pair of workloads), take the lab down and exit non-zero on failure")

	down := &cobra.Command{
		Use:   "down",
		Short: "Remove everything a lab left, also after a crash or kill",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.BinDir = binDir()
			return lab.Down(cfg)
		},
	}

	execCmd := &cobra.Command{
		Use:   "exec NAME -- COMMAND [ARGS…]",
		Short: "Run a command inside a lab host or workload (vm100, w100, …)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := exec.Command("nsenter", append([]string{"--net=/run/netns/" + args[0], "--"}, args[1:]...)...)
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
			c.Env = append(os.Environ(), "PATH="+binDir()+":"+os.Getenv("PATH"))
			return c.Run()
		},
	}

	var listen, dataDir string
	etcd := &cobra.Command{
		Use:    "etcd",
		Short:  "Run the lab's single-member etcd (started by lab up inside its namespace)",
		Args:   cobra.NoArgs,
		Hidden: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			e, err := etcdembed.Start(ctx, dataDir, etcdembed.WithClientURL(listen),
				etcdembed.WithPeerURL("http://127.0.0.1:2380"))
			if err != nil {
				return err
			}
			defer e.Close()
			fmt.Fprintln(cmd.OutOrStdout(), "etcd serving", e.Endpoints())
			<-ctx.Done()
			return nil
		},
	}
	etcd.Flags().StringVar(&listen, "listen", "http://127.0.0.1:2379", "client URL")
	etcd.Flags().StringVar(&dataDir, "data-dir", "/run/margay-lab/etcd", "data directory")

	cmd.AddCommand(up, down, execCmd, etcd)
	return cmd
}
