package agent

import (
	"math"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/control"
)

// The JSON documents the agent publishes. Field names are stable: central
// ops' dashboards and historians read them as they are (see README.md).

// PlanReport is published on <root>/<site>/plan.
type PlanReport struct {
	Site       string        `json:"site"`
	TS         time.Time     `json:"ts"`
	Seq        uint64        `json:"seq"`
	Mode       string        `json:"mode"`
	Binding    string        `json:"binding"`
	BudgetKW   *float64      `json:"budget_kw"`
	MeasuredKW *float64      `json:"measured_kw"`
	PlannedKW  *float64      `json:"planned_kw"`
	HeadroomKW *float64      `json:"headroom_kw"`
	IntegralKW float64       `json:"integral_kw"`
	Unknown    []string      `json:"unknown_inputs"`
	Infeasible bool          `json:"infeasible"`
	Summary    string        `json:"summary"`
	Inputs     InputsReport  `json:"inputs"`
	Groups     []GroupReport `json:"groups"`
	Stages     []StageReport `json:"stages"`
}

// InputsReport is what the controller was given, after safety's checks.
type InputsReport struct {
	FrequencyHz      *float64 `json:"frequency_hz"`
	Islanded         bool     `json:"islanded"`
	ImportKW         *float64 `json:"import_kw"`
	SiteLoadKW       *float64 `json:"site_load_kw"`
	IslandCapacityKW float64  `json:"island_capacity_kw"`
	CurtailTargetKW  float64  `json:"curtail_target_kw"`
}

// GroupReport is one load group's decision.
type GroupReport struct {
	Name       string   `json:"name"`
	Kind       string   `json:"kind"`
	CutOrder   int      `json:"cut_order"`
	Units      int      `json:"units"`
	UnitsOn    int      `json:"units_on"`
	CapKW      float64  `json:"cap_kw"`
	CeilingKW  float64  `json:"ceiling_kw"`
	MeasuredKW *float64 `json:"measured_kw"`
	// PowerBasis: for a miners group, how measured_kw was arrived at.
	PowerBasis *PowerBasis `json:"power_basis,omitempty"`
	Reason     string      `json:"reason"`
	Why        string      `json:"why"`
}

// PowerBasis splits a miners group's power by how it is known: measured
// by the miners' PSUs, estimated by their firmware, or estimated by the
// agent from each miner's rating and state (no reading, no fresh poll, or
// a command since the last one). Null where the fleet's point is bad.
type PowerBasis struct {
	MeasuredKW          *float64 `json:"measured_kw"`
	FirmwareEstimatedKW *float64 `json:"firmware_estimated_kw"`
	RatedEstimatedKW    *float64 `json:"rated_estimated_kw"`
}

// StageReport is one under-frequency stage's phase.
type StageReport struct {
	Name    string  `json:"name"`
	BelowHz float64 `json:"below_hz"`
	Phase   string  `json:"phase"`
}

// EventReport is published on <root>/<site>/events.
type EventReport struct {
	Site  string    `json:"site"`
	TS    time.Time `json:"ts"`
	Seq   uint64    `json:"seq"`
	Kind  string    `json:"kind"`
	Text  string    `json:"text"`
	Mode  string    `json:"mode"`
	Group string    `json:"group,omitempty"`
	Stage string    `json:"stage,omitempty"`
	From  string    `json:"from,omitempty"`
	To    string    `json:"to,omitempty"`
}

// PointsReport is published on <root>/<site>/points.
type PointsReport struct {
	Site   string                 `json:"site"`
	TS     time.Time              `json:"ts"`
	Points map[string]PointReport `json:"points"`
}

// PointReport is one point's value, quality and age.
type PointReport struct {
	Value   *float64 `json:"v"`
	Quality string   `json:"q"`
	Reason  string   `json:"reason,omitempty"`
	AgeMS   *int64   `json:"age_ms"`
}

