//go:build cgo

package nvml

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"
)

// BuiltIn reports whether this binary can drive GPUs (built with cgo).
const BuiltIn = true

// Support says, for `siteagent version`, whether GPU control is built in.
func Support() string { return "GPU control: built in (NVML through cgo)" }

// Host is the GPUs of this machine. Reads and sets may run at the same
// time (NVML is thread-safe); sets on one GPU are serialised.
type Host struct {
	lib          gonvml.Interface
	opt          Options
	log          *slog.Logger
	gpus         []*gpu
	driver       string
	eventReasons bool // the library has nvmlDeviceGetCurrentClocksEventReasons
	closeOnce    sync.Once
	closeErr     error
}

type gpu struct {
	dev   gonvml.Device
	setMu sync.Mutex // one set at a time

	mu         sync.Mutex
	info       GPU
	limitMW    uint32 // management limit last read or set; 0: unknown
	enforcedMW uint32
	gen        uint64 // bumped around every set, so a read can tell it overlapped one
}

// OpenSystem loads the host's NVML library (libnvidia-ml.so.1) and
// discovers its GPUs.
func OpenSystem(opt Options) (*Host, error) { return Open(gonvml.New(), opt) }

// Open initialises lib (the system library, or a mock for tests and
// simulation) and discovers every GPU, in parallel.
func Open(lib gonvml.Interface, opt Options) (*Host, error) {
	if r := lib.Init(); r != gonvml.SUCCESS {
		return nil, wrap(-1, "init", r)
	}
	n, r := lib.DeviceGetCount()
	if r != gonvml.SUCCESS {
		lib.Shutdown()
		return nil, wrap(-1, "count GPUs", r)
	}
	h := &Host{lib: lib, opt: opt, log: opt.log(), gpus: make([]*gpu, n)}
	if v, r := lib.SystemGetDriverVersion(); r == gonvml.SUCCESS {
		h.driver = v
	}
	// Older drivers only have the "throttle reasons" name of the call;
	// calling a symbol the library lacks would crash, so ask first.
	h.eventReasons = lib.Extensions().LookupSymbol("nvmlDeviceGetCurrentClocksEventReasons") == nil
	var wg sync.WaitGroup
	for i := range h.gpus {
		h.gpus[i] = &gpu{info: GPU{Index: i}}
		wg.Add(1)
		go func(g *gpu) {
			defer wg.Done()
			h.discover(g)
		}(h.gpus[i])
	}
	wg.Wait()
	for _, g := range h.gpus {
		if !g.info.Throttleable {
			h.log.Warn("GPU is not throttleable", "gpu", g.info.Index, "uuid", g.info.UUID, "why", g.info.Why)
		}
	}
	return h, nil
}

func (h *Host) discover(g *gpu) {
	i := g.info.Index
	dev, r := h.lib.DeviceGetHandleByIndex(i)
	if r != gonvml.SUCCESS {
		g.info.Why = wrap(i, "get handle", r).Error()
		return
	}
	g.dev = dev
	if s, r := dev.GetUUID(); r == gonvml.SUCCESS {
		g.info.UUID = s
	}
	if s, r := dev.GetName(); r == gonvml.SUCCESS {
		g.info.Name = s
	}
	lo, hi, r := dev.GetPowerManagementLimitConstraints()
	switch {
	case r == gonvml.SUCCESS && hi > 0 && lo <= hi:
		g.info.MinMW, g.info.MaxMW, g.info.Throttleable = lo, hi, true
	case r == gonvml.SUCCESS:
		g.info.Why = fmt.Sprintf("the board reports unusable limit constraints %d..%d mW", lo, hi)
	default:
		g.info.Why = wrap(i, "read power limit constraints", r).Error()
	}
	if d, r := dev.GetPowerManagementDefaultLimit(); r == gonvml.SUCCESS {
		g.info.DefaultMW = d
	} else {
		g.info.DefaultMW = g.info.MaxMW
	}
	if l, r := dev.GetPowerManagementLimit(); r == gonvml.SUCCESS {
		g.limitMW = l
	}
	if e, r := dev.GetEnforcedPowerLimit(); r == gonvml.SUCCESS {
		g.enforcedMW = e
	}
	v := []gonvml.FieldValue{{FieldId: gonvml.FI_DEV_POWER_INSTANT}}
	if r := dev.GetFieldValues(v); r == gonvml.SUCCESS && gonvml.Return(v[0].NvmlReturn) == gonvml.SUCCESS {
		g.info.InstantPower = true
	}
}

// DriverVersion is the NVIDIA driver's version ("" when unknown).
func (h *Host) DriverVersion() string { return h.driver }

