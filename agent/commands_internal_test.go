package agent

import (
	"math"
	"testing"
	"time"

	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/safety"
)

func demoAgent(t *testing.T) *Agent {
	t.Helper()
	cfg, err := Load("demo.toml", configs.Demo())
	if err != nil {
		t.Fatal(err)
	}
	cfg.MQTT = nil
	a, err := New(cfg, Options{Log: benchLog})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func fptr(v float64) *float64 { return &v }

// The gate folds commands into the inputs: the tightest active
// curtailment, the tighter of it and the curtail point, a reduction
// resolved once against the import at its start, and the hold.
func TestCommandGate(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	g := newCommandGate()
	g.policy = safety.NewCommandPolicy(safety.CommandsConfig{MinTargetKW: fptr(2000)}, 20000)
	g.slots[0] = curtailSlot{id: "a", start: now, end: now.Add(time.Hour), targetKW: 9000}
	g.slots[1] = curtailSlot{id: "b", start: now.Add(time.Minute), end: now.Add(time.Hour), targetKW: math.NaN(), reduction: 3000}
	g.slots[2] = curtailSlot{id: "c", start: now.Add(-2 * time.Hour), end: now.Add(-time.Hour), targetKW: 1000}
	g.n = 3
	in := &control.Inputs{}
	g.apply(in, now)
	if in.CommandCurtailKW != 9000 || in.HoldRestores {
		t.Fatalf("inputs %+v: want target 9000 (c is over, b not begun)", in)
	}
	in.CurtailTargetKW = 8000 // the curtail point: the controller takes the tighter
	g.apply(in, now)
	if in.CommandCurtailKW != 9000 || in.CurtailTargetKW != 8000 {
		t.Fatalf("the gate must leave the point's target alone: %+v", in)
	}
	in.ImportKW, in.ImportOK = 10000, true
	g.apply(in, now.Add(2*time.Minute)) // b begins: 10000 - 3000
	if in.CommandCurtailKW != 7000 {
		t.Fatalf("reduction resolved to %g, want 7000", in.CommandCurtailKW)
	}
	in.ImportKW = 5000 // the baseline does not move afterwards
	g.apply(in, now.Add(3*time.Minute))
	if in.CommandCurtailKW != 7000 {
		t.Fatalf("reduction moved to %g", in.CommandCurtailKW)
	}
	g.holdUntil = now.Add(5 * time.Minute)
	g.apply(in, now.Add(4*time.Minute))
	if !in.HoldRestores {
		t.Fatal("hold not applied")
	}
	g.apply(in, now.Add(6*time.Minute))
	if in.HoldRestores {
		t.Fatal("hold outlived its end")
	}
}

// The control cycle, with a curtailment and a hold in force, allocates
// nothing.
func TestCycleWithCommandsAllocatesNothing(t *testing.T) {
	a := demoAgent(t)
	now := time.Now()
	g := a.ops.gate
	g.policy = safety.NewCommandPolicy(safety.CommandsConfig{MinTargetKW: fptr(2000)}, a.lim.ImportLimitKW)
	g.slots[0] = curtailSlot{id: "a", start: now, end: now.Add(time.Hour), targetKW: math.NaN(), reduction: 1000}
	g.n = 1
	g.holdUntil = now.Add(time.Hour)
	// Warm up: past the first cycles' one-off logging, and round the
	// record ring once (each slot sizes its slices on first use).
	i := 0
	for ; i < 2*len(a.ring.buf); i++ {
		a.cycle(now.Add(time.Duration(i)*time.Millisecond), false)
	}
	allocs := testing.AllocsPerRun(200, func() {
		i++
		a.cycle(now.Add(time.Duration(i)*time.Millisecond), false)
	})
	if allocs != 0 {
		t.Fatalf("the cycle allocates %g times", allocs)
	}
	if !a.in.HoldRestores {
		t.Fatal("the hold did not reach the inputs")
	}
}
