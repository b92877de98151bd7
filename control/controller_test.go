package control

import (
	"math"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

const cycle = 100 * time.Millisecond

func units(n int, kw float64) []float64 {
	u := make([]float64, n)
	for i := range u {
		u[i] = kw
	}
	return u
}

// demoLimits mirrors the demo site: miners, training GPUs, inference GPUs.
func demoLimits() Limits {
	return Limits{
		ImportLimitKW:   17500,
		IslandReserveKW: 500,
		MarginKW:        150,
		RestoreMarginKW: 300,
		FailsafeLoadKW:  8000,
		IntegralGain:    0.2,
		IntegralMaxKW:   1000,
		FeedbackDelay:   2 * time.Second,
		Groups: []Group{
			{Name: "asic", Kind: Shed, CutOrder: 1, UnitKW: units(2000, 3.5), CeilingKW: 7000, WakeUnitsPerS: 200, RestoreHoldoff: 10 * time.Second},
			{Name: "training", Kind: Throttle, CutOrder: 2, UnitKW: units(600, 10), FloorKW: 1800, CeilingKW: 6000, RampUpKWPerS: 1000, RestoreHoldoff: 5 * time.Second},
			{Name: "inference", Kind: Throttle, CutOrder: 3, UnitKW: units(300, 10), FloorKW: 2400, CeilingKW: 3000, RampUpKWPerS: 1000, RestoreHoldoff: 5 * time.Second},
		},
		Stages: []Stage{
			{Name: "uf1", BelowHz: 59.8, ClearAboveHz: 59.9, ClearAfter: 5 * time.Second, Actions: []StageAction{{Group: 0, CapKW: 0}}},
			{Name: "uf2", BelowHz: 59.5, Delay: 100 * time.Millisecond, ClearAboveHz: 59.7, ClearAfter: 5 * time.Second, Actions: []StageAction{{Group: 1, CapKW: 3000}}},
		},
	}
}

// plant is a tiny deterministic site for the tests: each group draws
// min(demand, cap) after the controller's decision, instantly or after a
// lag of whole cycles.
type plant struct {
	c        *Controller
	st       *State
	in       *Inputs
	out      *Plan
	now      time.Time
	auxKW    float64
	demand   []float64 // per group, kW wanted when uncapped
	draw     []float64
	lag      int // cycles before a cap takes effect
	pending  [][]float64
	ignore   []bool // group ignores its cap (a broken actuator)
	freq     float64
	islanded bool
	capacity float64
}

func newPlant(t testing.TB, lim Limits) *plant {
	c, err := New(lim)
	if err != nil {
		t.Fatal(err)
	}
	p := &plant{c: c, st: c.NewState(), in: c.NewInputs(), out: c.NewPlan(), now: t0, auxKW: 800, freq: 60, capacity: 10000}
	for g := range lim.Groups {
		p.demand = append(p.demand, lim.Groups[g].CeilingKW)
		p.draw = append(p.draw, lim.Groups[g].CeilingKW)
		p.ignore = append(p.ignore, false)
	}
	return p
}

func (p *plant) siteLoad() float64 {
	s := p.auxKW
	for _, d := range p.draw {
		s += d
	}
	return s
}

// step feeds the current plant state to the controller and lets the
// plant follow the plan.
func (p *plant) step() *Plan {
	in := p.in
	in.FrequencyHz, in.FrequencyOK = p.freq, true
	in.Islanded, in.BreakerOK = p.islanded, true
	load := p.siteLoad()
	in.SiteLoadKW, in.SiteLoadOK = load, true
	if p.islanded {
		in.ImportKW = 0
	} else {
		in.ImportKW = load
	}
	in.ImportOK = true
	in.IslandCapacityKW, in.IslandCapacityOK = p.capacity, true
	in.CurtailOK = true
	for g := range in.Groups {
		in.Groups[g] = GroupInput{MeasuredKW: p.draw[g], MeasuredOK: true}
	}
	p.c.Step(p.st, in, p.now, p.out)
	caps := make([]float64, len(p.draw))
	for g := range caps {
		caps[g] = math.Min(p.demand[g], p.out.Groups[g].CapKW)
		if p.ignore[g] {
			caps[g] = p.demand[g]
		}
	}
	p.pending = append(p.pending, caps)
	if len(p.pending) > p.lag {
		copy(p.draw, p.pending[0])
		p.pending = p.pending[1:]
	}
	p.now = p.now.Add(cycle)
	return p.out
}

func (p *plant) run(d time.Duration) {
	for end := p.now.Add(d); p.now.Before(end); {
		p.step()
	}
}

func hasEvent(p *Plan, k EventKind, idx int) bool {
	for _, e := range p.EventList() {
		if e.Kind == k && (idx < 0 || e.Index == idx) {
			return true
		}
	}
	return false
}

func TestNormalSiteRunsFree(t *testing.T) {
	p := newPlant(t, demoLimits())
	p.run(2 * time.Second)
	if p.out.Mode != ModeNormal {
		t.Fatalf("mode %s, want normal", p.out.Mode)
	}
	for g, gp := range p.out.Groups {
		if gp.Reason != ReasonFree {
			t.Errorf("group %d reason %s, want free", g, gp.Reason)
		}
	}
	if p.out.Groups[0].UnitsOn != 2000 {
		t.Errorf("asic units %d, want 2000", p.out.Groups[0].UnitsOn)
	}
}

func TestUnderFrequencyStagesOperateAndClearWithHoldoff(t *testing.T) {
	p := newPlant(t, demoLimits())
	p.run(time.Second)
	p.freq = 59.75
	out := p.step()
	if !hasEvent(out, EventStageOperated, 0) || out.Groups[0].UnitsOn != 0 {
		t.Fatalf("uf1 with zero delay must shed every miner in the first step: units %d events %v", out.Groups[0].UnitsOn, out.EventList())
	}
	if out.Mode != ModeUnderFrequency || out.Groups[0].Reason != ReasonStage {
		t.Fatalf("mode %s reason %s", out.Mode, out.Groups[0].Reason)
	}
	p.freq = 59.45
	out = p.step()
	if out.Stages[1] != StagePickup || out.Groups[1].CapKW != 6000 {
		t.Fatalf("uf2 must wait its 100 ms delay: phase %s cap %g", out.Stages[1], out.Groups[1].CapKW)
	}
	if out.WakeAt != p.now.Add(-cycle).Add(100*time.Millisecond) {
		t.Errorf("WakeAt %v must be the end of the pickup delay", out.WakeAt)
	}
	out = p.step()
	if out.Stages[1] != StageOperated || out.Groups[1].CapKW != 3000 || out.Groups[2].CapKW != 3000 {
		t.Fatalf("uf2 after delay: phase %s training %g inference %g", out.Stages[1], out.Groups[1].CapKW, out.Groups[2].CapKW)
	}
	// Recovery: stage 2 clears after 5 s above 59.7, stage 1 after 5 s above 59.9.
	p.freq = 60
	p.run(4900 * time.Millisecond)
	if p.out.Stages[0] != StageClearing || p.out.Groups[0].UnitsOn != 0 {
		t.Fatalf("before clear_after: phase %s units %d", p.out.Stages[0], p.out.Groups[0].UnitsOn)
	}
	p.run(200 * time.Millisecond)
	if p.out.Stages[0] != StageIdle {
		t.Fatalf("stage 1 should have cleared, phase %s", p.out.Stages[0])
	}
	// Training restores first (hold-off 5 s, then 1000 kW/s), miners later.
	p.run(4 * time.Second)
	if p.out.Groups[1].Reason != ReasonHoldoff || p.out.Groups[0].UnitsOn != 0 {
		t.Fatalf("in hold-off: training reason %s, miners %d", p.out.Groups[1].Reason, p.out.Groups[0].UnitsOn)
	}
	p.run(1500 * time.Millisecond)
	if p.out.Groups[1].Reason != ReasonRamping || p.out.Mode != ModeRestoring {
		t.Fatalf("after hold-off training must ramp: reason %s mode %s", p.out.Groups[1].Reason, p.out.Mode)
	}
	p.run(30 * time.Second)
	if p.out.Groups[0].UnitsOn != 2000 || p.out.Groups[1].CapKW != 6000 || p.out.Mode != ModeNormal {
		t.Fatalf("after recovery: miners %d training %g mode %s", p.out.Groups[0].UnitsOn, p.out.Groups[1].CapKW, p.out.Mode)
	}
}

func TestStageHysteresisNoChatter(t *testing.T) {
	p := newPlant(t, demoLimits())
	changes := 0
	for i := 0; i < 200; i++ {
		// Frequency hovering around the pick-up threshold, never above the
		// drop-out threshold: one operation, no resets.
		if i%2 == 0 {
			p.freq = 59.79
		} else {
			p.freq = 59.81
		}
		out := p.step()
		for _, e := range out.EventList() {
			if e.Kind == EventStageOperated || e.Kind == EventStageCleared {
				changes++
			}
		}
	}
	if changes != 1 {
		t.Fatalf("stage changed %d times while frequency hovered, want exactly 1 (operate)", changes)
	}
}

func TestIslandingShedsMinersFirst(t *testing.T) {
	p := newPlant(t, demoLimits())
	p.run(time.Second)
	p.islanded = true
	p.capacity = 9000 // 8500 after the reserve
	out := p.step()
	if out.Mode != ModeIslanded || out.Binding != ConstraintIsland {
		t.Fatalf("mode %s binding %s", out.Mode, out.Binding)
	}
	// Load 16800 kW; budget 8500 - 150 margin: miners (7000) go first,
	// then training takes the rest; inference untouched.
	if out.Groups[2].CapKW != 3000 {
		t.Errorf("inference cut to %g while lower groups had power", out.Groups[2].CapKW)
	}
	if out.Groups[0].UnitsOn != 0 {
		t.Errorf("miners left running: %d", out.Groups[0].UnitsOn)
	}
	if out.PlannedKW > out.BudgetKW-150+1e-6 {
		t.Errorf("planned %g over budget %g", out.PlannedKW, out.BudgetKW)
	}
	p.run(2 * time.Second)
	if load := p.siteLoad(); load > 8500 {
		t.Errorf("site load %g kW above island capacity after the cut", load)
	}
}

func TestFailSafeHoldsAndCapsWhenImportMeterIsSilent(t *testing.T) {
	p := newPlant(t, demoLimits())
	p.run(time.Second)
	p.c.Step(p.st, p.blind(), p.now, p.out)
	out := p.out
	if out.Mode != ModeFailSafe || out.Unknown&UnknownImport == 0 || !hasEvent(out, EventInputLost, -1) {
		t.Fatalf("mode %s unknown %v", out.Mode, out.Unknown.Names())
	}
	var groups float64
	for _, gp := range out.Groups {
		groups += gp.ClaimKW
	}
	if groups > 8000-150+1e-6 {
		t.Fatalf("controllable load %g above the fail-safe load", groups)
	}
	// Even with lots of headroom on every other input, nothing restores.
	before := out.Groups[0].UnitsOn
	for i := 0; i < 200; i++ {
		p.now = p.now.Add(cycle)
		p.c.Step(p.st, p.blind(), p.now, p.out)
	}
	if p.out.Groups[0].UnitsOn != before || p.out.Groups[0].Reason != ReasonFrozen {
		t.Fatalf("restored while blind: units %d -> %d reason %s", before, p.out.Groups[0].UnitsOn, p.out.Groups[0].Reason)
	}
}

func (p *plant) blind() *Inputs {
	in := p.in
	in.ImportOK = false
	in.ImportKW = 0
	in.FrequencyHz, in.FrequencyOK = 60, true
	in.BreakerOK, in.CurtailOK, in.SiteLoadOK, in.IslandCapacityOK = true, true, true, true
	for g := range in.Groups {
		in.Groups[g] = GroupInput{MeasuredKW: p.draw[g], MeasuredOK: true}
	}
	return in
}

func TestIntegralCutsDeeperWhenAGroupIgnoresItsCap(t *testing.T) {
	lim := demoLimits()
	lim.ImportLimitKW = 9000
	p := newPlant(t, lim)
	p.ignore[1] = true // training's actuator is broken: it keeps drawing 6000 kW
	p.run(time.Second)
	first := p.out.Groups[1].CapKW
	p.run(20 * time.Second)
	if p.st.IntegralKW >= 0 {
		t.Fatalf("integral %g: the meter stayed over the line, it must act", p.st.IntegralKW)
	}
	if p.st.IntegralKW < -lim.IntegralMaxKW-1e-9 {
		t.Fatalf("integral %g beyond its anti-windup bound", p.st.IntegralKW)
	}
	if got := p.out.Groups[1].CapKW; math.Abs(first-got-lim.IntegralMaxKW) > lim.RestoreMarginKW/2 {
		t.Fatalf("the loop must cut the group about %g kW deeper than the model's %g (within the hold band), got %g", lim.IntegralMaxKW, first, got)
	}
}

func TestInfeasibleBudgetReported(t *testing.T) {
	p := newPlant(t, demoLimits())
	p.islanded = true
	p.capacity = 2000 // below the floors of training and inference
	out := p.step()
	if !out.Infeasible || !hasEvent(out, EventInfeasible, -1) {
		t.Fatalf("want an infeasible budget reported, got %+v", out.EventList())
	}
	out = p.step()
	if hasEvent(out, EventInfeasible, -1) {
		t.Fatalf("infeasible must be reported once, not every cycle")
	}
	if out.Groups[1].CapKW != 1800 || out.Groups[2].CapKW != 2400 {
		t.Fatalf("groups must sit at their floors: %g %g", out.Groups[1].CapKW, out.Groups[2].CapKW)
	}
}

func TestCurtailmentHeldUntilCancelled(t *testing.T) {
	p := newPlant(t, demoLimits())
	p.run(time.Second)
	p.in.CurtailTargetKW = 12000
	out := p.step()
	if out.Mode != ModeCurtailment || out.Binding != ConstraintCurtail {
		t.Fatalf("mode %s binding %s", out.Mode, out.Binding)
	}
	p.run(3 * time.Second)
	if p.siteLoad() > 12000 {
		t.Fatalf("site load %g over the curtailment target", p.siteLoad())
	}
	// The target source goes stale: the last good target is kept.
	p.in.CurtailOK = false
	p.c.Step(p.st, p.in, p.now, p.out)
	if p.st.CurtailKW != 12000 || p.out.Mode != ModeFailSafe {
		t.Fatalf("stale curtailment must keep the target and enter fail-safe: %g %s", p.st.CurtailKW, p.out.Mode)
	}
}

func TestStepAllocatesNothing(t *testing.T) {
	p := newPlant(t, demoLimits())
	p.step()
	allocs := testing.AllocsPerRun(1000, func() {
		p.now = p.now.Add(cycle)
		p.freq = 59.6 + 0.3*math.Sin(float64(p.now.UnixNano())/1e9)
		p.in.FrequencyHz = p.freq
		p.c.Step(p.st, p.in, p.now, p.out)
	})
	if allocs != 0 {
		t.Fatalf("Step allocated %.1f times per call", allocs)
	}
}

func TestNewRejectsBadLimits(t *testing.T) {
	lim := demoLimits()
	lim.Groups[1].FloorKW = 7000
	lim.Stages[0].ClearAboveHz = 59.7
	if _, err := New(lim); err == nil {
		t.Fatal("want an error for floor above ceiling and inverted stage thresholds")
	}
}

func TestHoldRestoresKeepsCutsAndStopsRestores(t *testing.T) {
	p := newPlant(t, demoLimits())
	p.run(time.Second)
	p.freq = 59.75
	p.step()
	p.freq = 60
	p.in.HoldRestores = true
	p.run(40 * time.Second)
	if p.out.Groups[0].UnitsOn != 0 || p.out.Groups[0].Reason != ReasonHeld {
		t.Fatalf("restores must wait while held: units %d reason %s", p.out.Groups[0].UnitsOn, p.out.Groups[0].Reason)
	}
	p.in.HoldRestores = false
	p.run(40 * time.Second)
	if p.out.Groups[0].UnitsOn != 2000 {
		t.Fatalf("restores must resume once the hold is lifted: units %d", p.out.Groups[0].UnitsOn)
	}
}

func TestCommandedCurtailmentAppliesEvenWithTheCurtailPointUnknown(t *testing.T) {
	p := newPlant(t, demoLimits())
	p.run(time.Second)
	p.in.CurtailOK = false // the site's own curtail point went stale
	p.in.CommandCurtailKW = 11000
	p.c.Step(p.st, p.in, p.now, p.out)
	if p.out.CurtailKW != 11000 || p.out.Binding != ConstraintCurtail {
		t.Fatalf("commanded target must bind: curtail %g binding %s", p.out.CurtailKW, p.out.Binding)
	}
	// The tighter of point and command wins.
	p.in.CurtailOK, p.in.CurtailTargetKW = true, 9000
	p.c.Step(p.st, p.in, p.now.Add(cycle), p.out)
	if p.out.CurtailKW != 9000 {
		t.Fatalf("tighter point target must win: %g", p.out.CurtailKW)
	}
}
