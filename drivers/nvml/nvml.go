// Package nvml reads and sets the power limits of the GPUs of one host
// through NVIDIA's management library (NVML, via github.com/NVIDIA/go-nvml).
//
// NVML only reaches the GPUs of the host it runs on, so this driver runs
// inside `siteagent node` on every GPU server. It needs cgo: go-nvml loads
// libnvidia-ml.so.1 with dlopen at Init. A binary built with
// CGO_ENABLED=0 gets a stub whose Open says that GPU control is not built
// in (host_nocgo.go).
//
// What it does:
//   - discovers the GPUs (index, UUID, name, limit constraints, default
//     limit) and reads their telemetry: instant power (the
//     FI_DEV_POWER_INSTANT field where the GPU has it, else the averaged
//     power usage), the energy counter, enforced and management limits,
//     temperature, utilisation and the clock-event reasons (the software
//     power-cap bit says when a cap is biting);
//   - sets power caps within each GPU's constraints, only where the cap
//     differs from the current one, on all GPUs in parallel (an NVML call
//     takes 10-20 ms), and reads the enforced limit back: when another
//     limiter holds it lower, that is reported, not fought;
//   - in dry-run mode reads everything and logs the caps it would set.
//
// Errors carry the fix: no permission (run with CAP_SYS_ADMIN), not
// supported (the GPU is not throttleable), library not found (no NVIDIA
// driver on this host).
package nvml

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Sentinel errors; every *Error unwraps to one of them where it applies.
var (
	// ErrNotBuiltIn: the binary was built without cgo.
	ErrNotBuiltIn = errors.New("GPU control is not built in: this binary was built without cgo; use the cgo build (`make build`) on GPU servers")
	// ErrLibraryNotFound: libnvidia-ml.so.1 could not be loaded.
	ErrLibraryNotFound = errors.New("NVML library (libnvidia-ml.so.1) not found: there is no NVIDIA driver on this host; install the driver, or run the node role only on GPU servers")
	// ErrDriverNotLoaded: the library is there but the kernel driver is not.
	ErrDriverNotLoaded = errors.New("the NVIDIA kernel driver is not loaded: check `nvidia-smi` and `lsmod | grep nvidia`")
	// ErrNoPermission: changing a power limit needs CAP_SYS_ADMIN.
	ErrNoPermission = errors.New("no permission to change GPU power limits: run the node role with CAP_SYS_ADMIN (systemd/siteagent-node.service grants it) or as root")
	// ErrNotSupported: the GPU has no settable power limit.
	ErrNotSupported = errors.New("power limits are not supported on this GPU: it is reported as not throttleable")
	// ErrOutOfRange: a cap outside the GPU's constraints.
	ErrOutOfRange = errors.New("cap outside the GPU's power limit constraints")
	// ErrUnknownGPU: an index this host does not have.
	ErrUnknownGPU = errors.New("no such GPU on this host")
	// ErrGPULost: the GPU fell off the bus.
	ErrGPULost = errors.New("the GPU is lost (fell off the bus): it needs a reset or a reboot")
)

// Error is a failed NVML call on one GPU (GPU -1: the library itself).
type Error struct {
	GPU  int
	Op   string // "init", "set power limit", ...
	Code int    // the NVML return code
	Text string // NVML's name for it
	Err  error  // a sentinel above, or nil
}

func (e *Error) Error() string {
	where := "NVML"
	if e.GPU >= 0 {
		where = fmt.Sprintf("GPU %d", e.GPU)
	}
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %s: %v", where, e.Op, e.Text, e.Err)
	}
	return fmt.Sprintf("%s: %s: %s", where, e.Op, e.Text)
}

func (e *Error) Unwrap() error { return e.Err }

// GPU describes one GPU of the host.
type GPU struct {
	Index int
	UUID  string
	Name  string
	// MinMW and MaxMW bound the power limit; DefaultMW is the limit the
	// board starts with (all in milliwatts).
	MinMW, MaxMW, DefaultMW uint32
	// Throttleable: its power limit can be set. When false, Why says why.
	Throttleable bool
	Why          string
	// InstantPower: the GPU reports FI_DEV_POWER_INSTANT; otherwise power
	// is NVML's averaged power usage.
	InstantPower bool
}

// Has is a set of the fields a Reading holds.
type Has uint16

const (
	HasPower Has = 1 << iota
	HasEnergy
	HasEnforced
	HasLimit
	HasTemperature
	HasUtilization
	HasClockEvents
)

// ClockEventSwPowerCap is the clock-event reason bit NVML sets while a
// software power cap (the limit we set, or another one) holds the clocks
// down (nvmlClocksEventReasonSwPowerCap).
const ClockEventSwPowerCap = 0x4

// Reading is one GPU's telemetry.
type Reading struct {
	Index int
	At    time.Time
	Has   Has
	// PowerMW: instant power where supported, else averaged power usage.
	PowerMW uint32
	// EnergyMJ: energy since the driver was loaded (millijoules).
	EnergyMJ uint64
	// EnforcedMW: the limit in force (the lowest of every limiter);
	// LimitMW: the management limit (the one this driver sets).
	EnforcedMW, LimitMW uint32
	TempC               uint32
	UtilPct, MemUtilPct uint32
	ClockEvents         uint64
	// SetDuring: a cap was set on this GPU while it was being read, so
	// the limits may be from before it (drift checks skip it).
	SetDuring bool
	// Err is the first failure other than "not supported".
	Err error
}

// PowerCapped reports whether a software power cap is holding the clocks.
func (r *Reading) PowerCapped() bool {
	return r.Has&HasClockEvents != 0 && r.ClockEvents&ClockEventSwPowerCap != 0
}

// SetResult is what setting one GPU's cap did.
type SetResult struct {
	Index  int
	WantMW uint32
	// Changed: a set call was made (the cap differed from the current one).
	Changed bool
	// DryRun: the call was only logged.
	DryRun bool
	// SetAt: when the set call returned (zero when none was made).
	SetAt time.Time
	// EnforcedMW read back after the set (or the last one seen).
	EnforcedMW uint32
	// HeldElsewhere: the enforced limit is below the cap set: another
	// limiter holds the GPU lower (reported, not fought).
	HeldElsewhere bool
	Err           error
}

// Options configure a Host.
type Options struct {
	// DryRun: read everything, log the caps that would be set, set none.
	DryRun bool
	// ToleranceMW: enforced and wanted limits closer than this are equal
	// (boards round limits); 1000 unless set.
	ToleranceMW uint32
	// Log receives the dry-run lines and discovery notes; slog.Default
	// unless set.
	Log *slog.Logger
}

func (o Options) log() *slog.Logger {
	if o.Log == nil {
		return slog.Default()
	}
	return o.Log
}

func (o Options) tolerance() uint32 {
	if o.ToleranceMW == 0 {
		return 1000
	}
	return o.ToleranceMW
}

// CheckCap reports whether mw is a valid cap for g.
func (g *GPU) CheckCap(mw uint32) error {
	if !g.Throttleable {
		return fmt.Errorf("GPU %d (%s): %w", g.Index, g.UUID, ErrNotSupported)
	}
	if mw < g.MinMW || mw > g.MaxMW {
		return fmt.Errorf("GPU %d (%s): %.0f W is outside %.0f..%.0f W: %w", g.Index, g.UUID, float64(mw)/1000, float64(g.MinMW)/1000, float64(g.MaxMW)/1000, ErrOutOfRange)
	}
	return nil
}
