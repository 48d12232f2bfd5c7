// Command margay-docker is Margay's Docker plugin: the network driver "margay" and the IPAM
// driver "margay-ipam" of libnetwork's remote API, so that `docker network create --driver margay
// --ipam-driver margay-ipam net1` and `docker run --net net1` make containers Margay workloads.
// It runs on every Docker host, in the host's network namespace, beside margay-agent.
// docs/docker.md is the design.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/control/datastore"
	"github.com/margaynet/margay/control/docker"
	"github.com/margaynet/margay/control/ipam"
	"github.com/margaynet/margay/loader"
)

// The plugin names dockerd knows the drivers by: --driver margay --ipam-driver margay-ipam.
var pluginNames = []string{"margay", "margay-ipam"}

type options struct {
	node        string
	listen      string
	pluginDir   string
	dockerSock  string
	logLevel    string
	configFile  string
	callTimeout time.Duration
	policyWait  time.Duration
	bpffsRoot   string
	ds          datastore.Config
}

func main() {
	if err := newCommand().Execute(); err != nil {
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:          "margay-docker",
		Short:        "Margay's Docker network and IPAM plugin (libnetwork remote API)",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var l slog.Level
			if err := l.UnmarshalText([]byte(o.logLevel)); err != nil {
				return fmt.Errorf("parse --log-level: %w", err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return run(ctx, o, log)
		},
	}
	host, _ := os.Hostname()
	f := cmd.Flags()
	f.StringVar(&o.node, "node-name", host, "this node's name in the datastore")
	f.StringVar(&o.listen, "listen", "unix", `"unix": serve on <plugin-dir>/margay.sock and margay-ipam.sock; "tcp://127.0.0.1:PORT": serve there and write <plugin-dir>/margay.spec and margay-ipam.spec, which stay at exit (one dockerd per network namespace: each dials 127.0.0.1 in its own)`)
	f.StringVar(&o.pluginDir, "plugin-dir", "", "where dockerd looks for the plugin (default: /run/docker/plugins for unix, /etc/docker/plugins for tcp)")
	f.StringVar(&o.dockerSock, "docker-socket", "/var/run/docker.sock", "dockerd's API socket, asked for network names")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&o.configFile, "config", "", "datastore config file (YAML or JSON), below flags and MARGAY_* variables")
	f.DurationVar(&o.policyWait, "policy-setup-timeout", 0, "wait up to this long, before dockerd starts a container, until this host's margay-agent has programmed it (its policy in force), and fail the start otherwise; 0: do not wait (as margay-cni's policySetupTimeout)")
	f.StringVar(&o.bpffsRoot, "bpffs-root", loader.DefaultRoot, "where this host's margay-agent pins its maps and links (its --bpffs-root), for --policy-setup-timeout")
	f.DurationVar(&o.callTimeout, "call-timeout", docker.DefaultCallTimeout, "how long one of dockerd's calls may take, e.g. waiting for etcd, before it fails (dockerd itself waits without a limit)")
	o.ds.BindFlags(f)
	return cmd
}

func (o options) datastoreConfig() (datastore.Config, error) {
	return o.ds.Resolve(os.Getenv, o.configFile)
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	cfg, err := o.datastoreConfig()
	if err != nil {
		return err
	}
	if err := datastore.ValidateName(o.node); err != nil {
		return fmt.Errorf("--node-name: %w", err)
	}
	if o.callTimeout <= 0 {
		o.callTimeout = docker.DefaultCallTimeout
	}
	if o.policyWait < 0 || o.policyWait >= o.callTimeout {
		return fmt.Errorf("--policy-setup-timeout %s: want 0 (no wait) up to less than --call-timeout (%s)", o.policyWait, o.callTimeout)
	}
	ds, err := datastore.New(ctx, cfg, datastore.WithLogger(log))
	if err != nil {
		return err
	}
	defer ds.Close()
	srv := docker.New(ds, ipam.New(ds, ipam.WithLogger(log)), o.node, docker.WithLogger(log),
		docker.WithNetworkNamer(docker.DockerAPINamer(o.dockerSock)), docker.WithCallTimeout(o.callTimeout),
		docker.WithPolicySetup(o.bpffsRoot, o.policyWait))
	defer srv.Close()
	listeners, files, err := listen(o)
	if err != nil {
		return err
	}
	defer func() {
		for _, f := range files {
			_ = os.Remove(f)
		}
	}()
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, len(listeners))
	for _, ln := range listeners {
		log.Info("serving the docker plugin", "address", ln.Addr().String(), "node", o.node)
		go func() { errc <- hs.Serve(ln) }()
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if serr := hs.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// listen opens what --listen says and writes the files dockerd discovers the plugin by; files
// are to be removed at exit.
func listen(o options) (lns []net.Listener, files []string, err error) {
	defer func() {
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			for _, f := range files {
				_ = os.Remove(f)
			}
		}
	}()
	switch {
	case o.listen == "unix":
		dir := o.pluginDir
		if dir == "" {
			dir = "/run/docker/plugins"
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, nil, err
		}
		for _, name := range pluginNames {
			path := filepath.Join(dir, name+".sock")
			_ = os.Remove(path) // a previous run's
			ln, err := net.Listen("unix", path)
			if err != nil {
				return lns, files, err
			}
			lns, files = append(lns, ln), append(files, path)
		}
		return lns, files, nil
	case strings.HasPrefix(o.listen, "tcp://"):
		addr := strings.TrimPrefix(o.listen, "tcp://")
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		lns = append(lns, ln)
		dir := o.pluginDir
		if dir == "" {
			dir = "/etc/docker/plugins"
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return lns, nil, err
		}
		// The spec files stay when the plugin stops: with one dockerd per network namespace they
		// are shared by the plugins of every namespace, which serve the same address in their own
		// (and a stopped plugin's address refuses connections, as a missing socket would). They
		// are written whole (a temporary file renamed), as several plugins may start at once.
		for _, name := range pluginNames {
			path := filepath.Join(dir, name+".spec")
			tmp := fmt.Sprintf("%s.tmp.%d", path, os.Getpid())
			if err := os.WriteFile(tmp, []byte("tcp://"+ln.Addr().String()+"\n"), 0o644); err != nil {
				return lns, files, err
			}
			if err := os.Rename(tmp, path); err != nil {
				_ = os.Remove(tmp)
				return lns, files, err
			}
		}
		return lns, nil, nil
	}
	return nil, nil, fmt.Errorf("--listen %q: want unix or tcp://ADDRESS:PORT", o.listen)
}
