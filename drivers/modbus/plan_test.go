package modbus

import (
	"math/rand/v2"
	"testing"

	"github.com/siteagent/siteagent/agent/point"
)

// pt is a point for the planner: table, address and type.
func pt(tbl table, addr uint16, typ Type) plannedPoint {
	return plannedPoint{table: tbl, field: field{id: point.ID(addr), addr: addr, typ: typ}}
}

type span struct {
	table        table
	start, count int
	points       int
}

func spans(reqs []request) []span {
	var out []span
	for _, r := range reqs {
		out = append(out, span{r.table, int(r.start), r.count, len(r.fields)})
	}
	return out
}

func TestPlan(t *testing.T) {
	h, in, c, d := holdingTable, inputTable, coilTable, discreteTable
	cases := []struct {
		name       string
		pts        []plannedPoint
		regs, bits int
		want       []span
	}{
		{"adjacent ranges merge", []plannedPoint{pt(h, 3, Uint16), pt(h, 0, Uint16), pt(h, 1, Float32)}, 125, 2000,
			[]span{{h, 0, 4, 3}}},
		{"overlapping ranges merge", []plannedPoint{pt(h, 10, Float32), pt(h, 11, Uint16)}, 125, 2000,
			[]span{{h, 10, 2, 2}}},
		{"a gap splits", []plannedPoint{pt(h, 0, Uint16), pt(h, 2, Uint16)}, 125, 2000,
			[]span{{h, 0, 1, 1}, {h, 2, 1, 1}}},
		{"tables never share a read", []plannedPoint{pt(in, 0, Uint16), pt(h, 0, Uint16), pt(c, 0, Bool), pt(d, 1, Bool)}, 125, 2000,
			[]span{{in, 0, 1, 1}, {h, 0, 1, 1}, {c, 0, 1, 1}, {d, 1, 1, 1}}},
		{"max_registers splits without straddling", []plannedPoint{pt(h, 0, Float32), pt(h, 2, Float32), pt(h, 4, Float32)}, 3, 2000,
			[]span{{h, 0, 2, 1}, {h, 2, 2, 1}, {h, 4, 2, 1}}},
		{"max_registers exactly filled", []plannedPoint{pt(h, 0, Float64), pt(h, 4, Float64), pt(h, 8, Uint16)}, 8, 2000,
			[]span{{h, 0, 8, 2}, {h, 8, 1, 1}}},
		{"overlap past the limit starts a new read", []plannedPoint{pt(h, 0, Uint16), pt(h, 1, Uint16), pt(h, 1, Float64)}, 2, 2000,
			[]span{{h, 0, 2, 2}, {h, 1, 4, 1}}},
		{"max_bits", []plannedPoint{pt(c, 0, Bool), pt(c, 1, Bool), pt(c, 2, Bool)}, 125, 2,
			[]span{{c, 0, 2, 2}, {c, 2, 1, 1}}},
		{"the last address", []plannedPoint{pt(in, 65534, Uint16), pt(in, 65535, Uint16)}, 125, 2000,
			[]span{{in, 65534, 2, 2}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := spans(plan(tc.pts, tc.regs, tc.bits))
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestPlanDefaultLimits(t *testing.T) {
	var regs, bits []plannedPoint
	for a := range uint16(126) {
		regs = append(regs, pt(holdingTable, a, Uint16))
	}
	for a := range uint16(2001) {
		bits = append(bits, pt(discreteTable, a, Bool))
	}
	if got := spans(plan(regs[:125], 125, 2000)); len(got) != 1 || got[0].count != 125 {
		t.Errorf("125 registers: %v, want one read of 125", got)
	}
	if got := spans(plan(regs, 125, 2000)); len(got) != 2 || got[0].count != 125 || got[1] != (span{holdingTable, 125, 1, 1}) {
		t.Errorf("126 registers: %v, want 125 + 1", got)
	}
	if got := spans(plan(bits, 125, 2000)); len(got) != 2 || got[0].count != 2000 || got[1].count != 1 {
		t.Errorf("2001 bits: %v, want 2000 + 1", got)
	}
}

// TestPlanProperties plans random point sets and checks what every plan
// must hold: limits, no straddling, every point exactly once at the right
// offset, and no two reads that could have been one.
func TestPlanProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	types := []Type{Uint16, Int32, Float32, Float64, Int16}
	for round := range 300 {
		maxRegs, maxBits := 1+rng.IntN(20), 1+rng.IntN(20)
		var pts []plannedPoint
		for i := range 1 + rng.IntN(40) {
			tbl := table(1 + rng.IntN(4))
			typ := Bool
			if !tbl.bits() {
				typ = types[rng.IntN(len(types))]
				if typ.Words() > maxRegs {
					typ = Uint16
				}
			}
			p := pt(tbl, uint16(rng.IntN(60)), typ)
			p.field.id = point.ID(i)
			pts = append(pts, p)
		}
		reqs := plan(pts, maxRegs, maxBits)
		seen := map[point.ID]int{}
		for i, r := range reqs {
			limit := maxRegs
			if r.table.bits() {
				limit = maxBits
			}
			if r.count > limit || r.count < 1 {
				t.Fatalf("round %d: %s reads %d, limit %d", round, &r, r.count, limit)
			}
			for _, f := range r.fields {
				seen[f.id]++
				if f.off < 0 || f.off+f.size() > r.count || int(r.start)+f.off != int(f.addr) {
					t.Fatalf("round %d: point at %d (size %d, off %d) is not inside %s", round, f.addr, f.size(), f.off, &r)
				}
				if r.batch[0].ID != r.fields[0].id {
					t.Fatalf("round %d: batch ids not set", round)
				}
			}
			if i > 0 && reqs[i-1].table == r.table {
				prev := reqs[i-1]
				end := int(prev.start) + prev.count
				if int(r.start) <= end && int(r.start)+r.count-int(prev.start) <= limit {
					t.Fatalf("round %d: %s and %s could be one read", round, &prev, &r)
				}
			}
		}
		for _, p := range pts {
			if seen[p.field.id] != 1 {
				t.Fatalf("round %d: point %d planned %d times", round, p.field.id, seen[p.field.id])
			}
		}
	}
}

func TestDescribePlan(t *testing.T) {
	reqs := plan([]plannedPoint{
		pt(inputTable, 0, Int32), pt(inputTable, 2, Float32), pt(inputTable, 4, Int32),
		pt(discreteTable, 0, Bool), pt(holdingTable, 10, Uint32),
	}, 125, 2000)
	want := "pcc: 3 requests: input 0..5 (3 points), discrete 0..0 (1 point), holding 10..11 (1 point)"
	if got := describePlan("pcc", reqs); got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
}
