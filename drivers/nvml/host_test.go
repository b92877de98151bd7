//go:build cgo

package nvml_test

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/sim/gpunode"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func open(t testing.TB, cfg gpunode.Config, opt nvml.Options) (*gpunode.Server, *nvml.Host) {
	t.Helper()
	srv := gpunode.New(cfg)
	if opt.Log == nil {
		opt.Log = quiet()
	}
	h, err := nvml.Open(srv.Interface(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close(false) })
	return srv, h
}

func fill(n int, w uint32) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = w * 1000
	}
	return out
}

func TestDiscoverReadsEveryGPU(t *testing.T) {
	srv, h := open(t, gpunode.Config{Seed: "n1", Demand: 0.9, InstantPower: true}, nvml.Options{})
	gpus := h.GPUs()
	if len(gpus) != 8 {
		t.Fatalf("want the DGX A100 mock's 8 GPUs, got %d", len(gpus))
	}
	for i, g := range gpus {
		if g.Index != i || g.UUID != srv.UUID(i) || !strings.Contains(g.Name, "A100") {
			t.Errorf("GPU %d: %+v", i, g)
		}
		if g.MinMW != 100_000 || g.MaxMW != 400_000 || g.DefaultMW != 400_000 || !g.Throttleable || !g.InstantPower {
			t.Errorf("GPU %d constraints: %+v", i, g)
		}
	}
	if h.DriverVersion() == "" {
		t.Error("no driver version")
	}
	// Same seed, same UUIDs: a restarted node sees the same GPUs.
	if gpunode.New(gpunode.Config{Seed: "n1"}).UUID(3) != gpus[3].UUID {
		t.Error("UUIDs are not stable for a seed")
	}
}

func TestReadTelemetry(t *testing.T) {
	for _, instant := range []bool{true, false} {
		srv, h := open(t, gpunode.Config{Demand: 0.9, InstantPower: instant}, nvml.Options{})
		if h.GPUs()[0].InstantPower != instant {
			t.Fatalf("instant power support not detected as %v", instant)
		}
		first := h.Read(nil)
		time.Sleep(20 * time.Millisecond)
		rs := h.Read(nil)
		for i, r := range rs {
			all := nvml.HasPower | nvml.HasEnergy | nvml.HasEnforced | nvml.HasLimit | nvml.HasTemperature | nvml.HasUtilization | nvml.HasClockEvents
			if r.Err != nil || r.Has != all {
				t.Fatalf("GPU %d: has %b err %v", i, r.Has, r.Err)
			}
			if r.PowerMW != 360_000 || r.EnforcedMW != 400_000 || r.LimitMW != 400_000 || r.UtilPct != 90 || r.TempC == 0 {
				t.Errorf("GPU %d: %+v", i, r)
			}
			if r.EnergyMJ <= first[i].EnergyMJ {
				t.Errorf("GPU %d: energy counter did not advance: %d -> %d", i, first[i].EnergyMJ, r.EnergyMJ)
			}
			if r.PowerCapped() {
				t.Errorf("GPU %d: reported power-capped while drawing under its limit", i)
			}
		}
		// A cap below demand bites: the clock-event reasons say so.
		h.SetCaps(fill(8, 200))
		for i, r := range h.Read(nil) {
			if !r.PowerCapped() || r.PowerMW != 200_000 || r.EnforcedMW != 200_000 {
				t.Errorf("GPU %d under a 200 W cap: %+v", i, r)
			}
		}
		_ = srv
	}
}

