package control

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// eps absorbs float rounding when comparing kW sums.
const eps = 1e-6

// maxRampStep bounds the time a single step may ramp or wake for, so a
// stalled cycle never releases a burst of load when it resumes.
const maxRampStep = time.Second

// Controller holds the immutable, precomputed form of Limits. It has no
// mutable fields: all that changes lives in State, so one Controller can
// step any number of states (replay, what-if) side by side.
type Controller struct {
	lim Limits
	// order lists group indices from the first cut to the most protected.
	order []int
	// prefix[g][k] is the rated power of units 0..k-1 of group g.
	prefix [][]float64
	// floorUnits[g] is the fewest units of a shed group that meet its floor.
	floorUnits []int
}

// New checks lim and precomputes what Step needs.
func New(lim Limits) (*Controller, error) {
	if err := lim.check(); err != nil {
		return nil, err
	}
	c := &Controller{lim: lim}
	n := len(lim.Groups)
	c.order = make([]int, n)
	for i := range c.order {
		c.order[i] = i
	}
	// Insertion sort: stable, and n is small.
	for i := 1; i < n; i++ {
		for j := i; j > 0 && lim.Groups[c.order[j]].CutOrder < lim.Groups[c.order[j-1]].CutOrder; j-- {
			c.order[j], c.order[j-1] = c.order[j-1], c.order[j]
		}
	}
	c.prefix = make([][]float64, n)
	c.floorUnits = make([]int, n)
	for g := range lim.Groups {
		units := lim.Groups[g].UnitKW
		pre := make([]float64, len(units)+1)
		for k, kw := range units {
			pre[k+1] = pre[k] + kw
		}
		c.prefix[g] = pre
		c.floorUnits[g] = unitsAtLeast(pre, lim.Groups[g].FloorKW)
	}
	return c, nil
}

func (l *Limits) check() error {
	var errs []error
	for i := range l.Groups {
		g := &l.Groups[i]
		if g.Kind != Shed && g.Kind != Throttle {
			errs = append(errs, fmt.Errorf("group %q: kind must be shed or throttle", g.Name))
		}
		if len(g.UnitKW) == 0 {
			errs = append(errs, fmt.Errorf("group %q: needs at least one unit", g.Name))
		}
		for _, kw := range g.UnitKW {
			if !(kw > 0) {
				errs = append(errs, fmt.Errorf("group %q: unit ratings must be positive", g.Name))
				break
			}
		}
		if g.FloorKW < 0 || g.FloorKW > g.CeilingKW {
			errs = append(errs, fmt.Errorf("group %q: floor %g kW must lie in 0..ceiling %g kW", g.Name, g.FloorKW, g.CeilingKW))
		}
		if g.RampUpKWPerS < 0 || g.WakeUnitsPerS < 0 || g.RestoreHoldoff < 0 {
			errs = append(errs, fmt.Errorf("group %q: rates and hold-off must not be negative", g.Name))
		}
		if err := g.Droop.check(g); err != nil {
			errs = append(errs, err)
		}
	}
	for i := range l.Stages {
		s := &l.Stages[i]
		if !(s.BelowHz < s.ClearAboveHz) {
			errs = append(errs, fmt.Errorf("stage %q: clear_above_hz %g must be above below_hz %g", s.Name, s.ClearAboveHz, s.BelowHz))
		}
		for _, a := range s.Actions {
			if a.Group < 0 || a.Group >= len(l.Groups) {
				errs = append(errs, fmt.Errorf("stage %q: action names group %d, which does not exist", s.Name, a.Group))
			} else if a.CapKW < 0 {
				errs = append(errs, fmt.Errorf("stage %q: cap must not be negative", s.Name))
			}
		}
	}
	if l.MarginKW < 0 || l.RestoreMarginKW < 0 || l.IntegralGain < 0 || l.IntegralMaxKW < 0 || l.FeedbackDelay < 0 {
		errs = append(errs, errors.New("margins, gains and delays must not be negative"))
	}
	return errors.Join(errs...)
}