// GPUs describes every GPU, by index.
func (h *Host) GPUs() []GPU {
	out := make([]GPU, len(h.gpus))
	for i, g := range h.gpus {
		g.mu.Lock()
		out[i] = g.info
		g.mu.Unlock()
	}
	return out
}

// Read reads every GPU's telemetry, the GPUs in parallel, into dst
// (reused when large enough).
func (h *Host) Read(dst []Reading) []Reading {
	if cap(dst) < len(h.gpus) {
		dst = make([]Reading, len(h.gpus))
	}
	dst = dst[:len(h.gpus)]
	var wg sync.WaitGroup
	for i, g := range h.gpus {
		wg.Add(1)
		go func(g *gpu, r *Reading) {
			defer wg.Done()
			h.read(g, r)
		}(g, &dst[i])
	}
	wg.Wait()
	return dst
}

func (h *Host) read(g *gpu, out *Reading) {
	g.mu.Lock()
	info, gen0 := g.info, g.gen
	g.mu.Unlock()
	r := Reading{Index: info.Index, At: time.Now()}
	if g.dev == nil {
		r.Err = fmt.Errorf("GPU %d: no handle: %s", info.Index, info.Why)
		*out = r
		return
	}
	note := func(op string, ret gonvml.Return, bit Has) bool {
		switch ret {
		case gonvml.SUCCESS:
			r.Has |= bit
			return true
		case gonvml.ERROR_NOT_SUPPORTED:
		default:
			if r.Err == nil {
				r.Err = wrap(info.Index, op, ret)
			}
		}
		return false
	}
	if info.InstantPower {
		v := []gonvml.FieldValue{{FieldId: gonvml.FI_DEV_POWER_INSTANT}}
		ret := g.dev.GetFieldValues(v)
		if ret == gonvml.SUCCESS {
			ret = gonvml.Return(v[0].NvmlReturn)
		}
		if note("read instant power", ret, HasPower) {
			r.PowerMW = fieldUint32(v[0])
		}
	} else {
		p, ret := g.dev.GetPowerUsage()
		if note("read power usage", ret, HasPower) {
			r.PowerMW = p
		}
	}
	if e, ret := g.dev.GetTotalEnergyConsumption(); note("read energy", ret, HasEnergy) {
		r.EnergyMJ = e
	}
	if e, ret := g.dev.GetEnforcedPowerLimit(); note("read enforced limit", ret, HasEnforced) {
		r.EnforcedMW = e
	}
	if l, ret := g.dev.GetPowerManagementLimit(); note("read power limit", ret, HasLimit) {
		r.LimitMW = l
	}
	if t, ret := g.dev.GetTemperature(gonvml.TEMPERATURE_GPU); note("read temperature", ret, HasTemperature) {
		r.TempC = t
	}
	if u, ret := g.dev.GetUtilizationRates(); note("read utilisation", ret, HasUtilization) {
		r.UtilPct, r.MemUtilPct = u.Gpu, u.Memory
	}
	var ev uint64
	var ret gonvml.Return
	if h.eventReasons {
		ev, ret = g.dev.GetCurrentClocksEventReasons()
	} else {
		ev, ret = g.dev.GetCurrentClocksThrottleReasons()
	}
	if note("read clock-event reasons", ret, HasClockEvents) {
		r.ClockEvents = ev
	}
	g.mu.Lock()
	if g.gen == gen0 {
		if r.Has&HasLimit != 0 {
			g.limitMW = r.LimitMW
		}
		if r.Has&HasEnforced != 0 {
			g.enforcedMW = r.EnforcedMW
		}
	} else {
		r.SetDuring = true
	}
	g.mu.Unlock()
	*out = r
}

// fieldUint32 decodes a field value that NVML may report in any integer
// or floating type.
func fieldUint32(v gonvml.FieldValue) uint32 {
	switch gonvml.ValueType(v.ValueType) {
	case gonvml.VALUE_TYPE_DOUBLE:
		f := math.Float64frombits(binary.LittleEndian.Uint64(v.Value[:]))
		if f < 0 || f > math.MaxUint32 || math.IsNaN(f) {
			return 0
		}
		return uint32(f)
	case gonvml.VALUE_TYPE_UNSIGNED_LONG, gonvml.VALUE_TYPE_UNSIGNED_LONG_LONG, gonvml.VALUE_TYPE_SIGNED_LONG_LONG:
		return uint32(min(binary.LittleEndian.Uint64(v.Value[:]), math.MaxUint32))
	case gonvml.VALUE_TYPE_UNSIGNED_SHORT:
		return uint32(binary.LittleEndian.Uint16(v.Value[:2]))
	}
	return binary.LittleEndian.Uint32(v.Value[:4])
}

