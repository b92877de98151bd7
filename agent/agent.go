// Package agent wires siteagent together and runs it: sources fill the
// point store, each cycle snapshots it, safety checks the inputs, the
// controller decides, safety clamps, the dispatcher moves the load, and the
// publisher tells central ops, in that one direction.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/drivers/actuator"
	"github.com/siteagent/siteagent/drivers/modbus"
	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/safety"
)

// Options are the parts of a run that do not come from the site file.
type Options struct {
	Log     *slog.Logger
	Version string
	// Notify sends a systemd notification ("READY=1", "WATCHDOG=1",
	// "STOPPING=1"); nil sends nothing.
	Notify func(state string)
	// WatchdogInterval: how often to send WATCHDOG=1 while cycles complete
	// (half of systemd's WatchdogSec); zero disables.
	WatchdogInterval time.Duration
	// ReadyTimeout bounds the wait for every source's first poll before
	// READY is sent anyway (the controller runs fail-safe on what is
	// missing); 10s unless set.
	ReadyTimeout time.Duration
	// OnApplied is passed to the dispatcher (benchmarks, tests).
	OnApplied func(group int, cmd actuator.Command, res actuator.Result, err error, took time.Duration)
}

// Agent is one running site controller.
type Agent struct {
	cfg  *SiteConfig
	opt  Options
	log  *slog.Logger
	lim  control.Limits
	ctrl *control.Controller

	store     *point.Store
	sources   []source
	endpoints []*modbus.Endpoint // the Modbus ones, for their counters
	checker   *safety.Checker
	clamp     *safety.Clamp
	disp      *Dispatcher
	mqtt      *mqtt.Client
	ops       *opsLink // MQTT formats, commands, capacity (ops.go)
	ring      *recordRing
	metrics   *metrics

	// Owned by the cycle goroutine.
	st    *control.State
	in    *control.Inputs
	plan  *control.Plan
	snap  []point.Point
	seq   uint64
	timer *time.Timer

	lastCycle atomic.Int64 // unix ns of the last completed cycle
	cycles    atomic.Uint64
	started   time.Time

	// basis: per group, the miner fleet's measured, firmware-estimated
	// and rated-estimated power points (nil for other groups).
	basis [][]point.ID

	lastMu   sync.Mutex
	lastPlan PlanReport // for /status
	ready    atomic.Bool
}

// New builds an agent from a checked site file. It opens no connection.
func New(cfg *SiteConfig, opt Options) (*Agent, error) {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.ReadyTimeout == 0 {
		opt.ReadyTimeout = 10 * time.Second
	}
	a := &Agent{cfg: cfg, opt: opt, log: opt.Log, store: point.NewStore(), ring: newRecordRing(256)}
	a.lim = cfg.ControlLimits()
	ctrl, err := control.New(a.lim)
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	a.ctrl = ctrl
	a.st, a.in, a.plan = ctrl.NewState(), ctrl.NewInputs(), ctrl.NewPlan()

	// The MQTT client comes first: GPU fleets (sources and actuators)
	// talk to their nodes through it.
	if err := a.buildMQTT(); err != nil {
		return nil, err
	}
	built, err := cfg.buildSources(a.store, a.log)
	if err != nil {
		return nil, err
	}
	if err := a.buildGPUFleets(built); err != nil {
		return nil, err
	}
	a.sources = built.all
	for _, s := range built.all {
		if ep, ok := s.(*modbus.Endpoint); ok {
			a.endpoints = append(a.endpoints, ep)
		}
	}
	defined := cfg.points()
	src := func(name string) safety.Source {
		if name == "" {
			return safety.Source{ID: point.None}
		}
		id, ok := a.store.Lookup(name)
		if !ok {
			return safety.Source{ID: point.None, Name: name}
		}
		m := defined[name].meta
		m.StaleAfter = staleAfter(m, defined[name].period)
		return safety.Source{ID: id, Name: name, Meta: m}
	}
	in := &cfg.Site.Inputs
	m := safety.InputMap{
		Frequency: src(in.FrequencyHz), Breaker: src(in.BreakerClosed), Import: src(in.ImportKW),
		SiteLoad: src(in.SiteLoadKW), Curtail: src(in.CurtailTargetKW),
	}
	for _, n := range in.GenerationAvailableKW {
		m.Generation = append(m.Generation, src(n))
	}
	for _, n := range in.BatteryDischargeKW {
		m.Battery = append(m.Battery, src(n))
	}
	var targets []DispatchTarget
	a.basis = make([][]point.ID, len(cfg.Groups))
	for i, g := range cfg.Groups {
		m.Groups = append(m.Groups, src(g.PowerKW))
		a.basis[i] = a.minerBasis(&g)
		act, err := buildActuator(&cfg.Groups[i], a.lim.Groups[i].Kind, built)
		if err != nil {
			return nil, fmt.Errorf("group %s: %w", g.Name, err)
		}
		targets = append(targets, DispatchTarget{Name: g.Name, Kind: a.lim.Groups[i].Kind, Actuator: act})
	}
	a.checker = safety.NewChecker(m)
	a.clamp = safety.NewClamp(&a.lim)
	a.disp = NewDispatcher(targets, 8, 2*time.Second, time.Second, a.log.With("part", "dispatch"))
	a.disp.OnApplied = opt.OnApplied

	if err := a.finishMQTT(); err != nil {
		return nil, err
	}
	a.metrics = newMetrics(a)
	a.timer = time.NewTimer(time.Hour)
	a.timer.Stop()
	return a, nil
}

