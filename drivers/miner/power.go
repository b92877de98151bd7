package miner

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/actuator"
)

// Power is a group's power and how it was arrived at: measured by PSUs
// where the firmware reports a measurement, the firmware's own estimate
// where that is all it reports, and estimated from each miner's rating and
// state where it reports nothing usable (no power reading, no fresh poll,
// or a command since the last poll).
type Power struct {
	TotalW float64 `json:"total_w"`
	// MeasuredW over Measured miners: PSU readings.
	MeasuredW float64 `json:"measured_w"`
	Measured  int     `json:"measured"`
	// FirmwareW over Firmware miners: estimates the firmware reports.
	FirmwareW float64 `json:"firmware_estimated_w"`
	Firmware  int     `json:"firmware_estimated"`
	// RatedW over Rated miners: our estimate from rating and state.
	RatedW float64 `json:"rated_estimated_w"`
	Rated  int     `json:"rated_estimated"`
}

func (p Power) describe() string {
	s := fmt.Sprintf("power %.0f kW", p.TotalW/1000)
	var parts []string
	if p.Measured > 0 {
		parts = append(parts, fmt.Sprintf("%.0f kW measured on %d miners", p.MeasuredW/1000, p.Measured))
	}
	if p.Firmware > 0 {
		parts = append(parts, fmt.Sprintf("%.0f kW estimated by the firmware of %d", p.FirmwareW/1000, p.Firmware))
	}
	if p.Rated > 0 {
		parts = append(parts, fmt.Sprintf("%.0f kW estimated from ratings for %d", p.RatedW/1000, p.Rated))
	}
	if len(parts) > 0 {
		s += " ("
		for i, x := range parts {
			if i > 0 {
				s += ", "
			}
			s += x
		}
		s += ")"
	}
	return s
}

// unitPower is one miner's contribution, and whether it was measured,
// reported or estimated.
func (f *Fleet) unitPower(u *unit, now time.Time) (w float64, how int) {
	t := &u.tele
	fresh := !t.At.IsZero() && now.Sub(t.At) < 3*f.cfg.PollPeriod && !t.At.Before(u.ackAt)
	if fresh && t.PowerKnown && u.state != Unreachable {
		if t.PowerEstimated {
			return t.PowerW, 1
		}
		return t.PowerW, 0
	}
	if !u.running() {
		return f.cfg.SleepW(u.m.Family), 2
	}
	w = u.m.RatedW
	if f.kind == actuator.Throttle && u.setW > 0 && u.setW < w {
		w = u.setW
	}
	return w, 2
}

// powerLocked sums the group. Call with f.mu held.
func (f *Fleet) powerLocked() Power {
	now := f.now()
	var p Power
	for i := range f.units {
		w, how := f.unitPower(&f.units[i], now)
		p.TotalW += w
		switch how {
		case 0:
			p.MeasuredW += w
			p.Measured++
		case 1:
			p.FirmwareW += w
			p.Firmware++
		default:
			p.RatedW += w
			p.Rated++
		}
	}
	return p
}

// Power returns the group's power now.
func (f *Fleet) Power() Power {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.powerLocked()
}

// The fleet's points, each "<source>.<name>".
var pointNames = []struct {
	name, unit string
}{
	{"power_kw", "kW"},
	{"power_measured_kw", "kW"},
	{"power_firmware_estimated_kw", "kW"},
	{"power_rated_estimated_kw", "kW"},
	{"miners_mining", ""},
	{"miners_waking", ""},
	{"miners_sleeping", ""},
	{"miners_unreachable", ""},
	{"miners_failed", ""},
	{"miners_unknown", ""},
}

// PointPeriod is how often the fleet writes its points.
const PointPeriod = 500 * time.Millisecond

// PointNames lists the fleet's point names (without the source prefix)
// and their units.
func PointNames() (names, units []string) {
	for _, p := range pointNames {
		names = append(names, p.name)
		units = append(units, p.unit)
	}
	return names, units
}

type pointIDs []point.ID