// SetCaps sets GPU i's power limit to want[i] milliwatts (0 or past the
// end of want: leave it) on every GPU in parallel, only where it differs
// from the current limit, and reads each enforced limit back. A cap
// outside a GPU's constraints is refused for that GPU without a call.
func (h *Host) SetCaps(want []uint32) []SetResult {
	res := make([]SetResult, len(h.gpus))
	tol := h.opt.tolerance()
	var wg sync.WaitGroup
	for i, g := range h.gpus {
		res[i].Index = i
		g.mu.Lock()
		info, cur, enf := g.info, g.limitMW, g.enforcedMW
		g.mu.Unlock()
		res[i].EnforcedMW = enf
		if i >= len(want) || want[i] == 0 {
			continue
		}
		w := want[i]
		res[i].WantMW = w
		if err := info.CheckCap(w); err != nil {
			res[i].Err = err
			continue
		}
		if cur != 0 && within(cur, w, tol) {
			res[i].HeldElsewhere = enf != 0 && enf+tol <= w
			continue
		}
		if h.opt.DryRun {
			h.log.Info("dry run: would set GPU power limit", "gpu", i, "uuid", info.UUID, "from_w", float64(cur)/1000, "to_w", float64(w)/1000)
			res[i].DryRun = true
			continue
		}
		wg.Add(1)
		go func(g *gpu, w uint32, r *SetResult) {
			defer wg.Done()
			h.set(g, w, r)
		}(g, w, &res[i])
	}
	wg.Wait()
	return res
}

func (h *Host) set(g *gpu, w uint32, res *SetResult) {
	g.setMu.Lock()
	defer g.setMu.Unlock()
	i := res.Index
	g.mu.Lock()
	g.gen++
	g.mu.Unlock()
	r := g.dev.SetPowerManagementLimit(w)
	res.SetAt = time.Now()
	if r != gonvml.SUCCESS {
		res.Err = wrap(i, "set power limit", r)
		if r == gonvml.ERROR_NOT_SUPPORTED {
			g.mu.Lock()
			g.info.Throttleable, g.info.Why = false, res.Err.Error()
			g.mu.Unlock()
		}
		return
	}
	res.Changed = true
	g.mu.Lock()
	g.limitMW = w
	g.gen++
	g.mu.Unlock()
	enf, r := g.dev.GetEnforcedPowerLimit()
	if r != gonvml.SUCCESS {
		res.Err = wrap(i, "read back the enforced limit", r)
		return
	}
	g.mu.Lock()
	g.enforcedMW = enf
	g.mu.Unlock()
	res.EnforcedMW = enf
	tol := h.opt.tolerance()
	switch {
	case enf+tol <= w:
		res.HeldElsewhere = true
	case enf > w+tol:
		res.Err = fmt.Errorf("GPU %d: the enforced limit %d mW is above the %d mW just set", i, enf, w)
	}
}

func within(a, b, tol uint32) bool {
	if a > b {
		return a-b < tol
	}
	return b-a < tol
}

// Close optionally sets every throttleable GPU back to its default limit
// (restoreDefault), then shuts NVML down. Safe to call twice.
func (h *Host) Close(restoreDefault bool) error {
	h.closeOnce.Do(func() {
		var errs []error
		if restoreDefault {
			want := make([]uint32, len(h.gpus))
			for i, g := range h.GPUs() {
				if g.Throttleable {
					want[i] = g.DefaultMW
				}
			}
			for _, r := range h.SetCaps(want) {
				if r.Err != nil {
					errs = append(errs, r.Err)
				}
			}
		}
		if r := h.lib.Shutdown(); r != gonvml.SUCCESS {
			errs = append(errs, wrap(-1, "shutdown", r))
		}
		h.closeErr = errors.Join(errs...)
	})
	return h.closeErr
}

// wrap turns an NVML return code into an *Error carrying the fix.
func wrap(gpu int, op string, r gonvml.Return) error {
	e := &Error{GPU: gpu, Op: op, Code: int(r), Text: r.Error()}
	switch r {
	case gonvml.ERROR_LIBRARY_NOT_FOUND:
		e.Err = ErrLibraryNotFound
	case gonvml.ERROR_DRIVER_NOT_LOADED:
		e.Err = ErrDriverNotLoaded
	case gonvml.ERROR_NO_PERMISSION:
		e.Err = ErrNoPermission
	case gonvml.ERROR_NOT_SUPPORTED:
		e.Err = ErrNotSupported
	case gonvml.ERROR_INVALID_ARGUMENT:
		if op == "set power limit" {
			e.Err = ErrOutOfRange
		}
	case gonvml.ERROR_GPU_IS_LOST:
		e.Err = ErrGPULost
	}
	return e
}
