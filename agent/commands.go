package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/safety"
)

// Commands from central ops reach the controller in three steps, none of
// them on the control path but the last:
//   1. the uplink (JSON topic or Sparkplug NCMD) hands a command to the
//      commander, on the MQTT receive goroutine;
//   2. the commander has safety check it (connection, schema, expiry, id,
//      bounds), writes the decision to the audit log (fsync'd), then moves
//      the accepted change into the commandGate and acknowledges it;
//   3. each control cycle reads the gate under a mutex, without allocating
//      or waiting on I/O, and folds it into the controller's inputs.

// maxCurtailments bounds the curtailments accepted and not yet over.
const maxCurtailments = 8

// curtailSlot is one accepted curtailment as the cycle sees it.
type curtailSlot struct {
	id         string
	start, end time.Time
	targetKW   float64 // NaN until a reduction is resolved at start
	reduction  float64 // > 0: a reduction, resolved at start
	began      bool    // the cycle has applied it
}

// commandGate hands accepted commands to the control cycle.
type commandGate struct {
	mu        sync.Mutex
	policy    *safety.CommandPolicy // nil: commands off
	slots     [maxCurtailments]curtailSlot
	n         int
	holdID    string
	holdUntil time.Time
}

func newCommandGate() *commandGate { return &commandGate{} }

// apply folds the commands in force at now into in: the tightest active
// curtailment and the configured curtail point (the tighter wins), and a
// restore hold. It runs on the control path: no allocation, no I/O.
func (g *commandGate) apply(in *control.Inputs, now time.Time) {
	g.mu.Lock()
	target := math.Inf(1)
	for i := 0; i < g.n; i++ {
		s := &g.slots[i]
		if now.Before(s.start) || !now.Before(s.end) {
			continue
		}
		if s.reduction > 0 && math.IsNaN(s.targetKW) {
			s.targetKW = g.policy.ReductionTarget(s.reduction, in.ImportKW, in.ImportOK)
		}
		s.began = true
		target = math.Min(target, s.targetKW)
	}
	hold := now.Before(g.holdUntil)
	g.mu.Unlock()
	// The controller applies the tighter of this and the curtail point's
	// target, even while the point is unknown. The inputs live across
	// cycles and nothing else writes these two.
	in.CommandCurtailKW = 0
	if !math.IsInf(target, 1) {
		in.CommandCurtailKW = target
	}
	in.HoldRestores = hold
}

// activeCommands is the gate's content, for reports.
type activeCommands struct {
	Curtailments []curtailView `json:"curtailments"`
	HoldID       string        `json:"hold_id,omitempty"`
	HoldUntil    *time.Time    `json:"hold_until,omitempty"`
}

type curtailView struct {
	ID          string    `json:"id"`
	Start       time.Time `json:"start"`
	End         time.Time `json:"end"`
	TargetKW    *float64  `json:"target_kw"` // null until a reduction is resolved
	ReductionKW *float64  `json:"reduction_kw,omitempty"`
	Active      bool      `json:"active"`
}

// view copies the gate's content at now (allocates; not for the cycle).
func (g *commandGate) view(now time.Time) activeCommands {
	g.mu.Lock()
	defer g.mu.Unlock()
	v := activeCommands{Curtailments: []curtailView{}}
	for i := 0; i < g.n; i++ {
		s := g.slots[i]
		if !now.Before(s.end) {
			continue
		}
		cv := curtailView{ID: s.id, Start: s.start, End: s.end, Active: !now.Before(s.start)}
		if !math.IsNaN(s.targetKW) {
			t := s.targetKW
			cv.TargetKW = &t
		}
		if s.reduction > 0 {
			r := s.reduction
			cv.ReductionKW = &r
		}
		v.Curtailments = append(v.Curtailments, cv)
	}
	sort.Slice(v.Curtailments, func(i, j int) bool { return v.Curtailments[i].Start.Before(v.Curtailments[j].Start) })
	if now.Before(g.holdUntil) {
		h := g.holdUntil
		v.HoldID, v.HoldUntil = g.holdID, &h
	}
	return v
}

// curtailEnd is when the active curtailment whose target is t ends (for
// the capacity report); zero when none matches.
func (g *commandGate) curtailEnd(now time.Time, t float64) (time.Time, string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var end time.Time
	id := ""
	for i := 0; i < g.n; i++ {
		s := &g.slots[i]
		if now.Before(s.start) || !now.Before(s.end) || math.Abs(s.targetKW-t) > 0.5 {
			continue
		}
		// Overlapping curtailments with the same target: the constraint
		// lasts until the last of them ends.
		if s.end.After(end) {
			end, id = s.end, s.id
		}
	}
	return end, id
}

// next is the earliest pending curtailment.
func (g *commandGate) next(now time.Time) (curtailSlot, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var best curtailSlot
	found := false
	for i := 0; i < g.n; i++ {
		s := g.slots[i]
		if now.Before(s.start) && (!found || s.start.Before(best.start)) {
			best, found = s, true
		}
	}
	return best, found
}

