package sim

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Config describes the simulated site. DefaultConfig matches
// configs/demo.toml.
type Config struct {
	// Seed makes the grid noise and the inference demand profile
	// reproducible.
	Seed uint64
	// Step is the physics step; Advance splits longer spans into steps.
	Step time.Duration

	// Miners, each drawing MinerKW while hashing and MinerSleepKW asleep.
	Miners       int
	MinerKW      float64
	MinerSleepKW float64
	// A sleep command takes MinerSleepDelay to act on, then power falls to
	// the sleep level over MinerSleepFall. A wake command takes
	// MinerWakeDelay (boot, pool connect), then power ramps over
	// MinerWakeRamp. The defaults are shortened for a watchable demo: real
	// miners act on a sleep command in 1-20 s and take from ~30 s (Braiins
	// OS, LuxOS curtail/wake) to several minutes (stock firmware reboot and
	// hashboard tuning) to reach full power again.
	MinerSleepDelay time.Duration
	MinerSleepFall  time.Duration
	MinerWakeDelay  time.Duration
	MinerWakeRamp   time.Duration

	// GPU clusters. The PLC splits a cluster cap evenly over its servers;
	// each server draws min(demand, its share of the cap). Caps below
	// GPUMinCapFrac of rating are raised to it, as NVML refuses limits below
	// a board's minimum (H100 SXM: 200 of 700 W). Power follows a new cap or
	// demand with time constant GPULag (NVML applies a limit within ~100-200
	// ms).
	TrainingServers   int
	TrainingServerKW  float64
	TrainingDemand    float64 // fraction of rating, 0..1
	InferenceServers  int
	InferenceServerKW float64
	// Inference demand wanders between InferenceDemandMin and Max, with a
	// new pseudo-random value every InferenceDemandPeriod.
	InferenceDemandMin    float64
	InferenceDemandMax    float64
	InferenceDemandPeriod time.Duration
	GPUMinCapFrac         float64
	GPULag                time.Duration

	// Aux (cooling, lighting, losses) draws AuxBaseKW plus AuxITFraction of
	// the IT power, following with time constant AuxLag (chillers are slow).
	AuxBaseKW     float64
	AuxITFraction float64
	AuxLag        time.Duration

	// Grid frequency: NominalHz with deterministic noise of ±GridNoiseHz.
	NominalHz   float64
	GridNoiseHz float64
	// Islanded, an overload sags frequency by SagHzPerOverload per unit of
	// overload fraction ((load-capacity)/capacity), not below MinHz, with
	// time constant IslandLag.
	SagHzPerOverload float64
	MinHz            float64
	IslandLag        time.Duration

	// Island sources. The generator supplies first, the battery the rest.
	// The battery gives BatteryMaxKW while its state of charge is above
	// BatteryTaperSoCPct, tapering linearly to nothing at BatteryEmptySoCPct.
	GenerationKW       float64
	BatteryMaxKW       float64
	BatteryCapacityKWh float64
	BatterySoCPct      float64 // initial state of charge
	BatteryTaperSoCPct float64
	BatteryEmptySoCPct float64
}

// DefaultConfig is the demo site: 2,000 miners (7 MW), 600 training and 300
// inference servers of 10 kW, ~0.8 MW of aux, 6 MW of generation and a 4 MW
// / 8 MWh battery.
func DefaultConfig() Config {
	return Config{
		Seed:                  1,
		Step:                  10 * time.Millisecond,
		Miners:                2000,
		MinerKW:               3.5,
		MinerSleepKW:          0.05,
		MinerSleepDelay:       time.Second,
		MinerSleepFall:        500 * time.Millisecond,
		MinerWakeDelay:        3 * time.Second,
		MinerWakeRamp:         time.Second,
		TrainingServers:       600,
		TrainingServerKW:      10,
		TrainingDemand:        0.95,
		InferenceServers:      300,
		InferenceServerKW:     10,
		InferenceDemandMin:    0.6,
		InferenceDemandMax:    0.9,
		InferenceDemandPeriod: 10 * time.Second,
		GPUMinCapFrac:         0.25,
		GPULag:                50 * time.Millisecond,
		AuxBaseKW:             800,
		AuxITFraction:         0.05,
		AuxLag:                2 * time.Second,
		NominalHz:             60,
		GridNoiseHz:           0.01,
		SagHzPerOverload:      2,
		MinHz:                 57,
		IslandLag:             200 * time.Millisecond,
		GenerationKW:          6000,
		BatteryMaxKW:          4000,
		BatteryCapacityKWh:    8000,
		BatterySoCPct:         80,
		BatteryTaperSoCPct:    10,
		BatteryEmptySoCPct:    5,
	}
}