// StatusReport is the retained <root>/<site>/status.
type StatusReport struct {
	Site    string    `json:"site"`
	State   string    `json:"state"`
	Mode    string    `json:"mode"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	TS      time.Time `json:"ts"`
}

// kw rounds a power to the watt and turns non-finite values into null.
func kw(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	r := math.Round(v*1000) / 1000
	return &r
}

func round(v float64) float64 {
	if p := kw(v); p != nil {
		return *p
	}
	return 0
}

// pointKW is a point's value for a report, null unless it has a value
// whose quality is not bad.
func (a *Agent) pointKW(id point.ID) *float64 {
	p := a.store.Get(id)
	if p.Source == 0 || p.Quality == point.Bad {
		return nil
	}
	return kw(p.Value)
}

func (a *Agent) planReport(r *Record) PlanReport {
	p, in := &r.Plan, &r.Inputs
	rep := PlanReport{
		Site: a.cfg.Site.ID, TS: p.At, Seq: r.Seq, Mode: p.Mode.String(), Binding: p.Binding.String(),
		IntegralKW: round(p.IntegralKW), Unknown: p.Unknown.Names(), Infeasible: p.Infeasible,
		Summary: a.ctrl.Summary(p),
	}
	if rep.Unknown == nil {
		rep.Unknown = []string{}
	}
	if p.Binding != control.ConstraintNone {
		rep.BudgetKW, rep.MeasuredKW, rep.PlannedKW, rep.HeadroomKW = kw(p.BudgetKW), kw(p.MeasuredKW), kw(p.PlannedKW), kw(p.HeadroomKW)
	}
	rep.Inputs = InputsReport{Islanded: in.Islanded, IslandCapacityKW: round(in.IslandCapacityKW), CurtailTargetKW: round(p.CurtailKW)}
	if in.FrequencyOK {
		rep.Inputs.FrequencyHz = kw(in.FrequencyHz)
	}
	if in.ImportOK {
		rep.Inputs.ImportKW = kw(in.ImportKW)
	}
	if in.SiteLoadOK {
		rep.Inputs.SiteLoadKW = kw(in.SiteLoadKW)
	}
	lim := a.ctrl.Limits()
	for g := range p.Groups {
		gp, grp := &p.Groups[g], &lim.Groups[g]
		gr := GroupReport{
			Name: grp.Name, Kind: grp.Kind.String(), CutOrder: grp.CutOrder, Units: len(grp.UnitKW),
			UnitsOn: gp.UnitsOn, CapKW: round(gp.CapKW), CeilingKW: round(grp.CeilingKW),
			Reason: gp.Reason.String(), Why: a.ctrl.Why(p, g),
		}
		if grp.Kind == control.Throttle {
			gr.UnitsOn = gr.Units
		}
		if in.Groups[g].MeasuredOK {
			gr.MeasuredKW = kw(in.Groups[g].MeasuredKW)
		}
		if b := a.basis[g]; b != nil {
			gr.PowerBasis = &PowerBasis{MeasuredKW: a.pointKW(b[0]), FirmwareEstimatedKW: a.pointKW(b[1]), RatedEstimatedKW: a.pointKW(b[2])}
		}
		rep.Groups = append(rep.Groups, gr)
	}
	for i, ph := range p.Stages {
		s := &lim.Stages[i]
		rep.Stages = append(rep.Stages, StageReport{Name: s.Name, BelowHz: s.BelowHz, Phase: ph.String()})
	}
	if rep.Stages == nil {
		rep.Stages = []StageReport{}
	}
	return rep
}

func (a *Agent) eventReport(r *Record, e control.Event) EventReport {
	lim := a.ctrl.Limits()
	rep := EventReport{Site: a.cfg.Site.ID, TS: r.Plan.At, Seq: r.Seq, Kind: e.Kind.String(), Text: a.ctrl.Describe(e), Mode: r.Plan.Mode.String()}
	switch e.Kind {
	case control.EventModeChanged:
		rep.From, rep.To = e.From.String(), e.To.String()
	case control.EventStageOperated, control.EventStageCleared:
		rep.Stage = lim.Stages[e.Index].Name
	case control.EventCutBegan, control.EventRestoreBegan, control.EventRestored:
		rep.Group = lim.Groups[e.Index].Name
	}
	return rep
}

func pointsReport(site string, names []string, snap []point.Point, now time.Time) PointsReport {
	rep := PointsReport{Site: site, TS: now, Points: make(map[string]PointReport, len(names))}
	for id, name := range names {
		p := snap[id]
		pr := PointReport{Quality: p.Quality.String()}
		if p.Quality != point.Bad {
			pr.Value = kw(p.Value)
		}
		if p.Reason != point.OK {
			pr.Reason = p.Reason.String()
		}
		if p.Source != 0 {
			age := p.Age(now).Milliseconds()
			pr.AgeMS = &age
		}
		rep.Points[name] = pr
	}
	return rep
}

// planChanged reports whether a plan says something new compared with the
// last published one: a mode, a binding constraint, a target or a reason.
func planChanged(prev, cur *control.Plan) bool {
	if prev.Mode != cur.Mode || prev.Binding != cur.Binding || prev.Unknown != cur.Unknown || prev.Infeasible != cur.Infeasible || len(prev.Groups) != len(cur.Groups) {
		return true
	}
	for g := range cur.Groups {
		a, b := &prev.Groups[g], &cur.Groups[g]
		if a.UnitsOn != b.UnitsOn || math.Abs(a.CapKW-b.CapKW) > 0.5 || a.Reason != b.Reason {
			return true
		}
	}
	for i := range cur.Stages {
		if prev.Stages[i] != cur.Stages[i] {
			return true
		}
	}
	return false
}
