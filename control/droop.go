package control

import (
	"errors"
	"fmt"
	"math"
)

// Droop is a throttle group's optional frequency response: its cap follows
// grid frequency proportionally, the way a generator's governor does, so a
// GPU fleet gives back power in proportion to how far frequency falls
// instead of in the whole steps of an under-frequency stage.
//
// Below the deadband the cap falls from the ceiling by Pct percent of
// nominal frequency per 100 % of the ceiling: with NominalHz 60, Pct 1 and
// a ceiling of 6,000 kW, every 0.06 Hz below the deadband edge takes 100
// kW off, never below MinKW. The response is measured from the deadband
// edge, so it starts without a step. Above nominal a cap cannot make a
// load draw more than it wants, so over-frequency has no effect.
//
// The zero value is off.
type Droop struct {
	NominalHz  float64
	DeadbandHz float64
	// Pct: frequency change, in percent of NominalHz, that moves the cap
	// by the whole ceiling.
	Pct float64
	// MinKW: the response never cuts below this (at least the group's
	// floor).
	MinKW float64
}

// On reports whether the group has a droop response.
func (d *Droop) On() bool { return d.Pct > 0 }

// CapKW is the most a group with this droop may draw at frequency f: the
// ceiling inside the deadband, MinKW at worst. An unknown frequency is
// treated as the worst case, as everywhere in the controller: MinKW.
func (d *Droop) CapKW(ceiling, floor, f float64, ok bool) float64 {
	if !d.On() {
		return ceiling
	}
	lo := math.Min(math.Max(d.MinKW, floor), ceiling)
	if !ok || math.IsNaN(f) {
		return lo
	}
	below := d.NominalHz - d.DeadbandHz - f
	if below <= 0 {
		return ceiling
	}
	return math.Max(lo, ceiling-ceiling*below/(d.NominalHz*d.Pct/100))
}

func (d *Droop) check(g *Group) error {
	if !d.On() {
		if d.Pct < 0 {
			return fmt.Errorf("group %q: droop percentage must not be negative", g.Name)
		}
		return nil
	}
	var errs []error
	if g.Kind != Throttle {
		errs = append(errs, fmt.Errorf("group %q: droop needs a throttle group (a continuous cap)", g.Name))
	}
	if !(d.NominalHz > 0) || math.IsInf(d.NominalHz, 0) {
		errs = append(errs, fmt.Errorf("group %q: droop nominal frequency must be positive", g.Name))
	}
	if d.DeadbandHz < 0 || math.IsNaN(d.DeadbandHz) || d.DeadbandHz >= d.NominalHz {
		errs = append(errs, fmt.Errorf("group %q: droop deadband must lie in 0..nominal", g.Name))
	}
	if math.IsInf(d.Pct, 0) {
		errs = append(errs, errors.New("droop percentage must be finite"))
	}
	if d.MinKW < 0 || d.MinKW > g.CeilingKW || math.IsNaN(d.MinKW) {
		errs = append(errs, fmt.Errorf("group %q: droop minimum %g kW must lie in 0..ceiling %g kW", g.Name, d.MinKW, g.CeilingKW))
	}
	return errors.Join(errs...)
}

// applyDroop lowers group g's MaxKW to its droop cap when that is the
// tighter limit. It is Step's only hook for droop: the cut then happens
// like a stage's, at once, and the restore follows frequency back up at
// the group's ramp rate.
func (c *Controller) applyDroop(in *Inputs, g int, gp *GroupPlan) {
	d := &c.lim.Groups[g].Droop
	if !d.On() {
		return
	}
	cap := d.CapKW(c.ceiling(g), c.floor(g), in.FrequencyHz, in.FrequencyOK)
	if cap < gp.MaxKW-eps {
		gp.MaxKW, gp.Stage, gp.Droop = cap, -1, true
	}
}
