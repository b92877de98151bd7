package sim

import (
	"context"
	"fmt"
	"time"
)

// Scenario is a scripted sequence of grid and site events.
type Scenario struct {
	Name        string
	Description string
	Duration    time.Duration
	Steps       []Step
}

// Step happens At a time after the scenario starts. Do may be nil for a
// step that only narrates (what the agent should be doing by then).
type Step struct {
	At   time.Duration
	Note string
	Do   func(*Site)
}

// DefaultScenario is the one `make demo` plays.
const DefaultScenario = "underfrequency"

// The stage table these scripts are planned against is configs/demo.toml:
// uf1 < 59.80 Hz sheds the ASICs (clears > 59.90 for 5 s), uf2 < 59.50 Hz
// caps training at 50 % (clears > 59.70 for 5 s), uf3 < 59.30 Hz caps it at
// 30 % (clears > 59.60 for 10 s); the import limit is 17,500 kW.

// Scenarios lists every scripted scenario.
func Scenarios() []Scenario {
	hz := func(v float64) func(*Site) { return func(s *Site) { s.SetFrequency(v) } }
	return []Scenario{{
		Name:        "underfrequency",
		Description: "Grid frequency dips in steps to 59.45 Hz and recovers: the under-frequency stages pick up and drop out in order.",
		Duration:    60 * time.Second,
		Steps: []Step{
			{At: 0, Note: "grid at 60.00 Hz; site at full load (~16.2 MW)", Do: func(s *Site) { s.ClearFrequency() }},
			{At: 4 * time.Second, Note: "frequency drops to 59.75 Hz, below uf1 (59.80): the ASICs are shed", Do: hz(59.75)},
			{At: 8 * time.Second, Note: "59.62 Hz: deeper, but above uf2 (59.50): no new stage", Do: hz(59.62)},
			{At: 12 * time.Second, Note: "59.45 Hz, below uf2 (59.50) for more than 100 ms: training capped at 50 %", Do: hz(59.45)},
			{At: 18 * time.Second, Note: "59.65 Hz: recovering, but below uf2's clear level (59.70): both stages hold", Do: hz(59.65)},
			{At: 22 * time.Second, Note: "59.85 Hz: above 59.70, uf2 clears after 5 s; still below 59.90, uf1 holds", Do: hz(59.85)},
			{At: 27 * time.Second, Note: "back to 60.00 Hz: uf1 clears after 5 s, then miners wake in a staggered ramp after their hold-off", Do: func(s *Site) { s.ClearFrequency() }},
			{At: 45 * time.Second, Note: "miners waking, at most 200 a second"},
		},
	}, {
		Name:        "islanding",
		Description: "The utility breaker opens: the site runs on 6 MW of generation and a 4 MW battery until the grid returns.",
		Duration:    60 * time.Second,
		Steps: []Step{
			{At: 0, Note: "grid-connected at full load (~16.2 MW); island capacity 10 MW"},
			{At: 5 * time.Second, Note: "utility breaker opens: ~16.2 MW on 10 MW, frequency sags until load is cut below capacity minus reserve", Do: func(s *Site) { s.OpenBreaker() }},
			{At: 15 * time.Second, Note: "islanded: the battery discharges and its state of charge falls"},
			{At: 30 * time.Second, Note: "utility restored: breaker recloses; loads return after their hold-offs", Do: func(s *Site) { s.CloseBreaker() }},
		},
	}, {
		Name:        "curtailment",
		Description: "Central ops asks the site to hold import at 9,000 kW for 30 s, then lifts the request.",
		Duration:    60 * time.Second,
		Steps: []Step{
			{At: 0, Note: "no curtailment; site at full load (~16.2 MW)", Do: func(s *Site) { s.SetCurtailTarget(0) }},
			{At: 5 * time.Second, Note: "ops curtailment target 9,000 kW: ASICs shed first, then training throttles", Do: func(s *Site) { s.SetCurtailTarget(9000) }},
			{At: 35 * time.Second, Note: "curtailment lifted: loads restore after their hold-offs, ramped", Do: func(s *Site) { s.SetCurtailTarget(0) }},
		},
	}, {
		Name:        "import-limit",
		Description: "GPU demand and cooling rise until the site would import more than its 17,500 kW limit.",
		Duration:    60 * time.Second,
		Steps: []Step{
			{At: 0, Note: "site at ~16.2 MW, below the 17,500 kW import limit"},
			{At: 5 * time.Second, Note: "inference demand rises to 100 % of rating", Do: func(s *Site) { s.SetInferenceDemand(1) }},
			{At: 10 * time.Second, Note: "training demand rises to 100 %: ~17.6 MW, just over the limit: the agent trims", Do: func(s *Site) { s.SetTrainingDemand(1) }},
			{At: 15 * time.Second, Note: "afternoon heat: chillers +400 kW; the site would import ~18.0 MW, so miners are shed to hold the limit", Do: func(s *Site) { s.SetAuxBaseKW(1200) }},
			{At: 40 * time.Second, Note: "demand and heat fall back: load restores under the limit", Do: func(s *Site) {
				s.ClearInferenceDemand()
				s.SetTrainingDemand(s.cfg.TrainingDemand)
				s.SetAuxBaseKW(s.cfg.AuxBaseKW)
			}},
		},
	}, {
		Name:        "stale-meter",
		Description: "The PCC meter stops answering for 20 s: the agent must not trust its last reading and holds the site at its fail-safe load.",
		Duration:    50 * time.Second,
		Steps: []Step{
			{At: 0, Note: "meter answering; site at full load"},
			{At: 5 * time.Second, Note: "PCC meter answers every request with exception 0x0B: its readings go stale and the agent falls back to failsafe_load_kw", Do: func(s *Site) { s.FreezeMeter(true) }},
			{At: 25 * time.Second, Note: "meter answers again: the agent leaves fail-safe and restores after hold-offs", Do: func(s *Site) { s.FreezeMeter(false) }},
		},
	}}
}

