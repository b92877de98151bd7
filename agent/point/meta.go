package point

import (
	"time"

	"github.com/siteagent/siteagent/agent/config"
)

// Meta is the source-independent part of a point's configuration: every
// source's point table embeds it, so Modbus and OPC UA points are checked
// and triggered the same way.
type Meta struct {
	// Unit of the value after scaling, e.g. "kW", "Hz", "bool", "%".
	Unit string `toml:"unit"`
	// StaleAfter: a value older than this is treated as missing by safety.
	// Zero means three poll periods of its source.
	StaleAfter time.Duration `toml:"stale_after"`
	// Min and Max bound the plausible range; a value outside is treated as
	// missing by safety (a frequency of 0 Hz is a broken transducer, not a
	// blackout).
	Min *float64 `toml:"min"`
	Max *float64 `toml:"max"`
	// Fast path: wake the control cycle at once when the value crosses
	// below/above a threshold or changes at all.
	TriggerBelow    *float64 `toml:"trigger_below"`
	TriggerAbove    *float64 `toml:"trigger_above"`
	TriggerOnChange bool     `toml:"trigger_on_change"`
}

// Validate checks the meta fields of the point at path.
func (m *Meta) Validate(p *config.Problems, path string) {
	if m.StaleAfter < 0 {
		p.Addf(config.Join(path, "stale_after"), "must not be negative; write a duration such as \"500ms\"")
	}
	if m.Min != nil && m.Max != nil && *m.Min > *m.Max {
		p.Addf(config.Join(path, "min"), "min %g is above max %g; swap them", *m.Min, *m.Max)
	}
	n := 0
	if m.TriggerBelow != nil {
		n++
	}
	if m.TriggerAbove != nil {
		n++
	}
	if m.TriggerOnChange {
		n++
	}
	if n > 1 {
		p.Addf(path, "a point takes one trigger: keep only one of trigger_below, trigger_above, trigger_on_change")
	}
}

// Trigger returns the fast-path condition the meta asks for.
func (m *Meta) Trigger() Trigger {
	switch {
	case m.TriggerBelow != nil:
		return Trigger{Kind: Below, Threshold: *m.TriggerBelow}
	case m.TriggerAbove != nil:
		return Trigger{Kind: Above, Threshold: *m.TriggerAbove}
	case m.TriggerOnChange:
		return Trigger{Kind: OnChange}
	}
	return Trigger{}
}

// Plausible reports whether v lies within the configured range.
func (m *Meta) Plausible(v float64) bool {
	if m.Min != nil && v < *m.Min {
		return false
	}
	if m.Max != nil && v > *m.Max {
		return false
	}
	return true
}
