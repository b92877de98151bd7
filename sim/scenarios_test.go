package sim

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestScenariosWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for _, sc := range Scenarios() {
		if err := sc.Check(); err != nil {
			t.Error(err)
		}
		if seen[sc.Name] {
			t.Errorf("scenario %q listed twice", sc.Name)
		}
		seen[sc.Name] = true
		if sc.Description == "" || sc.Duration < 30*time.Second || sc.Duration > 60*time.Second {
			t.Errorf("scenario %q: needs a description and 30-60 s, has %v", sc.Name, sc.Duration)
		}
		for i := 1; i < len(sc.Steps); i++ {
			if sc.Steps[i].At == sc.Steps[i-1].At {
				t.Errorf("scenario %q: two steps at %v", sc.Name, sc.Steps[i].At)
			}
		}
		if got, ok := ScenarioByName(sc.Name); !ok || got.Name != sc.Name {
			t.Errorf("ScenarioByName(%q) = %q, %v", sc.Name, got.Name, ok)
		}
	}
	for _, name := range []string{"underfrequency", "islanding", "curtailment", "import-limit", "stale-meter", DefaultScenario} {
		if !seen[name] {
			t.Errorf("scenario %q is missing", name)
		}
	}
	if _, ok := ScenarioByName("no-such"); ok {
		t.Error("ScenarioByName found a scenario that does not exist")
	}
}

func TestCheckFindsBadScenarios(t *testing.T) {
	for name, sc := range map[string]Scenario{
		"unsorted":     {Name: "x", Duration: time.Minute, Steps: []Step{{At: 2 * time.Second, Note: "a"}, {At: time.Second, Note: "b"}}},
		"past the end": {Name: "x", Duration: time.Second, Steps: []Step{{At: 2 * time.Second, Note: "a"}}},
		"negative":     {Name: "x", Duration: time.Second, Steps: []Step{{At: -1, Note: "a"}}},
		"no note":      {Name: "x", Duration: time.Second, Steps: []Step{{At: 0}}},
		"no duration":  {Name: "x"},
	} {
		if sc.Check() == nil {
			t.Errorf("%s: Check accepted it", name)
		}
	}
}

// replay runs sc on a fresh site with Advance (no agent: nothing reacts),
// sampling every 100 ms.
func replay(sc Scenario) []State {
	s := New(DefaultConfig())
	var out []State
	next := 0
	for at := time.Duration(0); at <= sc.Duration; at += 100 * time.Millisecond {
		for next < len(sc.Steps) && sc.Steps[next].At <= at {
			if sc.Steps[next].Do != nil {
				sc.Steps[next].Do(s)
			}
			next++
		}
		out = append(out, s.Snapshot())
		s.Advance(100 * time.Millisecond)
	}
	return out
}

// TestScenariosDoWhatTheySay plays each script without an agent and checks
// that it creates the event it promises.
func TestScenariosDoWhatTheySay(t *testing.T) {
	checks := map[string]func(t *testing.T, tl []State){
		"underfrequency": func(t *testing.T, tl []State) {
			lo, end := 61.0, tl[len(tl)-1]
			var order []float64 // each new stage threshold crossed, in order
			for _, st := range tl {
				lo = min(lo, st.FrequencyHz)
				for _, th := range []float64{59.80, 59.50} {
					if st.FrequencyHz < th && (len(order) == 0 || order[len(order)-1] > th) {
						order = append(order, th)
					}
				}
			}
			if lo > 59.46 || lo < 59.30 || len(order) != 2 || order[0] != 59.80 {
				t.Errorf("frequency should dip past 59.80 then 59.50, not to uf3's 59.30: lowest %v, crossed %v", lo, order)
			}
			if end.FrequencyHz < 59.99 || end.FrequencyHz > 60.01 {
				t.Errorf("frequency ends at %v, want 60", end.FrequencyHz)
			}
		},
		"islanding": func(t *testing.T, tl []State) {
			var islanded, sagged bool
			for _, st := range tl {
				islanded = islanded || !st.BreakerClosed
				sagged = sagged || (!st.BreakerClosed && st.FrequencyHz < 59.3)
			}
			end := tl[len(tl)-1]
			if !islanded || !sagged || !end.BreakerClosed || end.BatterySoCPct >= tl[0].BatterySoCPct {
				t.Errorf("islanded %v, sagged %v, reclosed %v, SoC %v -> %v", islanded, sagged, end.BreakerClosed, tl[0].BatterySoCPct, end.BatterySoCPct)
			}
		},
		"curtailment": func(t *testing.T, tl []State) {
			var over bool
			for _, st := range tl {
				over = over || (st.CurtailTargetKW == 9000 && st.ImportKW > 9000)
			}
			if !over || tl[len(tl)-1].CurtailTargetKW != 0 {
				t.Errorf("want a 9000 kW target below import, lifted by the end")
			}
		},
		"import-limit": func(t *testing.T, tl []State) {
			peak := 0.0
			for _, st := range tl {
				peak = max(peak, st.ImportKW)
			}
			if tl[0].ImportKW > 17500-300 || peak < 17500+300 || tl[len(tl)-1].ImportKW > 17500-300 {
				t.Errorf("import %v -> peak %v -> %v; want under, clearly over, under 17500", tl[0].ImportKW, peak, tl[len(tl)-1].ImportKW)
			}
		},
		"stale-meter": func(t *testing.T, tl []State) {
			var frozen time.Duration
			for _, st := range tl {
				if st.MeterFrozen {
					frozen += 100 * time.Millisecond
				}
			}
			if frozen < 10*time.Second || tl[len(tl)-1].MeterFrozen {
				t.Errorf("meter frozen for %v and at the end %v; want >= 10 s, then back", frozen, tl[len(tl)-1].MeterFrozen)
			}
		},
	}
	for _, sc := range Scenarios() {
		check, ok := checks[sc.Name]
		if !ok {
			t.Errorf("scenario %q has no check here: add one", sc.Name)
			continue
		}
		t.Run(sc.Name, func(t *testing.T) { check(t, replay(sc)) })
	}
}

func TestPlayRunsStepsInOrder(t *testing.T) {
	s := New(DefaultConfig())
	sc := Scenario{Name: "quick", Duration: 60 * time.Millisecond, Steps: []Step{
		{At: 0, Note: "open", Do: func(s *Site) { s.OpenBreaker() }},
		{At: 20 * time.Millisecond, Note: "narrate"},
		{At: 40 * time.Millisecond, Note: "target", Do: func(s *Site) { s.SetCurtailTarget(5000) }},
	}}
	var notes []string
	if err := s.Play(context.Background(), sc, func(st Step) { notes = append(notes, st.Note) }); err != nil {
		t.Fatal(err)
	}
	if len(notes) != 3 || notes[0] != "open" || notes[2] != "target" {
		t.Errorf("steps played %v", notes)
	}
	if st := s.Snapshot(); st.BreakerClosed || st.CurtailTargetKW != 5000 {
		t.Errorf("steps did not act: %+v", st)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	long := Scenario{Name: "long", Duration: time.Hour, Steps: []Step{{At: time.Hour, Note: "never"}}}
	if err := s.Play(ctx, long, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Play returned %v", err)
	}
	bad := Scenario{Name: "bad", Duration: time.Second, Steps: []Step{{At: 2 * time.Second, Note: "late"}}}
	if err := s.Play(context.Background(), bad, nil); err == nil {
		t.Error("Play accepted a step past the end")
	}
}
