package agent

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/drivers/actuator"
	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/antminer"
	"github.com/siteagent/siteagent/drivers/miner/braiins"
	"github.com/siteagent/siteagent/drivers/miner/cgminer"
	"github.com/siteagent/siteagent/drivers/miner/luxos"
	"github.com/siteagent/siteagent/drivers/miner/vnish"
	"github.com/siteagent/siteagent/drivers/miner/whatsminer"
)

// This file wires miner fleets (drivers/miner) into the agent. A group
// with a [groups.miners] table is both a source (telemetry sweeps, and
// the group's power as "<source>.power_kw", measured where the firmware
// reports it and estimated where not) and the group's actuator (Apply
// sheds and wakes miners, or sets their power targets). Its inventory
// counts and rates the units, so units and unit_kw are left out.

var (
	_ source            = (*miner.Fleet)(nil)
	_ actuator.Actuator = (*miner.Fleet)(nil)
)

// minerDefaults fills a miners group's defaults (from applyDefaults).
func (g *GroupSection) minerDefaults() {
	d := g.Miners.WithDefaults(g.Name, g.WakeUnitsPerS)
	g.Miners = &d
	if g.PowerKW == "" {
		g.PowerKW = d.Source + ".power_kw" // the fleet's own measure
	}
}

// prepareMiners checks each miners table and reads its inventory, which
// gives the group its units, their ratings and its default ceiling. It
// runs before the groups are validated.
func (c *SiteConfig) prepareMiners(p *config.Problems) {
	for i := range c.Groups {
		g := &c.Groups[i]
		if g.Miners == nil {
			continue
		}
		path := config.Index("groups", i)
		key := func(k string) string { return config.Join(path, k) }
		g.Miners.Validate(p, key("miners"))
		g.Miners.Resolve(p, key("miners"), c.dir, g.Name)
		inv := g.Miners.Inventory()
		if len(inv) == 0 {
			// The inventory's problems are reported; stand-ins keep the
			// group checks from adding their echoes (or dereferencing
			// a ceiling nobody set).
			const standIn = 1e9 // kW: larger than any limit it is checked against
			g.Units, g.UnitKW = 1, standIn
			if g.CeilingKW == nil {
				c := standIn
				g.CeilingKW = &c
			}
			continue
		}
		if p.Has(key("units")) && g.Units != len(inv) {
			p.Addf(key("units"), "%d, but the inventory lists %d miners; leave units out of a miners group: the inventory counts them", g.Units, len(inv))
		}
		if p.Has(key("unit_kw")) {
			p.Addf(key("unit_kw"), "a miners group rates each miner from its rated_w in the inventory; remove unit_kw")
		}
		rated := g.Miners.RatedKW()
		g.Units, g.UnitKW = len(inv), rated/float64(len(inv))
		if g.CeilingKW == nil {
			g.CeilingKW = &rated
		}
	}
}

// validateMinerFleet checks that the inventory's families can move the
// group the way its kind says.
func validateMinerFleet(p *config.Problems, path string, g *GroupSection, kind control.Kind) {
	seen := map[miner.Family]int{}
	for _, m := range g.Miners.Inventory() {
		seen[m.Family]++
	}
	if n := seen[miner.CGMiner]; n > 0 {
		p.Addf(path, "%d miners of family cgminer: plain cgminer has no sleep command and no power target, so the fleet cannot move them; give their real firmware family, or put them behind a feeder contactor ([groups.modbus])", n)
	}
	if kind == control.Throttle && g.WakeUnitsPerS != 0 {
		p.Addf(config.Join(config.Parent(path), "wake_units_per_s"), "applies to shed groups")
	}
}

// minerPoints adds the points every fleet defines.
func (c *SiteConfig) minerPoints(out map[string]pointInfo) {
	names, units := miner.PointNames()
	for i := range c.Groups {
		m := c.Groups[i].Miners
		if m == nil {
			continue
		}
		for k, n := range names {
			out[m.Source+"."+n] = pointInfo{meta: point.Meta{Unit: units[k]}, period: miner.PointPeriod}
		}
	}
}

