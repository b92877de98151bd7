// Package sim is a simulated site on loopback that the real agent runs
// against in `siteagent demo` and in tests: a Modbus TCP server standing in
// for the PCC meter and utility relay, the BESS and generator controller, the
// rack/feeder PLC and an ops gateway, in front of simulated miners and GPU
// servers whose power follows their commands with realistic delays, and
// scripted grid scenarios.
//
// The physics is a deterministic step function, (*Site).Advance, so tests
// can drive it without sleeping; Start runs it on the real clock.
package sim

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/simonvetter/modbus"
)

// State is one instant of the site, for timelines and tests.
type State struct {
	Time            time.Duration `json:"time_ns"` // simulated time since New
	FrequencyHz     float64       `json:"frequency_hz"`
	BreakerClosed   bool          `json:"breaker_closed"`
	ImportKW        float64       `json:"import_kw"`
	SiteLoadKW      float64       `json:"site_load_kw"`
	AsicKW          float64       `json:"asic_kw"`
	TrainingKW      float64       `json:"training_kw"`
	InferenceKW     float64       `json:"inference_kw"`
	AuxKW           float64       `json:"aux_kw"`
	MinersRunning   int           `json:"miners_running"`
	MinersSleeping  int           `json:"miners_sleeping"`
	MinersWaking    int           `json:"miners_waking"`   // commanded on, not yet at full power
	MinersStopping  int           `json:"miners_stopping"` // commanded off, not yet asleep
	TrainingCapKW   float64       `json:"training_cap_kw"` // as written to the PLC
	InferenceCapKW  float64       `json:"inference_cap_kw"`
	BatterySoCPct   float64       `json:"battery_soc_pct"`
	BatteryKW       float64       `json:"battery_kw"`    // discharge now
	GenerationKW    float64       `json:"generation_kw"` // output now
	IslandCapacity  float64       `json:"island_capacity_kw"`
	CurtailTargetKW float64       `json:"curtail_target_kw"`
	MeterFrozen     bool          `json:"meter_frozen"`
	MeterDropped    bool          `json:"meter_dropped"`
}

type minerMode uint8

const (
	asleep minerMode = iota
	running
	stopping
	waking
)

// miner tracks its power explicitly, so that a command reversed halfway
// through a transition continues from where the power is.
type miner struct {
	mode minerMode
	run  bool          // the coil: 1 = run
	t    time.Duration // time since the last command
	kw   float64
}

// Site is the simulated site. All methods are safe for concurrent use.
type Site struct {
	cfg Config
	err error // invalid config: Start returns it, Advance does nothing

	mu       sync.Mutex
	t        time.Duration
	miners   []miner
	moving   int          // miners in transition; none: asic power is unchanged
	hold     [2][4]uint16 // raw holding registers: [0] PLC caps, [1] ops target
	caps     [2]float64   // decoded caps: training, inference
	curtail  float64
	training float64 // kW now
	infer    float64
	aux      float64
	asic     float64

	trainDemand float64
	inferFixed  float64 // <0: follow the pseudo-random profile
	auxBase     float64

	breaker   bool
	hzSet     float64 // <=0: nominal
	islandHz  float64 // frequency without noise while islanded
	hz        float64
	soc       float64
	batteryKW float64
	genKW     float64

	frozen  bool
	dropped chan struct{} // non-nil while the meter is silent; closed to release
	onWrite func(unit uint8, table string, addr, qty uint16)

	// external, when set, is the ASIC load in kW (networked miners
	// simulated in sim/miners), read every step: see SetExternalASIC.
	external func() float64

	srv     *modbus.ModbusServer
	url     string
	stop    chan struct{}
	wg      sync.WaitGroup
	started bool
	closed  bool
}

