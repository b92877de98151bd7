package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/sim"
	"github.com/siteagent/siteagent/sim/broker"
	"github.com/siteagent/siteagent/sim/miners"
)

// The miners demo: the simulated site of `siteagent demo`, but its 2,000
// ASIC miners are LuxOS machines on loopback (sim/miners, one listener
// each on 127.10.x.y) that the agent sheds and wakes through the LuxOS
// API, a few of them misbehaving. The site's meter sees their power.

const minersDemoFile = "demo-miners.toml"

func cmdDemoMiners(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo-miners", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenario := fs.String("scenario", sim.DefaultScenario, "scenario to play (siteagent demo --list shows them)")
	durFlag := fs.String("duration", "", "how long to run (default: the scenario's length)")
	asJSON := fs.Bool("json", false, "print one JSON object per line instead of the timeline")
	faulty := fs.Int("faulty", 12, "how many miners misbehave (slow, garbled, refusing, dropping, ignoring)")
	lf := logFlags{}
	fs.StringVar(&lf.format, "log-format", "text", "log format: text or json")
	fs.StringVar(&lf.level, "log-level", "error", "agent log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	sc, ok := sim.ScenarioByName(*scenario)
	if !ok {
		fmt.Fprintf(stderr, "siteagent demo-miners: no scenario %q; siteagent demo --list shows them\n", *scenario)
		return 2
	}
	duration := sc.Duration
	if *durFlag != "" {
		d, err := parseDuration("duration", *durFlag)
		if err != nil {
			fmt.Fprintln(stderr, "siteagent demo-miners:", err)
			return 2
		}
		duration = d
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "siteagent demo-miners:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runMinersDemo(ctx, sc, duration, *faulty, *asJSON, stdout, log); err != nil {
		fmt.Fprintln(stderr, "siteagent demo-miners:", err)
		return 1
	}
	return 0
}

// minersDemoPhysics is a LuxOS S19 of 3.5 kW with the transitions
// shortened as in the coil demo (a real LuxOS miner is off a few seconds
// after "curtail sleep" and back at full power about a minute after
// "curtail wakeup").
func minersDemoPhysics() miners.Physics {
	return miners.Physics{RatedW: 3500, SleepW: 15, SleepDelay: time.Second, SleepFall: 500 * time.Millisecond,
		WakeDelay: 3 * time.Second, WakeRamp: time.Second, HashrateTHs: 110}
}

// minersDemoSite starts the site, the LuxOS miners and a broker, and
// returns the demo-miners site file pointed at them.
func minersDemoSite(ctx context.Context, faulty int) (*agent.SiteConfig, *sim.Site, *miners.LuxOSFleet, *broker.Broker, func(), error) {
	data, err := configs.Files.ReadFile(minersDemoFile)
	if err != nil {
		return nil, nil, nil, nil, nil, err
	}
	const count = 2000
	lux, err := miners.StartLuxOS(miners.LuxOSConfig{Miners: count, Base: netip.MustParseAddr("127.10.0.1"), Physics: minersDemoPhysics()})
	if err != nil {
		return nil, nil, nil, nil, nil, fmt.Errorf("LuxOS simulators on 127.10.0.0/16: %w", err)
	}
	lux.SetSlowDelay(5 * time.Second)
	// A few miners misbehave, spread over the fleet, one kind each.
	kinds := []miners.Fault{miners.FaultSlow, miners.FaultGarbled, miners.FaultRefusing, miners.FaultDropping, miners.FaultIgnoring}
	for k := 0; k < faulty && k < count; k++ {
		lux.SetFault((k*997+13)%count, kinds[k%len(kinds)])
	}
	// The site file names port 4028; the simulators listen where they could.
	data = bytes.Replace(data, []byte("port = 4028"), []byte("port = "+strconv.Itoa(lux.Port())), 1)
	cfg, err := agent.Load("configs/"+minersDemoFile, data)
	if err != nil {
		lux.Close()
		return nil, nil, nil, nil, nil, fmt.Errorf("embedded demo config: %w", err)
	}
	scfg := sim.DefaultConfig()
	scfg.Miners = 0 // the ASIC load is the LuxOS miners'
	site := sim.New(scfg)
	// The meter sees the miners: their power, summed off the physics
	// lock every 50 ms.
	var asicW atomic.Uint64
	sum := func() {
		w, _ := lux.Totals()
		asicW.Store(math.Float64bits(w))
	}
	sum()
	site.SetExternalASIC(func() float64 { return math.Float64frombits(asicW.Load()) / 1000 })
	sctx, cancel := context.WithCancel(ctx)
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-t.C:
				sum()
			}
		}
	}()
	if err := site.Start(sctx, "127.0.0.1:0"); err != nil {
		cancel()
		lux.Close()
		return nil, nil, nil, nil, nil, fmt.Errorf("simulated site: %w", err)
	}
	for i := range cfg.Modbus {
		cfg.Modbus[i].URL = site.URL()
	}
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		cancel()
		site.Close()
		lux.Close()
		return nil, nil, nil, nil, nil, fmt.Errorf("embedded broker: %w", err)
	}
	if cfg.MQTT != nil && cfg.MQTT.Broker == "" {
		cfg.MQTT.Broker = b.URL()
	}
	// Scratch state, removed at exit (see demoSite).
	state, err := os.MkdirTemp("", "siteagent-demo-")
	if err != nil {
		cancel()
		b.Close()
		site.Close()
		lux.Close()
		return nil, nil, nil, nil, nil, err
	}
	cfg.Site.StateDir = state
	closeAll := func() {
		cancel()
		b.Close()
		site.Close()
		lux.Close()
		os.RemoveAll(state)
	}
	return cfg, site, lux, b, closeAll, nil
}

