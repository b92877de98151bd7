package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/node"
)

// cmdNode runs the node role on a GPU server: `siteagent node --config
// FILE`, or checks a node file with --check.
func cmdNode(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "/etc/siteagent/node.toml", "node file")
	check := fs.Bool("check", false, "check the node file and exit: 0 with a summary, 1 with every problem")
	var lf logFlags
	lf.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "siteagent node: unexpected argument %q; use --config FILE\n", fs.Arg(0))
		return 2
	}
	cfg, err := node.LoadFile(*file)
	if err != nil {
		printConfigError(stderr, *file, err)
		return 1
	}
	if *check {
		if err := cfg.Summarize(stdout); err != nil {
			fmt.Fprintln(stderr, "siteagent:", err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: OK\n", *file)
		return 0
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "siteagent:", err)
		return 2
	}
	log = log.With("node", cfg.Node.ID)
	gpus, err := openGPUs(cfg, log)
	if err != nil {
		log.Error("cannot open the GPUs", "backend", cfg.GPU.Backend, "err", err)
		return 1
	}
	opt := node.Options{Log: log, Version: version, Notify: sdNotify(log)}
	if iv, err := daemon.SdWatchdogEnabled(false); err == nil && iv > 0 {
		opt.WatchdogInterval = iv / 2
	}
	n, err := node.New(cfg, gpus, opt)
	if err != nil {
		gpus.Close(false)
		log.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := n.Run(ctx); err != nil {
		gpus.Close(false)
		log.Error("node failed", "err", err)
		return 1
	}
	return 0
}

// openGPUs opens the backend the node file names: this host's NVML, or
// simulated GPUs (tests and demos only).
func openGPUs(cfg *node.Config, log *slog.Logger) (node.GPUs, error) {
	opts := nvml.Options{DryRun: cfg.GPU.DryRun, Log: log.With("part", "nvml")}
	if cfg.GPU.DryRun {
		log.Warn("dry run: GPU power limits are read and logged, never set")
	}
	if cfg.GPU.Backend == node.BackendMock {
		log.Warn("GPU backend is MOCK: these GPUs are simulated and nothing real is controlled (tests and demos only)")
		return openMockGPUs(cfg, opts)
	}
	h, err := nvml.OpenSystem(opts)
	if err != nil {
		return nil, err
	}
	log.Info("NVML opened", "driver", h.DriverVersion(), "gpus", len(h.GPUs()))
	return h, nil
}