func TestSetCapsInParallelOnlyWhenChanged(t *testing.T) {
	srv, h := open(t, gpunode.Config{Demand: 1, Latency: 15 * time.Millisecond}, nvml.Options{})
	res := h.SetCaps(fill(8, 250))
	for i, r := range res {
		if r.Err != nil || !r.Changed || r.EnforcedMW != 250_000 || r.HeldElsewhere || r.SetAt.IsZero() {
			t.Fatalf("GPU %d: %+v", i, r)
		}
		if srv.LimitW(i) != 250 {
			t.Fatalf("GPU %d limit %.0f W", i, srv.LimitW(i))
		}
	}
	if p := srv.PeakConcurrentSets(); p < 2 {
		t.Fatalf("the 8 set calls ran one at a time (peak %d in flight); they must run in parallel", p)
	}
	before := srv.Sets()
	for _, r := range h.SetCaps(fill(8, 250)) {
		if r.Changed || r.Err != nil || r.EnforcedMW != 250_000 {
			t.Fatalf("an unchanged cap was set again: %+v", r)
		}
	}
	if srv.Sets() != before {
		t.Fatalf("unchanged caps made %d set calls", srv.Sets()-before)
	}
	// Zero leaves a GPU alone.
	want := make([]uint32, 8)
	want[2] = 300_000
	h.SetCaps(want)
	if srv.Sets() != before+1 || srv.LimitW(2) != 300 || srv.LimitW(3) != 250 {
		t.Fatalf("sets %d, limits %.0f %.0f", srv.Sets()-before, srv.LimitW(2), srv.LimitW(3))
	}
}

func TestCapOutsideConstraintsRefusedWithoutACall(t *testing.T) {
	srv, h := open(t, gpunode.Config{}, nvml.Options{})
	want := make([]uint32, 8)
	want[0], want[1] = 50_000, 500_000
	res := h.SetCaps(want)
	for _, i := range []int{0, 1} {
		if !errors.Is(res[i].Err, nvml.ErrOutOfRange) || !strings.Contains(res[i].Err.Error(), "100..400 W") {
			t.Errorf("GPU %d: want an out-of-range error naming the limits, got %v", i, res[i].Err)
		}
	}
	if srv.Sets() != 0 || srv.LimitW(0) != 400 {
		t.Fatalf("an invalid cap reached the GPU")
	}
}

func TestAnotherLimiterIsReportedNotFought(t *testing.T) {
	srv, h := open(t, gpunode.Config{Demand: 1}, nvml.Options{})
	srv.SetExternalLimit(4, 180)
	res := h.SetCaps(fill(8, 300))
	if !res[4].HeldElsewhere || res[4].EnforcedMW != 180_000 || res[4].Err != nil {
		t.Fatalf("GPU 4 held at 180 W elsewhere: %+v", res[4])
	}
	if res[3].HeldElsewhere {
		t.Fatalf("GPU 3 is not held elsewhere: %+v", res[3])
	}
	sets := srv.Sets()
	// Asking again does not fight the other limiter with more set calls.
	if res := h.SetCaps(fill(8, 300)); !res[4].HeldElsewhere || res[4].Changed {
		t.Fatalf("second ask: %+v", res[4])
	}
	if srv.Sets() != sets {
		t.Fatal("the driver fought the other limiter")
	}
}

func TestDriftSeenByReadIsReapplied(t *testing.T) {
	srv, h := open(t, gpunode.Config{}, nvml.Options{})
	h.SetCaps(fill(8, 250))
	srv.ResetLimits() // a driver reload: limits back to 400 W
	rs := h.Read(nil)
	if rs[0].LimitMW != 400_000 {
		t.Fatalf("read does not see the reset limit: %+v", rs[0])
	}
	res := h.SetCaps(fill(8, 250))
	for i, r := range res {
		if !r.Changed || srv.LimitW(i) != 250 {
			t.Fatalf("GPU %d not re-applied after drift: %+v", i, r)
		}
	}
}

func TestDryRunSetsNothing(t *testing.T) {
	var logs strings.Builder
	srv, h := open(t, gpunode.Config{}, nvml.Options{DryRun: true, Log: slog.New(slog.NewTextHandler(&logs, nil))})
	for _, r := range h.SetCaps(fill(8, 200)) {
		if !r.DryRun || r.Changed || r.Err != nil {
			t.Fatalf("%+v", r)
		}
	}
	if srv.Sets() != 0 || srv.LimitW(0) != 400 {
		t.Fatal("dry run changed a limit")
	}
	if !strings.Contains(logs.String(), "would set") || !strings.Contains(logs.String(), "to_w=200") {
		t.Fatalf("dry run must log what it would set:\n%s", logs.String())
	}
	if len(h.Read(nil)) != 8 {
		t.Fatal("dry run must still read")
	}
}

