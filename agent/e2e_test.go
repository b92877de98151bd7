package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/sim"
	"github.com/siteagent/siteagent/sim/broker"
)

// These tests run the real agent against the simulated site: real Modbus
// TCP to the simulator's server, real MQTT through a broker, on loopback.

type harness struct {
	t      *testing.T
	site   *sim.Site
	cfg    *agent.SiteConfig
	agent  *agent.Agent
	cancel context.CancelFunc
	done   chan error

	mu     sync.Mutex
	plan   agent.PlanReport
	events []agent.EventReport
	status []string
}

// fastRestores shortens the demo's hold-offs and clear delays so a test
// sees a whole event and its restore in seconds.
func fastRestores(c *agent.SiteConfig) {
	for i := range c.Stages {
		c.Stages[i].ClearAfter = 300 * time.Millisecond
	}
	for i := range c.Groups {
		c.Groups[i].RestoreHoldoff = 500 * time.Millisecond
		if c.Groups[i].WakeUnitsPerS > 0 {
			c.Groups[i].WakeUnitsPerS = 5000
		}
	}
}

func quietLog() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// start runs the simulated site, a broker (brokerURL, or an embedded one
// when empty) and the agent on the demo site file, changed by tweak.
func start(t *testing.T, brokerURL string, tweak func(*agent.SiteConfig)) *harness {
	t.Helper()
	cfg, err := agent.Load("demo.toml", configs.Demo())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	site := sim.New(sim.DefaultConfig())
	if err := site.Start(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Modbus {
		cfg.Modbus[i].URL = site.URL()
	}
	if brokerURL == "" {
		b, err := broker.Start("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		brokerURL = b.URL()
	}
	cfg.MQTT.Broker = brokerURL
	cfg.Site.StateDir = t.TempDir() // never the machine's /var/lib/siteagent
	if tweak != nil {
		tweak(cfg)
	}
	h := &harness{t: t, site: site, cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	h.subscribe(brokerURL)

	ready := make(chan struct{})
	var once sync.Once
	a, err := agent.New(cfg, agent.Options{Log: quietLog(), Notify: func(s string) {
		if s == "READY=1" {
			once.Do(func() { close(ready) })
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	h.agent = a
	go func() { h.done <- a.Run(ctx) }()
	t.Cleanup(h.stop)
	select {
	case <-ready:
	case err := <-h.done:
		t.Fatalf("agent stopped before READY: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent not ready after 20s")
	}
	return h
}

func (h *harness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("agent run: %v", err)
		}
	case <-time.After(15 * time.Second):
		h.t.Error("agent did not stop within 15s")
	}
	h.site.Close()
	h.cancel = nil
}

func (h *harness) subscribe(url string) {
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("e2e-%d", time.Now().UnixNano())).SetAutoReconnect(true)
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		h.t.Fatalf("subscriber connect: %v", tok.Error())
	}
	h.t.Cleanup(func() { c.Disconnect(100) })
	root := h.cfg.MQTT.TopicRoot + "/" + h.cfg.Site.ID
	tok := c.Subscribe(root+"/#", 1, func(_ paho.Client, m paho.Message) {
		h.mu.Lock()
		defer h.mu.Unlock()
		switch strings.TrimPrefix(m.Topic(), root+"/") {
		case "plan":
			var p agent.PlanReport
			if err := json.Unmarshal(m.Payload(), &p); err != nil {
				h.t.Errorf("plan is not valid JSON: %v: %s", err, m.Payload())
			}
			h.plan = p
		case "events":
			var e agent.EventReport
			if err := json.Unmarshal(m.Payload(), &e); err != nil {
				h.t.Errorf("event is not valid JSON: %v: %s", err, m.Payload())
			}
			h.events = append(h.events, e)
		case "status":
			h.status = append(h.status, string(m.Payload()))
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		h.t.Fatalf("subscribe: %v", tok.Error())
	}
}

// eventually polls cond until it holds or the deadline passes.
func (h *harness) eventually(what string, d time.Duration, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.mu.Lock()
	plan, _ := json.Marshal(h.plan)
	h.mu.Unlock()
	snap, _ := json.Marshal(h.site.Snapshot())
	h.t.Fatalf("%s: not within %s\nlast plan: %s\nsite: %s", what, d, plan, snap)
}

func (h *harness) lastPlan() agent.PlanReport {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.plan
}

func (h *harness) sawEvent(kind, subject string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.events {
		if e.Kind == kind && (subject == "" || e.Group == subject || e.Stage == subject || e.To == subject) {
			return true
		}
	}
	return false
}

func group(p agent.PlanReport, name string) agent.GroupReport {
	for _, g := range p.Groups {
		if g.Name == name {
			return g
		}
	}
	return agent.GroupReport{}
}

func TestUnderFrequencyShedsMinersThenRestores(t *testing.T) {
	h := start(t, "", fastRestores)
	h.eventually("normal plan published", 5*time.Second, func() bool { return h.lastPlan().Mode == "normal" })

	h.site.SetFrequency(59.75)
	h.eventually("every miner commanded to sleep", 3*time.Second, func() bool {
		s := h.site.Snapshot()
		return s.MinersRunning+s.MinersWaking == 0
	})
	h.eventually("stage and mode events over MQTT", 3*time.Second, func() bool {
		return h.sawEvent("stage_operated", "uf1") && h.sawEvent("mode_changed", "under_frequency") && h.sawEvent("cut_began", "asic")
	})
	p := h.lastPlan()
	if g := group(p, "training"); g.CapKW != 6000 || g.Reason != "free" {
		t.Errorf("uf1 must leave training alone: %+v", g)
	}
	if g := group(p, "inference"); g.CapKW != 3000 {
		t.Errorf("uf1 must leave inference alone: %+v", g)
	}
	if g := group(p, "asic"); g.Reason != "stage" || g.UnitsOn != 0 || !strings.Contains(g.Why, "uf1") {
		t.Errorf("asic must say it is held by uf1: %+v", g)
	}

	h.site.SetFrequency(59.45)
	h.eventually("training capped at 50 %", 3*time.Second, func() bool { return h.site.Snapshot().TrainingCapKW == 3000 })
	if s := h.site.Snapshot(); s.InferenceCapKW != 3000 {
		t.Errorf("inference capped to %g during uf2: it is protected", s.InferenceCapKW)
	}

	h.site.ClearFrequency()
	h.eventually("restores: training back to 6000 kW and every miner commanded on", 15*time.Second, func() bool {
		s := h.site.Snapshot()
		return s.TrainingCapKW == 6000 && s.MinersRunning+s.MinersWaking == 2000
	})
	h.eventually("restore events", 3*time.Second, func() bool {
		return h.sawEvent("restore_began", "asic") && h.sawEvent("restored", "training") && h.sawEvent("stage_cleared", "uf1")
	})
}

func TestSilentMeterEntersFailSafeAndRecovers(t *testing.T) {
	h := start(t, "", fastRestores)
	h.eventually("normal", 5*time.Second, func() bool { return h.lastPlan().Mode == "normal" })
	h.site.FreezeMeter(true)
	// The PCC meter carries frequency, breaker, import and site load: each
	// turns into its worst case (frequency below every stage, breaker
	// open, so islanded with its site load unknown).
	h.eventually("fail-safe with the meter's inputs unknown", 5*time.Second, func() bool {
		p := h.lastPlan()
		u := strings.Join(p.Unknown, ",")
		return p.Mode == "fail_safe" && strings.Contains(u, "frequency") && strings.Contains(u, "breaker") && p.Inputs.Islanded
	})
	if g := group(h.lastPlan(), "asic"); g.UnitsOn != 0 {
		t.Errorf("an unknown frequency reads as below every stage: miners must be shed, got %+v", g)
	}
	p := h.lastPlan()
	var claims float64
	for _, g := range p.Groups {
		// The plan counts a free group at what it draws, a held one at its cap.
		switch {
		case g.Reason == "free" && g.MeasuredKW != nil:
			claims += *g.MeasuredKW
		case g.Kind == "shed":
			claims += float64(g.UnitsOn) * 3.5
		default:
			claims += g.CapKW
		}
	}
	if claims > h.cfg.Limits.FailsafeLoadKW {
		t.Errorf("blind, the planned controllable load %g kW must fit the fail-safe load %g kW", claims, h.cfg.Limits.FailsafeLoadKW)
	}
	if !h.sawEvent("input_lost", "") {
		t.Error("no input_lost event")
	}
	h.site.FreezeMeter(false)
	h.eventually("out of fail-safe once the meter answers", 10*time.Second, func() bool { return h.lastPlan().Mode != "fail_safe" })
	h.eventually("inputs restored event", 3*time.Second, func() bool { return h.sawEvent("input_restored", "") })
}

func TestIslandingHoldsLoadUnderIslandCapacity(t *testing.T) {
	h := start(t, "", nil)
	h.site.OpenBreaker()
	h.eventually("islanded mode", 3*time.Second, func() bool { return h.lastPlan().Mode == "islanded" })
	h.eventually("site load under island capacity minus reserve", 10*time.Second, func() bool {
		s := h.site.Snapshot()
		return s.SiteLoadKW <= s.IslandCapacity-h.cfg.Limits.IslandReserveKW
	})
	p := h.lastPlan()
	if g := group(p, "asic"); g.UnitsOn != 0 {
		t.Errorf("miners must be shed first when islanded: %+v", g)
	}
	if g := group(p, "inference"); g.CapKW < 3000 && group(p, "training").CapKW > 1800 {
		t.Errorf("inference cut while training still above its floor: %+v", p.Groups)
	}
}

func TestCurtailmentFromOpsPoint(t *testing.T) {
	h := start(t, "", nil)
	h.site.SetCurtailTarget(9000)
	h.eventually("curtailment mode", 5*time.Second, func() bool { return h.lastPlan().Mode == "curtailment" })
	h.eventually("import at or under the target", 10*time.Second, func() bool { return h.site.Snapshot().ImportKW <= 9000 })
	h.site.SetCurtailTarget(0)
	h.eventually("curtailment lifted", 5*time.Second, func() bool { return h.lastPlan().Mode != "curtailment" })
}

func TestImportLimitHeldOnRisingLoad(t *testing.T) {
	h := start(t, "", nil)
	h.site.SetAuxBaseKW(2500)
	h.site.SetInferenceDemand(0.9)
	h.eventually("import limit binds", 10*time.Second, func() bool {
		p := h.lastPlan()
		return p.Binding == "import_limit" && group(p, "asic").UnitsOn < 2000
	})
	// Cooling follows the IT load with a 2 s time constant and miners take
	// a second to sleep, so import may graze the limit while both move;
	// once they have settled the meter must stay under it.
	time.Sleep(10 * time.Second)
	for i := 0; i < 20; i++ {
		if s := h.site.Snapshot(); s.ImportKW > h.cfg.Limits.ImportLimitKW {
			t.Fatalf("import %g kW over the %g kW limit", s.ImportKW, h.cfg.Limits.ImportLimitKW)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