// Limits returns the limits the controller was built with.
func (c *Controller) Limits() *Limits { return &c.lim }

// NewState returns the state before the first step: every group free at its
// ceiling.
func (c *Controller) NewState() *State {
	st := &State{
		Stages: make([]StageState, len(c.lim.Stages)),
		Groups: make([]GroupState, len(c.lim.Groups)),
	}
	for g := range st.Groups {
		st.Groups[g].UnitsOn = len(c.lim.Groups[g].UnitKW)
		st.Groups[g].CapKW = c.ceiling(g)
	}
	return st
}

// NewPlan returns a plan sized for Step.
func (c *Controller) NewPlan() *Plan {
	return &Plan{
		Groups: make([]GroupPlan, len(c.lim.Groups)),
		Stages: make([]StagePhase, len(c.lim.Stages)),
	}
}

// NewInputs returns inputs sized for Step.
func (c *Controller) NewInputs() *Inputs {
	return &Inputs{Groups: make([]GroupInput, len(c.lim.Groups))}
}

// ceiling is the most a group can be given: its configured ceiling, or for
// a shed group the rated power of the units that fit under it.
func (c *Controller) ceiling(g int) float64 {
	if c.lim.Groups[g].Kind == Shed {
		return c.prefix[g][unitsAtMost(c.prefix[g], c.lim.Groups[g].CeilingKW)]
	}
	return c.lim.Groups[g].CeilingKW
}

func (c *Controller) floor(g int) float64 {
	if c.lim.Groups[g].Kind == Shed {
		return c.prefix[g][c.floorUnits[g]]
	}
	return c.lim.Groups[g].FloorKW
}