func TestErrorsCarryTheFix(t *testing.T) {
	t.Run("no permission", func(t *testing.T) {
		srv, h := open(t, gpunode.Config{}, nvml.Options{})
		srv.Fail(gpunode.OpSet, -1, gonvml.ERROR_NO_PERMISSION)
		res := h.SetCaps(fill(8, 200))
		if !errors.Is(res[0].Err, nvml.ErrNoPermission) || !strings.Contains(res[0].Err.Error(), "CAP_SYS_ADMIN") {
			t.Fatalf("%v", res[0].Err)
		}
		if srv.LimitW(0) != 400 {
			t.Fatal("limit changed despite the refusal")
		}
	})
	t.Run("not supported", func(t *testing.T) {
		srv := gpunode.New(gpunode.Config{})
		srv.Fail(gpunode.OpConstraints, 5, gonvml.ERROR_NOT_SUPPORTED)
		h, err := nvml.Open(srv.Interface(), nvml.Options{Log: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close(false)
		g := h.GPUs()[5]
		if g.Throttleable || !strings.Contains(g.Why, "not throttleable") {
			t.Fatalf("%+v", g)
		}
		res := h.SetCaps(fill(8, 200))
		if !errors.Is(res[5].Err, nvml.ErrNotSupported) || res[4].Err != nil {
			t.Fatalf("GPU 5: %v; GPU 4: %v", res[5].Err, res[4].Err)
		}
	})
	t.Run("not supported on set", func(t *testing.T) {
		srv, h := open(t, gpunode.Config{}, nvml.Options{})
		srv.Fail(gpunode.OpSet, 1, gonvml.ERROR_NOT_SUPPORTED)
		res := h.SetCaps(fill(8, 200))
		if !errors.Is(res[1].Err, nvml.ErrNotSupported) || h.GPUs()[1].Throttleable {
			t.Fatalf("%v %+v", res[1].Err, h.GPUs()[1])
		}
	})
	t.Run("library not found (mock)", func(t *testing.T) {
		srv := gpunode.New(gpunode.Config{})
		srv.Fail(gpunode.OpInit, -1, gonvml.ERROR_LIBRARY_NOT_FOUND)
		_, err := nvml.Open(srv.Interface(), nvml.Options{})
		if !errors.Is(err, nvml.ErrLibraryNotFound) || !strings.Contains(err.Error(), "no NVIDIA driver") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("read failure", func(t *testing.T) {
		srv, h := open(t, gpunode.Config{}, nvml.Options{})
		srv.Fail(gpunode.OpPower, 2, gonvml.ERROR_GPU_IS_LOST)
		rs := h.Read(nil)
		if !errors.Is(rs[2].Err, nvml.ErrGPULost) || rs[2].Has&nvml.HasPower != 0 || rs[2].Has&nvml.HasLimit == 0 {
			t.Fatalf("%+v", rs[2])
		}
		if rs[1].Err != nil {
			t.Fatalf("GPU 1 must read fine: %v", rs[1].Err)
		}
	})
}

// The real library on this machine: with no NVIDIA driver installed,
// OpenSystem must say so (skipped on a GPU host).
func TestOpenSystemWithoutDriver(t *testing.T) {
	h, err := nvml.OpenSystem(nvml.Options{Log: quiet()})
	if err == nil {
		h.Close(false)
		t.Skip("this host has an NVIDIA driver")
	}
	if !errors.Is(err, nvml.ErrLibraryNotFound) && !errors.Is(err, nvml.ErrDriverNotLoaded) {
		t.Fatalf("want library-not-found or driver-not-loaded, got %v", err)
	}
}

func TestCloseRestoresDefault(t *testing.T) {
	srv := gpunode.New(gpunode.Config{})
	h, err := nvml.Open(srv.Interface(), nvml.Options{Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	h.SetCaps(fill(8, 150))
	if err := h.Close(true); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ {
		if srv.LimitW(i) != 400 {
			t.Fatalf("GPU %d at %.0f W after restore", i, srv.LimitW(i))
		}
	}
}

// BenchmarkSetCaps8 sets 8 caps with 15 ms per NVML call: the sets run in
// parallel, so one SetCaps costs about one set plus one read-back.
func BenchmarkSetCaps8(b *testing.B) {
	_, h := open(b, gpunode.Config{Latency: 15 * time.Millisecond}, nvml.Options{})
	caps := [2][]uint32{fill(8, 250), fill(8, 300)}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		h.SetCaps(caps[i%2])
	}
}
