//go:build cgo

// Package gpunode simulates the GPUs of one GPU server for the node role's
// tests, benchmarks and the "mock" backend: go-nvml's DGX A100 mock server
// (pkg/nvml/mock/dgxa100) with the power functions wired to a small power
// model, a latency on every call (real NVML calls take 10-20 ms), and
// error injection (no permission, not supported, library not found, ...).
//
// It is a simulation: a node configured with backend = "mock" controls
// nothing real.
//
// Each GPU draws min(demand, enforced limit), never below its idle power;
// the enforced limit is the lower of the management limit (what the node
// sets) and an external limit (another limiter, which tests set). A
// "driver reload" puts every management limit back to its default. The
// energy counter integrates the draw over wall-clock time.
package gpunode

import (
	"fmt"
	"hash/fnv"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
)

// Config describes the simulated server.
type Config struct {
	// Seed names the server: GPU UUIDs derive from it, so a restarted
	// node sees the same GPUs.
	Seed string
	// GPUs: 1..8 (the DGX A100 mock has eight).
	GPUs int
	// Model presets the board: "a100" (100..400 W, default 400 W) or
	// "h100" (200..700 W, default 700 W); MinW/MaxW/DefaultW override it.
	Model                string
	MinW, MaxW, DefaultW uint32
	// IdleW is the least a GPU draws.
	IdleW uint32
	// Demand: the fraction of MaxW the workload wants, 0..1.
	Demand float64
	// Latency is added to every NVML call the driver makes.
	Latency time.Duration
	// InstantPower: the GPUs report FI_DEV_POWER_INSTANT (newer boards
	// and drivers); otherwise only the averaged power usage.
	InstantPower bool
}

// Op names an NVML call, for error injection.
type Op string

const (
	OpInit        Op = "init"
	OpConstraints Op = "constraints"
	OpSet         Op = "set"
	OpPower       Op = "power"
	OpEnergy      Op = "energy"
	OpEnforced    Op = "enforced"
	OpLimit       Op = "limit"
	OpTemperature Op = "temperature"
	OpUtilization Op = "utilization"
	OpClockEvents Op = "clock_events"
)

// Server is one simulated GPU server. Its methods are safe for concurrent
// use.
type Server struct {
	cfg  Config
	base *dgxa100.Server
	gpus []*GPU

	mu      sync.Mutex
	latency time.Duration
	fail    map[failKey]nvml.Return
	sets    atomic.Uint64
	calls   atomic.Uint64
	// Set calls in progress now, and the most ever at once.
	inflight, peak atomic.Int64
}

type failKey struct {
	op  Op
	gpu int // -1: every GPU
}

// GPU is one simulated board. It embeds the DGX A100 mock device for every
// call this package does not model.
type GPU struct {
	nvml.Device
	s    *Server
	idx  int
	uuid string

	// Guarded by s.mu.
	limitMW    uint32
	externalMW uint32 // 0: no other limiter
	demand     float64
	energyMJ   float64
	lastT      time.Time
}

// WithDefaults fills the unset fields.
func (c Config) WithDefaults() Config {
	if c.GPUs == 0 {
		c.GPUs = 8
	}
	lo, hi := uint32(100), uint32(400)
	if c.Model == "h100" {
		lo, hi = 200, 700
	}
	if c.MinW == 0 {
		c.MinW = lo
	}
	if c.MaxW == 0 {
		c.MaxW = hi
	}
	if c.DefaultW == 0 {
		c.DefaultW = c.MaxW
	}
	if c.IdleW == 0 {
		c.IdleW = min(60, c.MinW/2)
	}
	if c.Seed == "" {
		c.Seed = "gpunode"
	}
	return c
}