// unitsAtMost is the most units whose rated power fits in kw.
func unitsAtMost(prefix []float64, kw float64) int {
	lo, hi := 0, len(prefix)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if prefix[mid] <= kw+eps {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// unitsAtLeast is the fewest units whose rated power reaches kw.
func unitsAtLeast(prefix []float64, kw float64) int {
	lo, hi := 0, len(prefix)-1
	for lo < hi {
		mid := (lo + hi) / 2
		if prefix[mid] >= kw-eps {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// setKW moves group g to (at most) kw: a throttle group takes it as its
// cap, a shed group runs the most units that fit, never fewer than its
// floor needs. It returns the group's new cap.
func (c *Controller) setKW(st *State, g int, kw float64) float64 {
	gs := &st.Groups[g]
	if kw < gs.CapKW-eps {
		// A cut interrupts any restore: the next one is reported afresh.
		gs.Restoring = false
	}
	if c.lim.Groups[g].Kind == Shed {
		n := unitsAtMost(c.prefix[g], kw)
		if n < c.floorUnits[g] {
			n = c.floorUnits[g]
		}
		gs.UnitsOn = n
		gs.CapKW = c.prefix[g][n]
		return gs.CapKW
	}
	if kw < c.lim.Groups[g].FloorKW {
		kw = c.lim.Groups[g].FloorKW
	}
	gs.CapKW = kw
	return kw
}

// Step advances the controller by one cycle: it reads st, in and now,
// writes the next state into st and the decision into out. It is the pure
// function Step(state, inputs, now) -> (state, plan); the pointers only
// spare the copies.
func (c *Controller) Step(st *State, in *Inputs, now time.Time, out *Plan) {
	lim := &c.lim
	if !st.Started {
		st.Started = true
		st.Last = now
		for g := range st.Groups {
			st.Groups[g].FreeSince = now
		}
	}
	dt := now.Sub(st.Last)
	if dt < 0 {
		dt = 0
	}
	if dt > maxRampStep {
		dt = maxRampStep
	}
	st.Last = now
	out.reset(now)
	for g := range st.Groups {
		out.Groups[g].prevCap = st.Groups[g].CapKW
		out.Groups[g].prevUnits = st.Groups[g].UnitsOn
	}

	c.trackInputs(st, in, out)
	if in.CurtailOK {
		st.CurtailKW = math.Max(0, in.CurtailTargetKW)
	}
	out.CurtailKW = st.CurtailKW
	if cmd := in.CommandCurtailKW; cmd > 0 && (out.CurtailKW <= 0 || cmd < out.CurtailKW) {
		out.CurtailKW = cmd
	}
	c.stepStages(st, in, now, out)

	// Operated stages cap their groups at once, whatever the budget says.
	for g := range lim.Groups {
		gp := &out.Groups[g]
		gp.MaxKW, gp.Stage = c.stageMax(st, g)
		c.applyDroop(in, g, gp)
		gs := &st.Groups[g]
		if gs.CapKW > gp.MaxKW+eps {
			c.setKW(st, g, gp.MaxKW)
		}
	}

	// What the plan counts for each group, and what the meters saw of them.
	var claims, seen float64
	for g := range lim.Groups {
		claim := c.claim(st, in, g)
		out.Groups[g].ClaimKW = claim
		claims += claim
		if in.Groups[g].MeasuredOK {
			seen += in.Groups[g].MeasuredKW
		} else {
			seen += claim
		}
	}
	// pending is the load the meters will lose (negative) or gain once the
	// devices follow the current caps.
	pending := claims - seen

	headroom := c.bindingHeadroom(st, in, now, dt, pending, out)
	freeze := out.Unknown != 0

	switch {
	case headroom < -eps:
		c.cut(st, in, -headroom+lim.RestoreMarginKW/2, out)
	case headroom > lim.RestoreMarginKW+eps && !freeze && !in.HoldRestores:
		c.restore(st, in, now, dt, headroom-lim.RestoreMarginKW/2, out)
	}
	// Report the load the plan expects once devices follow it.
	var after float64
	for g := range out.Groups {
		after += out.Groups[g].ClaimKW
	}
	if out.Binding != ConstraintNone {
		out.PlannedKW += after - claims
		out.HeadroomKW = out.BudgetKW - lim.MarginKW - out.PlannedKW
	}
	c.finish(st, in, now, freeze, out)
}

func (p *Plan) reset(now time.Time) {
	p.At = now
	p.NEvents = 0
	p.DroppedEvents = 0
	p.WakeAt = time.Time{}
	p.Infeasible = false
	p.Binding = ConstraintNone
	p.BudgetKW, p.MeasuredKW, p.PlannedKW, p.HeadroomKW = 0, 0, 0, 0
	for i := range p.Groups {
		p.Groups[i] = GroupPlan{Stage: -1}
	}
}

func (p *Plan) wakeAt(t time.Time) {
	if p.WakeAt.IsZero() || t.Before(p.WakeAt) {
		p.WakeAt = t
	}
}

// trackInputs turns the OK flags into the Unknown set and reports changes.
func (c *Controller) trackInputs(st *State, in *Inputs, out *Plan) {
	var u Unknown
	if !in.FrequencyOK {
		u |= UnknownFrequency
	}
	if !in.BreakerOK {
		u |= UnknownBreaker
	}
	if !in.ImportOK {
		u |= UnknownImport
	}
	if !in.SiteLoadOK {
		u |= UnknownSiteLoad
	}
	if !in.IslandCapacityOK {
		u |= UnknownIslandCapacity
	}
	if !in.CurtailOK {
		u |= UnknownCurtail
	}
	if lost := u &^ st.Unknown; lost != 0 {
		out.addEvent(Event{Kind: EventInputLost, Input: lost, Index: -1})
	}
	if back := st.Unknown &^ u; back != 0 {
		out.addEvent(Event{Kind: EventInputRestored, Input: back, Index: -1})
	}
	st.Unknown = u
	out.Unknown = u
}

// stepStages runs each under-frequency element's timers. An unknown
// frequency reads as below every threshold: the worst case.
func (c *Controller) stepStages(st *State, in *Inputs, now time.Time, out *Plan) {
	f := in.FrequencyHz
	if !in.FrequencyOK || math.IsNaN(f) {
		f = math.Inf(-1)
	}
	for i := range c.lim.Stages {
		s := &c.lim.Stages[i]
		ss := &st.Stages[i]
		switch ss.Phase {
		case StageIdle:
			if f < s.BelowHz {
				ss.Phase, ss.Since = StagePickup, now
			}
		case StagePickup:
			if f >= s.BelowHz {
				ss.Phase, ss.Since = StageIdle, now
			}
		case StageOperated:
			if f > s.ClearAboveHz {
				ss.Phase, ss.Since = StageClearing, now
			}
		case StageClearing:
			if f <= s.ClearAboveHz {
				ss.Phase, ss.Since = StageOperated, now
			}
		}
		// Timers are checked after the transitions so that a zero delay
		// operates in the same step that saw the frequency fall.
		switch ss.Phase {
		case StagePickup:
			if now.Sub(ss.Since) >= s.Delay {
				ss.Phase, ss.Since = StageOperated, now
				out.addEvent(Event{Kind: EventStageOperated, Index: i})
			} else {
				out.wakeAt(ss.Since.Add(s.Delay))
			}
		case StageClearing:
			if now.Sub(ss.Since) >= s.ClearAfter {
				ss.Phase, ss.Since = StageIdle, now
				out.addEvent(Event{Kind: EventStageCleared, Index: i})
			} else {
				out.wakeAt(ss.Since.Add(s.ClearAfter))
			}
		}
		out.Stages[i] = ss.Phase
	}
}

// stageMax is the most group g may have under the operated stages, and
// the stage that sets it (-1: none, the ceiling applies).
func (c *Controller) stageMax(st *State, g int) (float64, int) {
	max, by := c.ceiling(g), -1
	for i := range c.lim.Stages {
		if p := st.Stages[i].Phase; p != StageOperated && p != StageClearing {
			continue
		}
		for _, a := range c.lim.Stages[i].Actions {
			if a.Group == g && a.CapKW < max-eps {
				max, by = a.CapKW, i
			}
		}
	}
	if f := c.floor(g); max < f {
		max = f
	}
	return max, by
}

// held reports whether group g is below its ceiling.
func (c *Controller) held(st *State, g int) bool {
	return st.Groups[g].CapKW < c.ceiling(g)-eps
}

// claim is the power the plan counts for group g: its cap while it is held
// back (it may draw up to that), what its meter reads while it is free, and
// its ceiling when it is free and unmetered (the worst case).
func (c *Controller) claim(st *State, in *Inputs, g int) float64 {
	if c.held(st, g) {
		return st.Groups[g].CapKW
	}
	if in.Groups[g].MeasuredOK {
		return math.Min(in.Groups[g].MeasuredKW, c.ceiling(g))
	}
	return c.ceiling(g)
}

// bindingHeadroom evaluates every active budget and returns the smallest
// headroom: budget - margin - (measured + pending - integral). It also
// runs the integral and fills the plan's budget fields.
func (c *Controller) bindingHeadroom(st *State, in *Inputs, now time.Time, dt time.Duration, pending float64, out *Plan) float64 {
	lim := &c.lim
	best := math.Inf(1)
	consider := func(k Constraint, budget, measured float64) {
		planned := measured + pending - st.IntegralKW
		h := budget - lim.MarginKW - planned
		if h < best {
			best = h
			out.Binding, out.BudgetKW, out.MeasuredKW, out.PlannedKW = k, budget, measured, planned
		}
	}
	if !in.Islanded {
		if in.ImportOK {
			consider(ConstraintImport, lim.ImportLimitKW, in.ImportKW)
			if out.CurtailKW > 0 {
				consider(ConstraintCurtail, out.CurtailKW, in.ImportKW)
			}
		}
	} else if in.SiteLoadOK {
		// An unknown capacity still arrives as its worst case (unknown
		// sources count as zero), so the island budget always applies.
		consider(ConstraintIsland, in.IslandCapacityKW-lim.IslandReserveKW, in.SiteLoadKW)
	}
	measuredBinding := out.Binding
	// Blind: the meter that the binding budget needs is unknown.
	if (!in.Islanded && out.Unknown&UnknownImport != 0) || (in.Islanded && out.Unknown&UnknownSiteLoad != 0) {
		// Blind: count only the controllable load, against the fail-safe cap.
		var groups float64
		for g := range out.Groups {
			groups += out.Groups[g].ClaimKW
		}
		consider(ConstraintFailsafe, lim.FailsafeLoadKW, groups-pending)
	}

	// Integral: only ever cuts deeper, only after the meter has stayed over
	// the line for FeedbackDelay, and leaks back once it is under.
	if measuredBinding != ConstraintNone && out.Binding == measuredBinding {
		e := out.BudgetKW - lim.MarginKW - out.MeasuredKW
		if e < 0 {
			if st.OverSince.IsZero() {
				st.OverSince = now
			}
			if now.Sub(st.OverSince) >= lim.FeedbackDelay && c.canCut(st) {
				st.IntegralKW += lim.IntegralGain * e * dt.Seconds()
			}
		} else {
			st.OverSince = time.Time{}
			st.IntegralKW = math.Min(0, st.IntegralKW+lim.IntegralGain*e*dt.Seconds())
		}
		if st.IntegralKW < -lim.IntegralMaxKW {
			st.IntegralKW = -lim.IntegralMaxKW
		}
	}
	out.IntegralKW = st.IntegralKW
	out.HeadroomKW = best
	return best
}

// canCut reports whether any group is above its floor.
func (c *Controller) canCut(st *State) bool {
	for g := range st.Groups {
		if st.Groups[g].CapKW > c.floor(g)+eps {
			return true
		}
	}
	return false
}

// cut takes kw from the groups in cut order, each down to its floor.
func (c *Controller) cut(st *State, in *Inputs, kw float64, out *Plan) {
	for _, g := range c.order {
		if kw <= eps {
			break
		}
		gp := &out.Groups[g]
		give := gp.ClaimKW - c.floor(g)
		if give <= eps {
			continue
		}
		target := gp.ClaimKW - math.Min(kw, give)
		newCap := c.setKW(st, g, target)
		kw -= gp.ClaimKW - newCap
		gp.ClaimKW = newCap
		gp.Reason = ReasonBudget
	}
	if kw > eps {
		out.Infeasible = true
		if !st.Infeasible {
			out.addEvent(Event{Kind: EventInfeasible, Index: -1, KW: kw})
		}
	}
}

// restore hands kw of headroom back, most protected group first, at each
// group's ramp or wake rate and after its hold-off. A group waiting out its
// hold-off keeps its share reserved, so a less protected group never
// restores ahead of it.
func (c *Controller) restore(st *State, in *Inputs, now time.Time, dt time.Duration, kw float64, out *Plan) {
	for i := len(c.order) - 1; i >= 0; i-- {
		g := c.order[i]
		gs := &st.Groups[g]
		gp := &out.Groups[g]
		want := gp.MaxKW - gs.CapKW
		if want <= eps || kw <= eps {
			continue
		}
		if until := gs.FreeSince.Add(c.lim.Groups[g].RestoreHoldoff); now.Before(until) {
			gp.Reason, gp.Until = ReasonHoldoff, until
			out.wakeAt(until)
			kw -= want
			continue
		}
		// Free to restore: it ramps from here, even in a cycle whose wake
		// credit is still short of a whole unit.
		gp.Reason = ReasonRamping
		step := math.Min(want, kw)
		grp := &c.lim.Groups[g]
		before := gs.CapKW
		if grp.Kind == Throttle {
			if grp.RampUpKWPerS > 0 {
				step = math.Min(step, grp.RampUpKWPerS*dt.Seconds())
			}
			c.setKW(st, g, before+step)
		} else {
			n := unitsAtMost(c.prefix[g], before+step)
			if grp.WakeUnitsPerS > 0 {
				gs.WakeCredit += grp.WakeUnitsPerS * dt.Seconds()
				if woken := int(gs.WakeCredit); gs.UnitsOn+woken < n {
					n = gs.UnitsOn + woken
				}
				gs.WakeCredit -= float64(n - gs.UnitsOn)
				// A credit never builds up beyond one cycle's worth plus a
				// unit, so a pause never turns into a burst.
				if max := 1 + grp.WakeUnitsPerS*dt.Seconds(); gs.WakeCredit > max {
					gs.WakeCredit = max
				}
			}
			c.setKW(st, g, c.prefix[g][n])
		}
		if gs.CapKW > before+eps {
			if !gs.Restoring {
				gs.Restoring = true
				out.addEvent(Event{Kind: EventRestoreBegan, Index: g})
			}
		}
		gp.ClaimKW += gs.CapKW - before
		kw -= gs.CapKW - before
	}
}

// finish settles reasons, hold-off clocks, events and the mode.
func (c *Controller) finish(st *State, in *Inputs, now time.Time, freeze bool, out *Plan) {
	lim := &c.lim
	anyStage, restoring := false, false
	for i := range st.Stages {
		if p := st.Stages[i].Phase; p == StageOperated || p == StageClearing {
			anyStage = true
		}
	}
	for g := range lim.Groups {
		gs := &st.Groups[g]
		gp := &out.Groups[g]
		gp.Kind = lim.Groups[g].Kind
		gp.UnitsOn = gs.UnitsOn
		gp.CapKW = gs.CapKW
		held := c.held(st, g)
		switch {
		case !held:
			gp.Reason = ReasonFree
		case gp.Reason == ReasonRamping || gp.Reason == ReasonHoldoff:
		case gs.CapKW >= gp.MaxKW-eps && gp.Stage >= 0:
			gp.Reason = ReasonStage
		case gs.CapKW >= gp.MaxKW-eps && gp.Droop:
			gp.Reason = ReasonDroop
		case freeze:
			gp.Reason = ReasonFrozen
		case in.HoldRestores && gp.MaxKW > gs.CapKW+eps:
			gp.Reason = ReasonHeld
		case gs.CapKW <= c.floor(g)+eps:
			gp.Reason = ReasonFloor
		default:
			gp.Reason = ReasonBudget
		}
		// Anything still holding the group back restarts its hold-off,
		// except its droop response, which follows frequency back up at
		// the ramp rate like a governor.
		if held && gp.Reason != ReasonRamping && gp.Reason != ReasonHoldoff && gp.Reason != ReasonDroop {
			gs.FreeSince = now
			gs.WakeCredit = 0
		}
		if gp.Reason == ReasonRamping || gp.Reason == ReasonHoldoff {
			restoring = true
		}
		gp.Changed = gp.UnitsOn != gp.prevUnits || math.Abs(gp.CapKW-gp.prevCap) > eps
		if held && gp.prevCap >= c.ceiling(g)-eps {
			out.addEvent(Event{Kind: EventCutBegan, Index: g, KW: gp.prevCap - gp.CapKW})
		}
		if !held && gs.Restoring {
			gs.Restoring = false
			out.addEvent(Event{Kind: EventRestored, Index: g})
		}
	}
	st.Infeasible = out.Infeasible

	mode := ModeNormal
	switch {
	case out.Unknown != 0:
		mode = ModeFailSafe
	case in.Islanded:
		mode = ModeIslanded
	case anyStage:
		mode = ModeUnderFrequency
	case out.CurtailKW > 0:
		mode = ModeCurtailment
	case restoring:
		mode = ModeRestoring
	}
	if mode != st.Mode {
		out.addEvent(Event{Kind: EventModeChanged, From: st.Mode, To: mode, Index: -1})
		st.Mode = mode
	}
	out.Mode = mode
}
