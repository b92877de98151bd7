package safety

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/siteagent/siteagent/agent/config"
)

// Commands from central ops (curtailment requests, their cancellation,
// mode requests) pass through here before they can touch the controller:
// the connection they came over, their schema, their age, their id and
// their bounds from the site file are checked, and every decision is
// written to an append-only, fsync'd audit log.

// Command types.
const (
	CommandCurtail = "curtail" // an import target (or a reduction) for a time
	CommandCancel  = "cancel"  // ends a curtailment or hold by its id
	CommandMode    = "mode"    // hold restores (or let them go)
)

// Results of a check, in acknowledgements and the audit log.
const (
	ResultAccepted  = "accepted"
	ResultRejected  = "rejected"
	ResultDuplicate = "duplicate" // an id already decided: ignored
)

// Command is one request as central ops send it (JSON on the command topic;
// Sparkplug NCMD metrics are mapped onto the same fields).
type Command struct {
	ID   string `json:"id"`
	Type string `json:"type"`
	// From names the sender, for the audit log (the broker authenticated
	// the connection it came over; MQTT 3.1.1 does not tell who).
	From    string     `json:"from"`
	Issued  time.Time  `json:"issued"`
	Expires *time.Time `json:"expires,omitempty"`
	// curtail: exactly one of TargetKW (an import ceiling) and ReductionKW
	// (below the import measured when the curtailment begins); Start
	// (now when absent) and Duration.
	TargetKW    *float64   `json:"target_kw,omitempty"`
	ReductionKW *float64   `json:"reduction_kw,omitempty"`
	Start       *time.Time `json:"start,omitempty"`
	Duration    Duration   `json:"duration,omitempty"`
	Reason      string     `json:"reason,omitempty"`
	// cancel: the id of the curtailment or hold to end.
	Cancels string `json:"cancels,omitempty"`
	// mode: hold every restore (true) or release the hold (false); a hold
	// lasts Duration (max_hold when absent).
	HoldRestores *bool `json:"hold_restores,omitempty"`
}

// Duration is a time.Duration written as a string with a unit in JSON
// ("30m"), as in the site file.
type Duration time.Duration

// MarshalJSON writes "30m0s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "30m"; a bare number is refused (seconds or ms?).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`duration must be a string with a unit, e.g. "30m"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %v", s, err)
	}
	*d = Duration(v)
	return nil
}

// maxCommandBytes bounds a command payload: anything larger is not a
// command.
const maxCommandBytes = 8 << 10

