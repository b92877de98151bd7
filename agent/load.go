package agent

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/control"
)

// Defaults the site file may leave out.
const (
	DefaultCyclePeriod   = 100 * time.Millisecond
	DefaultIntegralGain  = 0.2
	DefaultFeedbackDelay = 2 * time.Second
	// staleFactor: a point whose stale_after is unset goes stale after this
	// many poll periods of its source.
	staleFactor = 3
)

var siteIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// LoadFile reads and checks a site file. On any problem it returns a
// *config.Error listing every one of them, each with file:line.
func LoadFile(path string) (*SiteConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Load(path, data)
}

// Load checks a site file's contents; name is used in messages.
func Load(name string, data []byte) (*SiteConfig, error) {
	var cfg SiteConfig
	p := config.Decode(name, data, &cfg)
	if p.Syntax() {
		// Without a document tree nothing else can be checked.
		return nil, p.Err()
	}
	// Check the invariants even when some keys did not decode, so that
	// one run lists every mistake; a key already reported is not reported
	// again.
	cfg.dir = filepath.Dir(name)
	cfg.applyDefaults()
	cfg.validate(p)
	if err := p.Err(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func (c *SiteConfig) applyDefaults() {
	if c.Site.CyclePeriod == 0 {
		c.Site.CyclePeriod = DefaultCyclePeriod
	}
	if c.Limits.IntegralGain == nil {
		g := DefaultIntegralGain
		c.Limits.IntegralGain = &g
	}
	if c.Limits.RestoreMarginKW == 0 {
		// 2 % of the import limit: wide enough to swallow meter noise.
		c.Limits.RestoreMarginKW = math.Round(c.Limits.ImportLimitKW * 0.02)
	}
	for i := range c.Groups {
		g := &c.Groups[i]
		if g.CeilingKW == nil && g.Miners == nil { // a fleet's comes from its inventory
			v := float64(g.Units) * g.UnitKW
			g.CeilingKW = &v
		}
		if g.GPUNodes != nil {
			d := g.GPUNodes.WithDefaults()
			g.GPUNodes = &d
			if g.PowerKW == "" {
				g.PowerKW = g.Name + ".power_kw" // the fleet's own measure
			}
		}
		if g.Miners != nil {
			g.minerDefaults() // miners.go
		}
	}
	if c.MQTT != nil {
		d := c.MQTT.WithDefaults(c.Site.ID)
		c.MQTT = &d
	}
	for i := range c.Modbus {
		c.Modbus[i] = c.Modbus[i].WithDefaults()
	}
}

func (c *SiteConfig) validate(p *config.Problems) {
	if !siteIDPattern.MatchString(c.Site.ID) {
		p.Addf("site.id", "%q is not a usable site id: use letters, digits, '-' and '_' (it becomes part of MQTT topics)", c.Site.ID)
	}
	if c.Site.CyclePeriod < 10*time.Millisecond || c.Site.CyclePeriod > 10*time.Second {
		p.Addf("site.cycle_period", "%s is outside 10ms..10s; 100ms suits most sites", c.Site.CyclePeriod)
	}

	c.prepareMiners(p) // inventories give their groups units and ratings
	sources := c.validateSources(p)
	if c.MQTT != nil {
		c.MQTT.Validate(p, "mqtt")
	}
	if c.HTTP != nil && c.HTTP.Listen == "" {
		p.Addf("http.listen", "give an address such as \"127.0.0.1:9108\"")
	}

	pts := c.points()
	c.validateInputs(p, pts)
	c.validateLimits(p)
	groups := c.validateGroups(p, pts, sources)
	c.validateStages(p, groups)
	c.validateGPUFleets(p)
	c.validateOps(p)
}

// checkPoint reports a reference to a point that no source defines, or one
// whose unit is not what the controller needs.
func checkPoint(p *config.Problems, pts map[string]pointInfo, key, name, unit string) {
	info, ok := pts[name]
	if !ok {
		p.Addf(key, "no source defines point %q; %s", name, suggestPoint(pts, name))
		return
	}
	switch {
	case unit == "bool":
		if info.meta.Unit != "" && info.meta.Unit != "bool" {
			p.Addf(key, "point %q has unit %q but this input is a state (1 = closed); read it as a bool", name, info.meta.Unit)
		}
	case info.meta.Unit == "":
		p.Addf(key, "point %q states no unit; add unit = %q to its definition so that kW and W cannot be confused", name, unit)
	case !strings.EqualFold(info.meta.Unit, unit):
		p.Addf(key, "point %q is in %q but the controller needs %q: set its scale so the value is in %s and its unit to %q", name, info.meta.Unit, unit, unit, unit)
	}
}

func suggestPoint(pts map[string]pointInfo, name string) string {
	names := make([]string, 0, len(pts))
	for n := range pts {
		names = append(names, n)
	}
	if best := config.Closest(name, names, 3); best != "" {
		return fmt.Sprintf("did you mean %q?", best)
	}
	return "points are named \"<source>.<point>\", e.g. \"pcc.frequency_hz\""
}

func (c *SiteConfig) validateInputs(p *config.Problems, pts map[string]pointInfo) {
	in := &c.Site.Inputs
	const k = "site.inputs."
	checkPoint(p, pts, k+"frequency_hz", in.FrequencyHz, "Hz")
	checkPoint(p, pts, k+"breaker_closed", in.BreakerClosed, "bool")
	checkPoint(p, pts, k+"import_kw", in.ImportKW, "kW")
	if in.SiteLoadKW != "" {
		checkPoint(p, pts, k+"site_load_kw", in.SiteLoadKW, "kW")
	} else {
		p.Addf(k+"site_load_kw", "required: while islanded the import meter reads zero, so the controller holds the site's own load under island capacity; name the point that measures it")
	}
	for i, name := range in.GenerationAvailableKW {
		checkPoint(p, pts, config.Index(k+"generation_available_kw", i), name, "kW")
	}
	for i, name := range in.BatteryDischargeKW {
		checkPoint(p, pts, config.Index(k+"battery_discharge_kw", i), name, "kW")
	}
	if len(in.GenerationAvailableKW)+len(in.BatteryDischargeKW) == 0 {
		p.Addf(k+"generation_available_kw", "name at least one generation or battery point: without them island capacity is zero and an islanding sheds everything to its floor")
	}
	if in.CurtailTargetKW != "" {
		checkPoint(p, pts, k+"curtail_target_kw", in.CurtailTargetKW, "kW")
	}
	if info, ok := pts[in.FrequencyHz]; ok && (info.meta.Min == nil || info.meta.Max == nil) {
		p.Addf(k+"frequency_hz", "point %q needs a plausible range (min = 45, max = 65 on a 60 Hz grid) so that a broken transducer is not read as a blackout", in.FrequencyHz)
	}
}

func (c *SiteConfig) validateLimits(p *config.Problems) {
	l := &c.Limits
	if !(l.ImportLimitKW > 0) {
		p.Addf("limits.import_limit_kw", "must be positive: the contracted import limit at the point of common coupling, in kW")
	}
	for _, f := range []struct {
		key string
		v   float64
	}{{"island_reserve_kw", l.IslandReserveKW}, {"margin_kw", l.MarginKW}, {"restore_margin_kw", l.RestoreMarginKW}, {"failsafe_load_kw", l.FailsafeLoadKW}} {
		if f.v < 0 || math.IsNaN(f.v) {
			p.Addf("limits."+f.key, "must not be negative")
		}
	}
	if g := *l.IntegralGain; g < 0 || g > 10 {
		p.Addf("limits.integral_gain", "%g is outside 0..10 per second; 0.2 is a calm default, 0 turns the integral off", g)
	}
	if l.MarginKW >= l.ImportLimitKW && l.ImportLimitKW > 0 {
		p.Addf("limits.margin_kw", "margin %g kW leaves nothing of the %g kW import limit; it should be a few percent of it", l.MarginKW, l.ImportLimitKW)
	}
}

func (c *SiteConfig) validateGroups(p *config.Problems, pts map[string]pointInfo, sources map[string]bool) map[string]int {
	names := map[string]int{}
	var ceilings float64
	for i := range c.Groups {
		g := &c.Groups[i]
		path := config.Index("groups", i)
		key := func(k string) string { return config.Join(path, k) }
		if _, dup := names[g.Name]; dup {
			p.Addf(key("name"), "group %q is defined twice", g.Name)
		}
		names[g.Name] = i
		kind, ok := parseKind(g.Kind)
		if !ok {
			p.Addf(key("kind"), "%q is not a kind: use \"shed\" (whole units on or off) or \"throttle\" (a continuous cap)", g.Kind)
		}
		if g.CutOrder < 1 {
			p.Addf(key("cut_order"), "must be 1 or more: 1 is cut first, higher numbers are protected longer")
		}
		if g.Units < 1 {
			p.Addf(key("units"), "must be at least 1")
		}
		if !(g.UnitKW > 0) {
			p.Addf(key("unit_kw"), "must be positive: the rated power of one unit, in kW")
		}
		rated := float64(g.Units) * g.UnitKW
		if *g.CeilingKW <= 0 || *g.CeilingKW > rated+1e-6 {
			p.Addf(key("ceiling_kw"), "%g kW must lie in (0, %g], the rated power of %d units of %g kW", *g.CeilingKW, rated, g.Units, g.UnitKW)
		}
		if g.FloorKW < 0 || g.FloorKW > *g.CeilingKW {
			p.Addf(key("floor_kw"), "floor %g kW must lie between 0 and the ceiling %g kW; lower floor_kw or raise ceiling_kw", g.FloorKW, *g.CeilingKW)
		}
		if g.RampUpKWPerS < 0 {
			p.Addf(key("ramp_up_kw_per_s"), "must not be negative (0 restores at once)")
		}
		if g.WakeUnitsPerS < 0 {
			p.Addf(key("wake_units_per_s"), "must not be negative (0 wakes every unit at once)")
		}
		if g.RestoreHoldoff < 0 {
			p.Addf(key("restore_holdoff"), "must not be negative")
		}
		if kind == control.Throttle && g.WakeUnitsPerS != 0 {
			p.Addf(key("wake_units_per_s"), "applies to shed groups; a throttle group restores at ramp_up_kw_per_s")
		}
		if kind == control.Shed && g.RampUpKWPerS != 0 {
			p.Addf(key("ramp_up_kw_per_s"), "applies to throttle groups; a shed group restores at wake_units_per_s")
		}
		if g.PowerKW != "" {
			checkPoint(p, pts, key("power_kw"), g.PowerKW, "kW")
		}
		if g.Droop != nil {
			validateDroop(p, key("droop"), g, kind)
		}
		if ok {
			validateActuator(p, path, g, kind, sources)
		}
		ceilings += *g.CeilingKW
	}
	if len(c.Groups) > 0 && c.Limits.FailsafeLoadKW > ceilings {
		p.Addf("limits.failsafe_load_kw", "%g kW is more than all groups together (%g kW), so it never limits anything; set the load the site may keep while blind", c.Limits.FailsafeLoadKW, ceilings)
	}
	return names
}

func (c *SiteConfig) validateStages(p *config.Problems, groups map[string]int) {
	names := map[string]bool{}
	for i := range c.Stages {
		s := &c.Stages[i]
		path := config.Index("stages", i)
		key := func(k string) string { return config.Join(path, k) }
		if names[s.Name] {
			p.Addf(key("name"), "stage %q is defined twice", s.Name)
		}
		names[s.Name] = true
		if s.BelowHz < 40 || s.BelowHz > 70 {
			p.Addf(key("below_hz"), "%g Hz is not a grid frequency threshold (expect 45..65)", s.BelowHz)
		}
		if s.ClearAboveHz <= s.BelowHz {
			p.Addf(key("clear_above_hz"), "%g Hz must be above below_hz %g Hz: the gap is the hysteresis that stops chatter", s.ClearAboveHz, s.BelowHz)
		}
		if i > 0 && s.BelowHz >= c.Stages[i-1].BelowHz {
			p.Addf(key("below_hz"), "stages must be listed from the highest threshold down: %g Hz is not below the previous stage's %g Hz", s.BelowHz, c.Stages[i-1].BelowHz)
		}
		if s.Delay < 0 || s.ClearAfter < 0 {
			p.Addf(path, "delay and clear_after must not be negative")
		}
		for j := range s.Actions {
			a := &s.Actions[j]
			ak := config.Index(key("actions"), j)
			gi, ok := groups[a.Group]
			if !ok {
				p.Addf(config.Join(ak, "group"), "no group is named %q", a.Group)
				continue
			}
			switch {
			case (a.CapPct == nil) == (a.CapKW == nil):
				p.Addf(ak, "give exactly one of cap_pct (of the group's ceiling; 0 sheds it to its floor) or cap_kw")
			case a.CapPct != nil && (*a.CapPct < 0 || *a.CapPct > 100):
				p.Addf(config.Join(ak, "cap_pct"), "%g is outside 0..100", *a.CapPct)
			case a.CapKW != nil && (*a.CapKW < 0 || *a.CapKW > *c.Groups[gi].CeilingKW):
				p.Addf(config.Join(ak, "cap_kw"), "%g kW is outside 0..%g kW, the group's ceiling", *a.CapKW, *c.Groups[gi].CeilingKW)
			}
		}
	}
}

// validateDroop checks a group's [groups.droop] frequency response.
func validateDroop(p *config.Problems, path string, g *GroupSection, kind control.Kind) {
	d := g.Droop
	key := func(k string) string { return config.Join(path, k) }
	if kind != control.Throttle {
		p.Addf(path, "droop needs a throttle group: a shed group moves in whole units, not proportionally")
	}
	if d.NominalHz != 50 && d.NominalHz != 60 {
		p.Addf(key("nominal_hz"), "%g Hz: write the grid's nominal frequency, 50 or 60", d.NominalHz)
	}
	if d.DeadbandHz < 0 || d.DeadbandHz > 1 {
		p.Addf(key("deadband_hz"), "%g Hz is outside 0..1; 0.036 Hz is the usual governor deadband", d.DeadbandHz)
	}
	if !(d.DroopPct > 0 && d.DroopPct <= 20) {
		p.Addf(key("droop_pct"), "%g is outside (0, 20]: the frequency change, in %% of nominal, that moves the cap across the whole ceiling (5 is a generator's; 1 responds five times harder)", d.DroopPct)
	}
	if d.MinKW != nil && (*d.MinKW < g.FloorKW || g.CeilingKW != nil && *d.MinKW > *g.CeilingKW) {
		p.Addf(key("min_kw"), "%g kW must lie between floor_kw (%g) and the ceiling", *d.MinKW, g.FloorKW)
	}
}

func parseKind(s string) (control.Kind, bool) {
	switch s {
	case "shed":
		return control.Shed, true
	case "throttle":
		return control.Throttle, true
	}
	return 0, false
}

// ControlLimits converts the checked site file into the controller's limits.
func (c *SiteConfig) ControlLimits() control.Limits {
	l := &c.Limits
	lim := control.Limits{
		ImportLimitKW:   l.ImportLimitKW,
		IslandReserveKW: l.IslandReserveKW,
		MarginKW:        l.MarginKW,
		RestoreMarginKW: l.RestoreMarginKW,
		FailsafeLoadKW:  l.FailsafeLoadKW,
		IntegralGain:    *l.IntegralGain,
		// The feedback may cut up to 10 % of the limit deeper than the
		// model: enough for a stuck device, bounded so it cannot run away.
		IntegralMaxKW: l.ImportLimitKW * 0.1,
		FeedbackDelay: DefaultFeedbackDelay,
	}
	index := map[string]int{}
	for i, g := range c.Groups {
		kind, _ := parseKind(g.Kind)
		u := make([]float64, g.Units)
		for k := range u {
			u[k] = g.UnitKW
		}
		if g.Miners != nil {
			u = g.Miners.UnitKW() // each miner's own rating
		}
		index[g.Name] = i
		lim.Groups = append(lim.Groups, control.Group{
			Name: g.Name, Kind: kind, CutOrder: g.CutOrder, UnitKW: u,
			FloorKW: g.FloorKW, CeilingKW: *g.CeilingKW,
			RampUpKWPerS: g.RampUpKWPerS, WakeUnitsPerS: g.WakeUnitsPerS, RestoreHoldoff: g.RestoreHoldoff,
		})
		if d := g.Droop; d != nil {
			lo := g.FloorKW
			if d.MinKW != nil {
				lo = *d.MinKW
			}
			lim.Groups[i].Droop = control.Droop{NominalHz: d.NominalHz, DeadbandHz: d.DeadbandHz, Pct: d.DroopPct, MinKW: lo}
		}
	}
	for _, s := range c.Stages {
		st := control.Stage{Name: s.Name, BelowHz: s.BelowHz, Delay: s.Delay, ClearAboveHz: s.ClearAboveHz, ClearAfter: s.ClearAfter}
		for _, a := range s.Actions {
			g := index[a.Group]
			cap := 0.0
			if a.CapKW != nil {
				cap = *a.CapKW
			} else {
				cap = *a.CapPct / 100 * *c.Groups[g].CeilingKW
			}
			st.Actions = append(st.Actions, control.StageAction{Group: g, CapKW: cap})
		}
		lim.Stages = append(lim.Stages, st)
	}
	return lim
}

// staleAfter resolves a point's stale_after default.
func staleAfter(m point.Meta, poll time.Duration) time.Duration {
	if m.StaleAfter > 0 {
		return m.StaleAfter
	}
	return staleFactor * poll
}
