package main

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/agent/point"
)

// cmdPoints connects to every source of a site file once and prints each
// point's value, quality and age: the first thing to run on a new site.
// It exits 1 when any point is not good, so that scripts can use it.
func cmdPoints(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("points", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "/etc/siteagent/site.toml", "site file")
	wait := fs.Duration("timeout", 15*time.Second, "how long each source may take to connect and read")
	var lf logFlags
	lf.register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: siteagent points [--config FILE] [--timeout D]")
		return 2
	}
	if lf.level == "info" {
		lf.level = "warn" // the table says what matters; warnings explain it
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
	ctx, cancel := signalContext()
	defer cancel()
	probes, err := cfg.ProbeSources(ctx, log, *wait)
	if err != nil {
		fmt.Fprintln(stderr, "siteagent:", err)
		return 1
	}
	now := time.Now()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POINT\tVALUE\tUNIT\tQUALITY\tAGE\tNOTE")
	notGood, total := 0, 0
	for _, sp := range probes {
		for _, pp := range sp.Points {
			total++
			p := pp.Point
			value, age, note := "-", "-", ""
			if p.Quality != point.Bad {
				value = strconv.FormatFloat(p.Value, 'g', 8, 64)
			}
			if p.Source != 0 && p.Reason != point.NeverRead {
				a := p.Age(now)
				age = a.Round(time.Millisecond).String()
				if p.Quality != point.Bad && pp.StaleAfter > 0 && a > pp.StaleAfter {
					note = "stale (older than " + pp.StaleAfter.String() + ")"
				}
			}
			if p.Quality != point.Good {
				note = p.Reason.String()
			}
			if p.Quality != point.Good || note != "" {
				notGood++
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", pp.Name, value, pp.Unit, p.Quality, age, note)
		}
	}
	tw.Flush()
	for _, sp := range probes {
		if sp.Err != "" {
			fmt.Fprintf(stdout, "%s source %s: %s\n", sp.Kind, sp.Name, sp.Err)
		}
	}
	fmt.Fprintf(stdout, "%d of %d point(s) good and fresh\n", total-notGood, total)
	if notGood > 0 {
		return 1
	}
	return 0
}