// Validate reports a config that cannot describe a server.
func (c Config) Validate() error {
	c = c.WithDefaults()
	switch {
	case c.GPUs < 1 || c.GPUs > 8:
		return fmt.Errorf("gpunode: %d GPUs; the mock server has 1..8", c.GPUs)
	case c.Model != "" && c.Model != "a100" && c.Model != "h100":
		return fmt.Errorf("gpunode: model %q; use \"a100\" or \"h100\"", c.Model)
	case c.MinW > c.MaxW || c.DefaultW < c.MinW || c.DefaultW > c.MaxW:
		return fmt.Errorf("gpunode: need min_w (%d) <= default_w (%d) <= max_w (%d)", c.MinW, c.DefaultW, c.MaxW)
	case c.Demand < 0 || c.Demand > 1 || math.IsNaN(c.Demand):
		return fmt.Errorf("gpunode: demand %g; it is a fraction 0..1", c.Demand)
	case c.Latency < 0:
		return fmt.Errorf("gpunode: negative latency %s", c.Latency)
	}
	return nil
}

// New builds a server; an invalid config panics (tests and the node's
// config validation check it first with Validate).
func New(cfg Config) *Server {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	cfg = cfg.WithDefaults()
	s := &Server{cfg: cfg, base: dgxa100.New(), latency: cfg.Latency, fail: map[failKey]nvml.Return{}}
	now := time.Now()
	for i := 0; i < cfg.GPUs; i++ {
		g := &GPU{Device: s.base.Devices[i], s: s, idx: i, uuid: uuidFor(cfg.Seed, i),
			limitMW: cfg.DefaultW * 1000, demand: cfg.Demand, lastT: now}
		s.gpus = append(s.gpus, g)
	}
	// The library-level calls: Init can fail on demand, and handles are
	// our GPUs rather than the plain mock devices.
	s.base.InitFunc = func() nvml.Return {
		s.delay()
		return s.injected(OpInit, -1)
	}
	s.base.DeviceGetCountFunc = func() (int, nvml.Return) { return len(s.gpus), nvml.SUCCESS }
	s.base.DeviceGetHandleByIndexFunc = func(i int) (nvml.Device, nvml.Return) {
		if i < 0 || i >= len(s.gpus) {
			return nil, nvml.ERROR_INVALID_ARGUMENT
		}
		return s.gpus[i], nvml.SUCCESS
	}
	s.base.DeviceGetHandleByUUIDFunc = func(u string) (nvml.Device, nvml.Return) {
		for _, g := range s.gpus {
			if g.uuid == u {
				return g, nvml.SUCCESS
			}
		}
		return nil, nvml.ERROR_NOT_FOUND
	}
	return s
}

// uuidFor makes a stable UUID-shaped name for GPU i of a server.
func uuidFor(seed string, i int) string {
	h := fnv.New128a()
	fmt.Fprintf(h, "%s/%d", seed, i)
	b := h.Sum(nil)
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// Interface is the NVML library of this server, for nvml.Open.
func (s *Server) Interface() nvml.Interface { return s.base }

// Config returns the server's config with defaults filled in.
func (s *Server) Config() Config { return s.cfg }

// UUID of GPU i.
func (s *Server) UUID(i int) string { return s.gpus[i].uuid }

// SetLatency changes the per-call latency.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	s.latency = d
	s.mu.Unlock()
}

// Fail makes op on gpu (-1: every GPU; ignored for OpInit) return ret
// until Clear; SUCCESS removes the failure.
func (s *Server) Fail(op Op, gpu int, ret nvml.Return) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ret == nvml.SUCCESS {
		delete(s.fail, failKey{op, gpu})
		return
	}
	s.fail[failKey{op, gpu}] = ret
}

// Clear removes every injected failure.
func (s *Server) Clear() {
	s.mu.Lock()
	s.fail = map[failKey]nvml.Return{}
	s.mu.Unlock()
}

// SetDemand sets the fraction of MaxW GPU i's workload wants (-1: all).
func (s *Server) SetDemand(gpu int, frac float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.gpus {
		if gpu < 0 || g.idx == gpu {
			g.integrate(time.Now())
			g.demand = frac
		}
	}
}

