package control

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// A trace is a recorded sequence of inputs and step times: what the site
// showed the controller. The plant below produces measured group powers
// from the controller's own decisions, with a random device lag.
type traceStep struct {
	at       time.Time
	freq     float64
	freqOK   bool
	islanded bool
	importOK bool
	capacity float64
	auxKW    float64
	curtail  float64
	demand   []float64
}

func genTrace(r *rand.Rand, lim *Limits, n int) []traceStep {
	tr := make([]traceStep, n)
	at := t0
	freq, aux, capacity := 60.0, 800.0, 9000.0
	islanded, curtail := false, 0.0
	demand := make([]float64, len(lim.Groups))
	for g := range demand {
		demand[g] = lim.Groups[g].CeilingKW
	}
	for i := range tr {
		// Mostly regular cycles, sometimes a fast-path wake, sometimes a stall.
		switch x := r.IntN(20); {
		case x == 0:
			at = at.Add(time.Duration(1+r.IntN(30)) * time.Millisecond)
		case x == 1:
			at = at.Add(time.Duration(200+r.IntN(2000)) * time.Millisecond)
		default:
			at = at.Add(cycle)
		}
		switch r.IntN(40) {
		case 0:
			freq = 59.2 + r.Float64()*0.7 // a dip
		case 1:
			freq = 60
		}
		freq += (r.Float64() - 0.5) * 0.02
		if r.IntN(150) == 0 {
			islanded = !islanded
		}
		if r.IntN(50) == 0 {
			capacity = 3000 + r.Float64()*12000
		}
		if r.IntN(100) == 0 {
			if curtail > 0 {
				curtail = 0
			} else {
				curtail = 6000 + r.Float64()*10000
			}
		}
		aux = math.Max(0, aux+(r.Float64()-0.5)*40)
		for g := range demand {
			if r.IntN(30) == 0 {
				demand[g] = r.Float64() * lim.Groups[g].CeilingKW * 1.1
			}
		}
		tr[i] = traceStep{
			at: at, freq: freq, freqOK: r.IntN(100) != 0, islanded: islanded, importOK: r.IntN(80) != 0,
			capacity: capacity, auxKW: aux, curtail: curtail, demand: append([]float64(nil), demand...),
		}
	}
	return tr
}

type stepRecord struct {
	in  Inputs
	out Plan
}

// replay runs a trace through a fresh controller and a plant with the
// given device lag, returning every step's inputs and plan.
func replay(t *testing.T, lim Limits, tr []traceStep, lag int) []stepRecord {
	c, err := New(lim)
	if err != nil {
		t.Fatal(err)
	}
	st, in, out := c.NewState(), c.NewInputs(), c.NewPlan()
	draw := make([]float64, len(lim.Groups))
	for g := range draw {
		draw[g] = lim.Groups[g].CeilingKW
	}
	var queue [][]float64
	recs := make([]stepRecord, 0, len(tr))
	for _, s := range tr {
		load := s.auxKW
		for _, d := range draw {
			load += d
		}
		in.FrequencyHz, in.FrequencyOK = s.freq, s.freqOK
		in.Islanded, in.BreakerOK = s.islanded, true
		in.ImportKW, in.ImportOK = load, s.importOK
		if s.islanded {
			in.ImportKW = 0
		}
		in.SiteLoadKW, in.SiteLoadOK = load, true
		in.IslandCapacityKW, in.IslandCapacityOK = s.capacity, true
		in.CurtailTargetKW, in.CurtailOK = s.curtail, true
		for g := range in.Groups {
			in.Groups[g] = GroupInput{MeasuredKW: draw[g], MeasuredOK: true}
		}
		c.Step(st, in, s.at, out)
		rec := stepRecord{in: *in, out: Plan{}}
		rec.in.Groups = append([]GroupInput(nil), in.Groups...)
		rec.out.CopyFrom(out)
		recs = append(recs, rec)
		next := make([]float64, len(draw))
		for g := range next {
			next[g] = math.Min(s.demand[g], out.Groups[g].CapKW)
		}
		queue = append(queue, next)
		if len(queue) > lag {
			copy(draw, queue[0])
			queue = queue[1:]
		}
	}
	return recs
}

func propertyLimits() Limits {
	lim := demoLimits()
	// Mixed unit ratings in the shed group, a third throttle group.
	lim.Groups[0].UnitKW = make([]float64, 500)
	for i := range lim.Groups[0].UnitKW {
		lim.Groups[0].UnitKW[i] = 3 + float64(i%5)*0.25
	}
	lim.Groups[0].CeilingKW = 2000
	lim.Groups = append(lim.Groups, Group{Name: "containers", Kind: Shed, CutOrder: 1, UnitKW: units(10, 250), CeilingKW: 2500, WakeUnitsPerS: 1, RestoreHoldoff: 3 * time.Second})
	lim.Stages = append(lim.Stages, Stage{Name: "uf3", BelowHz: 59.3, Delay: 200 * time.Millisecond, ClearAboveHz: 59.6, ClearAfter: 2 * time.Second, Actions: []StageAction{{Group: 3, CapKW: 0}, {Group: 2, CapKW: 2500}}})
	return lim
}

