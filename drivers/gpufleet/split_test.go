package gpufleet

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

func TestSplitCases(t *testing.T) {
	shares := []Share{
		{FloorW: 100, CeilW: 400, DemandW: 400},
		{FloorW: 100, CeilW: 400, DemandW: 200},
		{FloorW: 200, CeilW: 700, DemandW: 700},
	}
	cases := []struct {
		policy string
		avail  float64
		want   []float64
	}{
		{SplitEven, 2000, []float64{400, 400, 700}},      // above every ceiling
		{SplitEven, 100, []float64{100, 100, 200}},       // below the floors: floors
		{SplitEven, 400 + 550, []float64{250, 250, 450}}, // half of each range
		{SplitDemand, 1300, []float64{400, 200, 700}},    // demands fit exactly
		// Demands (1300) fit with 200 W to spare: spread by room to the
		// ceiling (0, 200, 0): all of it to the second GPU.
		{SplitDemand, 1500, []float64{400, 400, 700}},
		// Demands (1300 W) do not fit in 850 W: each GPU gets its floor
		// (400 W in all) plus the 450 W left in proportion to its demand
		// above the floor (300, 100 and 500 of 900): half of each.
		{SplitDemand, 850, []float64{250, 150, 450}},
	}
	// A ramp that lands a hair under the ceilings gives the ceilings.
	if got := Split(shares, 1500-1e-9, SplitEven, nil); !reflect.DeepEqual(got, []float64{400, 400, 700}) {
		t.Errorf("float noise under the ceilings: %v", got)
	}
	for _, c := range cases {
		got := Split(shares, c.avail, c.policy, nil)
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s %.0f W: got %v, want %v", c.policy, c.avail, got, c.want)
		}
	}
}

// Properties over random GPU sets: every cap within its floor and ceiling,
// the total within the available power whenever the floors fit, more
// power never lowers a cap, and the same inputs give the same caps.
func TestSplitProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	for trial := 0; trial < 3000; trial++ {
		n := 1 + r.IntN(40)
		shares := make([]Share, n)
		var floors, ceils float64
		for i := range shares {
			lo := 50 + r.Float64()*200
			hi := lo + r.Float64()*600
			shares[i] = Share{FloorW: math.Round(lo), CeilW: math.Round(hi), DemandW: r.Float64() * 900}
			floors += shares[i].FloorW
			ceils += shares[i].CeilW
		}
		policy := []string{SplitDemand, SplitEven}[trial%2]
		avail := r.Float64() * ceils * 1.2
		caps := Split(shares, avail, policy, nil)
		var sum float64
		for i, c := range caps {
			if c < shares[i].FloorW-1e-9 || c > shares[i].CeilW+1e-9 {
				t.Fatalf("trial %d: cap %.3f outside [%.0f, %.0f]", trial, c, shares[i].FloorW, shares[i].CeilW)
			}
			sum += c
		}
		if avail >= floors && sum > avail+1+1e-6 {
			t.Fatalf("trial %d (%s): caps sum to %.3f W, more than the %.3f W available", trial, policy, sum, avail)
		}
		more := Split(shares, avail+r.Float64()*500, policy, nil)
		for i := range caps {
			if more[i] < caps[i]-1e-3 {
				t.Fatalf("trial %d (%s): more power lowered GPU %d from %.3f to %.3f", trial, policy, i, caps[i], more[i])
			}
		}
		if again := Split(shares, avail, policy, nil); !reflect.DeepEqual(again, caps) {
			t.Fatalf("trial %d: not deterministic", trial)
		}
	}
}
