package control

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

func TestDroopCapFollowsFrequency(t *testing.T) {
	d := Droop{NominalHz: 60, DeadbandHz: 0.036, Pct: 1, MinKW: 2000}
	const ceiling, floor = 6000.0, 1800.0
	cases := []struct {
		f    float64
		ok   bool
		want float64
	}{
		{60, true, 6000},
		{60.5, true, 6000},          // over-frequency: a cap cannot add load
		{59.964, true, 6000},        // at the deadband edge
		{59.964 - 0.06, true, 5400}, // 0.06 Hz = 0.1 % of 60 Hz: a tenth of the 1 % droop
		{59.964 - 0.3, true, 3000},
		{58, true, 2000}, // far below: held at MinKW
		{59.9, false, 2000},
		{math.NaN(), true, 2000},
	}
	for _, c := range cases {
		if got := d.CapKW(ceiling, floor, c.f, c.ok); math.Abs(got-c.want) > 1e-6 {
			t.Errorf("f %.3f ok %v: cap %.3f, want %.3f", c.f, c.ok, got, c.want)
		}
	}
	// MinKW below the floor: the floor still holds.
	d.MinKW = 0
	if got := d.CapKW(ceiling, floor, 50, true); got != floor {
		t.Errorf("cap %.1f below the floor %.1f", got, floor)
	}
	var off Droop
	if got := off.CapKW(ceiling, floor, 50, true); got != ceiling {
		t.Errorf("droop off must leave the ceiling, got %.1f", got)
	}
}

func droopLimits() Limits {
	lim := demoLimits()
	lim.Groups[1].Droop = Droop{NominalHz: 60, DeadbandHz: 0.036, Pct: 1, MinKW: 2400}
	return lim
}

func TestDroopCutsAtOnceAndFollowsBackAtRampRate(t *testing.T) {
	p := newPlant(t, droopLimits())
	// Past the start-up hold-off (every group counts as held until t0).
	p.run(6 * time.Second)
	if gp := p.out.Groups[1]; gp.CapKW != 6000 || gp.Reason != ReasonFree {
		t.Fatalf("inside the deadband the group runs free: %+v", gp)
	}
	// 0.1 Hz below the deadband edge (59.864 Hz, above uf1's 59.8 Hz, so
	// no stage acts): a sixth of the 1 % droop.
	p.freq = 59.964 - 0.1
	p.step()
	want := 6000 - 6000*0.1/0.6
	if gp := p.out.Groups[1]; math.Abs(gp.CapKW-want) > 1e-6 || gp.Reason != ReasonDroop || !gp.Droop {
		t.Fatalf("droop must cut at once to %.1f kW: got %.1f (%s)", want, gp.CapKW, gp.Reason)
	}
	if why := p.c.Why(p.out, 1); why == "" || why == "droop" {
		t.Fatalf("no explanation: %q", why)
	}
	// Other groups are untouched by another group's droop.
	if p.out.Groups[2].CapKW != 3000 || p.out.Groups[0].UnitsOn != 2000 {
		t.Fatalf("droop of training moved other groups: %+v", p.out.Groups)
	}
	// Frequency recovers: the cap follows back up at the ramp rate (1000
	// kW/s) with no hold-off (the group's 5 s hold-off does not apply).
	p.freq = 60
	prev := p.out.Groups[1].CapKW
	var restored time.Duration
	for i := 0; i < 50; i++ {
		p.step()
		gp := p.out.Groups[1]
		if up := gp.CapKW - prev; up > 1000*cycle.Seconds()+1e-6 {
			t.Fatalf("ramped %.1f kW in one cycle", up)
		}
		prev = gp.CapKW
		if gp.CapKW >= 6000-1e-6 {
			restored = time.Duration(i+1) * cycle
			break
		}
	}
	if restored == 0 || restored > 2*time.Second {
		t.Fatalf("droop did not follow frequency back within 2s (restored after %v, cap %.1f)", restored, prev)
	}
}

func TestDroopAndStagesTighterWins(t *testing.T) {
	p := newPlant(t, droopLimits())
	p.run(6 * time.Second)
	// 59.45 Hz: uf2 caps training at 3000; droop gives 6000*(1-0.514/0.6) = 860 → MinKW 2400.
	p.freq = 59.45
	p.run(500 * time.Millisecond)
	gp := p.out.Groups[1]
	if math.Abs(gp.CapKW-2400) > 1e-6 || gp.Reason != ReasonDroop {
		t.Fatalf("droop (2400) is tighter than uf2 (3000): cap %.1f reason %s", gp.CapKW, gp.Reason)
	}
	// 59.6 Hz (uf2 still operated, it clears above 59.7): droop 6000*(1-0.364/0.6)=2360 → 2400; still droop.
	// 59.69 Hz: droop 6000*(1-0.274/0.6) = 3260 > uf2's 3000: the stage binds.
	p.freq = 59.69
	p.run(200 * time.Millisecond)
	gp = p.out.Groups[1]
	if gp.Reason != ReasonStage && gp.Reason != ReasonRamping {
		t.Fatalf("stage should bind above the droop cap: cap %.1f reason %s", gp.CapKW, gp.Reason)
	}
	if gp.CapKW > 3000+1e-6 {
		t.Fatalf("cap %.1f above the operated stage's 3000", gp.CapKW)
	}
}