func registerPoints(s *point.Store, source string) pointIDs {
	ids := make(pointIDs, len(pointNames))
	for i, p := range pointNames {
		ids[i] = s.Register(source + "." + p.name)
	}
	return ids
}

func (f *Fleet) pointsLoop(ctx context.Context) {
	t := time.NewTicker(PointPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			select {
			case <-f.ready:
				f.writePoints()
			default: // nothing is known before the first sweep
			}
		}
	}
}

func (f *Fleet) writePoints() {
	if f.store == nil {
		return
	}
	f.mu.Lock()
	p := f.powerLocked()
	var counts [6]int
	for i := range f.units {
		counts[f.units[i].state]++
	}
	f.mu.Unlock()
	now := time.Now().UnixNano()
	vals := []float64{p.TotalW / 1000, p.MeasuredW / 1000, p.FirmwareW / 1000, p.RatedW / 1000,
		float64(counts[Mining]), float64(counts[Waking]), float64(counts[Sleeping]),
		float64(counts[Unreachable]), float64(counts[Failed]), float64(counts[Unknown])}
	batch := make([]point.Update, len(vals))
	for i, v := range vals {
		batch[i] = point.Update{ID: f.ids[i], Point: point.Point{Value: v, Quality: point.Good, Source: now, Recv: now}}
	}
	f.store.Write(batch)
}

// MinerStatus is one miner as the fleet sees it.
type MinerStatus struct {
	Host      string    `json:"host"`
	Family    Family    `json:"family"`
	Rack      string    `json:"rack,omitempty"`
	State     State     `json:"state"`
	Run       bool      `json:"run"`
	Verified  bool      `json:"verified"`
	PowerW    float64   `json:"power_w"`
	TempC     float64   `json:"temp_c,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	ErrorAt   time.Time `json:"error_at,omitzero"`
	Repaired  []string  `json:"repaired,omitempty"`
}

// Status is the fleet's report: counts by state, the group's power, and
// the miners that need attention.
type Status struct {
	Group    string         `json:"group"`
	Counts   map[string]int `json:"counts"`
	Power    Power          `json:"power"`
	WakeQ    int            `json:"queued_to_wake"`
	Stats    Stats          `json:"stats"`
	Problems []MinerStatus  `json:"problems"` // unreachable or failed, at most MaxProblems
}

// MaxProblems bounds Status.Problems.
const MaxProblems = 100

// Status reports the fleet now.
func (f *Fleet) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := Status{Group: f.name, Counts: map[string]int{}, Power: f.powerLocked(), WakeQ: f.wakeQ.len(), Stats: f.stats, Problems: []MinerStatus{}}
	for i := range f.units {
		u := &f.units[i]
		st.Counts[u.state.String()]++
		if (u.state == Unreachable || u.state == Failed) && len(st.Problems) < MaxProblems {
			st.Problems = append(st.Problems, f.minerStatus(u))
		}
	}
	return st
}

func (f *Fleet) minerStatus(u *unit) MinerStatus {
	w, _ := f.unitPower(u, f.now())
	return MinerStatus{Host: u.m.Host, Family: u.m.Family, Rack: u.m.Rack, State: u.state, Run: u.run, Verified: u.settled(),
		PowerW: w, TempC: u.tele.MaxTempC, LastError: u.lastErr, ErrorAt: u.errAt, Repaired: u.tele.Repaired}
}

// Miners reports every miner, in inventory order.
func (f *Fleet) Miners() []MinerStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]MinerStatus, len(f.units))
	for i := range f.units {
		out[i] = f.minerStatus(&f.units[i])
	}
	return out
}

// ByState counts miners per state.
func (f *Fleet) ByState() map[State]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[State]int{}
	for i := range f.units {
		out[f.units[i].state]++
	}
	return out
}

// Hosts lists the miners' addresses in state st, sorted.
func (f *Fleet) Hosts(st State) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for i := range f.units {
		if f.units[i].state == st {
			out = append(out, f.units[i].m.Host)
		}
	}
	sort.Strings(out)
	return out
}
