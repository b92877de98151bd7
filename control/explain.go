package control

import (
	"fmt"
	"math"
	"strings"
)

// This file turns plans into words for engineers. It allocates freely: it
// runs on the publishing side, never inside Step.

// Why explains one group's decision in a sentence.
func (c *Controller) Why(p *Plan, g int) string {
	gp := &p.Groups[g]
	grp := &c.lim.Groups[g]
	switch gp.Reason {
	case ReasonFree:
		return "free: no constraint holds it back"
	case ReasonBudget:
		return fmt.Sprintf("held to %s: %s budget %.0f kW, planned %.0f kW", c.position(p, g), p.Binding, p.BudgetKW, p.PlannedKW)
	case ReasonStage:
		s := &c.lim.Stages[gp.Stage]
		return fmt.Sprintf("capped to %s by stage %s (below %.2f Hz)", c.position(p, g), s.Name, s.BelowHz)
	case ReasonFloor:
		return fmt.Sprintf("cut to its floor (%.0f kW): it has nothing more to give", grp.FloorKW)
	case ReasonHoldoff:
		return fmt.Sprintf("waiting out its %s restore hold-off until %s", grp.RestoreHoldoff, gp.Until.Format("15:04:05.000"))
	case ReasonRamping:
		if grp.Kind == Shed {
			return fmt.Sprintf("restoring at %g units/s, now %s", grp.WakeUnitsPerS, c.position(p, g))
		}
		return fmt.Sprintf("restoring at %g kW/s, now %s", grp.RampUpKWPerS, c.position(p, g))
	case ReasonHeld:
		return fmt.Sprintf("held at %s: central ops asked to hold restores", c.position(p, g))
	case ReasonDroop:
		d := &grp.Droop
		return fmt.Sprintf("capped to %s by its frequency response (%g %% droop below %.3f Hz)", c.position(p, g), d.Pct, d.NominalHz-d.DeadbandHz)
	case ReasonFrozen:
		return fmt.Sprintf("held at %s: restores are frozen while inputs are unknown (%s)", c.position(p, g), strings.Join(p.Unknown.Names(), ", "))
	}
	return gp.Reason.String()
}

func (c *Controller) position(p *Plan, g int) string {
	gp := &p.Groups[g]
	if gp.Kind == Shed {
		return fmt.Sprintf("%d of %d units (%.0f kW)", gp.UnitsOn, len(c.lim.Groups[g].UnitKW), gp.CapKW)
	}
	return fmt.Sprintf("%.0f kW", gp.CapKW)
}

// Summary explains the plan as a whole in a sentence.
func (c *Controller) Summary(p *Plan) string {
	var b strings.Builder
	fmt.Fprintf(&b, "mode %s", p.Mode)
	if p.Binding != ConstraintNone && !math.IsInf(p.HeadroomKW, 0) {
		fmt.Fprintf(&b, "; %s binds: budget %.0f kW, measured %.0f kW, planned %.0f kW, headroom %.0f kW",
			p.Binding, p.BudgetKW, p.MeasuredKW, p.PlannedKW, p.HeadroomKW)
	}
	if p.Unknown != 0 {
		fmt.Fprintf(&b, "; unknown inputs: %s (treated as their worst case)", strings.Join(p.Unknown.Names(), ", "))
	}
	if p.Infeasible {
		b.WriteString("; the budget cannot be met even with every group at its floor")
	}
	return b.String()
}

// Describe explains one event in a sentence.
func (c *Controller) Describe(e Event) string {
	switch e.Kind {
	case EventModeChanged:
		return fmt.Sprintf("mode %s -> %s", e.From, e.To)
	case EventStageOperated:
		s := &c.lim.Stages[e.Index]
		return fmt.Sprintf("stage %s operated: frequency below %.2f Hz for %s", s.Name, s.BelowHz, s.Delay)
	case EventStageCleared:
		s := &c.lim.Stages[e.Index]
		return fmt.Sprintf("stage %s cleared: frequency above %.2f Hz for %s", s.Name, s.ClearAboveHz, s.ClearAfter)
	case EventCutBegan:
		return fmt.Sprintf("group %s cut by %.0f kW", c.lim.Groups[e.Index].Name, e.KW)
	case EventRestoreBegan:
		return fmt.Sprintf("group %s restore began", c.lim.Groups[e.Index].Name)
	case EventRestored:
		return fmt.Sprintf("group %s fully restored", c.lim.Groups[e.Index].Name)
	case EventInputLost:
		return fmt.Sprintf("inputs lost: %s; entering fail-safe", strings.Join(e.Input.Names(), ", "))
	case EventInputRestored:
		return fmt.Sprintf("inputs back: %s", strings.Join(e.Input.Names(), ", "))
	case EventInfeasible:
		return fmt.Sprintf("budget cannot be met: %.0f kW short with every group at its floor", e.KW)
	}
	return e.Kind.String()
}
