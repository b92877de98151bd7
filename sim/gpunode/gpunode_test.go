//go:build cgo

package gpunode

import (
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

func TestConfigValidation(t *testing.T) {
	for _, c := range []Config{{GPUs: 9}, {Model: "v100"}, {MinW: 500, MaxW: 400}, {Demand: 1.5}, {Latency: -1}} {
		if c.Validate() == nil {
			t.Errorf("%+v: want an error", c)
		}
	}
	if err := (Config{Model: "h100"}).Validate(); err != nil {
		t.Fatal(err)
	}
	if c := (Config{Model: "h100"}).WithDefaults(); c.MinW != 200 || c.MaxW != 700 || c.DefaultW != 700 || c.GPUs != 8 {
		t.Fatalf("%+v", c)
	}
}

// The power model: a GPU draws the lower of its demand and its enforced
// limit (never below idle), the enforced limit is the lower of the
// management limit and another limiter's, and energy accumulates.
func TestPowerModel(t *testing.T) {
	s := New(Config{GPUs: 2, Demand: 0.75})
	lib := s.Interface()
	if lib.Init() != nvml.SUCCESS {
		t.Fatal("init")
	}
	d, _ := lib.DeviceGetHandleByIndex(1)
	if p, r := d.GetPowerUsage(); r != nvml.SUCCESS || p != 300_000 {
		t.Fatalf("draw %d (%v), want 300 W", p, r)
	}
	if d.SetPowerManagementLimit(200_000) != nvml.SUCCESS || s.PowerW(1) != 200 || s.PowerW(0) != 300 {
		t.Fatalf("capped draw %.0f W", s.PowerW(1))
	}
	if ev, _ := d.GetCurrentClocksEventReasons(); ev&nvml.ClocksEventReasonSwPowerCap == 0 {
		t.Fatal("a biting cap must set the software power-cap reason")
	}
	s.SetExternalLimit(1, 150)
	if e, _ := d.GetEnforcedPowerLimit(); e != 150_000 || s.PowerW(1) != 150 {
		t.Fatalf("enforced %d", e)
	}
	if d.SetPowerManagementLimit(50_000) != nvml.ERROR_INVALID_ARGUMENT {
		t.Fatal("a limit below the minimum must be refused")
	}
	e0, _ := d.GetTotalEnergyConsumption()
	time.Sleep(20 * time.Millisecond)
	if e1, _ := d.GetTotalEnergyConsumption(); e1 <= e0 {
		t.Fatal("energy does not accumulate")
	}
	s.Fail(OpPower, 1, nvml.ERROR_GPU_IS_LOST)
	if _, r := d.GetPowerUsage(); r != nvml.ERROR_GPU_IS_LOST {
		t.Fatal("injected failure not returned")
	}
	s.Clear()
	if _, r := d.GetPowerUsage(); r != nvml.SUCCESS {
		t.Fatal("Clear did not remove the failure")
	}
	s.ResetLimits()
	if s.LimitW(1) != 400 {
		t.Fatal("a driver reload must restore the default limit")
	}
}
