package miner

import (
	"fmt"
	"math"
	"time"

	"github.com/siteagent/siteagent/agent/config"
)

// GroupConfig is a load group's [groups.miners] table: the fleet that
// moves it, where its inventory comes from, and how commands are
// dispatched.
type GroupConfig struct {
	// Source names the fleet's points ("<source>.power_kw"): the group's
	// name unless set. It must not clash with another source's name.
	Source string `toml:"source"`
	// ShedOrder picks which miners go first: "least_efficient" (highest
	// J/TH first), "hottest" (highest board temperature first), "rack"
	// (one rack at a time, the last rack of the inventory first) or
	// "inventory" (the last listed first). least_efficient unless set.
	ShedOrder string `toml:"shed_order"`
	// PollPeriod: one telemetry sweep of every miner this often (10s).
	PollPeriod time.Duration `toml:"poll_period"`
	// Timeout bounds one command or poll of one miner (2s).
	Timeout time.Duration `toml:"timeout"`
	// Retries: fast retries of a failed command, with jittered backoff,
	// before the miner is marked failed and retried every RetryMax (2).
	Retries *int `toml:"retries"`
	// Concurrency: commands in flight at once (128); PollConcurrency:
	// polls in flight at once (64). More is not faster: on a 2-core
	// machine shedding 5,000 miners was quickest at 64..128.
	Concurrency     int `toml:"concurrency"`
	PollConcurrency int `toml:"poll_concurrency"`
	// WakePerS: at most this many wake commands a second, however many
	// the controller asks for (the group's wake_units_per_s, else 50).
	WakePerS float64 `toml:"wake_per_s"`
	// VerifyAfter: how long after an acknowledged command its read-back
	// poll is due (2s).
	VerifyAfter time.Duration `toml:"verify_after"`
	// SettleTime: a read-back that contradicts an acknowledged command is
	// re-checked for this long before the miner is marked failed and
	// commanded again (30s: a stock Antminer takes ~20 s to apply a sleep).
	SettleTime time.Duration `toml:"settle_time"`
	// WakeTimeout: a woken miner not hashing after this is failed (5m).
	WakeTimeout time.Duration `toml:"wake_timeout"`
	// MinPowerPct (throttle groups): no miner's power target goes below
	// this share of its rating (60).
	MinPowerPct float64 `toml:"min_power_pct"`
	// InventoryFile: a CSV or JSON file of miners (relative paths are
	// relative to the site file). Hosts: miners listed here. Either or
	// both.
	InventoryFile string      `toml:"inventory_file"`
	Hosts         []HostEntry `toml:"hosts"`
	// Credentials per family: never inline.
	Credentials CredentialsConfig `toml:"credentials"`
	// Families: per-family settings.
	Families FamiliesConfig `toml:"families"`

	inventory []Miner // resolved by Resolve
}

// HostEntry is one miner, or a uniform range of them.
type HostEntry struct {
	// Host: "10.1.2.3" or "10.1.2.3:4028". CIDR instead: every usable
	// address of "10.1.0.0/22" (network and broadcast excluded), or the
	// first Count of them. Port applies to every address of a range.
	Host  string `toml:"host"`
	CIDR  string `toml:"cidr"`
	Count int    `toml:"count"`
	Port  int    `toml:"port"`
	// Family: cgminer, luxos, braiins, whatsminer, antminer, vnish.
	Family string `toml:"family"`
	// RatedW: nameplate power, the estimate when firmware reports none.
	RatedW float64 `toml:"rated_w"`
	Rack   string  `toml:"rack"`
	// EfficiencyJTH orders least_efficient shedding.
	EfficiencyJTH float64 `toml:"efficiency_jth"`
}

// CredentialsConfig holds the logins of the families that need one
// (LuxOS sessions and plain cgminer need none).
type CredentialsConfig struct {
	Braiins    *CredentialConfig `toml:"braiins"`
	Whatsminer *CredentialConfig `toml:"whatsminer"`
	Antminer   *CredentialConfig `toml:"antminer"`
	Vnish      *CredentialConfig `toml:"vnish"`
}

func (c *CredentialsConfig) byFamily() map[Family]*CredentialConfig {
	return map[Family]*CredentialConfig{Braiins: c.Braiins, Whatsminer: c.Whatsminer, Antminer: c.Antminer, Vnish: c.Vnish}
}

// FamiliesConfig holds per-family settings.
type FamiliesConfig struct {
	CGMiner    *FamilyConfig `toml:"cgminer"`
	LuxOS      *FamilyConfig `toml:"luxos"`
	Braiins    *FamilyConfig `toml:"braiins"`
	Whatsminer *FamilyConfig `toml:"whatsminer"`
	Antminer   *FamilyConfig `toml:"antminer"`
	Vnish      *FamilyConfig `toml:"vnish"`
}