// buildMinerFleets makes every miners group's fleet and adds it to the
// sources.
func (c *SiteConfig) buildMinerFleets(b *builtSources, store *point.Store, log *slog.Logger) error {
	b.miners = map[string]*miner.Fleet{}
	for i := range c.Groups {
		g := &c.Groups[i]
		if g.Miners == nil {
			continue
		}
		creds, err := g.Miners.LoadCredentials()
		if err != nil {
			return fmt.Errorf("group %s: %w", g.Name, err)
		}
		kind, _ := parseKind(g.Kind)
		f, err := miner.New(miner.Options{Group: g.Name, Kind: actuator.Kind(kind), Config: *g.Miners,
			Drivers: MinerDrivers(g.Miners, creds), Store: store, Log: log.With("part", "miners", "group", g.Name)})
		if err != nil {
			return err
		}
		b.all = append(b.all, f)
		b.miners[g.Name] = f
	}
	return nil
}

// MinerDrivers makes a driver for every firmware family, configured from
// the group's credentials and per-family settings.
func MinerDrivers(cfg *miner.GroupConfig, creds map[miner.Family]miner.Credentials) map[miner.Family]miner.Driver {
	fam := cfg.Families.Family
	lx := luxos.New()
	if v := fam(miner.LuxOS).TakeOverSession; v != nil {
		lx.TakeOverSession = *v
	}
	bc := creds[miner.Braiins]
	if bc.User == "" {
		bc.User = "root"
	}
	bos := braiins.New(bc.User, bc.Password)
	if p := fam(miner.Braiins).LegacyPort; p != 0 {
		bos.LegacyPort = fmt.Sprint(p)
	}
	if fc := fam(miner.Braiins); fc.QuickRampUpS != nil || fc.QuickRampDownS != nil {
		r := braiins.Ramping{UpS: 30, DownS: 5}
		if fc.QuickRampUpS != nil {
			r.UpS = uint32(*fc.QuickRampUpS)
		}
		if fc.QuickRampDownS != nil {
			r.DownS = uint32(*fc.QuickRampDownS)
		}
		bos.QuickRamping = &r
	}
	return map[miner.Family]miner.Driver{
		miner.CGMiner:    &cgminer.Driver{},
		miner.LuxOS:      lx,
		miner.Braiins:    bos,
		miner.Whatsminer: whatsminer.New(whatsminer.Options{Password: creds[miner.Whatsminer].Password}),
		miner.Antminer:   antminer.New(antminer.Options{User: creds[miner.Antminer].User, Password: creds[miner.Antminer].Password}),
		miner.Vnish:      vnish.New(vnish.Options{Password: creds[miner.Vnish].Password}),
	}
}

// MinerFleets returns the running miner fleets by source name (the
// group's name unless miners.source says otherwise): status pages, the
// demo.
func (a *Agent) MinerFleets() map[string]*miner.Fleet {
	out := map[string]*miner.Fleet{}
	for _, s := range a.sources {
		if f, ok := s.(*miner.Fleet); ok {
			out[f.Name()] = f
		}
	}
	return out
}

// minerSummary describes a miners group in one line (check-config).
func minerSummary(g *GroupSection) string {
	fams := map[miner.Family]int{}
	for _, m := range g.Miners.Inventory() {
		fams[m.Family]++
	}
	var parts []string
	for f, n := range fams {
		parts = append(parts, fmt.Sprintf("%d %s", n, f))
	}
	sort.Strings(parts)
	if g.Kind == "throttle" {
		return fmt.Sprintf("miners: %s; power targets, none below %g %% of rating", strings.Join(parts, ", "), g.Miners.MinPowerPct)
	}
	return fmt.Sprintf("miners: %s; %s first; wakes at most %g/s", strings.Join(parts, ", "), g.Miners.ShedOrder, g.Miners.WakePerS)
}

// minerBasis finds a miners group's power-by-basis points, in the order
// of PowerBasis; nil for other groups.
func (a *Agent) minerBasis(g *GroupSection) []point.ID {
	if g.Miners == nil {
		return nil
	}
	var ids []point.ID
	for _, n := range []string{"power_measured_kw", "power_firmware_estimated_kw", "power_rated_estimated_kw"} {
		id, ok := a.store.Lookup(g.Miners.Source + "." + n)
		if !ok {
			return nil
		}
		ids = append(ids, id)
	}
	return ids
}