// Store exposes the point store (status pages, tests).
func (a *Agent) Store() *point.Store { return a.store }

// Controller exposes the controller (explanations in the demo).
func (a *Agent) Controller() *control.Controller { return a.ctrl }

// Run starts every part and runs control cycles until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.started = time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, ep := range a.endpoints {
		a.log.Info("modbus request plan", "source", ep.Name(), "plan", ep.Plan())
	}
	for _, src := range a.sources {
		wg.Add(1)
		go func(src source) {
			defer wg.Done()
			if err := src.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
				a.log.Error("source stopped", "source", src.Name(), "err", err)
			}
		}(src)
	}
	if a.mqtt != nil {
		if err := a.mqtt.Start(ctx); err != nil {
			return fmt.Errorf("mqtt: %w", err)
		}
		a.mqtt.SetStatus(a.statusJSON(control.ModeNormal))
	}
	a.disp.Start(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.publish(ctx)
	}()
	if a.cfg.HTTP != nil {
		srv, err := a.serveHTTP(a.cfg.HTTP.Listen)
		if err != nil {
			return err
		}
		defer srv.Close()
	}

	a.waitReady(ctx)
	a.ready.Store(true)
	a.notify("READY=1")
	a.log.Info("agent ready", "site", a.cfg.Site.ID, "cycle", a.cfg.Site.CyclePeriod, "groups", len(a.lim.Groups), "stages", len(a.lim.Stages), "points", a.store.Len())
	if a.opt.WatchdogInterval > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.watchdog(ctx)
		}()
	}

	a.loop(ctx)

	a.notify("STOPPING=1")
	cancel()
	a.disp.Wait()
	wg.Wait()
	if a.mqtt != nil {
		a.mqtt.Stop()
	}
	a.log.Info("agent stopped", "cycles", a.cycles.Load())
	return nil
}

func (a *Agent) notify(state string) {
	if a.opt.Notify != nil {
		a.opt.Notify(state)
	}
}

// waitReady waits for every source's first poll, good or bad, or the
// ready timeout: a dead meter must not stop the agent from running
// fail-safe.
func (a *Agent) waitReady(ctx context.Context) {
	deadline := time.NewTimer(a.opt.ReadyTimeout)
	defer deadline.Stop()
	for _, src := range a.sources {
		select {
		case <-src.Ready():
		case <-deadline.C:
			a.log.Warn("sources not all polled before the ready timeout; starting anyway (unknown inputs are treated as their worst case)", "timeout", a.opt.ReadyTimeout)
			return
		case <-ctx.Done():
			return
		}
	}
}

// watchdog pets systemd only while control cycles are completing: a hung
// loop stops the pings and systemd restarts the agent.
func (a *Agent) watchdog(ctx context.Context) {
	t := time.NewTicker(a.opt.WatchdogInterval)
	defer t.Stop()
	limit := 2*a.opt.WatchdogInterval + 2*a.cfg.Site.CyclePeriod
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if last := a.lastCycle.Load(); last != 0 && now.Sub(time.Unix(0, last)) < limit {
				a.notify("WATCHDOG=1")
			}
		}
	}
}

// loop runs a cycle on every tick, on every trigger from the point store
// and at the controller's own deadlines (a stage delay ending).
func (a *Agent) loop(ctx context.Context) {
	tick := time.NewTicker(a.cfg.Site.CyclePeriod)
	defer tick.Stop()
	for {
		woken := false
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-a.store.Wake():
			woken = true
		case <-a.timer.C:
		}
		a.cycle(time.Now(), woken)
	}
}

// cycle is one pass down the line. It never waits on I/O and, in steady
// state, allocates nothing.
func (a *Agent) cycle(now time.Time, woken bool) {
	a.snap = a.store.Snapshot(a.snap)
	a.checker.Fill(a.snap, now, a.in)
	a.ops.gate.apply(a.in, now) // accepted commands: curtailment target, restore hold
	a.ctrl.Step(a.st, a.in, now, a.plan)
	if n := a.clamp.Apply(a.plan); n > 0 {
		a.log.Error("plan exceeded hard limits and was clamped; this is a controller bug", "groups", n)
	}
	a.disp.Submit(a.plan)
	a.seq++
	took := time.Since(now)
	a.ring.put(a.seq, a.in, a.plan, took, woken)
	if !a.plan.WakeAt.IsZero() {
		a.timer.Reset(a.plan.WakeAt.Sub(now))
	}
	a.lastCycle.Store(now.UnixNano())
	a.cycles.Add(1)
	if a.checker.Changed() {
		a.logFindings()
	}
}

// logFindings logs each controller input that became unusable or usable
// again this cycle (rare: it may allocate).
func (a *Agent) logFindings() {
	for _, f := range a.checker.Changes(a.snap) {
		if f.Verdict == safety.Usable {
			a.log.Info("controller input usable again", "point", f.Source.Name)
			continue
		}
		a.log.Warn("controller input unusable; treated as its worst case", "point", f.Source.Name, "verdict", f.Verdict.String(),
			"quality", f.Point.Quality.String(), "reason", f.Point.Reason.String(), "age", f.Point.Age(time.Now()).Round(time.Millisecond))
	}
}