// SetExternalLimit makes another limiter hold GPU i at w watts (0: none).
func (s *Server) SetExternalLimit(gpu int, w uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.gpus[gpu]
	g.integrate(time.Now())
	g.externalMW = w * 1000
}

// SetLimitOutOfBand changes GPU i's management limit behind the node's
// back (another tool, e.g. nvidia-smi -pl).
func (s *Server) SetLimitOutOfBand(gpu int, w uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.gpus[gpu]
	g.integrate(time.Now())
	g.limitMW = w * 1000
}

// ResetLimits is a driver reload: every limit goes back to its default.
func (s *Server) ResetLimits() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range s.gpus {
		g.integrate(time.Now())
		g.limitMW = s.cfg.DefaultW * 1000
	}
}

// LimitW is GPU i's management limit in watts.
func (s *Server) LimitW(gpu int) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(s.gpus[gpu].limitMW) / 1000
}

// EnforcedW is GPU i's enforced limit in watts.
func (s *Server) EnforcedW(gpu int) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return float64(s.gpus[gpu].enforced()) / 1000
}

// PowerW is what GPU i draws now, in watts.
func (s *Server) PowerW(gpu int) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gpus[gpu].drawMW() / 1000
}

// Sets counts successful SetPowerManagementLimit calls.
func (s *Server) Sets() uint64 { return s.sets.Load() }

// PeakConcurrentSets is the most SetPowerManagementLimit calls that were
// ever in progress at once: how parallel the driver really is.
func (s *Server) PeakConcurrentSets() int { return int(s.peak.Load()) }

// Calls counts every modelled NVML call.
func (s *Server) Calls() uint64 { return s.calls.Load() }

func (s *Server) delay() {
	s.calls.Add(1)
	s.mu.Lock()
	d := s.latency
	s.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
}

// injected returns the failure set for op on gpu, or SUCCESS.
func (s *Server) injected(op Op, gpu int) nvml.Return {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.fail[failKey{op, gpu}]; ok {
		return r
	}
	if r, ok := s.fail[failKey{op, -1}]; ok {
		return r
	}
	return nvml.SUCCESS
}

// call runs f under the server's lock after the latency, unless op fails.
func (g *GPU) call(op Op, f func()) nvml.Return {
	g.s.delay()
	if r := g.s.injected(op, g.idx); r != nvml.SUCCESS {
		return r
	}
	g.s.mu.Lock()
	defer g.s.mu.Unlock()
	g.integrate(time.Now())
	f()
	return nvml.SUCCESS
}

func (g *GPU) enforced() uint32 {
	if g.externalMW != 0 && g.externalMW < g.limitMW {
		return g.externalMW
	}
	return g.limitMW
}

func (g *GPU) wantMW() float64 { return g.demand * float64(g.s.cfg.MaxW) * 1000 }

func (g *GPU) drawMW() float64 {
	return math.Max(float64(g.s.cfg.IdleW)*1000, math.Min(g.wantMW(), float64(g.enforced())))
}

// integrate adds the energy drawn since the last call (under s.mu).
func (g *GPU) integrate(now time.Time) {
	if dt := now.Sub(g.lastT).Seconds(); dt > 0 {
		g.energyMJ += g.drawMW() * dt
	}
	g.lastT = now
}

// The modelled NVML calls.

func (g *GPU) GetUUID() (string, nvml.Return) {
	g.s.delay()
	return g.uuid, nvml.SUCCESS
}

func (g *GPU) GetIndex() (int, nvml.Return) {
	g.s.delay()
	return g.idx, nvml.SUCCESS
}

func (g *GPU) GetName() (string, nvml.Return) {
	g.s.delay()
	if g.s.cfg.Model == "h100" {
		return "Mock NVIDIA H100 80GB HBM3", nvml.SUCCESS
	}
	return "Mock NVIDIA A100-SXM4-40GB", nvml.SUCCESS
}

func (g *GPU) GetPowerManagementLimitConstraints() (lo, hi uint32, r nvml.Return) {
	r = g.call(OpConstraints, func() { lo, hi = g.s.cfg.MinW*1000, g.s.cfg.MaxW*1000 })
	return
}

