package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/siteagent/siteagent/sim"
)

// The miners demo end to end: the real agent sheds 2,000 simulated LuxOS
// miners over their API when frequency drops below uf1, the site's meter
// sees their power fall, and the misbehaving miners are reported by
// address without holding up the rest.
func TestMinersDemoShedsOverTheAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 2,000 simulated miners for 12 s")
	}
	sc, _ := sim.ScenarioByName("underfrequency")
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const faulty = 10
	if err := runMinersDemo(ctx, sc, 12*time.Second, faulty, true, &out, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	var cut bool
	var before, after float64 // asic kW before the dip and at the end
	var summary struct {
		Counts          map[string]int `json:"counts"`
		CurtailCommands int            `json:"curtail_commands"`
		Power           struct {
			TotalW   float64 `json:"total_w"`
			Measured int     `json:"measured"`
		} `json:"power"`
		PlanBasis *struct {
			Measured *float64 `json:"measured_kw"`
			Rated    *float64 `json:"rated_estimated_kw"`
		} `json:"plan_power_basis"`
		Problems []struct {
			Host      string `json:"host"`
			State     string `json:"state"`
			LastError string `json:"last_error"`
		} `json:"problems"`
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		switch v["type"] {
		case "event":
			if s, _ := v["text"].(string); strings.Contains(s, "group asic cut") {
				cut = true
			}
		case "sample":
			kw, _ := v["asic_kw"].(float64)
			if ts, _ := v["t"].(float64); ts < 3.5 {
				before = kw
			}
			after = kw
		case "miners":
			json.Unmarshal([]byte(line), &summary)
		}
	}
	if !cut {
		t.Fatalf("no cut of group asic:\n%s", out.String())
	}
	if before < 6500 || after > 200 {
		t.Fatalf("the meter saw asic %v kW before and %v kW after the shed; want ~7000 and the sleep power of ~2,000 miners plus the misbehaving ones", before, after)
	}
	if summary.CurtailCommands < 1900 || summary.Counts["sleeping"] < 1900 {
		t.Fatalf("summary %+v", summary)
	}
	// The plan says how the group's power is known: the simulated LuxOS
	// PSUs measure it, and the misbehaving miners are estimated from
	// their ratings.
	if b := summary.PlanBasis; b == nil || b.Measured == nil || *b.Measured <= 0 || b.Rated == nil || *b.Rated <= 0 {
		t.Fatalf("the plan's power basis for asic: %+v", summary.PlanBasis)
	}
	if len(summary.Problems) == 0 {
		t.Fatal("the misbehaving miners were not reported")
	}
	for _, p := range summary.Problems {
		if !strings.Contains(p.LastError, p.Host) || (p.State != "failed" && p.State != "unreachable") {
			t.Errorf("problem %+v", p)
		}
	}
}
