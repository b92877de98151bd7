package control

import (
	"fmt"
	"math"
	"runtime"
	"testing"
	"time"
)

// benchLimits is a large site: 10,000 load units in 20 groups (ten shed
// groups of 900 miners, ten throttle groups of 100 GPU servers).
func benchLimits() Limits {
	lim := demoLimits()
	lim.ImportLimitKW = 40000
	lim.Groups = nil
	for i := 0; i < 10; i++ {
		u := make([]float64, 900)
		for k := range u {
			u[k] = 3 + float64((k+i)%7)*0.1
		}
		lim.Groups = append(lim.Groups, Group{Name: fmt.Sprintf("asic%d", i), Kind: Shed, CutOrder: 1 + i%3, UnitKW: u, CeilingKW: 3000, WakeUnitsPerS: 100, RestoreHoldoff: 2 * time.Second})
	}
	for i := 0; i < 10; i++ {
		lim.Groups = append(lim.Groups, Group{Name: fmt.Sprintf("gpu%d", i), Kind: Throttle, CutOrder: 4 + i%2, UnitKW: units(100, 10), FloorKW: 300, CeilingKW: 1000, RampUpKWPerS: 500, RestoreHoldoff: time.Second})
	}
	lim.Stages = []Stage{
		{Name: "uf1", BelowHz: 59.8, ClearAboveHz: 59.9, ClearAfter: time.Second, Actions: []StageAction{{Group: 0, CapKW: 0}, {Group: 1, CapKW: 0}}},
		{Name: "uf2", BelowHz: 59.6, ClearAboveHz: 59.8, ClearAfter: time.Second, Actions: []StageAction{{Group: 10, CapKW: 500}}},
	}
	return lim
}

// BenchmarkStep measures one controller step on the 10,000-unit site with
// the frequency swinging through the stages and the import limit binding,
// so cuts, holds and restores all run. Reported as controller_step_us.
func BenchmarkStep(b *testing.B) {
	lim := benchLimits()
	c, err := New(lim)
	if err != nil {
		b.Fatal(err)
	}
	st, in, out := c.NewState(), c.NewInputs(), c.NewPlan()
	now := t0
	in.BreakerOK, in.ImportOK, in.SiteLoadOK, in.IslandCapacityOK, in.CurtailOK, in.FrequencyOK = true, true, true, true, true, true
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now = now.Add(cycle)
		in.FrequencyHz = 59.85 + 0.2*math.Sin(float64(i)/50)
		var load float64 = 1000
		for g := range in.Groups {
			in.Groups[g] = GroupInput{MeasuredKW: out.Groups[g].CapKW, MeasuredOK: true}
			load += out.Groups[g].CapKW
		}
		in.ImportKW = load + 2000*math.Sin(float64(i)/30)
		in.SiteLoadKW = load
		c.Step(st, in, now, out)
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1e3/float64(b.N), "controller_step_us")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N), "controller_step_allocs")
}
