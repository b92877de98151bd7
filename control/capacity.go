package control

import "math"

// GroupHeadroom is how much more power one load group could take right
// now: what schedulers of AI work need to place jobs where power is.
type GroupHeadroom struct {
	// DrawKW is what the group draws now (its meter, or what the plan
	// counts for it when unmetered).
	DrawKW float64
	// RoomKW is how far the group is below the most it may have this
	// cycle: its ceiling or an operated stage's cap (its current cap while
	// restores are held).
	RoomKW float64
	// FreeKW is what it could take without anything else being cut:
	// its room, within the binding budget's headroom.
	FreeKW float64
	// AvailableKW is what it could take if the controller also shed every
	// group cut before it down to its floor: the power a protected group
	// (inference, training) can claim from miners.
	AvailableKW float64
}

// Headroom fills out (one entry per group, indexed like Limits.Groups)
// from a plan and the inputs Step made it from, and returns the site's
// headroom under the binding budget (+Inf when no budget is known). While
// an input is unknown (fail-safe) nothing is offered: every group gets 0.
// It allocates nothing.
func (c *Controller) Headroom(p *Plan, in *Inputs, out []GroupHeadroom) float64 {
	site := math.Inf(1)
	if p.Binding != ConstraintNone {
		site = p.HeadroomKW
	}
	blind := p.Unknown != 0
	for g := range c.lim.Groups {
		gp := &p.Groups[g]
		draw := gp.ClaimKW
		if g < len(in.Groups) && in.Groups[g].MeasuredOK {
			draw = math.Max(0, in.Groups[g].MeasuredKW)
		}
		most := gp.MaxKW
		if in.HoldRestores && gp.CapKW < most {
			most = gp.CapKW
		}
		out[g] = GroupHeadroom{DrawKW: draw, RoomKW: math.Max(0, most-draw)}
	}
	if blind {
		return site
	}
	// Walk from the first cut to the most protected, adding up what the
	// groups already passed could give.
	cuttable := 0.0
	for i := 0; i < len(c.order); {
		// Groups sharing a cut order do not give to each other.
		j := i
		for j < len(c.order) && c.lim.Groups[c.order[j]].CutOrder == c.lim.Groups[c.order[i]].CutOrder {
			j++
		}
		for _, g := range c.order[i:j] {
			h := &out[g]
			h.FreeKW = math.Max(0, math.Min(h.RoomKW, site))
			h.AvailableKW = math.Max(0, math.Min(h.RoomKW, site+cuttable))
		}
		for _, g := range c.order[i:j] {
			cuttable += math.Max(0, p.Groups[g].ClaimKW-c.floor(g))
		}
		i = j
	}
	return site
}