// New builds a site in its steady state: breaker closed, every miner
// hashing, GPU caps at rating, no curtailment. An invalid cfg gives an inert
// site whose Start reports why.
func New(cfg Config) *Site {
	s := &Site{cfg: cfg, err: cfg.Validate(), breaker: true, inferFixed: -1}
	if s.err != nil {
		return s
	}
	s.miners = make([]miner, cfg.Miners)
	for i := range s.miners {
		s.miners[i] = miner{mode: running, run: true, kw: cfg.MinerKW}
	}
	s.trainDemand = cfg.TrainingDemand
	s.auxBase = cfg.AuxBaseKW
	s.soc = cfg.BatterySoCPct
	s.setHolding(0, 0, float32(float64(cfg.TrainingServers)*cfg.TrainingServerKW))
	s.setHolding(0, 2, float32(float64(cfg.InferenceServers)*cfg.InferenceServerKW))
	s.applyHolding()
	// Start settled, not ramping up from zero.
	s.asic = float64(cfg.Miners) * cfg.MinerKW
	s.training, s.infer = s.gpuTargets()
	s.aux = s.auxBase + cfg.AuxITFraction*(s.asic+s.training+s.infer)
	s.hz = cfg.NominalHz + s.gridNoise()
	return s
}

// Advance moves the physics forward by dt in steps of at most cfg.Step. The
// result depends only on the state, dt and the commands received.
func (s *Site) Advance(dt time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	for dt > 0 {
		h := min(dt, s.cfg.Step)
		s.step(h)
		dt -= h
	}
}

func (s *Site) step(h time.Duration) {
	c := &s.cfg
	s.t += h
	if s.moving > 0 {
		s.asic, s.moving = 0, 0
		for i := range s.miners {
			m := &s.miners[i]
			m.advance(h, c)
			s.asic += m.kw
			if m.mode == stopping || m.mode == waking {
				s.moving++
			}
		}
	}
	if s.external != nil {
		s.asic = s.external()
	}
	tt, it := s.gpuTargets()
	s.training = lag(s.training, tt, h, c.GPULag)
	s.infer = lag(s.infer, it, h, c.GPULag)
	s.aux = lag(s.aux, s.auxBase+c.AuxITFraction*(s.asic+s.training+s.infer), h, c.AuxLag)
	load := s.asic + s.training + s.infer + s.aux

	if s.breaker {
		s.genKW, s.batteryKW = 0, 0
		s.hz = s.gridHz() + s.gridNoise()
		return
	}
	avail := s.batteryAvailable()
	s.genKW = min(load, c.GenerationKW)
	s.batteryKW = min(load-s.genKW, avail)
	target := c.NominalHz
	if capKW := c.GenerationKW + avail; load > capKW {
		target = c.MinHz
		if capKW > 0 {
			target = max(c.MinHz, c.NominalHz-c.SagHzPerOverload*(load-capKW)/capKW)
		}
	}
	s.islandHz = lag(s.islandHz, target, h, c.IslandLag)
	s.hz = s.islandHz + s.gridNoise()
	s.soc = max(0, s.soc-s.batteryKW*h.Hours()/c.BatteryCapacityKWh*100)
}

func (m *miner) advance(h time.Duration, c *Config) {
	m.t += h
	var delay, span time.Duration
	var from, to float64
	switch m.mode {
	case stopping:
		delay, span, from, to = c.MinerSleepDelay, c.MinerSleepFall, c.MinerKW, c.MinerSleepKW
	case waking:
		delay, span, from, to = c.MinerWakeDelay, c.MinerWakeRamp, c.MinerSleepKW, c.MinerKW
	default:
		return
	}
	active := min(h, m.t-delay) // the part of this step past the delay
	if active <= 0 {
		return
	}
	if span > 0 {
		m.kw += (to - from) * float64(active) / float64(span)
	}
	if span <= 0 || (to > from && m.kw >= to) || (to < from && m.kw <= to) {
		m.kw = to
		m.mode = asleep
		if m.run {
			m.mode = running
		}
	}
}

// setCoil commands miner i; the caller holds s.mu.
func (s *Site) setCoil(i int, run bool) {
	s.miners[i].command(run, &s.cfg)
	s.moving++ // an over-count is harmless: the next step recounts
}

// command sets the miner's coil. A miner already at the new level (a sleep
// command cancelled before it was acted on) settles at once; otherwise the
// transition starts over from the present power.
func (m *miner) command(run bool, c *Config) {
	if m.run == run {
		return
	}
	m.run, m.t = run, 0
	switch {
	case run && m.kw == c.MinerKW:
		m.mode = running
	case run:
		m.mode = waking
	case m.kw == c.MinerSleepKW:
		m.mode = asleep
	default:
		m.mode = stopping
	}
}

