package safety

import (
	"math"
	"testing"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/control"
)

var now = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func f(v float64) *float64 { return &v }

type fixture struct {
	store *point.Store
	m     InputMap
	names map[string]point.ID
}

func newFixture() *fixture {
	s := point.NewStore()
	src := func(name string, meta point.Meta) Source {
		if meta.StaleAfter == 0 {
			meta.StaleAfter = time.Second
		}
		return Source{ID: s.Register(name), Name: name, Meta: meta}
	}
	m := InputMap{
		Frequency:  src("pcc.frequency_hz", point.Meta{Min: f(45), Max: f(65)}),
		Breaker:    src("pcc.breaker_closed", point.Meta{}),
		Import:     src("pcc.import_kw", point.Meta{}),
		SiteLoad:   src("pcc.site_load_kw", point.Meta{}),
		Generation: []Source{src("bess.gen_kw", point.Meta{})},
		Battery:    []Source{src("bess.discharge_kw", point.Meta{})},
		Curtail:    src("ops.curtail_kw", point.Meta{}),
		Groups:     []Source{src("plc.asic_kw", point.Meta{}), {ID: point.None}},
	}
	return &fixture{store: s, m: m}
}

func (fx *fixture) set(id point.ID, v float64, age time.Duration) {
	t := now.Add(-age).UnixNano()
	fx.store.Write([]point.Update{{ID: id, Point: point.Point{Value: v, Quality: point.Good, Source: t, Recv: t}}})
}

func (fx *fixture) healthy() {
	fx.set(fx.m.Frequency.ID, 60, 0)
	fx.set(fx.m.Breaker.ID, 1, 0)
	fx.set(fx.m.Import.ID, 10000, 0)
	fx.set(fx.m.SiteLoad.ID, 10000, 0)
	fx.set(fx.m.Generation[0].ID, 5000, 0)
	fx.set(fx.m.Battery[0].ID, 4000, 0)
	fx.set(fx.m.Curtail.ID, 0, 0)
	fx.set(fx.m.Groups[0].ID, 3000, 0)
}

func (fx *fixture) fill() (*control.Inputs, *Checker) {
	c := NewChecker(fx.m)
	in := &control.Inputs{Groups: make([]control.GroupInput, 2)}
	c.Fill(fx.store.Snapshot(nil), now, in)
	return in, c
}

func TestHealthyInputsPassThrough(t *testing.T) {
	fx := newFixture()
	fx.healthy()
	in, c := fx.fill()
	if !in.FrequencyOK || in.FrequencyHz != 60 || in.Islanded || !in.ImportOK || in.ImportKW != 10000 || in.IslandCapacityKW != 9000 || !in.IslandCapacityOK {
		t.Fatalf("healthy inputs mangled: %+v", in)
	}
	if !in.Groups[0].MeasuredOK || in.Groups[1].MeasuredOK {
		t.Fatalf("group meters: %+v", in.Groups)
	}
	if len(c.Findings(fx.store.Snapshot(nil))) != 0 {
		t.Fatal("no findings expected")
	}
}

func TestWorstCases(t *testing.T) {
	fx := newFixture()
	fx.healthy()
	fx.set(fx.m.Import.ID, 10000, 5*time.Second) // silent meter
	fx.set(fx.m.Frequency.ID, 0, 0)              // broken transducer
	fx.store.Write([]point.Update{{ID: fx.m.Breaker.ID, Point: point.Point{Quality: point.Bad, Reason: point.CommError}}})
	fx.set(fx.m.Generation[0].ID, 5000, 3*time.Second)
	in, c := fx.fill()
	if in.ImportOK {
		t.Error("a stale import meter must be unknown")
	}
	if in.FrequencyOK || !math.IsNaN(in.FrequencyHz) {
		t.Error("an implausible frequency must be unknown (NaN: below every stage)")
	}
	if in.BreakerOK || !in.Islanded {
		t.Error("an unknown breaker must read as open (islanded)")
	}
	if in.IslandCapacityOK || in.IslandCapacityKW != 4000 {
		t.Errorf("an unknown generator counts as zero: got %g ok=%v", in.IslandCapacityKW, in.IslandCapacityOK)
	}
	found := map[string]Verdict{}
	for _, fd := range c.Findings(fx.store.Snapshot(nil)) {
		found[fd.Source.Name] = fd.Verdict
	}
	want := map[string]Verdict{"pcc.import_kw": Stale, "pcc.frequency_hz": Implausible, "pcc.breaker_closed": NotGood, "bess.gen_kw": Stale}
	for k, v := range want {
		if found[k] != v {
			t.Errorf("%s: verdict %v, want %v", k, found[k], v)
		}
	}
	if !c.Changed() {
		t.Fatal("Changed must report the transitions")
	}
	if ch := c.Changes(fx.store.Snapshot(nil)); len(ch) != 4 || c.Changed() {
		t.Errorf("Changes must list the four transitions once, got %d", len(ch))
	}
	fx.healthy()
	c.Fill(fx.store.Snapshot(nil), now, in)
	ch := c.Changes(fx.store.Snapshot(nil))
	if len(ch) != 4 || ch[0].Verdict != Usable {
		t.Errorf("recovery must be reported as four changes back to usable, got %+v", ch)
	}
}

func TestFillAllocatesNothing(t *testing.T) {
	fx := newFixture()
	fx.healthy()
	c := NewChecker(fx.m)
	in := &control.Inputs{Groups: make([]control.GroupInput, 2)}
	snap := fx.store.Snapshot(nil)
	if a := testing.AllocsPerRun(100, func() { c.Fill(snap, now, in) }); a != 0 {
		t.Fatalf("Fill allocated %.1f times", a)
	}
}

func TestClampHoldsHardLimits(t *testing.T) {
	lim := &control.Limits{Groups: []control.Group{
		{Name: "asic", Kind: control.Shed, UnitKW: []float64{3, 3, 3, 3}, FloorKW: 5, CeilingKW: 12},
		{Name: "gpu", Kind: control.Throttle, UnitKW: []float64{10}, FloorKW: 2, CeilingKW: 10},
	}}
	c := NewClamp(lim)
	p := &control.Plan{Groups: []control.GroupPlan{{UnitsOn: 9}, {CapKW: math.NaN()}}}
	if n := c.Apply(p); n != 2 || p.Groups[0].UnitsOn != 4 || p.Groups[1].CapKW != 2 {
		t.Fatalf("clamp: n=%d %+v", n, p.Groups)
	}
	p.Groups[0].UnitsOn, p.Groups[1].CapKW = 0, 50
	if n := c.Apply(p); n != 2 || p.Groups[0].UnitsOn != 2 || p.Groups[1].CapKW != 10 {
		t.Fatalf("clamp: n=%d %+v", n, p.Groups)
	}
	p.Groups[0].UnitsOn, p.Groups[1].CapKW = 3, 7
	if n := c.Apply(p); n != 0 {
		t.Fatalf("a plan within limits must pass untouched, %d corrections", n)
	}
}
