package agent

import (
	"math"
	"strings"
	"time"

	"github.com/siteagent/siteagent/control"
)

// CapacityReport is the site's power headroom for schedulers of AI work:
// published (retained) on <root>/<site>/capacity whenever it changes, and
// as Sparkplug metrics under capacity/.
type CapacityReport struct {
	Site string    `json:"site"`
	TS   time.Time `json:"ts"`
	Seq  uint64    `json:"seq"`
	Mode string    `json:"mode"`
	// Constraint is the binding budget: import_limit, island_capacity,
	// curtailment, failsafe_load, or none.
	Constraint string   `json:"constraint"`
	BudgetKW   *float64 `json:"budget_kw"`
	// HeadroomKW is what the whole site may still add under the binding
	// budget; null when no budget is known.
	HeadroomKW *float64 `json:"headroom_kw"`
	// Until is when the binding constraint is expected to end (an active
	// curtailment's end); null when it is open-ended or not known. Why
	// says which.
	Until     *time.Time `json:"until"`
	ExpectedS *float64   `json:"expected_s"`
	Why       string     `json:"why"`
	// HoldUntil: restores are held on request until then.
	HoldUntil *time.Time `json:"hold_until,omitempty"`
	// Next is the next scheduled curtailment, if any.
	Next   *NextCurtailment `json:"next"`
	Groups []GroupCapacity  `json:"groups"`
}

// NextCurtailment is an accepted curtailment that has not begun.
type NextCurtailment struct {
	ID          string    `json:"id"`
	Starts      time.Time `json:"starts"`
	Ends        time.Time `json:"ends"`
	TargetKW    *float64  `json:"target_kw,omitempty"`
	ReductionKW *float64  `json:"reduction_kw,omitempty"`
}

// GroupCapacity is one load group's headroom (see control.GroupHeadroom).
type GroupCapacity struct {
	Name     string  `json:"name"`
	Kind     string  `json:"kind"`
	CutOrder int     `json:"cut_order"`
	DrawKW   float64 `json:"draw_kw"`
	CapKW    float64 `json:"cap_kw"`
	MaxKW    float64 `json:"max_kw"`
	// RoomKW: below its max; FreeKW: it may take now without anything
	// being cut; AvailableKW: with the groups cut before it shed.
	RoomKW      float64 `json:"room_kw"`
	FreeKW      float64 `json:"free_kw"`
	AvailableKW float64 `json:"available_kw"`
}

// capacityTracker builds capacity reports from cycle records and tells
// when one is worth publishing.
type capacityTracker struct {
	a        *Agent
	head     []control.GroupHeadroom
	last     CapacityReport
	have     bool
	deadband float64
}

func newCapacityTracker(a *Agent) *capacityTracker {
	return &capacityTracker{a: a, head: make([]control.GroupHeadroom, len(a.lim.Groups)),
		deadband: math.Max(1, a.lim.ImportLimitKW*0.005)}
}

// build makes the report of one cycle.
func (t *capacityTracker) build(r *Record) CapacityReport {
	a := t.a
	p, in := &r.Plan, &r.Inputs
	site := a.ctrl.Headroom(p, in, t.head)
	rep := CapacityReport{Site: a.cfg.Site.ID, TS: p.At, Seq: r.Seq, Mode: p.Mode.String(), Constraint: p.Binding.String()}
	if p.Binding != control.ConstraintNone && !math.IsInf(site, 0) {
		rep.BudgetKW, rep.HeadroomKW = kw(p.BudgetKW), kw(site)
	}
	gate := a.ops.gate
	switch {
	case p.Unknown != 0:
		rep.Why = "inputs unknown (" + strings.Join(p.Unknown.Names(), ", ") + "): the site runs fail-safe and offers nothing until they are back"
	case p.Binding == control.ConstraintCurtail:
		if end, id := gate.curtailEnd(p.At, p.BudgetKW); !end.IsZero() {
			rep.Until, rep.Why = &end, "curtailment "+id+" ends"
		} else {
			rep.Why = "curtailment requested through " + a.cfg.Site.Inputs.CurtailTargetKW + ": its end is not known"
		}
	case p.Binding == control.ConstraintImport:
		rep.Why = "the contracted import limit: open-ended"
	case p.Binding == control.ConstraintIsland:
		rep.Why = "islanded: island capacity binds until the grid is back"
	case p.Binding == control.ConstraintFailsafe:
		rep.Why = "fail-safe load cap while the site is blind"
	default:
		rep.Why = "no budget binds"
	}
	for i, ph := range p.Stages {
		if ph == control.StageOperated || ph == control.StageClearing {
			rep.Why += "; under-frequency stage " + a.lim.Stages[i].Name + " caps groups until frequency recovers"
			break
		}
	}
	if rep.Until != nil {
		s := math.Max(0, rep.Until.Sub(p.At).Seconds())
		rep.ExpectedS = &s
	}
	v := gate.view(p.At)
	rep.HoldUntil = v.HoldUntil
	if s, ok := gate.next(p.At); ok {
		n := &NextCurtailment{ID: s.id, Starts: s.start, Ends: s.end}
		if s.reduction > 0 {
			r := s.reduction
			n.ReductionKW = &r
		} else {
			t := s.targetKW
			n.TargetKW = &t
		}
		rep.Next = n
	}
	rep.Groups = make([]GroupCapacity, len(t.head))
	for g, h := range t.head {
		grp, gp := &a.lim.Groups[g], &p.Groups[g]
		rep.Groups[g] = GroupCapacity{Name: grp.Name, Kind: grp.Kind.String(), CutOrder: grp.CutOrder,
			DrawKW: round(h.DrawKW), CapKW: round(gp.CapKW), MaxKW: round(gp.MaxKW),
			RoomKW: round(h.RoomKW), FreeKW: round(h.FreeKW), AvailableKW: round(h.AvailableKW)}
	}
	return rep
}

// due reports whether rep differs enough from the last published report
// (or the heartbeat is due), and remembers it when it does.
func (t *capacityTracker) due(rep *CapacityReport) bool {
	if t.have && !t.differs(&t.last, rep) && rep.TS.Sub(t.last.TS) < planHeartbeat {
		return false
	}
	t.last, t.have = *rep, true
	return true
}

func (t *capacityTracker) differs(a, b *CapacityReport) bool {
	if a.Mode != b.Mode || a.Constraint != b.Constraint || !sameTime(a.Until, b.Until) || !sameTime(a.HoldUntil, b.HoldUntil) ||
		(a.Next == nil) != (b.Next == nil) || (a.Next != nil && (a.Next.ID != b.Next.ID || !a.Next.Starts.Equal(b.Next.Starts))) ||
		len(a.Groups) != len(b.Groups) || (a.HeadroomKW == nil) != (b.HeadroomKW == nil) {
		return true
	}
	if a.HeadroomKW != nil && math.Abs(*a.HeadroomKW-*b.HeadroomKW) > t.deadband {
		return true
	}
	for i := range a.Groups {
		x, y := &a.Groups[i], &b.Groups[i]
		if math.Abs(x.FreeKW-y.FreeKW) > t.deadband || math.Abs(x.AvailableKW-y.AvailableKW) > t.deadband || math.Abs(x.CapKW-y.CapKW) > t.deadband {
			return true
		}
	}
	return false
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}
