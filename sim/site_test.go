package sim

import (
	"context"
	"math"
	"testing"
	"time"
)

// command sets coils as a Modbus write would.
func (s *Site) command(from, n int, run bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := from; i < from+n; i++ {
		s.setCoil(i, run)
	}
}

func (s *Site) setCap(addr uint16, kw float32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setHolding(0, addr, kw)
	s.applyHolding()
}

func near(got, want, tol float64) bool { return math.Abs(got-want) <= tol }

func TestSteadyStateBalances(t *testing.T) {
	cfg := DefaultConfig()
	s := New(cfg)
	s.Advance(5 * time.Second)
	st := s.Snapshot()
	if st.Time != 5*time.Second {
		t.Errorf("time = %v, want 5s", st.Time)
	}
	if !st.BreakerClosed || st.ImportKW != st.SiteLoadKW {
		t.Errorf("grid-connected: import %v should equal site load %v", st.ImportKW, st.SiteLoadKW)
	}
	if sum := st.AsicKW + st.TrainingKW + st.InferenceKW + st.AuxKW; !near(sum, st.SiteLoadKW, 1e-6) {
		t.Errorf("site load %v is not the sum of groups %v", st.SiteLoadKW, sum)
	}
	if st.AsicKW != 7000 || st.MinersRunning != 2000 {
		t.Errorf("asic = %v kW with %d running, want 7000 kW, 2000", st.AsicKW, st.MinersRunning)
	}
	if !near(st.TrainingKW, 0.95*6000, 1) {
		t.Errorf("training = %v, want ~5700", st.TrainingKW)
	}
	if st.BatteryKW != 0 || st.GenerationKW != 0 || st.BatterySoCPct != cfg.BatterySoCPct {
		t.Errorf("battery and generator should idle on grid: %+v", st)
	}
	if st.IslandCapacity != 10000 {
		t.Errorf("island capacity = %v, want 10000", st.IslandCapacity)
	}
}

func TestMinersSleepAndWakeWithDelays(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Miners = 10
	s := New(cfg)
	s.command(0, 4, false)
	s.Advance(900 * time.Millisecond)
	if st := s.Snapshot(); st.AsicKW != 35 || st.MinersStopping != 4 {
		t.Fatalf("before the sleep delay: asic %v kW, %d stopping; want 35, 4", st.AsicKW, st.MinersStopping)
	}
	s.Advance(350 * time.Millisecond) // 1.25 s: half way down
	st := s.Snapshot()
	half := 6*3.5 + 4*(3.5+0.05)/2
	if !near(st.AsicKW, half, 0.05) {
		t.Fatalf("mid-fall asic = %v, want ~%v", st.AsicKW, half)
	}
	s.Advance(300 * time.Millisecond) // 1.55 s: asleep
	st = s.Snapshot()
	if st.MinersSleeping != 4 || st.MinersRunning != 6 || !near(st.AsicKW, 6*3.5+4*0.05, 1e-9) {
		t.Fatalf("after sleep: %+v", st)
	}

	s.command(0, 4, true)
	s.Advance(2900 * time.Millisecond)
	if st := s.Snapshot(); st.MinersWaking != 4 || !near(st.AsicKW, 6*3.5+4*0.05, 1e-9) {
		t.Fatalf("still booting at 2.9 s: %d waking, asic %v", st.MinersWaking, st.AsicKW)
	}
	s.Advance(600 * time.Millisecond) // 3.5 s: half way up
	if st := s.Snapshot(); !near(st.AsicKW, half, 0.05) {
		t.Fatalf("mid-ramp asic = %v, want ~%v", st.AsicKW, half)
	}
	s.Advance(600 * time.Millisecond)
	if st := s.Snapshot(); st.MinersRunning != 10 || st.AsicKW != 35 {
		t.Fatalf("after wake: %d running, asic %v; want 10, 35", st.MinersRunning, st.AsicKW)
	}
}

func TestMinerCommandReversed(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Miners = 1
	s := New(cfg)
	// Cancelled before the miner acted: it never left full power.
	s.command(0, 1, false)
	s.Advance(500 * time.Millisecond)
	s.command(0, 1, true)
	if st := s.Snapshot(); st.MinersRunning != 1 || st.AsicKW != 3.5 {
		t.Fatalf("cancelled sleep: %+v", st)
	}
	// Reversed while falling: wakes from the present power, after the boot delay.
	s.command(0, 1, false)
	s.Advance(1250 * time.Millisecond)
	mid := s.Snapshot().AsicKW
	s.command(0, 1, true)
	s.Advance(2 * time.Second)
	if st := s.Snapshot(); st.MinersWaking != 1 || st.AsicKW != mid {
		t.Fatalf("reversed mid-fall: %d waking at %v kW, want 1 at %v", st.MinersWaking, st.AsicKW, mid)
	}
	s.Advance(3 * time.Second)
	if st := s.Snapshot(); st.MinersRunning != 1 || st.AsicKW != 3.5 {
		t.Fatalf("after wake: %+v", st)
	}
}

