// Package control is the site controller: a pure, deterministic function
// from (limits, state, inputs, time) to the next state and a plan.
//
// Nothing in this package reads a clock, starts a goroutine, does I/O or
// iterates a map: the same recorded inputs always give the same plans, which
// is what makes replay, what-if runs and the property tests possible. Step
// allocates nothing once State and Plan exist.
package control

import (
	"fmt"
	"time"

	"github.com/siteagent/siteagent/drivers/actuator"
)

// Kind is how a load group moves: Shed (whole units) or Throttle (a
// continuous cap). It is the actuators' own type, so plans reach the
// drivers without translation.
type Kind = actuator.Kind

const (
	Shed     = actuator.Shed
	Throttle = actuator.Throttle
)

// Group is one load group's limits.
type Group struct {
	Name string
	Kind Kind
	// CutOrder: 1 is cut first and restored last; the highest is protected.
	CutOrder int
	// UnitKW holds each unit's rated power in unit order. A shed group runs
	// units 0..UnitsOn-1, so the last unit is the first shed.
	UnitKW []float64
	// FloorKW is never cut into; CeilingKW is never exceeded.
	FloorKW   float64
	CeilingKW float64
	// RampUpKWPerS limits restores of throttle groups (0: no limit).
	RampUpKWPerS float64
	// WakeUnitsPerS staggers restores of shed groups (0: no limit).
	WakeUnitsPerS float64
	// RestoreHoldoff: how long the group must have been free to restore
	// before its first restore step.
	RestoreHoldoff time.Duration
	// Droop: an optional frequency response (throttle groups; see droop.go).
	Droop Droop
}

// StageAction caps one group (by index into Limits.Groups) while a stage is
// operated.
type StageAction struct {
	Group int
	CapKW float64
}

// Stage is an under-frequency element, like a UFLS relay: it operates when
// frequency stays below BelowHz for Delay and resets when it stays above
// ClearAboveHz for ClearAfter.
type Stage struct {
	Name         string
	BelowHz      float64
	Delay        time.Duration
	ClearAboveHz float64
	ClearAfter   time.Duration
	Actions      []StageAction
}

// Limits is everything the controller is configured with.
type Limits struct {
	ImportLimitKW   float64
	IslandReserveKW float64
	// MarginKW: plan at least this far under every budget.
	MarginKW float64
	// RestoreMarginKW: the width of the hold band under the budget; restores
	// start only when this much headroom exists, and cuts land in its middle,
	// so a noisy meter at the limit causes no chatter.
	RestoreMarginKW float64
	// FailsafeLoadKW caps the controllable load while the controller is blind.
	FailsafeLoadKW float64
	// IntegralGain (1/s) of the meter feedback that cuts deeper when the
	// meter stays over the line (devices not following their caps).
	IntegralGain float64
	// IntegralMaxKW bounds that correction (anti-windup).
	IntegralMaxKW float64
	// FeedbackDelay: the meter must stay over the line this long before
	// the integral acts, so devices still following a cut are not punished
	// for their lag.
	FeedbackDelay time.Duration
	Groups        []Group
	Stages        []Stage
}

// GroupInput is what the site measures of one group this cycle.
type GroupInput struct {
	MeasuredKW float64
	MeasuredOK bool
}

// Inputs is one cycle's view of the site after safety's checks. A field
// whose OK flag is false is unknown (stale or implausible); safety has
// already put its worst case in the value where one exists (an unknown
// breaker reads as open).
type Inputs struct {
	FrequencyHz float64
	FrequencyOK bool
	// Islanded: the utility breaker is open.
	Islanded  bool
	BreakerOK bool
	// ImportKW at the point of common coupling, positive when importing.
	ImportKW float64
	ImportOK bool
	// SiteLoadKW: the whole site's consumption.
	SiteLoadKW float64
	SiteLoadOK bool
	// IslandCapacityKW: generation + battery discharge available, before
	// the reserve. When IslandCapacityOK is false it still holds the worst
	// case (the unknown sources counted as zero).
	IslandCapacityKW float64
	IslandCapacityOK bool
	// CurtailTargetKW: a requested import ceiling; zero or negative: none.
	// When CurtailOK is false the last good target is kept.
	CurtailTargetKW float64
	CurtailOK       bool
	// CommandCurtailKW: an import target from an accepted central-ops
	// command; zero or negative: none. The tighter of it and the point's
	// target applies, whether or not the point is known.
	CommandCurtailKW float64
	// HoldRestores: central ops asked the site to hold every restore (cuts
	// still apply). The controller reports groups held so as ReasonHeld.
	HoldRestores bool
	// Groups is indexed like Limits.Groups.
	Groups []GroupInput
}

