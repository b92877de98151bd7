package safety

import (
	"math"

	"github.com/siteagent/siteagent/control"
)

// Clamp holds every plan inside the hard limits from the site file before
// it is dispatched. The controller already respects them; this check is
// independent of its arithmetic, so a bug there can never command a group
// beyond its ceiling, below its floor, or with a NaN.
type Clamp struct {
	groups []control.Group
	// floorUnits: the fewest units of each shed group that meet its floor.
	floorUnits []int
	// Clamped counts corrections since start; any is a bug worth a report.
	Clamped uint64
}

// NewClamp builds the clamp from the controller's limits.
func NewClamp(lim *control.Limits) *Clamp {
	c := &Clamp{groups: lim.Groups, floorUnits: make([]int, len(lim.Groups))}
	for g, grp := range lim.Groups {
		sum := 0.0
		for sum < grp.FloorKW-1e-6 && c.floorUnits[g] < len(grp.UnitKW) {
			sum += grp.UnitKW[c.floorUnits[g]]
			c.floorUnits[g]++
		}
	}
	return c
}

// Apply corrects p in place and returns how many groups it had to correct.
func (c *Clamp) Apply(p *control.Plan) int {
	n := 0
	for g := range p.Groups {
		gp := &p.Groups[g]
		grp := &c.groups[g]
		switch grp.Kind {
		case control.Shed:
			if u := min(max(gp.UnitsOn, c.floorUnits[g]), len(grp.UnitKW)); u != gp.UnitsOn {
				gp.UnitsOn = u
				n++
			}
		case control.Throttle:
			cap := gp.CapKW
			switch {
			case math.IsNaN(cap):
				// No number is no instruction: fall to the floor, the safe side.
				cap = grp.FloorKW
			case cap > grp.CeilingKW:
				cap = grp.CeilingKW
			case cap < grp.FloorKW:
				cap = grp.FloorKW
			}
			if cap != gp.CapKW {
				gp.CapKW = cap
				n++
			}
		}
	}
	c.Clamped += uint64(n)
	return n
}