func (c *FamiliesConfig) byFamily() map[Family]*FamilyConfig {
	return map[Family]*FamilyConfig{CGMiner: c.CGMiner, LuxOS: c.LuxOS, Braiins: c.Braiins, Whatsminer: c.Whatsminer, Antminer: c.Antminer, Vnish: c.Vnish}
}

// Family returns family f's settings (zero when none are given).
func (c *FamiliesConfig) Family(f Family) FamilyConfig {
	if fc := c.byFamily()[f]; fc != nil {
		return *fc
	}
	return FamilyConfig{}
}

// CredentialConfig names where a family's password is, never the password
// itself.
type CredentialConfig struct {
	User string `toml:"user"`
	// PasswordFile: a path, or a bare name looked up in
	// $CREDENTIALS_DIRECTORY (systemd LoadCredential=).
	PasswordFile string `toml:"password_file"`
}

// FamilyConfig tunes one family's driver.
type FamilyConfig struct {
	// SleepW: what an asleep miner of this family draws, for estimates
	// (defaults per family: see DefaultSleepW).
	SleepW *float64 `toml:"sleep_w"`
	// LegacyPort: Braiins' BOSminer API port for the fallback (4028).
	LegacyPort int `toml:"legacy_port"`
	// TakeOverSession (LuxOS): use a session another tool holds instead
	// of waiting for it to expire (true).
	TakeOverSession *bool `toml:"take_over_session"`
	// QuickRampUpS / QuickRampDownS (Braiins): the quick-ramping times
	// set on each miner; unset leaves the miner's own.
	QuickRampUpS   *int `toml:"quick_ramp_up_s"`
	QuickRampDownS *int `toml:"quick_ramp_down_s"`
}

// Shed orders.
const (
	OrderLeastEfficient = "least_efficient"
	OrderHottest        = "hottest"
	OrderRack           = "rack"
	OrderInventory      = "inventory"
)

// Families lists every family name.
var Families = []Family{CGMiner, LuxOS, Braiins, Whatsminer, Antminer, Vnish}

// ParseFamily reads a family name.
func ParseFamily(s string) (Family, bool) {
	for _, f := range Families {
		if string(f) == s {
			return f, true
		}
	}
	return "", false
}

// DefaultSleepW is what an asleep miner of each family draws: the control
// board, and fans for a while (see docs/miners.md).
func DefaultSleepW(f Family) float64 {
	switch f {
	case LuxOS:
		return 15 // PSU off; control board only
	case Braiins:
		return 25 // paused: control board, fans spinning down
	case Whatsminer:
		return 20
	case Antminer:
		return 60 // sleep mode keeps the PSU and fans up
	case Vnish:
		return 40
	}
	// Plain cgminer cannot sleep: its miners are shed at the feeder.
	return 0
}

// WithDefaults fills unset values. wakeUnitsPerS is the group's
// wake_units_per_s.
func (c GroupConfig) WithDefaults(group string, wakeUnitsPerS float64) GroupConfig {
	if c.Source == "" {
		c.Source = group
	}
	if c.ShedOrder == "" {
		c.ShedOrder = OrderLeastEfficient
	}
	if c.PollPeriod == 0 {
		c.PollPeriod = 10 * time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 2 * time.Second
	}
	if c.Retries == nil {
		r := 2
		c.Retries = &r
	}
	if c.Concurrency == 0 {
		c.Concurrency = 128
	}
	if c.PollConcurrency == 0 {
		c.PollConcurrency = 64
	}
	if c.WakePerS == 0 {
		c.WakePerS = wakeUnitsPerS
		if c.WakePerS == 0 {
			c.WakePerS = 50
		}
	}
	if c.VerifyAfter == 0 {
		c.VerifyAfter = 2 * time.Second
	}
	if c.SettleTime == 0 {
		c.SettleTime = 30 * time.Second
	}
	if c.WakeTimeout == 0 {
		c.WakeTimeout = 5 * time.Minute
	}
	if c.MinPowerPct == 0 {
		c.MinPowerPct = 60
	}
	return c
}