// Mode is the controller's state machine.
type Mode uint8

const (
	ModeNormal Mode = iota
	ModeRestoring
	ModeCurtailment
	ModeUnderFrequency
	ModeIslanded
	ModeFailSafe
)

var modeNames = [...]string{"normal", "restoring", "curtailment", "under_frequency", "islanded", "fail_safe"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Constraint names the budget that binds.
type Constraint uint8

const (
	ConstraintNone Constraint = iota
	ConstraintImport
	ConstraintIsland
	ConstraintCurtail
	ConstraintFailsafe
)

var constraintNames = [...]string{"none", "import_limit", "island_capacity", "curtailment", "failsafe_load"}

func (c Constraint) String() string {
	if int(c) < len(constraintNames) {
		return constraintNames[c]
	}
	return fmt.Sprintf("constraint(%d)", uint8(c))
}

// Unknown is a bit set of the site inputs that were unknown this cycle.
type Unknown uint8

const (
	UnknownFrequency Unknown = 1 << iota
	UnknownBreaker
	UnknownImport
	UnknownSiteLoad
	UnknownIslandCapacity
	UnknownCurtail
)

var unknownNames = [...]string{"frequency", "breaker", "import", "site_load", "island_capacity", "curtail_target"}

// Names lists the unknown inputs by name (allocates; for reports).
func (u Unknown) Names() []string {
	var out []string
	for i, n := range unknownNames {
		if u&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return out
}

// StagePhase is where an under-frequency element stands.
type StagePhase uint8

const (
	StageIdle StagePhase = iota
	StagePickup
	StageOperated
	StageClearing
)

var phaseNames = [...]string{"idle", "pickup", "operated", "clearing"}

func (p StagePhase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// StageState is one stage's timer state.
type StageState struct {
	Phase StagePhase
	Since time.Time
}

// GroupState is one group's position between cycles.
type GroupState struct {
	// CapKW is the group's cap (throttle) or the rated power of its running
	// units (shed).
	CapKW   float64
	UnitsOn int
	// FreeSince: when the group last stopped being held back; restores
	// wait RestoreHoldoff from here.
	FreeSince time.Time
	// WakeCredit accumulates WakeUnitsPerS between cycles.
	WakeCredit float64
	Restoring  bool
}

// State is everything the controller carries between cycles.
type State struct {
	Started    bool
	Last       time.Time
	Mode       Mode
	Unknown    Unknown
	IntegralKW float64
	// OverSince: when the binding meter went over the line (zero: not over).
	OverSince time.Time
	// Infeasible: the floors alone exceed the budget (reported once).
	Infeasible bool
	// CurtailKW is the last good curtailment target (kept while unknown).
	CurtailKW float64
	Stages    []StageState
	Groups    []GroupState
}

// Clone deep-copies a state (tests, what-if runs).
func (s *State) Clone() *State {
	c := *s
	c.Stages = append([]StageState(nil), s.Stages...)
	c.Groups = append([]GroupState(nil), s.Groups...)
	return &c
}

// Reason says why a group is where it is.
type Reason uint8

const (
	// ReasonFree: no constraint holds the group back.
	ReasonFree Reason = iota
	// ReasonBudget: cut (or held) to keep the site under the binding budget.
	ReasonBudget
	// ReasonStage: capped by an operated under-frequency stage.
	ReasonStage
	// ReasonFloor: cut to its floor; it cannot give more.
	ReasonFloor
	// ReasonHoldoff: free to restore, waiting out its hold-off.
	ReasonHoldoff
	// ReasonRamping: restoring at its ramp or wake rate.
	ReasonRamping
	// ReasonFrozen: restores frozen while the controller is fail-safe.
	ReasonFrozen
	// ReasonHeld: restores held on request (Inputs.HoldRestores).
	ReasonHeld
	// ReasonDroop: capped by its frequency response (Group.Droop).
	ReasonDroop
)

var reasonNames = [...]string{"free", "budget", "stage", "floor", "holdoff", "ramping", "frozen", "held", "droop"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// GroupPlan is the decision for one group.
type GroupPlan struct {
	Kind    Kind
	UnitsOn int
	CapKW   float64
	// ClaimKW is the power the plan counts for the group: its cap when it
	// is held back, what it draws when it is free.
	ClaimKW float64
	// Changed: the target differs from the previous cycle's.
	Changed bool
	Reason  Reason
	// Stage is the index of the capping stage (ReasonStage), else -1.
	Stage int
	// Until: end of the hold-off (ReasonHoldoff).
	Until time.Time
	// MaxKW is the most the group may have this cycle: its ceiling, or the
	// cap of an operated stage or of its droop response.
	MaxKW float64
	// Droop: MaxKW is set by the group's droop response.
	Droop bool

	prevCap   float64
	prevUnits int
}

// EventKind is something that happened this cycle, worth telling a human.
type EventKind uint8

const (
	EventModeChanged EventKind = iota + 1
	EventStageOperated
	EventStageCleared
	EventCutBegan
	EventRestoreBegan
	EventRestored
	EventInputLost
	EventInputRestored
	EventInfeasible
)

var eventNames = [...]string{"", "mode_changed", "stage_operated", "stage_cleared", "cut_began", "restore_began", "restored", "input_lost", "input_restored", "budget_infeasible"}

func (k EventKind) String() string {
	if int(k) < len(eventNames) {
		return eventNames[k]
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event is one entry of a plan's event list.
type Event struct {
	Kind  EventKind
	From  Mode    // ModeChanged
	To    Mode    // ModeChanged
	Index int     // stage or group index; -1 when none
	Input Unknown // InputLost / InputRestored
	KW    float64 // context: the cut or the shortfall
}

// MaxEvents bounds the events one step reports; more are counted in
// Plan.DroppedEvents.
const MaxEvents = 16

// Plan is one cycle's decision.
type Plan struct {
	At   time.Time
	Mode Mode
	// Binding is the constraint with the least headroom.
	Binding Constraint
	// BudgetKW and MeasuredKW of the binding constraint; PlannedKW is the
	// load it expects once devices follow this plan; HeadroomKW =
	// BudgetKW - PlannedKW.
	BudgetKW   float64
	MeasuredKW float64
	PlannedKW  float64
	HeadroomKW float64
	IntegralKW float64
	// CurtailKW is the curtailment target in force (0: none): the tighter
	// of the curtail point's last good value and a commanded one.
	CurtailKW float64
	Unknown   Unknown
	// Infeasible: even with every group at its floor the budget is not met.
	Infeasible bool
	Groups     []GroupPlan
	// Stages mirrors the stage phases after this step.
	Stages        []StagePhase
	Events        [MaxEvents]Event
	NEvents       int
	DroppedEvents int
	// WakeAt is the next time something is due (a stage delay, a hold-off,
	// a ramp step); zero when nothing is pending.
	WakeAt time.Time
}

// EventList returns the events of this plan (a view, no copy).
func (p *Plan) EventList() []Event { return p.Events[:p.NEvents] }

func (p *Plan) addEvent(e Event) {
	if p.NEvents == MaxEvents {
		p.DroppedEvents++
		return
	}
	p.Events[p.NEvents] = e
	p.NEvents++
}

// CopyFrom deep-copies src into p, reusing p's slices (no allocation once
// sized). The cycle uses it to hand plans to publishers.
func (p *Plan) CopyFrom(src *Plan) {
	groups, stages := p.Groups, p.Stages
	*p = *src
	p.Groups = append(groups[:0], src.Groups...)
	p.Stages = append(stages[:0], src.Stages...)
}
