// Command siteagent is the edge agent of a mining / AI campus: it reads the
// site's meters and relays, holds the site under its limits and sheds load
// in order during grid events, and reports upstream over MQTT.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	toml "github.com/pelletier/go-toml/v2"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/agent/config"
)

// version is set by the Makefile (-ldflags "-X main.version=...").
var version = "dev"

const usage = `siteagent: site power controller for mining and AI campuses

usage:
  siteagent run [--config FILE]          run the site controller (default /etc/siteagent/site.toml)
  siteagent check-config FILE            check a site (or node) file; exit 0 with a summary, 1 with every error
  siteagent node [--config FILE] [--check]
                                         run the node role on a GPU server (default /etc/siteagent/node.toml)
  siteagent demo [--scenario NAME] [--duration D] [--json] [--list]
                                         run the agent against the built-in simulated site
  siteagent demo-miners [--scenario NAME] [--duration D] [--json] [--faulty N]
                                         the same site with 2,000 LuxOS miners shed over their API
  siteagent points [--config FILE]       read every point once: value, quality, age
  siteagent opcua browse ENDPOINT [NODE] list an OPC UA server's nodes, types and values
  siteagent opcua gen-cert --cert F --key F
                                         make the agent's OPC UA application certificate
  siteagent modbus read ENDPOINT UNIT ADDRESS COUNT [--type T --order O]
                                         read and decode registers as the agent would
  siteagent version                      print the version

Logs go to stderr; --log-format json|text and --log-level debug|info|warn|error
apply to run, node and demo.
`

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "check-config":
		return cmdCheckConfig(args[1:], stdout, stderr)
	case "node":
		return cmdNode(args[1:], stdout, stderr)
	case "demo":
		return cmdDemo(args[1:], stdout, stderr)
	case "demo-miners":
		return cmdDemoMiners(args[1:], stdout, stderr)
	case "points":
		return cmdPoints(args[1:], stdout, stderr)
	case "opcua":
		return cmdOPCUA(args[1:], stdout, stderr)
	case "modbus":
		return cmdModbus(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintf(stdout, "siteagent %s (%s)\n", version, gpuSupport())
		return 0
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "siteagent: unknown command %q\n\n%s", args[0], usage)
	return 2
}

type logFlags struct {
	format, level string
}

func (l *logFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn, error")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", l.level)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use text or json", l.format)
}

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "/etc/siteagent/site.toml", "site file")
	var lf logFlags
	lf.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "siteagent:", err)
		return 2
	}
	cfg, err := agent.LoadFile(*file)
	if err != nil {
		printConfigError(stderr, *file, err)
		return 1
	}
	opt := agent.Options{Log: log, Version: version, Notify: sdNotify(log)}
	if iv, err := daemon.SdWatchdogEnabled(false); err == nil && iv > 0 {
		opt.WatchdogInterval = iv / 2
	}
	a, err := agent.New(cfg, opt)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		log.Error("agent failed", "err", err)
		return 1
	}
	return 0
}

// sdNotify talks to systemd when it started us (NOTIFY_SOCKET set).
func sdNotify(log *slog.Logger) func(string) {
	return func(state string) {
		if _, err := daemon.SdNotify(false, state); err != nil {
			log.Warn("systemd notify failed", "state", state, "err", err)
		}
	}
}

func cmdCheckConfig(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "usage: siteagent check-config FILE")
		return 2
	}
	if isNodeFile(args[0]) {
		// A GPU server's node file: check it as `siteagent node --check` would.
		return cmdNode([]string{"--check", "--config", args[0]}, stdout, stderr)
	}
	cfg, err := agent.LoadFile(args[0])
	if err != nil {
		printConfigError(stderr, args[0], err)
		return 1
	}
	if err := cfg.Summarize(stdout); err != nil {
		fmt.Fprintln(stderr, "siteagent:", err)
		return 1
	}
	if files := cfg.CheckFiles(); len(files) > 0 {
		// Not problems of the file itself: the service's user may read
		// what this shell's cannot, and the other way round.
		fmt.Fprintln(stdout, "files the agent will read (checked as this user):")
		for _, f := range files {
			fmt.Fprintln(stdout, f)
		}
	}
	fmt.Fprintf(stdout, "%s: OK\n", args[0])
	return 0
}

// isNodeFile tells a node file (a [node] table, no [site]) from a site
// file, leniently: the strict check comes after.
func isNodeFile(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var top map[string]any
	if toml.Unmarshal(data, &top) != nil {
		return false
	}
	_, node := top["node"]
	_, site := top["site"]
	return node && !site
}

func printConfigError(w io.Writer, file string, err error) {
	var ce *config.Error
	if errors.As(err, &ce) {
		for _, p := range ce.Problems {
			fmt.Fprintln(w, p.String())
		}
		fmt.Fprintf(w, "%s: %d problem(s); nothing was started\n", file, len(ce.Problems))
		return
	}
	fmt.Fprintf(w, "%s: %v\n", file, err)
}

// durationFlag parses "30s" style flags with a clear error.
func parseDuration(name, s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("--%s %q: write a positive duration such as 45s or 2m", name, s)
	}
	return d, nil
}