func runMinersDemo(ctx context.Context, sc sim.Scenario, duration time.Duration, faulty int, asJSON bool, out io.Writer, log *slog.Logger) error {
	cfg, site, lux, _, closeAll, err := minersDemoSite(ctx, faulty)
	if err != nil {
		return err
	}
	defer closeAll()

	tl := &timeline{out: out, json: asJSON, limitKW: cfg.Limits.ImportLimitKW}
	a, stop, err := startDemoAgent(ctx, cfg, tl, log)
	if err != nil {
		return err
	}
	fleet := a.MinerFleets()["asic"]
	if fleet == nil {
		stop()
		return fmt.Errorf("the demo site has no miner fleet named asic")
	}

	tl.start = time.Now()
	if !asJSON {
		fmt.Fprintf(out, "%d LuxOS miners on 127.10.0.1..%s, port %d; %d misbehave; the agent sheds them over the LuxOS API\n",
			len(lux.Addrs()), lastAddr(lux), lux.Port(), faulty)
	}
	tl.header(sc, duration)
	pctx, pcancel := context.WithTimeout(ctx, duration)
	defer pcancel()
	go func() {
		_ = site.Play(pctx, sc, func(st sim.Step) { tl.step(st) })
	}()
	sample := func() {
		st := site.Snapshot()
		_, modes := lux.Totals()
		st.MinersRunning = modes[miners.Mining] + modes[miners.Waking]
		st.MinersSleeping, st.MinersWaking, st.MinersStopping = modes[miners.Sleeping], modes[miners.Waking], modes[miners.Stopping]
		tl.sample(st)
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	sample()
loop:
	for {
		select {
		case <-pctx.Done():
			break loop
		case <-tick.C:
			sample()
		}
	}
	status := fleet.Status()
	var basis *agent.PowerBasis // the last plan's account of the group's power
	for _, g := range a.StatusNow().Plan.Groups {
		if g.Name == "asic" {
			basis = g.PowerBasis
		}
	}
	stop()
	tl.summary(a)
	minersSummary(out, asJSON, status, basis, lux)
	return nil
}

func lastAddr(lux *miners.LuxOSFleet) string {
	addrs := lux.Addrs()
	if len(addrs) == 0 {
		return "-"
	}
	ap, err := netip.ParseAddrPort(addrs[len(addrs)-1])
	if err != nil {
		return addrs[len(addrs)-1]
	}
	return ap.Addr().String()
}

// minersSummary prints what the fleet saw: miners by state, how the
// group's power was arrived at, and the misbehaving miners, each with its
// address and last error.
func minersSummary(out io.Writer, asJSON bool, st miner.Status, basis *agent.PowerBasis, lux *miners.LuxOSFleet) {
	if asJSON {
		b, _ := json.Marshal(map[string]any{"type": "miners", "counts": st.Counts, "power": st.Power, "plan_power_basis": basis, "problems": st.Problems,
			"curtail_commands": lux.CommandCount("curtail"), "logons": lux.CommandCount("logon")})
		fmt.Fprintln(out, string(b))
		return
	}
	states := make([]string, 0, len(st.Counts))
	for k := range st.Counts {
		states = append(states, k)
	}
	sort.Strings(states)
	fmt.Fprintf(out, "miners:  ")
	for i, k := range states {
		if i > 0 {
			fmt.Fprint(out, ", ")
		}
		fmt.Fprintf(out, "%d %s", st.Counts[k], k)
	}
	fmt.Fprintf(out, "; %d curtail commands and %d logons reached the miners\n", lux.CommandCount("curtail"), lux.CommandCount("logon"))
	p := st.Power
	fmt.Fprintf(out, "         group power %.0f kW: %.0f kW measured by %d PSUs, %.0f kW estimated from ratings for %d miners\n",
		p.TotalW/1000, p.MeasuredW/1000, p.Measured, p.RatedW/1000, p.Rated)
	for _, m := range st.Problems {
		fmt.Fprintf(out, "         %-22s %-11s %s\n", m.Host, m.State, m.LastError)
	}
}