func TestGPUsFollowCaps(t *testing.T) {
	s := New(DefaultConfig())
	s.setCap(0, 3000) // training: 5 kW per server, under its 9.5 kW demand
	s.Advance(250 * time.Millisecond)
	if st := s.Snapshot(); !near(st.TrainingKW, 3000, 30) || st.TrainingCapKW != 3000 {
		t.Fatalf("training %v kW under a 3000 kW cap after 250 ms", st.TrainingKW)
	}
	s.setCap(0, 100) // below the board minimum: clamped to 25 %
	s.Advance(time.Second)
	if st := s.Snapshot(); !near(st.TrainingKW, 1500, 1) || st.TrainingCapKW != 100 {
		t.Fatalf("training %v kW under a 100 kW cap, want the 1500 kW minimum (cap still reads %v)", st.TrainingKW, st.TrainingCapKW)
	}
	s.setCap(0, 9000) // above rating: demand rules
	s.SetTrainingDemand(1)
	s.Advance(time.Second)
	if st := s.Snapshot(); !near(st.TrainingKW, 6000, 1) {
		t.Fatalf("training %v kW uncapped at full demand, want 6000", st.TrainingKW)
	}
	s.SetInferenceDemand(0.8)
	s.setCap(2, 1200)
	s.Advance(time.Second)
	if st := s.Snapshot(); !near(st.InferenceKW, 1200, 1) {
		t.Fatalf("inference %v kW under a 1200 kW cap", st.InferenceKW)
	}
	s.setCap(2, 3000)
	s.Advance(time.Second)
	if st := s.Snapshot(); !near(st.InferenceKW, 2400, 1) {
		t.Fatalf("inference %v kW at 80 %% demand, want 2400", st.InferenceKW)
	}
}

func TestInferenceDemandWanders(t *testing.T) {
	s := New(DefaultConfig())
	lo, hi := math.Inf(1), math.Inf(-1)
	for i := 0; i < 600; i++ {
		s.Advance(time.Second)
		v := s.Snapshot().InferenceKW
		lo, hi = min(lo, v), max(hi, v)
	}
	if lo < 1800-1 || hi > 2700+1 {
		t.Errorf("inference ranged %v..%v kW, outside 60..90 %% of 3000", lo, hi)
	}
	if hi-lo < 300 {
		t.Errorf("inference ranged only %v..%v kW over 10 minutes", lo, hi)
	}
}

func TestGridFrequencyNoiseAndOverride(t *testing.T) {
	s := New(DefaultConfig())
	lo, hi := math.Inf(1), math.Inf(-1)
	for i := 0; i < 500; i++ {
		s.Advance(10 * time.Millisecond)
		f := s.Snapshot().FrequencyHz
		lo, hi = min(lo, f), max(hi, f)
	}
	if lo < 59.99 || hi > 60.01 || hi-lo < 0.005 {
		t.Errorf("nominal frequency ranged %v..%v, want noise within ±0.01 Hz", lo, hi)
	}
	s.SetFrequency(59.45)
	s.Advance(10 * time.Millisecond)
	if f := s.Snapshot().FrequencyHz; !near(f, 59.45, 0.01) {
		t.Errorf("overridden frequency %v, want 59.45±0.01", f)
	}
	s.SetFrequency(math.NaN()) // ignored: keeps the last good value
	s.Advance(10 * time.Millisecond)
	if f := s.Snapshot().FrequencyHz; !near(f, 59.45, 0.01) {
		t.Errorf("after a NaN override frequency is %v, want 59.45 kept", f)
	}
	s.ClearFrequency()
	s.Advance(10 * time.Millisecond)
	if f := s.Snapshot().FrequencyHz; !near(f, 60, 0.01) {
		t.Errorf("cleared frequency %v, want 60", f)
	}
}