// ParseCommand reads one JSON command strictly: one object, known fields
// only, the right types. Field checks come later, in Check.
func ParseCommand(payload []byte) (Command, error) {
	var c Command
	if len(payload) > maxCommandBytes {
		return c, fmt.Errorf("schema: %d bytes is too large for a command (at most %d)", len(payload), maxCommandBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("schema: %v", err)
	}
	if dec.More() {
		return c, errors.New("schema: more than one JSON value")
	}
	if _, err := dec.Token(); err != io.EOF {
		return c, errors.New("schema: trailing data after the command")
	}
	return c, nil
}

// CommandsConfig is the [commands] table of a site file: whether commands
// are taken at all (the table is present) and their bounds.
type CommandsConfig struct {
	// MinTargetKW is the deepest cut a request may ask for: no import
	// target below it. Required: the site decides how far ops may go.
	MinTargetKW *float64 `toml:"min_target_kw,required"`
	// MaxReductionKW bounds a reduction request; import_limit_kw -
	// min_target_kw unless set.
	MaxReductionKW *float64 `toml:"max_reduction_kw"`
	// MaxDuration of one curtailment; 4h unless set.
	MaxDuration time.Duration `toml:"max_duration"`
	// MaxLead: how far ahead a curtailment may be scheduled; 24h unless set.
	MaxLead time.Duration `toml:"max_lead"`
	// MaxAge: a command issued longer ago is refused as stale; 60s unless set.
	MaxAge time.Duration `toml:"max_age"`
	// ClockSkew tolerated for commands issued "in the future"; 5s unless set.
	ClockSkew time.Duration `toml:"clock_skew"`
	// MaxHold: the longest restore hold a mode request may ask for; 1h
	// unless set.
	MaxHold time.Duration `toml:"max_hold"`
	// AllowWithoutTLS takes commands over a broker connection without TLS.
	// Off unless set: say so explicitly, for a lab.
	AllowWithoutTLS bool `toml:"allow_without_tls"`
	// AuditLog is the file every command decision is appended to;
	// <state_dir>/commands.jsonl unless set.
	AuditLog string `toml:"audit_log"`
	// IDWindow: how long a command id is remembered (a repeat within it is
	// ignored as a duplicate); 168h unless set.
	IDWindow time.Duration `toml:"id_window"`
}

// Defaults of [commands].
const (
	DefaultMaxDuration = 4 * time.Hour
	DefaultMaxLead     = 24 * time.Hour
	DefaultMaxAge      = time.Minute
	DefaultClockSkew   = 5 * time.Second
	DefaultMaxHold     = time.Hour
	DefaultIDWindow    = 7 * 24 * time.Hour
	AuditFileName      = "commands.jsonl"
)

// WithDefaults fills the keys left out.
func (c CommandsConfig) WithDefaults(importLimitKW float64) CommandsConfig {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	set(&c.MaxDuration, DefaultMaxDuration)
	set(&c.MaxLead, DefaultMaxLead)
	set(&c.MaxAge, DefaultMaxAge)
	set(&c.ClockSkew, DefaultClockSkew)
	set(&c.MaxHold, DefaultMaxHold)
	set(&c.IDWindow, DefaultIDWindow)
	if c.MaxReductionKW == nil && c.MinTargetKW != nil {
		v := math.Max(0, importLimitKW-*c.MinTargetKW)
		c.MaxReductionKW = &v
	}
	return c
}

// Validate checks the table against the site's import limit.
func (c *CommandsConfig) Validate(p *config.Problems, path string, importLimitKW float64) {
	if c.MinTargetKW != nil {
		if v := *c.MinTargetKW; !(v >= 0) || v > importLimitKW {
			p.Addf(config.Join(path, "min_target_kw"), "%g kW must lie in 0..%g kW (the import limit): it is the lowest import target a curtailment request may ask for", v, importLimitKW)
		}
	}
	if c.MaxReductionKW != nil {
		if v := *c.MaxReductionKW; !(v > 0) || v > importLimitKW {
			p.Addf(config.Join(path, "max_reduction_kw"), "%g kW must lie in (0, %g] kW, the import limit", v, importLimitKW)
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"max_duration", c.MaxDuration}, {"max_lead", c.MaxLead}, {"max_age", c.MaxAge}, {"clock_skew", c.ClockSkew}, {"max_hold", c.MaxHold}, {"id_window", c.IDWindow}} {
		if d.v < 0 {
			p.Addf(config.Join(path, d.key), "must not be negative")
		}
	}
	if c.IDWindow != 0 && c.MaxAge != 0 && c.IDWindow < c.MaxAge {
		p.Addf(config.Join(path, "id_window"), "%s is shorter than max_age %s: a repeated command could be applied twice", c.IDWindow, c.MaxAge)
	}
	if c.AuditLog != "" && !filepath.IsAbs(c.AuditLog) {
		p.Addf(config.Join(path, "audit_log"), "%q is not an absolute path; write e.g. \"/var/lib/siteagent/commands.jsonl\"", c.AuditLog)
	}
}

// CommandPolicy checks commands against the bounds of one site.
type CommandPolicy struct {
	cfg           CommandsConfig // defaults applied
	importLimitKW float64
}

// NewCommandPolicy builds the policy; cfg is completed with its defaults.
func NewCommandPolicy(cfg CommandsConfig, importLimitKW float64) *CommandPolicy {
	return &CommandPolicy{cfg: cfg.WithDefaults(importLimitKW), importLimitKW: importLimitKW}
}

// Config returns the bounds in force.
func (p *CommandPolicy) Config() CommandsConfig { return p.cfg }

// Channel is the connection a command came over, as far as it is known.
type Channel struct {
	Format   string `json:"format"` // json or sparkplug
	Broker   string `json:"broker"`
	ClientID string `json:"client_id"` // ours
	// Username is ours (the user name, or the client certificate's CN):
	// the broker authorised this identity to read the command topic, and
	// only ops identities to write it (see the ACL in docs/mqtt.md).
	Username string `json:"username,omitempty"`
	TLS      bool   `json:"tls"`
	Topic    string `json:"topic"`
}

// Decision is the outcome of a command check.
type Decision struct {
	Result string // ResultAccepted, ResultRejected, ResultDuplicate
	Reason string
}

// Accepted reports whether the command may act.
func (v Decision) Accepted() bool { return v.Result == ResultAccepted }

func reject(format string, args ...any) Decision {
	return Decision{Result: ResultRejected, Reason: fmt.Sprintf(format, args...)}
}

// CheckChannel refuses commands over a connection without TLS unless the
// site file allows it.
func (p *CommandPolicy) CheckChannel(ch Channel) (Decision, bool) {
	if !ch.TLS && !p.cfg.AllowWithoutTLS {
		return reject("refused: the connection to %s has no TLS; commands are only taken over TLS (set [commands] allow_without_tls = true to allow it, for a lab)", ch.Broker), false
	}
	return Decision{}, true
}

// Check decides on a parsed command at now: schema, expiry, then bounds.
// Idempotency is the Ledger's job, the connection CheckChannel's.
func (p *CommandPolicy) Check(c *Command, now time.Time) Decision {
	if v, ok := p.checkSchema(c); !ok {
		return v
	}
	if v, ok := p.checkTime(c, now); !ok {
		return v
	}
	switch c.Type {
	case CommandCurtail:
		return p.checkCurtail(c, now)
	case CommandMode:
		if c.HoldRestores != nil && *c.HoldRestores && time.Duration(c.Duration) > p.cfg.MaxHold {
			return reject("bounds: a hold of %s is longer than max_hold %s", time.Duration(c.Duration), p.cfg.MaxHold)
		}
	}
	return Decision{Result: ResultAccepted}
}

func (p *CommandPolicy) checkSchema(c *Command) (Decision, bool) {
	switch {
	case c.ID == "" || len(c.ID) > 128 || strings.ContainsFunc(c.ID, isControl):
		return reject("schema: id must be 1..128 printable characters"), false
	case c.Issued.IsZero():
		return reject("schema: issued (an RFC 3339 time) is required"), false
	case strings.ContainsFunc(c.From, isControl) || len(c.From) > 256 || strings.ContainsFunc(c.Reason, isControl) || len(c.Reason) > 1024:
		return reject("schema: from and reason must be printable (at most 256 and 1024 characters)"), false
	}
	curtail := c.TargetKW != nil || c.ReductionKW != nil || c.Start != nil
	switch c.Type {
	case CommandCurtail:
		switch {
		case (c.TargetKW == nil) == (c.ReductionKW == nil):
			return reject("schema: a curtailment gives exactly one of target_kw and reduction_kw"), false
		case c.Duration <= 0:
			return reject("schema: a curtailment needs a positive duration, e.g. \"30m\""), false
		case c.Cancels != "" || c.HoldRestores != nil:
			return reject("schema: cancels and hold_restores do not belong in a curtailment"), false
		}
	case CommandCancel:
		if c.Cancels == "" || curtail || c.HoldRestores != nil || c.Duration != 0 {
			return reject("schema: a cancellation gives only cancels (the id to end)"), false
		}
	case CommandMode:
		if c.HoldRestores == nil || curtail || c.Cancels != "" {
			return reject("schema: a mode request gives hold_restores (true or false) and optionally a duration"), false
		}
		if c.Duration < 0 || (!*c.HoldRestores && c.Duration != 0) {
			return reject("schema: duration belongs to a hold (hold_restores true) and must be positive"), false
		}
	default:
		return reject("schema: type %q is not a command; use curtail, cancel or mode", c.Type), false
	}
	return Decision{}, true
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func (p *CommandPolicy) checkTime(c *Command, now time.Time) (Decision, bool) {
	switch {
	case c.Expires != nil && !now.Before(*c.Expires):
		return reject("expired at %s (now %s)", c.Expires.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339Nano)), false
	case c.Issued.After(now.Add(p.cfg.ClockSkew)):
		return reject("expired: issued %s is in the future by more than clock_skew %s; check the clocks", c.Issued.UTC().Format(time.RFC3339Nano), p.cfg.ClockSkew), false
	case now.Sub(c.Issued) > p.cfg.MaxAge:
		return reject("expired: issued %s ago, more than max_age %s", now.Sub(c.Issued).Round(time.Millisecond), p.cfg.MaxAge), false
	}
	return Decision{}, true
}

func (p *CommandPolicy) checkCurtail(c *Command, now time.Time) Decision {
	start := now
	if c.Start != nil {
		start = *c.Start
	}
	end := start.Add(time.Duration(c.Duration))
	switch {
	case time.Duration(c.Duration) > p.cfg.MaxDuration:
		return reject("bounds: duration %s is longer than max_duration %s", time.Duration(c.Duration), p.cfg.MaxDuration)
	case start.Sub(now) > p.cfg.MaxLead:
		return reject("bounds: start %s is more than max_lead %s ahead", start.UTC().Format(time.RFC3339), p.cfg.MaxLead)
	case !end.After(now):
		return reject("expired: the curtailment would already be over (ends %s)", end.UTC().Format(time.RFC3339))
	}
	if c.TargetKW != nil {
		v := *c.TargetKW
		switch {
		case math.IsNaN(v) || math.IsInf(v, 0):
			return reject("schema: target_kw is not a number")
		case v > p.importLimitKW:
			return reject("bounds: target %g kW is above the site's import limit %g kW: a request can never raise load above the site's limits", v, p.importLimitKW)
		case v < *p.cfg.MinTargetKW:
			return reject("bounds: target %g kW is below min_target_kw %g kW, the deepest cut this site allows", v, *p.cfg.MinTargetKW)
		}
	} else {
		v := *c.ReductionKW
		switch {
		case math.IsNaN(v) || math.IsInf(v, 0):
			return reject("schema: reduction_kw is not a number")
		case v <= 0:
			return reject("bounds: reduction %g kW must be positive: a request can never raise load", v)
		case v > *p.cfg.MaxReductionKW:
			return reject("bounds: reduction %g kW is more than max_reduction_kw %g kW, the deepest cut this site allows", v, *p.cfg.MaxReductionKW)
		}
	}
	return Decision{Result: ResultAccepted}
}

// ReductionTarget turns a reduction into an import target at the moment a
// curtailment begins: below the measured import (or, unknown, below the
// import limit), never under min_target_kw.
func (p *CommandPolicy) ReductionTarget(reductionKW, importKW float64, importOK bool) float64 {
	base := p.importLimitKW
	if importOK && importKW < base {
		base = math.Max(importKW, 0)
	}
	return math.Max(base-reductionKW, *p.cfg.MinTargetKW)
}

// Ledger remembers the command ids decided within a window, so that a
// command delivered twice (QoS 1 does that) acts once.
type Ledger struct {
	mu     sync.Mutex
	window time.Duration
	seen   map[string]LedgerEntry
}

// LedgerEntry is the first decision on an id.
type LedgerEntry struct {
	At     time.Time
	Result string
	Reason string
}

// NewLedger remembers ids for window.
func NewLedger(window time.Duration) *Ledger {
	return &Ledger{window: window, seen: map[string]LedgerEntry{}}
}

// Claim records id's first decision and returns true, or returns the
// earlier decision and false for an id seen within the window.
func (l *Ledger) Claim(id string, at time.Time, v Decision) (LedgerEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e, ok := l.seen[id]; ok && at.Sub(e.At) < l.window {
		return e, false
	}
	if len(l.seen) > 10_000 {
		for k, e := range l.seen {
			if at.Sub(e.At) >= l.window {
				delete(l.seen, k)
			}
		}
	}
	l.seen[id] = LedgerEntry{At: at, Result: v.Result, Reason: v.Reason}
	return LedgerEntry{}, true
}

// Seen looks an id up without claiming it.
func (l *Ledger) Seen(id string, at time.Time) (LedgerEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.seen[id]
	return e, ok && at.Sub(e.At) < l.window
}

// AuditRecord is one line of the audit log: who, what, when, result.
type AuditRecord struct {
	TS     time.Time `json:"ts"`
	Event  string    `json:"event"` // "command", or a lifecycle step: "began", "ended", "cancelled", "replaced"
	ID     string    `json:"id,omitempty"`
	Type   string    `json:"type,omitempty"`
	From   string    `json:"from,omitempty"`
	Via    *Channel  `json:"via,omitempty"`
	Result string    `json:"result,omitempty"`
	Reason string    `json:"reason,omitempty"`
	// Request is the command as received (JSON), or as read from the
	// Sparkplug metrics.
	Request json.RawMessage `json:"request,omitempty"`
	// Effect says what the decision does to the controller's inputs.
	Effect string `json:"effect,omitempty"`
}

// AuditLog appends records, one JSON object per line, each fsync'd before
// Write returns: a decision is on disk before it is acknowledged.
type AuditLog struct {
	mu   sync.Mutex
	f    *os.File
	path string
}

// OpenAuditLog opens (creating) the log for appending.
func OpenAuditLog(path string) (*AuditLog, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	// A crash mid-write leaves a torn last line: end it, so that the next
	// record starts on a line of its own.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			if _, err := f.Write([]byte{'\n'}); err != nil {
				f.Close()
				return nil, fmt.Errorf("audit log: %w", err)
			}
		}
	}
	return &AuditLog{f: f, path: path}, nil
}

// Path is the log's file.
func (l *AuditLog) Path() string { return l.path }

// Write appends r and fsyncs.
func (l *AuditLog) Write(r AuditRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return errors.New("audit log closed")
	}
	if _, err := l.f.Write(b); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// Close closes the file.
func (l *AuditLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// ReadAudit reads every record of a log; a line that does not parse (a
// crash mid-write) is skipped and counted.
func ReadAudit(path string) ([]AuditRecord, int, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	var out []AuditRecord
	bad := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			bad++
			continue
		}
		out = append(out, r)
	}
	return out, bad, sc.Err()
}

// Restore fills the ledger with the command decisions of an audit log that
// fall within its window, so that a restart does not forget them.
func (l *Ledger) Restore(records []AuditRecord, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range records {
		if r.Event != "command" || r.ID == "" || r.Result == ResultDuplicate || r.Result == "" || now.Sub(r.TS) >= l.window {
			continue
		}
		if _, ok := l.seen[r.ID]; !ok {
			l.seen[r.ID] = LedgerEntry{At: r.TS, Result: r.Result, Reason: r.Reason}
		}
	}
}
