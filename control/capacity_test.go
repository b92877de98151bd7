package control

import (
	"math"
	"testing"
)

// capacityCase steps the demo site once with given measurements and
// returns the headroom it reports.
func capacityCase(t *testing.T, edit func(in *Inputs)) (*Controller, *Plan, []GroupHeadroom, float64) {
	t.Helper()
	c, err := New(demoLimits())
	if err != nil {
		t.Fatal(err)
	}
	st, in, p := c.NewState(), c.NewInputs(), c.NewPlan()
	in.FrequencyHz, in.FrequencyOK = 60, true
	in.BreakerOK, in.ImportOK, in.SiteLoadOK, in.IslandCapacityOK, in.CurtailOK = true, true, true, true, true
	in.ImportKW, in.SiteLoadKW, in.IslandCapacityKW = 12000, 12000, 0
	draws := []float64{6000, 4000, 2000}
	for g := range in.Groups {
		in.Groups[g] = GroupInput{MeasuredKW: draws[g], MeasuredOK: true}
	}
	if edit != nil {
		edit(in)
	}
	c.Step(st, in, t0, p)
	out := make([]GroupHeadroom, len(p.Groups))
	site := c.Headroom(p, in, out)
	return c, p, out, site
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

func TestHeadroomUnderImportLimit(t *testing.T) {
	_, p, h, site := capacityCase(t, nil)
	// Budget 17500 - margin 150 - planned 12000.
	if p.Binding != ConstraintImport || !near(site, 5350) {
		t.Fatalf("binding %s, site headroom %g; want import_limit, 5350", p.Binding, site)
	}
	want := []GroupHeadroom{
		{DrawKW: 6000, RoomKW: 1000, FreeKW: 1000, AvailableKW: 1000},
		// Each group is limited by its own room under its ceiling.
		{DrawKW: 4000, RoomKW: 2000, FreeKW: 2000, AvailableKW: 2000},
		{DrawKW: 2000, RoomKW: 1000, FreeKW: 1000, AvailableKW: 1000},
	}
	for g := range want {
		if !near(h[g].DrawKW, want[g].DrawKW) || !near(h[g].RoomKW, want[g].RoomKW) || !near(h[g].FreeKW, want[g].FreeKW) || !near(h[g].AvailableKW, want[g].AvailableKW) {
			t.Errorf("group %d: %+v, want %+v", g, h[g], want[g])
		}
	}
}

// Under a tight curtailment nothing is free, but a protected group may
// still take power from the groups cut before it.
func TestHeadroomUnderCurtailment(t *testing.T) {
	c, p, h, site := capacityCase(t, func(in *Inputs) { in.CurtailTargetKW = 12150 })
	if p.Binding != ConstraintCurtail || site > 1e-6 {
		t.Fatalf("binding %s, headroom %g", p.Binding, site)
	}
	if h[2].FreeKW != 0 || h[0].AvailableKW != 0 {
		t.Fatalf("free while curtailed: %+v", h)
	}
	// Inference (cut last) may claim what the miners and training above
	// their floors hold now, within its own room.
	give := p.Groups[0].ClaimKW - c.floor(0) + p.Groups[1].ClaimKW - c.floor(1)
	if want := math.Min(h[2].RoomKW, site+give); !near(h[2].AvailableKW, want) || want <= 0 {
		t.Fatalf("inference available %g, want %g", h[2].AvailableKW, want)
	}
}

// Blind (an input unknown) nothing is offered; held restores limit a cut
// group to its cap.
func TestHeadroomBlindAndHeld(t *testing.T) {
	_, _, h, _ := capacityCase(t, func(in *Inputs) { in.ImportOK = false })
	for g := range h {
		if h[g].FreeKW != 0 || h[g].AvailableKW != 0 {
			t.Fatalf("offered while blind: %+v", h)
		}
	}
	_, p, h, _ := capacityCase(t, func(in *Inputs) {
		in.HoldRestores = true
		in.CurtailTargetKW = 9000 // cuts the miners
	})
	if p.Groups[0].CapKW >= 7000 {
		t.Fatalf("miners not cut: %+v", p.Groups[0])
	}
	if want := math.Max(0, p.Groups[0].CapKW-6000); !near(h[0].RoomKW, want) {
		t.Fatalf("held group room %g, want its cap minus its draw %g", h[0].RoomKW, want)
	}
}

func TestHeadroomAllocatesNothing(t *testing.T) {
	c, p, h, _ := capacityCase(t, nil)
	in := c.NewInputs()
	if n := testing.AllocsPerRun(100, func() { c.Headroom(p, in, h) }); n != 0 {
		t.Fatalf("%g allocations", n)
	}
}
