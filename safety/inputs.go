// Package safety wraps the controller on both sides. Before a step it
// turns stale, bad or implausible points into their worst case, so a silent
// meter can never look like headroom; after a step it clamps the plan to
// the hard limits before anything is dispatched.
package safety

import (
	"math"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/control"
)

// Source is one point that feeds the controller.
type Source struct {
	ID   point.ID // point.None when not configured
	Name string
	Meta point.Meta // StaleAfter must be resolved (non-zero)
}

// Configured reports whether the source exists.
func (s Source) Configured() bool { return s.ID != point.None }

// InputMap says which points feed which controller input.
type InputMap struct {
	Frequency  Source
	Breaker    Source
	Import     Source
	SiteLoad   Source
	Generation []Source
	Battery    []Source
	Curtail    Source   // optional
	Groups     []Source // per group meter; optional each
}

// Verdict is why a point was not usable this cycle.
type Verdict uint8

const (
	Usable Verdict = iota
	NotGood
	Stale
	Implausible
)

var verdictNames = [...]string{"usable", "not good", "stale", "implausible"}

func (v Verdict) String() string { return verdictNames[v] }

// Finding is the state of one watched point.
type Finding struct {
	Source  Source
	Verdict Verdict
	Point   point.Point
}

// Checker fills controller inputs from a snapshot. It keeps the verdict
// of every watched point so that the agent can log changes, not every cycle.
type Checker struct {
	m        InputMap
	watched  []Source
	verdicts []Verdict
	changed  []bool
	any      bool
}

// NewChecker prepares a checker for the map.
func NewChecker(m InputMap) *Checker {
	c := &Checker{m: m}
	add := func(s Source) {
		if s.Configured() {
			c.watched = append(c.watched, s)
		}
	}
	add(m.Frequency)
	add(m.Breaker)
	add(m.Import)
	add(m.SiteLoad)
	for _, s := range m.Generation {
		add(s)
	}
	for _, s := range m.Battery {
		add(s)
	}
	add(m.Curtail)
	for _, s := range m.Groups {
		add(s)
	}
	c.verdicts = make([]Verdict, len(c.watched))
	c.changed = make([]bool, len(c.watched))
	return c
}

// judge decides whether p may be trusted at now.
func judge(s Source, p point.Point, now time.Time) Verdict {
	switch {
	case p.Quality != point.Good:
		return NotGood
	case p.Age(now) > s.Meta.StaleAfter:
		return Stale
	case math.IsNaN(p.Value) || math.IsInf(p.Value, 0) || !s.Meta.Plausible(p.Value):
		return Implausible
	}
	return Usable
}

// value returns the point's value and whether it can be trusted.
func value(s Source, snap []point.Point, now time.Time) (float64, bool) {
	if !s.Configured() {
		return 0, false
	}
	p := snap[s.ID]
	return p.Value, judge(s, p, now) == Usable
}

// Fill writes the controller's inputs for this cycle. It allocates nothing.
func (c *Checker) Fill(snap []point.Point, now time.Time, in *control.Inputs) {
	for i, s := range c.watched {
		v := judge(s, snap[s.ID], now)
		if v != c.verdicts[i] {
			c.changed[i], c.any = true, true
			c.verdicts[i] = v
		}
	}

	m := &c.m
	in.FrequencyHz, in.FrequencyOK = value(m.Frequency, snap, now)
	if !in.FrequencyOK {
		// Worst case: below every stage (the controller reads NaN so).
		in.FrequencyHz = math.NaN()
	}

	closed, ok := value(m.Breaker, snap, now)
	in.BreakerOK = ok
	// Worst case for an unknown breaker: open, the site is on its own.
	in.Islanded = !ok || closed == 0

	in.ImportKW, in.ImportOK = value(m.Import, snap, now)
	in.SiteLoadKW, in.SiteLoadOK = value(m.SiteLoad, snap, now)

	// Island capacity: an unknown source counts as zero.
	in.IslandCapacityKW, in.IslandCapacityOK = 0, true
	for _, list := range [2][]Source{m.Generation, m.Battery} {
		for _, s := range list {
			v, ok := value(s, snap, now)
			if !ok {
				in.IslandCapacityOK = false
				continue
			}
			in.IslandCapacityKW += math.Max(0, v)
		}
	}

	if m.Curtail.Configured() {
		in.CurtailTargetKW, in.CurtailOK = value(m.Curtail, snap, now)
	} else {
		in.CurtailTargetKW, in.CurtailOK = 0, true
	}

	for g := range in.Groups {
		if g < len(m.Groups) && m.Groups[g].Configured() {
			in.Groups[g].MeasuredKW, in.Groups[g].MeasuredOK = value(m.Groups[g], snap, now)
		} else {
			in.Groups[g] = control.GroupInput{}
		}
	}
}

// Changed reports whether any watched point's verdict changed since the
// last call to Changes, so the agent logs transitions, not every cycle.
func (c *Checker) Changed() bool { return c.any }

// Changes lists the points whose verdict changed since the last call, with
// their new verdict (Usable when a point came back), and resets the list.
func (c *Checker) Changes(snap []point.Point) []Finding {
	var out []Finding
	for i, s := range c.watched {
		if c.changed[i] {
			out = append(out, Finding{Source: s, Verdict: c.verdicts[i], Point: snap[s.ID]})
			c.changed[i] = false
		}
	}
	c.any = false
	return out
}

// Findings lists the watched points that are not usable, with why.
func (c *Checker) Findings(snap []point.Point) []Finding {
	var out []Finding
	for i, s := range c.watched {
		if c.verdicts[i] != Usable {
			out = append(out, Finding{Source: s, Verdict: c.verdicts[i], Point: snap[s.ID]})
		}
	}
	return out
}