// commander decides on commands, one at a time.
type commander struct {
	mu     sync.Mutex
	site   string
	log    *slog.Logger
	policy *safety.CommandPolicy
	ledger *safety.Ledger
	audit  *safety.AuditLog // nil: every command is refused (nothing can be audited)
	noLog  string           // why audit is nil
	gate   *commandGate
	now    func() time.Time
	events func(kind, text string) // publishes a command lifecycle event
}

// Ack is the acknowledgement of one command, on <root>/<site>/ack (JSON)
// or the Sparkplug metric commands/ack.
type Ack struct {
	Site   string    `json:"site"`
	TS     time.Time `json:"ts"`
	ID     string    `json:"id"`
	Type   string    `json:"type,omitempty"`
	Result string    `json:"result"`
	Reason string    `json:"reason,omitempty"`
	Effect string    `json:"effect,omitempty"`
}

// decide takes one parsed command (or the error that kept it from
// parsing) and returns its acknowledgement. raw is the request as it came,
// for the audit log.
func (c *commander) decide(cmd safety.Command, parseErr error, raw json.RawMessage, ch safety.Channel) Ack {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	ack := Ack{Site: c.site, TS: now.UTC(), ID: cmd.ID, Type: cmd.Type}
	rec := safety.AuditRecord{TS: now.UTC(), Event: "command", ID: cmd.ID, Type: cmd.Type, From: cmd.From, Via: &ch, Request: compactJSON(raw)}
	var apply func()
	v, ok := c.policy.CheckChannel(ch)
	switch {
	case !ok:
	case parseErr != nil:
		v = safety.Decision{Result: safety.ResultRejected, Reason: parseErr.Error()}
	case c.audit == nil:
		v = safety.Decision{Result: safety.ResultRejected, Reason: "refused: " + c.noLog}
	default:
		if e, seen := c.ledger.Seen(cmd.ID, now); seen {
			v = safety.Decision{Result: safety.ResultDuplicate,
				Reason: fmt.Sprintf("id %s was already handled at %s: %s%s; ignored", cmd.ID, e.At.UTC().Format(time.RFC3339Nano), e.Result, suffix(e.Reason))}
			break
		}
		v = c.policy.Check(&cmd, now)
		if v.Accepted() {
			apply, rec.Effect, v = c.plan(&cmd, now)
		}
		c.ledger.Claim(cmd.ID, now, v)
	}
	rec.Result, rec.Reason = v.Result, v.Reason
	if c.audit != nil {
		if err := c.audit.Write(rec); err != nil {
			// Nothing acts unless it is on record.
			c.log.Error("command not audited; refused", "id", cmd.ID, "err", err)
			apply = nil
			if v.Accepted() {
				v = safety.Decision{Result: safety.ResultRejected, Reason: "refused: the audit log cannot be written: " + err.Error()}
			}
		}
	}
	if apply != nil {
		apply()
	}
	ack.Result, ack.Reason, ack.Effect = v.Result, v.Reason, rec.Effect
	lvl := slog.LevelInfo
	if v.Result == safety.ResultRejected {
		lvl = slog.LevelWarn
	}
	c.log.Log(context.Background(), lvl, "command "+v.Result, "id", cmd.ID, "type", cmd.Type, "from", cmd.From, "reason", v.Reason, "effect", rec.Effect, "tls", ch.TLS)
	return ack
}

func suffix(reason string) string {
	if reason == "" {
		return ""
	}
	return " (" + reason + ")"
}

