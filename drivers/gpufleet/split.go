package gpufleet

import "math"

// Share is one GPU in a split: its floor and ceiling (the board's limit
// constraints) and its demand (what it would draw uncapped), in watts.
type Share struct {
	FloorW, CeilW, DemandW float64
}

// Split shares availW between the GPUs and returns each one's cap, in
// whole milliwatts, deterministically (the same inputs in the same order
// give the same caps), never below a floor or above a ceiling, and never
// more in total than availW (give or take the watt of float noise at the
// ceilings) unless the floors alone need more (then every GPU is at its
// floor: infeasible, reported by the caller).
//
//   - even: every GPU gets the same fraction of its range between floor and
//     ceiling.
//   - demand: while the GPUs' demands fit, each gets its demand and the rest
//     is spread in proportion to each one's room to its ceiling; when they
//     do not fit, each gets its floor plus a share of what is left in
//     proportion to its demand above the floor.
func Split(shares []Share, availW float64, policy string, out []float64) []float64 {
	out = out[:0]
	var floors, ceils, demands float64
	for _, s := range shares {
		floors += s.FloorW
		ceils += s.CeilW
		demands += clamp(s.DemandW, s.FloorW, s.CeilW)
	}
	put := func(v float64, s Share) {
		out = append(out, math.Floor(clamp(v, s.FloorW, s.CeilW)*1000)/1000)
	}
	switch {
	// Within a watt of every ceiling is every ceiling: the controller's
	// ramps land on float noise (3.1999999 kW), and a GPU left at
	// 399.999 W would never be sent its last milliwatt.
	case availW >= ceils-1:
		for _, s := range shares {
			put(s.CeilW, s)
		}
	case availW <= floors || math.IsNaN(availW):
		for _, s := range shares {
			put(s.FloorW, s)
		}
	case policy == SplitEven:
		f := (availW - floors) / (ceils - floors)
		for _, s := range shares {
			put(s.FloorW+f*(s.CeilW-s.FloorW), s)
		}
	case demands <= availW:
		room := ceils - demands
		f := 0.0
		if room > 0 {
			f = (availW - demands) / room
		}
		for _, s := range shares {
			d := clamp(s.DemandW, s.FloorW, s.CeilW)
			put(d+f*(s.CeilW-d), s)
		}
	default:
		above := demands - floors
		f := 0.0
		if above > 0 {
			f = (availW - floors) / above
		}
		for _, s := range shares {
			d := clamp(s.DemandW, s.FloorW, s.CeilW)
			put(s.FloorW+f*(d-s.FloorW), s)
		}
	}
	return out
}

func clamp(v, lo, hi float64) float64 {
	if math.IsNaN(v) {
		return hi
	}
	return math.Max(lo, math.Min(hi, v))
}
