package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/sim"
	"github.com/siteagent/siteagent/sim/broker"
)

// cmdDemo runs the real agent against the simulated site on loopback: a
// Modbus TCP server for the meter, relay, battery and PLC, miners and GPU
// servers behind it, and an MQTT broker. The timeline it prints is built
// from what the simulator measures and from what the agent publishes over
// MQTT, exactly as central ops would receive it.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	scenario := fs.String("scenario", sim.DefaultScenario, "scenario to play (see --list)")
	durFlag := fs.String("duration", "", "how long to run (default: the scenario's length)")
	asJSON := fs.Bool("json", false, "print one JSON object per line instead of the timeline")
	list := fs.Bool("list", false, "list the scenarios and exit")
	lf := logFlags{}
	fs.StringVar(&lf.format, "log-format", "text", "log format: text or json")
	fs.StringVar(&lf.level, "log-level", "warn", "agent log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *list {
		for _, sc := range sim.Scenarios() {
			fmt.Fprintf(stdout, "%-16s %3.0fs  %s\n", sc.Name, sc.Duration.Seconds(), sc.Description)
		}
		return 0
	}
	sc, ok := sim.ScenarioByName(*scenario)
	if !ok {
		fmt.Fprintf(stderr, "siteagent demo: no scenario %q; siteagent demo --list shows them\n", *scenario)
		return 2
	}
	duration := sc.Duration
	if *durFlag != "" {
		d, err := parseDuration("duration", *durFlag)
		if err != nil {
			fmt.Fprintln(stderr, "siteagent demo:", err)
			return 2
		}
		duration = d
	}
	log, err := lf.logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "siteagent demo:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runDemo(ctx, sc, duration, *asJSON, stdout, log); err != nil {
		fmt.Fprintln(stderr, "siteagent demo:", err)
		return 1
	}
	return 0
}

// demoSite starts the simulator and a broker and returns the demo site
// file pointed at them.
func demoSite(ctx context.Context) (*agent.SiteConfig, *sim.Site, *broker.Broker, error) {
	cfg, err := agent.Load("configs/"+configs.DemoName, configs.Demo())
	if err != nil {
		return nil, nil, nil, fmt.Errorf("embedded demo config: %w", err)
	}
	site := sim.New(sim.DefaultConfig())
	if err := site.Start(ctx, "127.0.0.1:0"); err != nil {
		return nil, nil, nil, fmt.Errorf("simulated site: %w", err)
	}
	for i := range cfg.Modbus {
		cfg.Modbus[i].URL = site.URL()
	}
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		site.Close()
		return nil, nil, nil, fmt.Errorf("embedded broker: %w", err)
	}
	if cfg.MQTT != nil && cfg.MQTT.Broker == "" {
		cfg.MQTT.Broker = b.URL()
	}
	// The demo's state (the MQTT queue, the audit log) goes to a scratch
	// directory removed at exit, never to a machine's /var/lib/siteagent.
	if cfg.Site.StateDir, err = os.MkdirTemp("", "siteagent-demo-"); err != nil {
		site.Close()
		b.Close()
		return nil, nil, nil, err
	}
	return cfg, site, b, nil
}

func runDemo(ctx context.Context, sc sim.Scenario, duration time.Duration, asJSON bool, out io.Writer, log *slog.Logger) error {
	cfg, site, b, err := demoSite(ctx)
	if err != nil {
		return err
	}
	defer site.Close()
	defer b.Close()
	defer os.RemoveAll(cfg.Site.StateDir)

	tl := &timeline{out: out, json: asJSON, limitKW: cfg.Limits.ImportLimitKW}
	a, stop, err := startDemoAgent(ctx, cfg, tl, log)
	if err != nil {
		return err
	}

	tl.start = time.Now()
	tl.header(sc, duration)
	pctx, pcancel := context.WithTimeout(ctx, duration)
	defer pcancel()
	go func() {
		_ = site.Play(pctx, sc, func(st sim.Step) { tl.step(st) })
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	tl.sample(site.Snapshot())
loop:
	for {
		select {
		case <-pctx.Done():
			break loop
		case <-tick.C:
			tl.sample(site.Snapshot())
		}
	}
	stop()
	tl.summary(a)
	return nil
}

// timeline prints what happens, in order, for a person (or with --json
// for a script).
type timeline struct {
	out     io.Writer
	json    bool
	start   time.Time
	limitKW float64

	mu          sync.Mutex
	plan        agent.PlanReport
	havePlan    bool
	events      int
	msgs        int
	peakImport  float64
	peakIsland  float64
	islandLimit float64
}

func (t *timeline) at(ts time.Time) float64 { return ts.Sub(t.start).Seconds() }

func (t *timeline) emit(v map[string]any) {
	b, _ := json.Marshal(v)
	fmt.Fprintln(t.out, string(b))
}

func (t *timeline) subscribe(url, filter string) (paho.Client, error) {
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("siteagent-demo-%d", os.Getpid())).SetCleanSession(true)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect %s: %v", url, tok.Error())
	}
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { t.message(m.Topic(), m.Payload()) })
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("subscribe %s: %v", filter, tok.Error())
	}
	return c, nil
}