func compactJSON(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 || !json.Valid(raw) {
		if len(raw) == 0 {
			return nil
		}
		b, _ := json.Marshal(string(raw)) // keep what came, as a string
		return b
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return json.RawMessage(b.Bytes())
}

// plan works out what an accepted command changes, checks what depends on
// the gate's state, and returns the change to make once it is audited.
func (c *commander) plan(cmd *safety.Command, now time.Time) (func(), string, safety.Decision) {
	g := c.gate
	accept := safety.Decision{Result: safety.ResultAccepted}
	switch cmd.Type {
	case safety.CommandCurtail:
		start := now
		if cmd.Start != nil {
			start = *cmd.Start // maybe past: safety made sure it is not over
		}
		end := start.Add(time.Duration(cmd.Duration))
		s := curtailSlot{id: cmd.ID, start: start, end: end, targetKW: math.NaN()}
		var effect string
		if cmd.TargetKW != nil {
			s.targetKW = *cmd.TargetKW
			effect = fmt.Sprintf("import target %g kW", s.targetKW)
		} else {
			s.reduction = *cmd.ReductionKW
			effect = fmt.Sprintf("import target %g kW below the import measured at the start (not below %g kW)", s.reduction, *c.policy.Config().MinTargetKW)
		}
		effect += fmt.Sprintf(" from %s to %s; the tightest of every limit and curtailment binds", start.UTC().Format(time.RFC3339), end.UTC().Format(time.RFC3339))
		g.mu.Lock()
		g.prune(now)
		full := g.n >= maxCurtailments
		g.mu.Unlock()
		if full {
			return nil, "", safety.Decision{Result: safety.ResultRejected, Reason: fmt.Sprintf("bounds: %d curtailments are already pending or active; cancel one first", maxCurtailments)}
		}
		return func() {
			g.mu.Lock()
			g.prune(now)
			g.slots[g.n] = s
			g.n++
			g.mu.Unlock()
		}, effect, accept
	case safety.CommandCancel:
		g.mu.Lock()
		defer g.mu.Unlock()
		g.prune(now)
		for i := 0; i < g.n; i++ {
			if g.slots[i].id == cmd.Cancels {
				s := g.slots[i]
				effect := fmt.Sprintf("curtailment %s ends now (it would have run until %s)", s.id, s.end.UTC().Format(time.RFC3339))
				if now.Before(s.start) {
					effect = fmt.Sprintf("curtailment %s, due at %s, will not begin", s.id, s.start.UTC().Format(time.RFC3339))
				}
				return func() { g.remove(cmd.Cancels) }, effect, accept
			}
		}
		if g.holdID == cmd.Cancels && now.Before(g.holdUntil) {
			return func() { g.holdID, g.holdUntil = "", time.Time{} }, "restore hold " + cmd.Cancels + " released", accept
		}
		return nil, "", safety.Decision{Result: safety.ResultRejected, Reason: "nothing pending or active has id " + cmd.Cancels}
	case safety.CommandMode:
		if !*cmd.HoldRestores {
			return func() {
				g.mu.Lock()
				g.holdID, g.holdUntil = "", time.Time{}
				g.mu.Unlock()
			}, "restores are no longer held", accept
		}
		d := time.Duration(cmd.Duration)
		if d == 0 {
			d = c.policy.Config().MaxHold
		}
		until := now.Add(d)
		return func() {
			g.mu.Lock()
			g.holdID, g.holdUntil = cmd.ID, until
			g.mu.Unlock()
		}, fmt.Sprintf("restores held until %s (cuts still apply)", until.UTC().Format(time.RFC3339)), accept
	}
	return nil, "", safety.Decision{Result: safety.ResultRejected, Reason: "schema: unknown type"}
}

// prune drops curtailments that are over (under g.mu).
func (g *commandGate) prune(now time.Time) {
	k := 0
	for i := 0; i < g.n; i++ {
		if now.Before(g.slots[i].end) {
			g.slots[k] = g.slots[i]
			k++
		}
	}
	for i := k; i < g.n; i++ {
		g.slots[i] = curtailSlot{}
	}
	g.n = k
}

func (g *commandGate) remove(id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	k := 0
	for i := 0; i < g.n; i++ {
		if g.slots[i].id != id {
			g.slots[k] = g.slots[i]
			k++
		}
	}
	for i := k; i < g.n; i++ {
		g.slots[i] = curtailSlot{}
	}
	g.n = k
}

// lifecycle writes the audit records (and events) for curtailments and
// holds that began or ended, and drops what is over. The publisher calls
// it on its own beat.
type lifecycle struct {
	begun map[string]float64 // id -> target when it began
	held  string
}

func (c *commander) tick(lc *lifecycle, now time.Time) {
	if c == nil {
		return
	}
	g := c.gate
	type change struct {
		event, id, effect string
	}
	var changes []change
	g.mu.Lock()
	live := map[string]bool{}
	for i := 0; i < g.n; i++ {
		s := &g.slots[i]
		if s.began && now.Before(s.end) {
			live[s.id] = true
			if _, ok := lc.begun[s.id]; !ok {
				lc.begun[s.id] = s.targetKW
				changes = append(changes, change{"began", s.id, fmt.Sprintf("import target %g kW until %s", s.targetKW, s.end.UTC().Format(time.RFC3339))})
			}
		}
	}
	for id := range lc.begun {
		if !live[id] {
			delete(lc.begun, id)
			changes = append(changes, change{"ended", id, "curtailment over"})
		}
	}
	hold := ""
	if now.Before(g.holdUntil) {
		hold = g.holdID
	}
	if hold != lc.held {
		if lc.held != "" {
			changes = append(changes, change{"ended", lc.held, "restore hold over"})
		}
		if hold != "" {
			changes = append(changes, change{"began", hold, "restores held until " + g.holdUntil.UTC().Format(time.RFC3339)})
		}
		lc.held = hold
	}
	g.prune(now)
	g.mu.Unlock()
	sort.Slice(changes, func(i, j int) bool { return changes[i].id < changes[j].id })
	for _, ch := range changes {
		if c.audit != nil {
			if err := c.audit.Write(safety.AuditRecord{TS: now.UTC(), Event: ch.event, ID: ch.id, Effect: ch.effect}); err != nil {
				c.log.Error("audit record not written", "err", err)
			}
		}
		c.log.Info("command "+ch.event, "id", ch.id, "effect", ch.effect)
		if c.events != nil {
			c.events("command_"+ch.event, fmt.Sprintf("command %s %s: %s", ch.id, ch.event, ch.effect))
		}
	}
}
