package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/datastore/etcdembed"
	"github.com/margaynet/margay/control/lab"
	"github.com/margaynet/margay/control/lab/kube"
)

func newLabCmd() *cobra.Command {
	var cfg lab.Config
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "The reference multi-host network on this machine, in network namespaces",
	}
	cmd.PersistentFlags().StringVar(&cfg.StateDir, "state-dir", "/run/margay-lab", "pid files, logs, etcd data and the hosts' margayctl config files of the lab")
	// For tests, which must not meet a lab an operator runs.
	cmd.PersistentFlags().StringVar(&cfg.Prefix, "prefix", "", "prefix of the lab's namespace and pin directory names")
	cmd.PersistentFlags().StringVar(&cfg.BPFFS, "bpffs", "/sys/fs/bpf", "bpffs under which the lab's agents pin")
	_ = cmd.PersistentFlags().MarkHidden("prefix")
	_ = cmd.PersistentFlags().MarkHidden("bpffs")
	binDir := func() string {
		exe, err := os.Executable()
		if err != nil {
			return "bin"
		}
		return filepath.Dir(exe)
	}

	var (
		check         bool
		kubeBin, repo string
	)
	up := &cobra.Command{
		Use:   "up",
		Short: "Build the lab, show it, and keep it up until Ctrl-C (or exit after --check)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			cfg.BinDir, cfg.Out = binDir(), cmd.OutOrStdout()
			if cfg.K8s {
				return upK8s(ctx, cmd.OutOrStdout(), kube.LabConfig{Lab: cfg, KubeBin: kubeBin, Repo: repo, Workloads: true}, check)
			}
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
			if cfg.Docker {
				printDockerHelp(cmd.OutOrStdout(), cfg, l)
				<-ctx.Done()
				fmt.Fprintln(cmd.OutOrStdout(), "\ntaking the lab down")
				return lab.Down(cfg)
			}
			fmt.Fprintf(cmd.OutOrStdout(), `
The lab is up. Explore it from another shell:
  margayctl lab exec vm100 -- ip route
  margayctl lab exec vm100 -- margayctl node status
  margayctl lab exec vm100 -- margayctl routes
  margayctl lab exec vm100 -- margayctl workload list
  margayctl lab exec w100 -- ping 198.19.0.64
  bpftool map dump pinned /sys/fs/bpf/margay-lab/vm100/routes
Each agent serves /metrics, /healthz and /readyz at 127.0.0.1:9091 inside its host.
Inside a host, margayctl reads the host's etcd, node and pins from %s/<host>/margayctl.cfg
(lab exec sets MARGAYCTL_CONFIG). Logs are in %s. Ctrl-C takes the lab down (or, from
another shell: margayctl lab down).
`, cfg.StateDir, cfg.StateDir)
			<-ctx.Done()
			fmt.Fprintln(cmd.OutOrStdout(), "\ntaking the lab down")
			return lab.Down(cfg)
		},
	}
	up.Flags().IntVar(&cfg.Hosts, "hosts", 3, "number of hosts (vm100, vm101, …)")
	up.Flags().BoolVar(&cfg.Gateway, "gateway", false, "add a gateway router (BIRD) peering with every host and an outside client behind it")
	up.Flags().BoolVar(&cfg.Docker, "docker", false, "the walkthrough with Docker: a dockerd and margay-docker per host, networks net1 and net2 on every host, containers workload-A…E (docker run … busybox) instead of CNI workloads")
	up.Flags().BoolVar(&cfg.K8s, "k8s", false, "Kubernetes: a control plane and a node (containerd, kubelet, kube-proxy) per host, Margay's DaemonSet from deploy/k8s/margay.yaml with the node image built here, and a Deployment with a pod per node (needs make k8s-bins)")
	up.Flags().StringVar(&kubeBin, "kube-bin", kube.DefaultBinDir, "with --k8s: the Kubernetes binaries (make k8s-bins)")
	up.Flags().StringVar(&repo, "repo", ".", "with --k8s: Margay's repository (deploy/Dockerfile, deploy/k8s/margay.yaml)")
	up.Flags().BoolVar(&check, "check", false, "verify (ping between every pair of workloads; with --docker also the routes and that networks do not reach each other), take the lab down and exit non-zero on failure")

	down := &cobra.Command{
		Use:   "down",
		Short: "Stop a running lab up and remove everything a lab left, also after a crash or kill",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.BinDir, cfg.Out = binDir(), cmd.OutOrStdout()
			// Kubernetes nodes first (a lab of any kind: kube.Down does what lab.Down does).
			return kube.Down(kube.LabConfig{Lab: cfg})
		},
	}

	execCmd := &cobra.Command{
		Use:   "exec NAME -- COMMAND [ARGS…]",
		Short: "Run a command inside a lab host or workload (vm100, w100, …); in a host margayctl uses the host's config file, and docker the host's dockerd (--docker)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := cfg.Command(binDir(), args[0], args[1:]...)
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
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

// printDockerHelp tells how to follow the walkthrough in a Docker lab from another shell.
func printDockerHelp(w io.Writer, cfg lab.Config, l *lab.Lab) {
	ip := map[string]string{}
	for _, wl := range l.Workloads {
		ip[wl.Name] = wl.IP.String()
	}
	fmt.Fprintf(w, `
The lab is up, with a dockerd per host. Follow the walkthrough from another shell:
  margayctl lab exec vm100 -- docker ps
  margayctl lab exec vm100 -- docker network ls
  margayctl lab exec vm100 -- docker exec workload-A ip a
  margayctl lab exec vm100 -- docker exec workload-A ping -c 1 %s        # workload-B, net1 too
  margayctl lab exec vm100 -- docker exec workload-A ping -c 1 -W 2 %s   # workload-D, net2: no answer
  margayctl lab exec vm100 -- docker run --name workload-F -tid --net net2 busybox
  margayctl lab exec vm100 -- ip route
  margayctl lab exec vm100 -- margayctl workload list
lab exec runs the command in the host's network and mount namespaces (its /run/docker/plugins
holds the host's margay-docker) with DOCKER_HOST=unix://%s/<host>/docker.sock
and MARGAYCTL_CONFIG=%s/<host>/margayctl.cfg.
Logs: %s (etcd, agents) and %s/<host> (dockerd, margay-docker).
Ctrl-C takes the lab down (or, from another shell: margayctl lab down).
`, ip["workload-B"], ip["workload-D"], cfg.StateDir, cfg.StateDir, cfg.StateDir, cfg.StateDir)
}

// upK8s is lab up --k8s: the lab, its report, then --check or waiting for Ctrl-C.
func upK8s(ctx context.Context, w io.Writer, cfg kube.LabConfig, check bool) error {
	l, err := kube.Up(ctx, cfg)
	if err != nil {
		_ = kube.Down(cfg)
		return fmt.Errorf("lab up: %w", err)
	}
	l.Report(ctx, w)
	if check {
		err := l.Check(ctx)
		_ = kube.Down(cfg)
		if err != nil {
			return fmt.Errorf("lab check: %w", err)
		}
		fmt.Fprintln(w, "\nlab check passed")
		return nil
	}
	fmt.Fprintf(w, `
The Kubernetes lab is up. Explore it from another shell:
  margayctl lab exec vm100 -- kubectl get pods -A -o wide
  margayctl lab exec vm100 -- kubectl exec deploy/%s -- ip a
  margayctl lab exec vm100 -- margayctl workload list
  margayctl lab exec vm100 -- bpftool map dump pinned /sys/fs/bpf/margay/routes
  margayctl lab exec vm100 -- ip route
Inside a host, kubectl uses the lab's admin kubeconfig (%s) and /sys/fs/bpf, /etc/cni/net.d
and /var/log are the node's own. Logs are in %s and %s/<host>. Ctrl-C takes the lab down (or,
from another shell: margayctl lab down).
`, kube.LabDeployment, cfg.Lab.AdminKubeconfig(), cfg.Lab.StateDir, cfg.Lab.StateDir)
	<-ctx.Done()
	fmt.Fprintln(w, "\ntaking the lab down")
	return kube.Down(cfg)
}