// Validate reports the first field that cannot describe a site.
func (c *Config) Validate() error {
	fin := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	nonNeg := []struct {
		name string
		v    float64
	}{
		{"MinerKW", c.MinerKW}, {"MinerSleepKW", c.MinerSleepKW},
		{"TrainingServerKW", c.TrainingServerKW}, {"InferenceServerKW", c.InferenceServerKW},
		{"AuxBaseKW", c.AuxBaseKW}, {"AuxITFraction", c.AuxITFraction},
		{"GridNoiseHz", c.GridNoiseHz}, {"SagHzPerOverload", c.SagHzPerOverload},
		{"GenerationKW", c.GenerationKW}, {"BatteryMaxKW", c.BatteryMaxKW},
		{"MinerSleepDelay", c.MinerSleepDelay.Seconds()}, {"MinerSleepFall", c.MinerSleepFall.Seconds()},
		{"MinerWakeDelay", c.MinerWakeDelay.Seconds()}, {"MinerWakeRamp", c.MinerWakeRamp.Seconds()},
		{"GPULag", c.GPULag.Seconds()}, {"AuxLag", c.AuxLag.Seconds()}, {"IslandLag", c.IslandLag.Seconds()},
	}
	for _, f := range nonNeg {
		if !fin(f.v) || f.v < 0 {
			return fmt.Errorf("sim config: %s is %v; it must be zero or positive", f.name, f.v)
		}
	}
	frac := []struct {
		name string
		v    float64
	}{
		{"TrainingDemand", c.TrainingDemand}, {"InferenceDemandMin", c.InferenceDemandMin},
		{"InferenceDemandMax", c.InferenceDemandMax}, {"GPUMinCapFrac", c.GPUMinCapFrac},
	}
	for _, f := range frac {
		if !fin(f.v) || f.v < 0 || f.v > 1 {
			return fmt.Errorf("sim config: %s is %v; it must be a fraction between 0 and 1", f.name, f.v)
		}
	}
	switch {
	case c.Step <= 0:
		return fmt.Errorf("sim config: Step is %v; it must be positive, e.g. 10ms", c.Step)
	case c.InferenceDemandPeriod <= 0:
		return fmt.Errorf("sim config: InferenceDemandPeriod is %v; it must be positive", c.InferenceDemandPeriod)
	case c.Miners < 0 || c.Miners > 65536:
		return fmt.Errorf("sim config: Miners is %d; it must be 0..65536 (one coil each)", c.Miners)
	case c.TrainingServers < 0 || c.InferenceServers < 0:
		return errors.New("sim config: server counts must not be negative")
	case c.MinerSleepKW > c.MinerKW:
		return fmt.Errorf("sim config: MinerSleepKW %v is above MinerKW %v", c.MinerSleepKW, c.MinerKW)
	case c.InferenceDemandMin > c.InferenceDemandMax:
		return fmt.Errorf("sim config: InferenceDemandMin %v is above InferenceDemandMax %v", c.InferenceDemandMin, c.InferenceDemandMax)
	case !fin(c.NominalHz) || c.NominalHz <= 0 || !fin(c.MinHz) || c.MinHz < 0 || c.MinHz > c.NominalHz:
		return fmt.Errorf("sim config: need 0 <= MinHz (%v) <= NominalHz (%v)", c.MinHz, c.NominalHz)
	case !fin(c.BatteryCapacityKWh) || c.BatteryCapacityKWh <= 0:
		return fmt.Errorf("sim config: BatteryCapacityKWh is %v; it must be positive", c.BatteryCapacityKWh)
	case !fin(c.BatterySoCPct) || c.BatterySoCPct < 0 || c.BatterySoCPct > 100:
		return fmt.Errorf("sim config: BatterySoCPct is %v; it must be 0..100", c.BatterySoCPct)
	case !(c.BatteryEmptySoCPct >= 0 && c.BatteryEmptySoCPct <= c.BatteryTaperSoCPct && c.BatteryTaperSoCPct <= 100):
		return fmt.Errorf("sim config: need 0 <= BatteryEmptySoCPct (%v) <= BatteryTaperSoCPct (%v) <= 100", c.BatteryEmptySoCPct, c.BatteryTaperSoCPct)
	}
	return nil
}
