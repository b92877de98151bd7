package agent

import (
	"time"

	"github.com/siteagent/siteagent/drivers/gpufleet"
	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/modbus"
	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/opcua"
	"github.com/siteagent/siteagent/safety"
)

// SiteConfig is one site file: everything `siteagent run` needs.
type SiteConfig struct {
	Site   SiteSection             `toml:"site,required"`
	Limits LimitsSection           `toml:"limits,required"`
	MQTT   *mqtt.Config            `toml:"mqtt"`
	HTTP   *HTTPSection            `toml:"http"`
	Modbus []modbus.EndpointConfig `toml:"modbus"`
	OPCUA  []opcua.SourceConfig    `toml:"opcua"`
	Groups []GroupSection          `toml:"groups"`
	Stages []StageSection          `toml:"stages"`

	// Commands from central ops over MQTT: taken only when the table is
	// present, within its bounds (see docs/mqtt.md).
	Commands *safety.CommandsConfig `toml:"commands"`

	// dir is the site file's directory: inventory files are relative to
	// it.
	dir string
}

// SiteSection names the site and the points that feed the controller.
type SiteSection struct {
	ID          string        `toml:"id,required"`
	Description string        `toml:"description"`
	CyclePeriod time.Duration `toml:"cycle_period"`
	Inputs      InputsSection `toml:"inputs,required"`

	// StateDir keeps what must survive a restart (the MQTT queue, the
	// command audit log); $STATE_DIRECTORY or /var/lib/siteagent unless set.
	StateDir string `toml:"state_dir"`
}

// InputsSection maps the controller's inputs to point names
// ("source.point").
type InputsSection struct {
	// FrequencyHz: grid frequency at the point of common coupling.
	FrequencyHz string `toml:"frequency_hz,required"`
	// BreakerClosed: utility breaker state, 1 = closed (grid-connected),
	// 0 = open (islanded).
	BreakerClosed string `toml:"breaker_closed,required"`
	// ImportKW: power imported from the grid at the PCC (kW, positive in).
	ImportKW string `toml:"import_kw,required"`
	// SiteLoadKW: the whole site's consumption (kW), the quantity held under
	// island capacity while islanded.
	SiteLoadKW string `toml:"site_load_kw"`
	// GenerationAvailableKW and BatteryDischargeKW are summed into island
	// capacity (minus limits.island_reserve_kw).
	GenerationAvailableKW []string `toml:"generation_available_kw"`
	BatteryDischargeKW    []string `toml:"battery_discharge_kw"`
	// CurtailTargetKW: an import target requested by the utility or central
	// ops; absent, zero or negative means no curtailment.
	CurtailTargetKW string `toml:"curtail_target_kw"`
}

// LimitsSection holds the site-wide limits.
type LimitsSection struct {
	// ImportLimitKW: the contracted import limit at the PCC.
	ImportLimitKW float64 `toml:"import_limit_kw,required"`
	// IslandReserveKW is kept unused while islanded (spinning reserve).
	IslandReserveKW float64 `toml:"island_reserve_kw"`
	// MarginKW: the controller plans this far under every budget.
	MarginKW float64 `toml:"margin_kw"`
	// RestoreMarginKW: headroom that must exist before any restore step
	// (hysteresis against chatter at the limit).
	RestoreMarginKW float64 `toml:"restore_margin_kw"`
	// FailsafeLoadKW: the controllable load the site may keep while it is
	// blind (import meter silent, island capacity unknown).
	FailsafeLoadKW float64 `toml:"failsafe_load_kw,required"`
	// IntegralGain (1/s) of the meter feedback; 0.2 unless set.
	IntegralGain *float64 `toml:"integral_gain"`
}

// HTTPSection serves /status and /metrics.
type HTTPSection struct {
	Listen string `toml:"listen,required"`
}

// GroupSection is one load group.
type GroupSection struct {
	Name string `toml:"name,required"`
	// Kind: "shed" (whole units) or "throttle" (continuous cap).
	Kind string `toml:"kind,required"`
	// CutOrder: 1 is cut first; the highest is protected longest.
	CutOrder int `toml:"cut_order,required"`
	// Units and UnitKW: how many units and each one's rated power.
	// A [groups.miners] group leaves both out: its inventory counts the
	// miners and rates each one.
	Units  int     `toml:"units"`
	UnitKW float64 `toml:"unit_kw"`
	// FloorKW: never cut below; CeilingKW: never allow above (units*unit_kw
	// unless set).
	FloorKW   float64  `toml:"floor_kw"`
	CeilingKW *float64 `toml:"ceiling_kw"`
	// RampUpKWPerS limits restores of throttle groups.
	RampUpKWPerS float64 `toml:"ramp_up_kw_per_s"`
	// WakeUnitsPerS staggers restores of shed groups.
	WakeUnitsPerS float64 `toml:"wake_units_per_s"`
	// RestoreHoldoff: how long the cause of a cut must stay clear before
	// this group restores.
	RestoreHoldoff time.Duration `toml:"restore_holdoff"`
	// PowerKW names the point measuring the group's power (optional; without
	// it the group is assumed to draw its cap).
	PowerKW string `toml:"power_kw"`
	// Actuators: exactly one.
	Modbus *modbus.ActuatorConfig `toml:"modbus"`
	// GPUNodes: the group is GPU servers running `siteagent node`; its
	// cap is split between them and sent as leases over MQTT.
	GPUNodes *gpufleet.Config `toml:"gpu_nodes"`
	// Miners: the group is a fleet of ASIC miners driven through their
	// firmware's APIs (see docs/miners.md).
	Miners *miner.GroupConfig `toml:"miners"`
	// Droop: an optional frequency response (throttle groups).
	Droop *DroopSection `toml:"droop"`
}

// DroopSection makes a throttle group's cap follow grid frequency like a
// governor (control.Droop): below nominal - deadband the cap falls by the
// whole ceiling per droop_pct percent of nominal frequency, never below
// min_kw.
type DroopSection struct {
	NominalHz  float64  `toml:"nominal_hz,required"`
	DeadbandHz float64  `toml:"deadband_hz"`
	DroopPct   float64  `toml:"droop_pct,required"`
	MinKW      *float64 `toml:"min_kw"`
}

// StageSection is one under-frequency stage: like a UFLS relay element.
type StageSection struct {
	Name string `toml:"name,required"`
	// BelowHz: pick-up threshold; the stage operates when frequency stays
	// below it for Delay.
	BelowHz float64       `toml:"below_hz,required"`
	Delay   time.Duration `toml:"delay"`
	// ClearAboveHz: drop-out threshold (above BelowHz: the hysteresis); the
	// stage resets when frequency stays above it for ClearAfter.
	ClearAboveHz float64       `toml:"clear_above_hz,required"`
	ClearAfter   time.Duration `toml:"clear_after"`
	Actions      []StageAction `toml:"actions,required"`
}

// StageAction caps one group while its stage is operated.
type StageAction struct {
	Group string `toml:"group,required"`
	// CapPct of the group's ceiling (0 sheds it to its floor) or CapKW.
	CapPct *float64 `toml:"cap_pct"`
	CapKW  *float64 `toml:"cap_kw"`
}