func TestDroopUnknownFrequencyIsWorstCase(t *testing.T) {
	p := newPlant(t, droopLimits())
	p.run(time.Second)
	p.in.FrequencyOK = false
	p.c.Step(p.st, p.in, p.now, p.out)
	if gp := p.out.Groups[1]; gp.CapKW > 2400+1e-6 {
		t.Fatalf("unknown frequency must take the droop group to its minimum: %.1f", gp.CapKW)
	}
}

func TestDroopLimitsChecked(t *testing.T) {
	for name, d := range map[string]Droop{
		"no nominal":        {Pct: 1, DeadbandHz: 0.03},
		"negative deadband": {Pct: 1, NominalHz: 60, DeadbandHz: -1},
		"min above ceiling": {Pct: 1, NominalHz: 60, MinKW: 9000},
		"negative pct":      {Pct: -1, NominalHz: 60},
	} {
		lim := demoLimits()
		lim.Groups[1].Droop = d
		if _, err := New(lim); err == nil {
			t.Errorf("%s: want an error", name)
		}
	}
	lim := demoLimits()
	lim.Groups[0].Droop = Droop{Pct: 1, NominalHz: 60}
	if _, err := New(lim); err == nil {
		t.Error("droop on a shed group: want an error")
	}
}

func TestDroopStepAllocatesNothing(t *testing.T) {
	p := newPlant(t, droopLimits())
	p.step()
	allocs := testing.AllocsPerRun(1000, func() {
		p.now = p.now.Add(cycle)
		p.in.FrequencyHz = 59.7 + 0.3*math.Sin(float64(p.now.UnixNano())/1e9)
		p.c.Step(p.st, p.in, p.now, p.out)
	})
	if allocs != 0 {
		t.Fatalf("Step with droop allocated %.1f times per call", allocs)
	}
}

// Over generated traces with droop on two throttle groups: every property
// of the plain controller still holds, a droop group never exceeds its
// droop cap at that cycle's frequency, and the same trace gives the same
// plans.
func TestDroopPropertiesOverGeneratedTraces(t *testing.T) {
	lim := propertyLimits()
	lim.Groups[1].Droop = Droop{NominalHz: 60, DeadbandHz: 0.02, Pct: 0.8, MinKW: 2000}
	lim.Groups[2].Droop = Droop{NominalHz: 60, DeadbandHz: 0.05, Pct: 2}
	c, err := New(lim)
	if err != nil {
		t.Fatal(err)
	}
	for seed := uint64(1); seed <= 100; seed++ {
		r := rand.New(rand.NewPCG(seed, 11))
		tr := genTrace(r, &lim, 400)
		lag := int(seed % 3)
		recs := replay(t, lim, tr, lag)
		checkBudget(t, c, seed, recs)
		checkRamps(t, c, seed, tr, recs)
		checkCutOrder(t, c, seed, recs)
		for i := range recs {
			in := &recs[i].in
			for _, g := range []int{1, 2} {
				d := &lim.Groups[g].Droop
				limit := d.CapKW(c.ceiling(g), c.floor(g), in.FrequencyHz, in.FrequencyOK)
				if gp := recs[i].out.Groups[g]; gp.CapKW > limit+1e-6 {
					t.Fatalf("seed %d step %d: %s cap %.1f above its droop cap %.1f at %.3f Hz", seed, i, lim.Groups[g].Name, gp.CapKW, limit, in.FrequencyHz)
				}
			}
		}
		if again := replay(t, lim, tr, lag); !reflect.DeepEqual(recs, again) {
			t.Fatalf("seed %d: the same trace gave different plans", seed)
		}
		if t.Failed() {
			return
		}
	}
}

// The droop cap is monotone in frequency and stays within [MinKW or floor,
// ceiling] for any settings the checks accept.
func TestDroopCapMonotoneAndBounded(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 5))
	for i := 0; i < 2000; i++ {
		ceiling := 100 + r.Float64()*10000
		floor := r.Float64() * ceiling
		d := Droop{NominalHz: 50 + 10*float64(r.IntN(2)), DeadbandHz: r.Float64() * 0.2, Pct: 0.1 + r.Float64()*10, MinKW: r.Float64() * ceiling}
		lo := math.Max(floor, d.MinKW)
		prev := -1.0
		for f := d.NominalHz - 5; f <= d.NominalHz+1; f += 0.01 {
			cap := d.CapKW(ceiling, floor, f, true)
			if cap < lo-1e-9 || cap > ceiling+1e-9 {
				t.Fatalf("%+v f %.2f: cap %.3f outside [%.3f, %.3f]", d, f, cap, lo, ceiling)
			}
			if cap < prev-1e-9 {
				t.Fatalf("%+v: cap fell from %.3f to %.3f as frequency rose to %.2f", d, prev, cap, f)
			}
			prev = cap
		}
	}
}