func TestIslandOverloadSagsAndRecovers(t *testing.T) {
	cfg := DefaultConfig()
	s := New(cfg)
	s.Advance(time.Second)
	s.OpenBreaker()
	s.Advance(2 * time.Second)
	st := s.Snapshot()
	if st.BreakerClosed || st.ImportKW != 0 {
		t.Fatalf("islanded: breaker %v, import %v", st.BreakerClosed, st.ImportKW)
	}
	if st.GenerationKW != 6000 || st.BatteryKW != 4000 {
		t.Fatalf("overloaded island should run both sources flat out: gen %v, battery %v", st.GenerationKW, st.BatteryKW)
	}
	want := 60 - 2*(st.SiteLoadKW-10000)/10000
	if !near(st.FrequencyHz, want, 0.03) || st.FrequencyHz > 59 {
		t.Fatalf("islanded at %v kW on 10000 kW: frequency %v, want ~%v", st.SiteLoadKW, st.FrequencyHz, want)
	}
	if st.BatterySoCPct >= cfg.BatterySoCPct {
		t.Fatalf("battery SoC %v did not fall while discharging", st.BatterySoCPct)
	}

	s.command(0, cfg.Miners, false) // the agent sheds the miners
	s.Advance(6 * time.Second)
	st = s.Snapshot()
	if st.SiteLoadKW > 10000 || !near(st.FrequencyHz, 60, 0.02) {
		t.Fatalf("after shedding: load %v kW, frequency %v; want under 10000 kW and ~60 Hz", st.SiteLoadKW, st.FrequencyHz)
	}
	if st.GenerationKW != 6000 || !near(st.BatteryKW, st.SiteLoadKW-6000, 1e-6) {
		t.Fatalf("generator should lead, battery take the rest: gen %v, battery %v, load %v", st.GenerationKW, st.BatteryKW, st.SiteLoadKW)
	}

	s.CloseBreaker()
	s.Advance(100 * time.Millisecond)
	if st := s.Snapshot(); !st.BreakerClosed || st.ImportKW != st.SiteLoadKW || st.BatteryKW != 0 {
		t.Fatalf("reconnected: %+v", st)
	}
}

func TestBatteryDrainsAndTapers(t *testing.T) {
	cfg := DefaultConfig()
	cfg.BatteryCapacityKWh = 40 // tiny, so it empties in seconds
	cfg.BatterySoCPct = 20
	cfg.GenerationKW = 0
	s := New(cfg)
	s.OpenBreaker()
	var sawTaper bool
	for i := 0; i < 600; i++ {
		s.Advance(100 * time.Millisecond)
		st := s.Snapshot()
		battery := st.IslandCapacity // no generator: capacity is the battery
		switch {
		case st.BatterySoCPct > 10 && battery != 4000:
			t.Fatalf("SoC %v%%: battery offers %v kW, want 4000", st.BatterySoCPct, battery)
		case st.BatterySoCPct < 9.9 && st.BatterySoCPct > 5.1:
			sawTaper = sawTaper || (battery > 0 && battery < 4000)
		}
		if st.FrequencyHz < cfg.MinHz-0.011 {
			t.Fatalf("frequency %v below the floor %v", st.FrequencyHz, cfg.MinHz)
		}
	}
	st := s.Snapshot()
	// The taper makes the last few percent drain ever slower: the battery
	// approaches 5 % and nothing, and never passes them.
	if !sawTaper || st.IslandCapacity > 1 || st.BatterySoCPct < 5 || st.BatterySoCPct > 5.01 {
		t.Fatalf("battery should taper to nothing at 5 %%: tapered %v, end %+v", sawTaper, st)
	}
	if !near(st.FrequencyHz, cfg.MinHz, 0.011) {
		t.Fatalf("with no island capacity frequency is %v, want the floor %v", st.FrequencyHz, cfg.MinHz)
	}
}

func TestAdvanceIsDeterministic(t *testing.T) {
	run := func(seed uint64) State {
		cfg := DefaultConfig()
		cfg.Seed = seed
		s := New(cfg)
		s.Advance(3 * time.Second)
		s.command(0, 700, false)
		s.Advance(1500 * time.Millisecond)
		s.OpenBreaker()
		s.Advance(7 * time.Second)
		s.command(0, 300, true)
		s.Advance(17 * time.Second)
		return s.Snapshot()
	}
	a, b := run(7), run(7)
	if a != b {
		t.Fatalf("same seed, same inputs, different states:\n%+v\n%+v", a, b)
	}
	if c := run(8); c.InferenceKW == a.InferenceKW {
		t.Fatalf("different seeds gave the same inference power %v", a.InferenceKW)
	}
}

func TestInvalidConfigIsInert(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"negative miners": func(c *Config) { c.Miners = -1 },
		"zero step":       func(c *Config) { c.Step = 0 },
		"demand over 1":   func(c *Config) { c.TrainingDemand = 1.5 },
		"NaN aux":         func(c *Config) { c.AuxBaseKW = math.NaN() },
		"sleep over run":  func(c *Config) { c.MinerSleepKW = 4 },
		"taper inverted":  func(c *Config) { c.BatteryTaperSoCPct = 3 },
	} {
		cfg := DefaultConfig()
		mutate(&cfg)
		s := New(cfg)
		s.Advance(time.Second) // must not panic
		if err := s.Start(context.Background(), "127.0.0.1:0"); err == nil {
			s.Close()
			t.Errorf("%s: Start accepted an invalid config", name)
		}
	}
}