// gpuTargets is the power each cluster settles at under its demand and cap.
func (s *Site) gpuTargets() (training, inference float64) {
	c := &s.cfg
	d := s.inferFixed
	if d < 0 {
		d = c.InferenceDemandMin + (c.InferenceDemandMax-c.InferenceDemandMin)*s.smoothNoise(2, c.InferenceDemandPeriod)
	}
	return cluster(c.TrainingServers, c.TrainingServerKW, s.trainDemand, s.caps[0], c.GPUMinCapFrac),
		cluster(c.InferenceServers, c.InferenceServerKW, d, s.caps[1], c.GPUMinCapFrac)
}

func cluster(n int, serverKW, demand, capKW, minFrac float64) float64 {
	if n == 0 {
		return 0
	}
	share := min(max(capKW/float64(n), minFrac*serverKW), serverKW)
	return float64(n) * min(demand*serverKW, share)
}

func (s *Site) gridHz() float64 {
	if s.hzSet > 0 {
		return s.hzSet
	}
	return s.cfg.NominalHz
}

func (s *Site) gridNoise() float64 {
	return s.cfg.GridNoiseHz * (2*s.smoothNoise(1, 200*time.Millisecond) - 1)
}

func (s *Site) batteryAvailable() float64 {
	c := &s.cfg
	switch {
	case s.soc >= c.BatteryTaperSoCPct:
		return c.BatteryMaxKW
	case s.soc <= c.BatteryEmptySoCPct:
		return 0
	}
	return c.BatteryMaxKW * (s.soc - c.BatteryEmptySoCPct) / (c.BatteryTaperSoCPct - c.BatteryEmptySoCPct)
}

// smoothNoise is value noise in [0,1): a pseudo-random value per knot of
// the simulated clock, eased between knots. salt picks the stream.
func (s *Site) smoothNoise(salt uint64, knot time.Duration) float64 {
	k := uint64(s.t / knot)
	f := float64(s.t%knot) / float64(knot)
	a, b := hash01(s.cfg.Seed, salt, k), hash01(s.cfg.Seed, salt, k+1)
	return a + (b-a)*f*f*(3-2*f)
}

// hash01 maps (seed, salt, k) to [0,1) with a splitmix64 finaliser.
func hash01(seed, salt, k uint64) float64 {
	x := seed*0x9e3779b97f4a7c15 ^ salt<<56 ^ k
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11) / (1 << 53)
}

// lag moves x toward target as a first-order system with time constant tau.
func lag(x, target float64, h, tau time.Duration) float64 {
	if tau <= 0 {
		return target
	}
	return target + (x-target)*math.Exp(-float64(h)/float64(tau))
}

// Snapshot returns the site's present state.
func (s *Site) Snapshot() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := State{
		Time: s.t, FrequencyHz: s.hz, BreakerClosed: s.breaker,
		AsicKW: s.asic, TrainingKW: s.training, InferenceKW: s.infer, AuxKW: s.aux,
		TrainingCapKW: s.caps[0], InferenceCapKW: s.caps[1],
		BatterySoCPct: s.soc, BatteryKW: s.batteryKW, GenerationKW: s.genKW,
		IslandCapacity:  s.cfg.GenerationKW + s.batteryAvailable(),
		CurtailTargetKW: s.curtail, MeterFrozen: s.frozen, MeterDropped: s.dropped != nil,
	}
	st.SiteLoadKW = st.AsicKW + st.TrainingKW + st.InferenceKW + st.AuxKW
	if s.breaker {
		st.ImportKW = st.SiteLoadKW
	}
	for i := range s.miners {
		switch s.miners[i].mode {
		case running:
			st.MinersRunning++
		case asleep:
			st.MinersSleeping++
		case waking:
			st.MinersWaking++
		case stopping:
			st.MinersStopping++
		}
	}
	return st
}

// SetFrequency overrides the grid frequency while grid-connected (noise
// still applies).
func (s *Site) SetFrequency(hz float64) {
	if !(hz > 0) || math.IsInf(hz, 0) {
		slog.Warn("sim: SetFrequency ignored; give a positive frequency", "hz", hz)
		return
	}
	s.mu.Lock()
	s.hzSet = hz
	s.mu.Unlock()
}