func (t *timeline) message(topic string, payload []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.msgs++
	switch {
	case strings.HasSuffix(topic, "/plan"):
		var p agent.PlanReport
		if json.Unmarshal(payload, &p) == nil {
			t.plan, t.havePlan = p, true
		}
	case strings.HasSuffix(topic, "/events"):
		var e agent.EventReport
		if json.Unmarshal(payload, &e) != nil || t.start.IsZero() {
			return
		}
		t.events++
		if t.json {
			t.emit(map[string]any{"t": round3(t.at(e.TS)), "type": "event", "kind": e.Kind, "text": e.Text, "mode": e.Mode, "group": e.Group, "stage": e.Stage})
			return
		}
		fmt.Fprintf(t.out, "%6.2f   >> %s\n", t.at(e.TS), e.Text)
	}
}

func round3(v float64) float64 { return float64(int64(v*1000)) / 1000 }

func (t *timeline) header(sc sim.Scenario, d time.Duration) {
	if t.json {
		t.emit(map[string]any{"type": "scenario", "name": sc.Name, "description": sc.Description, "duration_s": d.Seconds()})
		return
	}
	fmt.Fprintf(t.out, "scenario %s (%s): %s\n\n", sc.Name, d, sc.Description)
	fmt.Fprintln(t.out, "     t  freq Hz  grid   import kW  site kW  budget kW   asic kW (running)   training kW/cap   inference kW/cap  mode")
}

func (t *timeline) step(st sim.Step) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.json {
		t.emit(map[string]any{"t": round3(t.at(time.Now())), "type": "scenario", "at_s": st.At.Seconds(), "note": st.Note})
		return
	}
	fmt.Fprintf(t.out, "%6.2f   ## %s\n", t.at(time.Now()), st.Note)
}

func (t *timeline) sample(s sim.State) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s.BreakerClosed {
		t.peakImport = max(t.peakImport, s.ImportKW)
	} else {
		t.peakIsland = max(t.peakIsland, s.SiteLoadKW-s.IslandCapacity)
	}
	mode, budget := "-", "-"
	if t.havePlan {
		mode = t.plan.Mode
		if t.plan.BudgetKW != nil {
			budget = fmt.Sprintf("%.0f", *t.plan.BudgetKW)
		}
	}
	grid := "on"
	if !s.BreakerClosed {
		grid = "ISL"
	}
	now := t.at(time.Now())
	if t.json {
		t.emit(map[string]any{"t": round3(now), "type": "sample", "frequency_hz": s.FrequencyHz, "breaker_closed": s.BreakerClosed,
			"import_kw": round3(s.ImportKW), "site_load_kw": round3(s.SiteLoadKW), "island_capacity_kw": round3(s.IslandCapacity),
			"asic_kw": round3(s.AsicKW), "miners_running": s.MinersRunning, "training_kw": round3(s.TrainingKW), "training_cap_kw": s.TrainingCapKW,
			"inference_kw": round3(s.InferenceKW), "inference_cap_kw": s.InferenceCapKW, "mode": mode, "budget": budget})
		return
	}
	fmt.Fprintf(t.out, "%6.2f  %7.3f  %-4s  %10.0f %8.0f  %9s  %8.0f (%5d)      %6.0f/%-6.0f      %6.0f/%-6.0f     %s\n",
		now, s.FrequencyHz, grid, s.ImportKW, s.SiteLoadKW, budget, s.AsicKW, s.MinersRunning, s.TrainingKW, s.TrainingCapKW, s.InferenceKW, s.InferenceCapKW, mode)
}

func (t *timeline) summary(a *agent.Agent) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := a.StatusNow()
	if t.json {
		t.emit(map[string]any{"type": "summary", "cycles": st.Cycles, "events": t.events, "mqtt_messages": t.msgs,
			"peak_import_kw": round3(t.peakImport), "import_limit_kw": t.limitKW, "peak_island_overload_kw": round3(t.peakIsland)})
		return
	}
	fmt.Fprintf(t.out, "\nsummary: %d control cycles, %d events and %d MQTT messages received by the demo's own subscriber\n", st.Cycles, t.events, t.msgs)
	fmt.Fprintf(t.out, "         peak import while grid-connected %.0f kW (limit %.0f kW)", t.peakImport, t.limitKW)
	if t.peakIsland != 0 {
		fmt.Fprintf(t.out, "; islanded, load minus capacity peaked at %+.0f kW", t.peakIsland)
	}
	fmt.Fprintln(t.out)
}

// startDemoAgent subscribes the timeline to the agent's topics, starts the
// agent on cfg and waits for its READY. stop ends the agent and the
// subscription and waits for both.
func startDemoAgent(ctx context.Context, cfg *agent.SiteConfig, tl *timeline, log *slog.Logger) (a *agent.Agent, stop func(), err error) {
	sub, err := tl.subscribe(cfg.MQTT.Broker, cfg.MQTT.TopicRoot+"/"+cfg.Site.ID+"/#")
	if err != nil {
		return nil, nil, fmt.Errorf("demo subscriber: %w", err)
	}
	ready := make(chan struct{})
	var once sync.Once
	a, err = agent.New(cfg, agent.Options{Log: log, Version: version, Notify: func(s string) {
		if s == "READY=1" {
			once.Do(func() { close(ready) })
		}
	}})
	if err != nil {
		sub.Disconnect(100)
		return nil, nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	stop = func() {
		cancel()
		<-done
		sub.Disconnect(100)
	}
	select {
	case <-ready:
		return a, stop, nil
	case err := <-done:
		cancel()
		sub.Disconnect(100)
		return nil, nil, fmt.Errorf("agent stopped before it was ready: %v", err)
	case <-ctx.Done():
		stop()
		return nil, nil, ctx.Err()
	}
}
