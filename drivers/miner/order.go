package miner

import (
	"slices"
)

// The shed order is deterministic: the same inventory, states and
// temperatures always pick the same miners. Ties fall to the inventory:
// the last listed miner is shed first and woken last.

// shedFirst reports whether a should be shed before b under order,
// ignoring health.
func shedFirst(order string, racks map[string]int, a, b *unit) bool {
	switch order {
	case OrderLeastEfficient:
		// Known efficiencies before unknown ones, the worst first.
		ka, kb := a.m.EfficiencyJTH > 0, b.m.EfficiencyJTH > 0
		if ka != kb {
			return ka
		}
		if a.m.EfficiencyJTH != b.m.EfficiencyJTH {
			return a.m.EfficiencyJTH > b.m.EfficiencyJTH
		}
	case OrderHottest:
		ta, tb := a.tele.MaxTempC, b.tele.MaxTempC
		if (ta > 0) != (tb > 0) {
			return ta > 0
		}
		if ta != tb {
			return ta > tb
		}
	case OrderRack:
		// One rack at a time: the last rack of the inventory first.
		if ra, rb := racks[a.m.Rack], racks[b.m.Rack]; ra != rb {
			return ra > rb
		}
	}
	return a.idx > b.idx
}

// sortForShed orders candidates so that the first is shed first: miners
// that answer before those that do not (a command to an unreachable miner
// cuts nothing), then the configured order.
func sortForShed(order string, racks map[string]int, us []*unit) {
	slices.SortFunc(us, func(a, b *unit) int {
		if ha, hb := a.healthy(), b.healthy(); ha != hb {
			if ha {
				return -1
			}
			return 1
		}
		if shedFirst(order, racks, a, b) {
			return -1
		}
		if shedFirst(order, racks, b, a) {
			return 1
		}
		return 0
	})
}

// sortForWake orders candidates so that the first is woken first: the
// reverse of the shed order, healthy miners first.
func sortForWake(order string, racks map[string]int, us []*unit) {
	slices.SortFunc(us, func(a, b *unit) int {
		if ha, hb := a.healthy(), b.healthy(); ha != hb {
			if ha {
				return -1
			}
			return 1
		}
		if shedFirst(order, racks, b, a) {
			return -1
		}
		if shedFirst(order, racks, a, b) {
			return 1
		}
		return 0
	})
}

// rackRanks numbers racks by first appearance in the inventory.
func rackRanks(ms []Miner) map[string]int {
	r := map[string]int{}
	for _, m := range ms {
		if _, ok := r[m.Rack]; !ok {
			r[m.Rack] = len(r)
		}
	}
	return r
}

// UnitOrder returns the inventory indices in the controller's unit order:
// unit 0 is woken first and the last unit is shed first, as far as a
// static order can say (hottest-first depends on live temperatures and
// uses the inventory order here).
func UnitOrder(order string, ms []Miner) []int {
	us := make([]*unit, len(ms))
	for i := range ms {
		us[i] = &unit{m: ms[i], idx: i}
	}
	sortForWake(order, rackRanks(ms), us)
	out := make([]int, len(us))
	for i, u := range us {
		out[i] = u.idx
	}
	return out
}