// Validate checks the table at path (defaults applied first). It does not
// read the inventory: Resolve does.
func (c *GroupConfig) Validate(p *config.Problems, path string) {
	key := func(k string) string { return config.Join(path, k) }
	switch c.ShedOrder {
	case OrderLeastEfficient, OrderHottest, OrderRack, OrderInventory:
	default:
		p.Addf(key("shed_order"), "%q is not a shed order: use least_efficient, hottest, rack or inventory", c.ShedOrder)
	}
	if c.PollPeriod < 500*time.Millisecond || c.PollPeriod > 10*time.Minute {
		p.Addf(key("poll_period"), "%s is outside 500ms..10m; 10s suits most fleets", c.PollPeriod)
	}
	if c.Timeout < 50*time.Millisecond || c.Timeout > time.Minute {
		p.Addf(key("timeout"), "%s is outside 50ms..1m; 2s suits miners on a LAN", c.Timeout)
	}
	if *c.Retries < 0 || *c.Retries > 10 {
		p.Addf(key("retries"), "%d is outside 0..10", *c.Retries)
	}
	if c.Concurrency < 1 || c.Concurrency > 4096 {
		p.Addf(key("concurrency"), "%d is outside 1..4096", c.Concurrency)
	}
	if c.PollConcurrency < 1 || c.PollConcurrency > 4096 {
		p.Addf(key("poll_concurrency"), "%d is outside 1..4096", c.PollConcurrency)
	}
	if !(c.WakePerS > 0) || c.WakePerS > 10_000 || math.IsInf(c.WakePerS, 0) {
		p.Addf(key("wake_per_s"), "%g is outside (0, 10000]: at most this many miners are woken a second", c.WakePerS)
	}
	if c.VerifyAfter < 0 || c.VerifyAfter > 5*time.Minute {
		p.Addf(key("verify_after"), "%s is outside 0..5m", c.VerifyAfter)
	}
	if c.SettleTime < c.VerifyAfter || c.SettleTime > 10*time.Minute {
		p.Addf(key("settle_time"), "%s must lie between verify_after (%s) and 10m", c.SettleTime, c.VerifyAfter)
	}
	if c.WakeTimeout < 10*time.Second || c.WakeTimeout > time.Hour {
		p.Addf(key("wake_timeout"), "%s is outside 10s..1h; a miner takes from ~30 s to a few minutes to hash after a wake", c.WakeTimeout)
	}
	if c.MinPowerPct < 10 || c.MinPowerPct > 100 {
		p.Addf(key("min_power_pct"), "%g is outside 10..100", c.MinPowerPct)
	}
	if c.InventoryFile == "" && len(c.Hosts) == 0 {
		p.Addf(path, "no miners: list them in [[%s]] or name a CSV/JSON file in inventory_file", key("hosts"))
	}
	for f, cred := range c.Credentials.byFamily() {
		if cred != nil && cred.PasswordFile == "" {
			p.Addf(config.Join(config.Join(key("credentials"), string(f)), "password_file"), "required: the file (or systemd credential name) that holds the password; passwords are never written in the site file")
		}
	}
	for f, fc := range c.Families.byFamily() {
		if fc == nil {
			continue
		}
		fk := config.Join(key("families"), string(f))
		if fc.SleepW != nil && (*fc.SleepW < 0 || *fc.SleepW > 1000) {
			p.Addf(config.Join(fk, "sleep_w"), "%g W is outside 0..1000", *fc.SleepW)
		}
		if fc.LegacyPort < 0 || fc.LegacyPort > 65535 {
			p.Addf(config.Join(fk, "legacy_port"), "%d is not a port", fc.LegacyPort)
		}
		for _, r := range []struct {
			k string
			v *int
		}{{"quick_ramp_up_s", fc.QuickRampUpS}, {"quick_ramp_down_s", fc.QuickRampDownS}} {
			if r.v != nil && (*r.v < 0 || *r.v > 3600) {
				p.Addf(config.Join(fk, r.k), "%d s is outside 0..3600", *r.v)
			}
		}
		// Settings that only one family reads are refused elsewhere,
		// rather than silently ignored.
		if f != Braiins && (fc.LegacyPort != 0 || fc.QuickRampUpS != nil || fc.QuickRampDownS != nil) {
			p.Addf(fk, "legacy_port and quick_ramp_* apply to braiins only")
		}
		if f != LuxOS && fc.TakeOverSession != nil {
			p.Addf(config.Join(fk, "take_over_session"), "applies to luxos only")
		}
	}
}

func familyList() string {
	s := ""
	for i, f := range Families {
		if i > 0 {
			s += ", "
		}
		s += string(f)
	}
	return s
}

// Inventory returns the miners found by Resolve, in inventory order.
func (c *GroupConfig) Inventory() []Miner { return c.inventory }

// SleepW is the asleep power of family f under this configuration.
func (c *GroupConfig) SleepW(f Family) float64 {
	if fc := c.Families.Family(f); fc.SleepW != nil {
		return *fc.SleepW
	}
	return DefaultSleepW(f)
}

// UnitKW lists the miners' ratings in kW in the controller's unit order
// (see UnitOrder): unit 0 is woken first, the last unit is shed first.
func (c *GroupConfig) UnitKW() []float64 {
	order := UnitOrder(c.ShedOrder, c.inventory)
	out := make([]float64, len(order))
	for i, idx := range order {
		out[i] = c.inventory[idx].RatedW / 1000
	}
	return out
}

// RatedKW sums the inventory's ratings in kW.
func (c *GroupConfig) RatedKW() float64 {
	var w float64
	for _, m := range c.inventory {
		w += m.RatedW
	}
	return w / 1000
}

func (c *GroupConfig) String() string {
	return fmt.Sprintf("%d miners, %s first", len(c.inventory), c.ShedOrder)
}