func TestPropertiesOverGeneratedTraces(t *testing.T) {
	lim := propertyLimits()
	c, _ := New(lim)
	for seed := uint64(1); seed <= 150; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		tr := genTrace(r, &lim, 500)
		lag := int(seed % 4)
		recs := replay(t, lim, tr, lag)
		checkBudget(t, c, seed, recs)
		checkRamps(t, c, seed, tr, recs)
		checkCutOrder(t, c, seed, recs)
		// Determinism: the same trace gives the same plans.
		again := replay(t, lim, tr, lag)
		if !reflect.DeepEqual(recs, again) {
			t.Fatalf("seed %d: the same trace gave different plans", seed)
		}
		if t.Failed() {
			return
		}
	}
}

// claimsAfter recomputes, from the plan alone, the load it counts for the
// groups: caps of held groups, measured power of free ones.
func claimsAfter(c *Controller, rec *stepRecord) (claims, seen float64) {
	for g, gp := range rec.out.Groups {
		seen += rec.in.Groups[g].MeasuredKW
		if gp.CapKW < c.ceiling(g)-eps {
			claims += gp.CapKW
		} else {
			claims += math.Min(rec.in.Groups[g].MeasuredKW, c.ceiling(g))
		}
	}
	return
}

func checkBudget(t *testing.T, c *Controller, seed uint64, recs []stepRecord) {
	lim := c.Limits()
	for i := range recs {
		rec := &recs[i]
		if rec.out.Infeasible {
			continue
		}
		claims, seen := claimsAfter(c, rec)
		in := &rec.in
		check := func(name string, budget, measured float64) {
			if planned := measured + claims - seen; planned > budget-lim.MarginKW+1e-6 {
				t.Errorf("seed %d step %d: %s: planned %.1f kW over budget %.1f - margin (mode %s)", seed, i, name, planned, budget, rec.out.Mode)
			}
		}
		switch {
		case !in.Islanded && in.ImportOK:
			check("import", lim.ImportLimitKW, in.ImportKW)
			if in.CurtailTargetKW > 0 {
				check("curtailment", in.CurtailTargetKW, in.ImportKW)
			}
		case in.Islanded:
			check("island", in.IslandCapacityKW-lim.IslandReserveKW, in.SiteLoadKW)
		default:
			check("fail-safe", lim.FailsafeLoadKW, seen)
		}
	}
}

func checkRamps(t *testing.T, c *Controller, seed uint64, tr []traceStep, recs []stepRecord) {
	lim := c.Limits()
	for i := 1; i < len(recs); i++ {
		dt := math.Min(tr[i].at.Sub(tr[i-1].at).Seconds(), maxRampStep.Seconds())
		prevDt := 0.0
		if i > 1 {
			prevDt = math.Min(tr[i-1].at.Sub(tr[i-2].at).Seconds(), maxRampStep.Seconds())
		}
		for g, gp := range recs[i].out.Groups {
			prev := recs[i-1].out.Groups[g]
			grp := &lim.Groups[g]
			switch grp.Kind {
			case Throttle:
				if up := gp.CapKW - prev.CapKW; grp.RampUpKWPerS > 0 && up > grp.RampUpKWPerS*dt+1e-6 {
					t.Errorf("seed %d step %d: %s ramped %.1f kW in %.3fs (limit %g kW/s)", seed, i, grp.Name, up, dt, grp.RampUpKWPerS)
				}
			case Shed:
				if up := float64(gp.UnitsOn - prev.UnitsOn); grp.WakeUnitsPerS > 0 && up > 1+grp.WakeUnitsPerS*(dt+prevDt)+1e-9 {
					t.Errorf("seed %d step %d: %s woke %.0f units in %.3fs (limit %g units/s)", seed, i, grp.Name, up, dt, grp.WakeUnitsPerS)
				}
			}
		}
	}
}

func checkCutOrder(t *testing.T, c *Controller, seed uint64, recs []stepRecord) {
	lim := c.Limits()
	for i := 1; i < len(recs); i++ {
		for p, gp := range recs[i].out.Groups {
			if gp.CapKW >= recs[i-1].out.Groups[p].CapKW-eps || gp.Reason == ReasonStage || gp.Reason == ReasonDroop {
				continue
			}
			// A budget cut of group p: every group cut before it must have
			// nothing left to give.
			for q, gq := range recs[i].out.Groups {
				if lim.Groups[q].CutOrder >= lim.Groups[p].CutOrder {
					continue
				}
				claim := gq.CapKW
				if gq.CapKW >= c.ceiling(q)-eps {
					claim = math.Min(recs[i].in.Groups[q].MeasuredKW, c.ceiling(q))
				}
				if claim > c.floor(q)+eps {
					t.Errorf("seed %d step %d: %s cut (%.1f -> %.1f) while %s still had %.1f kW above its floor",
						seed, i, lim.Groups[p].Name, recs[i-1].out.Groups[p].CapKW, gp.CapKW, lim.Groups[q].Name, claim-c.floor(q))
				}
			}
		}
	}
}