// ClearFrequency returns the grid to nominal frequency.
func (s *Site) ClearFrequency() {
	s.mu.Lock()
	s.hzSet = 0
	s.mu.Unlock()
}

// OpenBreaker islands the site: the generator and battery take the load.
func (s *Site) OpenBreaker() {
	s.mu.Lock()
	if s.breaker {
		s.breaker = false
		s.islandHz = s.gridHz()
	}
	s.mu.Unlock()
}

// CloseBreaker reconnects the site to the grid.
func (s *Site) CloseBreaker() {
	s.mu.Lock()
	s.breaker = true
	s.mu.Unlock()
}

// SetCurtailTarget sets the ops gateway's import target (0 = none), as
// central ops would.
func (s *Site) SetCurtailTarget(kw float64) {
	if !(kw >= 0) || math.IsInf(kw, 0) {
		slog.Warn("sim: SetCurtailTarget ignored; give 0 (none) or a positive kW", "kw", kw)
		return
	}
	s.mu.Lock()
	s.setHolding(1, 0, float32(kw))
	s.applyHolding()
	s.mu.Unlock()
}

// SetInferenceDemand fixes the inference cluster's demand as a fraction of
// its rating; ClearInferenceDemand returns it to its wandering profile.
func (s *Site) SetInferenceDemand(frac float64) {
	if !(frac >= 0 && frac <= 1) {
		slog.Warn("sim: SetInferenceDemand ignored; give a fraction between 0 and 1", "frac", frac)
		return
	}
	s.mu.Lock()
	s.inferFixed = frac
	s.mu.Unlock()
}

// ClearInferenceDemand lets inference demand wander again.
func (s *Site) ClearInferenceDemand() {
	s.mu.Lock()
	s.inferFixed = -1
	s.mu.Unlock()
}

// SetTrainingDemand sets the training cluster's demand as a fraction of its
// rating.
func (s *Site) SetTrainingDemand(frac float64) {
	if !(frac >= 0 && frac <= 1) {
		slog.Warn("sim: SetTrainingDemand ignored; give a fraction between 0 and 1", "frac", frac)
		return
	}
	s.mu.Lock()
	s.trainDemand = frac
	s.mu.Unlock()
}

// SetAuxBaseKW changes the load-independent part of aux power (a hot
// afternoon makes the chillers work harder).
func (s *Site) SetAuxBaseKW(kw float64) {
	if !(kw >= 0) || math.IsInf(kw, 0) {
		slog.Warn("sim: SetAuxBaseKW ignored; give a positive kW", "kw", kw)
		return
	}
	s.mu.Lock()
	s.auxBase = kw
	s.mu.Unlock()
}

// Start serves the site's Modbus map on addr ("127.0.0.1:0" picks a free
// port) and runs the physics on the real clock until ctx ends or Close.
func (s *Site) Start(ctx context.Context, addr string) error {
	if s.err != nil {
		return s.err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("sim: site already started")
	}
	srv, url, err := s.serve(addr)
	if err != nil {
		return err
	}
	s.srv, s.url, s.started, s.stop = srv, url, true, make(chan struct{})
	s.wg.Add(1)
	go s.run()
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.stop:
		}
	}()
	return nil
}

// run advances the physics by the real time elapsed at every step tick, so
// late ticks on a busy machine do not slow the simulated clock.
func (s *Site) run() {
	defer s.wg.Done()
	tick := time.NewTicker(s.cfg.Step)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-s.stop:
			return
		case now := <-tick.C:
			s.Advance(now.Sub(last))
			last = now
		}
	}
}

// URL is the Modbus server's address, "tcp://127.0.0.1:PORT"; empty before
// Start.
func (s *Site) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Close stops the server and the physics. It is safe to call more than once.
func (s *Site) Close() {
	s.mu.Lock()
	if !s.started || s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.stop)
	if s.dropped != nil {
		close(s.dropped)
		s.dropped = nil
	}
	srv := s.srv
	s.mu.Unlock()
	if err := srv.Stop(); err != nil {
		slog.Debug("sim: stopping Modbus server", "err", err)
	}
	s.wg.Wait()
}