func (g *GPU) GetPowerManagementDefaultLimit() (mw uint32, r nvml.Return) {
	r = g.call(OpConstraints, func() { mw = g.s.cfg.DefaultW * 1000 })
	return
}

func (g *GPU) GetPowerManagementLimit() (mw uint32, r nvml.Return) {
	r = g.call(OpLimit, func() { mw = g.limitMW })
	return
}

func (g *GPU) GetEnforcedPowerLimit() (mw uint32, r nvml.Return) {
	r = g.call(OpEnforced, func() { mw = g.enforced() })
	return
}

func (g *GPU) SetPowerManagementLimit(mw uint32) nvml.Return {
	n := g.s.inflight.Add(1)
	defer g.s.inflight.Add(-1)
	for p := g.s.peak.Load(); n > p && !g.s.peak.CompareAndSwap(p, n); p = g.s.peak.Load() {
	}
	r := g.call(OpSet, func() {})
	if r != nvml.SUCCESS {
		return r
	}
	g.s.mu.Lock()
	defer g.s.mu.Unlock()
	if mw < g.s.cfg.MinW*1000 || mw > g.s.cfg.MaxW*1000 {
		return nvml.ERROR_INVALID_ARGUMENT
	}
	g.limitMW = mw
	g.s.sets.Add(1)
	return nvml.SUCCESS
}

func (g *GPU) GetPowerUsage() (mw uint32, r nvml.Return) {
	r = g.call(OpPower, func() { mw = uint32(g.drawMW()) })
	return
}

// GetFieldValues models FI_DEV_POWER_INSTANT only; other fields report
// not supported, as a real board does for fields it lacks.
func (g *GPU) GetFieldValues(values []nvml.FieldValue) nvml.Return {
	return g.call(OpPower, func() {
		for i := range values {
			v := &values[i]
			v.Timestamp = time.Now().UnixMicro()
			if v.FieldId != nvml.FI_DEV_POWER_INSTANT || !g.s.cfg.InstantPower {
				v.NvmlReturn = uint32(nvml.ERROR_NOT_SUPPORTED)
				continue
			}
			v.NvmlReturn = uint32(nvml.SUCCESS)
			v.ValueType = uint32(nvml.VALUE_TYPE_UNSIGNED_INT)
			mw := uint32(g.drawMW())
			v.Value = [8]byte{byte(mw), byte(mw >> 8), byte(mw >> 16), byte(mw >> 24)}
		}
	})
}

func (g *GPU) GetTotalEnergyConsumption() (mj uint64, r nvml.Return) {
	r = g.call(OpEnergy, func() { mj = uint64(g.energyMJ) })
	return
}

func (g *GPU) GetTemperature(nvml.TemperatureSensors) (c uint32, r nvml.Return) {
	r = g.call(OpTemperature, func() { c = uint32(30 + 50*g.drawMW()/(float64(g.s.cfg.MaxW)*1000)) })
	return
}

func (g *GPU) GetUtilizationRates() (u nvml.Utilization, r nvml.Return) {
	r = g.call(OpUtilization, func() {
		u = nvml.Utilization{Gpu: uint32(math.Round(100 * g.demand)), Memory: uint32(math.Round(40 * g.demand))}
	})
	return
}

func (g *GPU) GetCurrentClocksEventReasons() (ev uint64, r nvml.Return) {
	r = g.call(OpClockEvents, func() {
		if g.wantMW() > float64(g.enforced()) {
			ev |= nvml.ClocksEventReasonSwPowerCap
		}
		if g.demand == 0 {
			ev |= nvml.ClocksEventReasonGpuIdle
		}
	})
	return
}

func (g *GPU) GetCurrentClocksThrottleReasons() (uint64, nvml.Return) {
	return g.GetCurrentClocksEventReasons()
}

var _ nvml.Device = (*GPU)(nil)