// ScenarioByName finds a scenario.
func ScenarioByName(name string) (Scenario, bool) {
	for _, sc := range Scenarios() {
		if sc.Name == name {
			return sc, true
		}
	}
	return Scenario{}, false
}

// Check reports a scenario whose steps are out of order or outside its
// duration.
func (sc Scenario) Check() error {
	if sc.Name == "" || sc.Duration <= 0 {
		return fmt.Errorf("scenario %q: needs a name and a positive duration", sc.Name)
	}
	for i, st := range sc.Steps {
		if st.At < 0 || st.At > sc.Duration {
			return fmt.Errorf("scenario %q: step %d at %v lies outside 0..%v", sc.Name, i, st.At, sc.Duration)
		}
		if i > 0 && st.At < sc.Steps[i-1].At {
			return fmt.Errorf("scenario %q: step %d at %v comes before step %d at %v", sc.Name, i, st.At, i-1, sc.Steps[i-1].At)
		}
		if st.Note == "" {
			return fmt.Errorf("scenario %q: step %d at %v has no note", sc.Name, i, st.At)
		}
	}
	return nil
}

// Play runs sc against the site on the real clock, from now: each step's Do
// at its time, then onStep (may be nil), and returns when the scenario's
// duration has passed or ctx ends.
func (s *Site) Play(ctx context.Context, sc Scenario, onStep func(Step)) error {
	if err := sc.Check(); err != nil {
		return err
	}
	start := time.Now()
	wait := func(at time.Duration) error {
		t := time.NewTimer(time.Until(start.Add(at)))
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		}
	}
	for _, st := range sc.Steps {
		if err := wait(st.At); err != nil {
			return err
		}
		if st.Do != nil {
			st.Do(s)
		}
		if onStep != nil {
			onStep(st)
		}
	}
	return wait(sc.Duration)
}
