// Command margay-agent runs on every host: it loads Margay's eBPF dataplane, pins its maps and
// attaches the programs. Stopping it leaves forwarding running; the next agent adopts what it
// finds. `margay-agent --cleanup` removes the whole dataplane from the host.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/margaynet/margay/loader"
)

type options struct {
	root     string
	uplink   string
	xdp      bool
	tcMode   string
	cleanup  bool
	logLevel string
}

func main() {
	if err := newCommand().Execute(); err != nil {
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:          "margay-agent",
		Short:        "Margay host agent: loads and attaches the eBPF dataplane",
		Args:         cobra.NoArgs,
		SilenceUsage: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(o.logLevel)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if err := run(ctx, o, log); err != nil {
				log.Error("agent stopped", "error", err)
				return err
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.root, "bpffs-root", loader.DefaultRoot, "bpffs directory for pinned maps and links")
	f.StringVar(&o.uplink, "uplink", "", "uplink interface to attach from_net (and XDP) to, e.g. ens32")
	f.BoolVar(&o.xdp, "xdp", true, "attach the XDP prefilter to the uplink")
	f.StringVar(&o.tcMode, "tc-mode", "auto", "how to attach TC programs: auto, tcx or legacy (clsact)")
	f.BoolVar(&o.cleanup, "cleanup", false, "detach every Margay program, remove all pins and exit")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("parse --log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func parseTCMode(s string) (loader.TCMode, error) {
	switch strings.ToLower(s) {
	case "auto":
		return loader.TCAuto, nil
	case "tcx":
		return loader.TCX, nil
	case "legacy", "clsact":
		return loader.TCLegacy, nil
	}
	return 0, fmt.Errorf("parse --tc-mode: %q is not auto, tcx or legacy", s)
}

func run(ctx context.Context, o options, log *slog.Logger) error {
	if o.cleanup {
		if err := loader.Cleanup(o.root, log); err != nil {
			return fmt.Errorf("clean up: %w", err)
		}
		log.Info("dataplane removed", "root", o.root)
		return nil
	}
	mode, err := parseTCMode(o.tcMode)
	if err != nil {
		return err
	}
	dp, err := loader.Load(loader.WithRoot(o.root), loader.WithLogger(log), loader.WithTCMode(mode))
	if err != nil {
		return err
	}
	defer dp.Close()
	log.Info("dataplane loaded", "root", o.root)

	if o.uplink != "" {
		if err := dp.AttachUplink(o.uplink, o.xdp); err != nil {
			return err
		}
		log.Info("uplink attached", "interface", o.uplink, "xdp", o.xdp)
	}

	<-ctx.Done()
	if errors.Is(context.Cause(ctx), context.Canceled) {
		log.Info("stopping; the dataplane keeps forwarding", "root", o.root)
	}
	return nil
}
