// Package luxos drives miners running Luxor's LuxOS firmware through its
// API on TCP 4028 (the cgminer API plus LUXminer commands), as published
// at docs.luxor.tech.
//
// Commands that change the miner need a session: "logon" creates one and
// returns its ID, which every such command takes as its first parameter.
// A miner allows one session at a time, and a session expires one minute
// after its last use. The driver keeps one session per miner, renews it
// before it expires, and logs on again when the miner says the session is
// gone. When another tool holds the miner's only session, the driver
// either waits for it to expire (ErrRefused, retried by the fleet) or,
// with TakeOverSession, reads the active ID with "session" and uses it:
// LuxOS sessions coordinate tools, they are not a security feature, and a
// grid event does not wait a minute.
//
// Shedding: "curtail sleep" is the fastest command (one request once a
// session exists): LuxOS turns the hashboards and then the PSU off within
// a few seconds. Asleep the miner draws only its control board, around
// 10-20 W. "curtail wakeup" powers the PSU and ramps the boards as on a
// reboot: roughly a minute to full power (mode=unsafe, not used here,
// skips the ramp at the cost of chip wear). Power targets use profileset
// with a power selector ("3000W"): LuxOS picks the matching profile and
// re-tunes the boards in place, without a reboot.
//
// Telemetry is one multi-command request, summary+power+config+stats:
// hashrate, power in watts (PSU true: measured by the PSU; false: LuxOS's
// estimate), CurtailMode (None or Sleep) and board temperatures.
package luxos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/cgminer"
)

// Driver is the LuxOS family. The zero value is not usable: use New.
type Driver struct {
	Client cgminer.Client
	// TakeOverSession: when another tool holds a miner's only session,
	// use that session instead of failing.
	TakeOverSession bool
	// SessionTTL: how long a session lives after its last use (1 min on
	// LuxOS). The driver logs on again when a session has been idle for
	// SessionTTL minus a margin, rather than risk a command on an expired
	// one.
	SessionTTL time.Duration

	sessions sync.Map // host -> *hostSession
}

// New returns a LuxOS driver that takes over a held session.
func New() *Driver {
	return &Driver{TakeOverSession: true, SessionTTL: time.Minute}
}

var _ miner.Driver = (*Driver)(nil)

// Family implements miner.Driver.
func (d *Driver) Family() miner.Family { return miner.LuxOS }

// hostSession is our session on one miner. Its mutex also serialises our
// own session commands to that miner: LuxOS allows one session, and two
// commands racing to log on would lock each other out.
type hostSession struct {
	mu      sync.Mutex
	id      string
	lastUse time.Time
}

func (d *Driver) session(host string) *hostSession {
	if s, ok := d.sessions.Load(host); ok {
		return s.(*hostSession)
	}
	s, _ := d.sessions.LoadOrStore(host, &hostSession{})
	return s.(*hostSession)
}

// Sleep implements miner.Driver with "curtail sleep".
func (d *Driver) Sleep(ctx context.Context, m miner.Miner) error {
	return d.curtail(ctx, m, "sleep", "sleep")
}

// Wake implements miner.Driver with "curtail wakeup".
func (d *Driver) Wake(ctx context.Context, m miner.Miner) error {
	return d.curtail(ctx, m, "wakeup", "wake")
}

func (d *Driver) curtail(ctx context.Context, m miner.Miner, action, op string) error {
	r, err := d.privileged(ctx, m.Host, "curtail", action)
	if err != nil {
		return &miner.Error{Host: m.Host, Op: op, Err: err}
	}
	entry, err := r.First("CURTAIL")
	if err != nil {
		return &miner.Error{Host: m.Host, Op: op, Err: fmt.Errorf("%w: curtail reply: %v", miner.ErrGarbled, err)}
	}
	got, err := entry.Str("Action")
	want := map[string]string{"sleep": "sleep", "wakeup": "wake"}[action]
	if err != nil || !strings.Contains(strings.ToLower(got), want) {
		return &miner.Error{Host: m.Host, Op: op, Err: fmt.Errorf("%w: curtail %s answered with action %q", miner.ErrGarbled, action, got)}
	}
	return nil
}

// SetPowerTarget implements miner.Driver with profileset by power: LuxOS
// applies the profile matching the watts given.
func (d *Driver) SetPowerTarget(ctx context.Context, m miner.Miner, watts float64) error {
	if !(watts >= 100 && watts <= 20_000) {
		return &miner.Error{Host: m.Host, Op: "power", Err: fmt.Errorf("power target %g W is outside 100..20000 W", watts)}
	}
	r, err := d.privileged(ctx, m.Host, "profileset", strconv.Itoa(int(watts))+"W")
	if err != nil {
		return &miner.Error{Host: m.Host, Op: "power", Err: err}
	}
	if _, err := r.First("PROFILE"); err != nil {
		return &miner.Error{Host: m.Host, Op: "power", Err: fmt.Errorf("%w: profileset reply: %v", miner.ErrGarbled, err)}
	}
	return nil
}

// privileged runs a session command, logging on first when needed and
// once more when the miner says the session is no longer valid.
func (d *Driver) privileged(ctx context.Context, host, command, param string) (*cgminer.Reply, error) {
	s := d.session(host)
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 0; ; attempt++ {
		ttl := d.SessionTTL
		if ttl <= 0 {
			ttl = time.Minute
		}
		if s.id == "" || time.Since(s.lastUse) > ttl*5/6 {
			if err := d.logon(ctx, host, s); err != nil {
				return nil, err
			}
		}
		r, err := d.Client.Call(ctx, host, command, s.id, param)
		if err != nil {
			return nil, err
		}
		st, err := r.Check()
		if err == nil {
			s.lastUse = time.Now()
			return r, nil
		}
		var se *cgminer.StatusError
		if !errors.As(err, &se) {
			return nil, fmt.Errorf("%w: %s: %v", miner.ErrGarbled, command, err)
		}
		if attempt == 0 && strings.Contains(strings.ToLower(st.Msg), "session") {
			s.id = "" // expired or killed: log on again, once
			continue
		}
		return nil, fmt.Errorf("%w: %s: %v", miner.ErrRefused, command, err)
	}
}

func (d *Driver) logon(ctx context.Context, host string, s *hostSession) error {
	s.id = ""
	r, err := d.Client.Call(ctx, host, "logon")
	if err != nil {
		return err
	}
	_, serr := r.Check()
	if serr == nil {
		id, err := sessionID(r)
		if err != nil || id == "" {
			return fmt.Errorf("%w: logon answered without a session ID: %v", miner.ErrGarbled, err)
		}
		s.id, s.lastUse = id, time.Now()
		return nil
	}
	var se *cgminer.StatusError
	if !errors.As(serr, &se) {
		return fmt.Errorf("%w: logon: %v", miner.ErrGarbled, serr)
	}
	if !d.TakeOverSession {
		return fmt.Errorf("%w: logon: %v (another tool holds the miner's only session; it expires a minute after its last use)", miner.ErrRefused, serr)
	}
	r, err = d.Client.CallOK(ctx, host, "session")
	if err != nil {
		return err
	}
	id, err := sessionID(r)
	if err != nil {
		return fmt.Errorf("%w: session reply: %v", miner.ErrGarbled, err)
	}
	if id == "" {
		return fmt.Errorf("%w: logon refused (%v) but no session is active", miner.ErrRefused, serr)
	}
	s.id, s.lastUse = id, time.Now()
	return nil
}

func sessionID(r *cgminer.Reply) (string, error) {
	e, err := r.First("SESSION")
	if err != nil {
		return "", err
	}
	return e.Str("SessionID")
}

// Logoff ends our session on m, if any, so that other tools can log on
// without waiting for it to expire.
func (d *Driver) Logoff(ctx context.Context, m miner.Miner) error {
	s := d.session(m.Host)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.id == "" {
		return nil
	}
	id := s.id
	s.id = ""
	if _, err := d.Client.CallOK(ctx, m.Host, "logoff", id); err != nil {
		return &miner.Error{Host: m.Host, Op: "logoff", Err: err}
	}
	return nil
}

const pollCommand = "summary+power+config+stats"

// Poll implements miner.Driver with one multi-command request.
func (d *Driver) Poll(ctx context.Context, m miner.Miner) (miner.Telemetry, error) {
	r, err := d.Client.Call(ctx, m.Host, pollCommand)
	if err != nil {
		return miner.Telemetry{}, &miner.Error{Host: m.Host, Op: "poll", Err: err}
	}
	t, err := Telemetry(r)
	if err != nil {
		return miner.Telemetry{}, &miner.Error{Host: m.Host, Op: "poll", Err: err}
	}
	return t, nil
}

// Telemetry reads the reply to summary+power+config+stats.
func Telemetry(r *cgminer.Reply) (miner.Telemetry, error) {
	t := miner.Telemetry{At: time.Now(), Repaired: r.Repaired}
	parts := map[string]*cgminer.Reply{}
	for _, c := range []string{"summary", "power", "config", "stats"} {
		p, err := r.Part(c)
		if err != nil {
			if _, serr := r.Check(); serr != nil {
				return t, fmt.Errorf("%w: %s: %v", miner.ErrRefused, pollCommand, serr)
			}
			return t, fmt.Errorf("%w: %v", miner.ErrGarbled, err)
		}
		if _, err := p.Check(); err != nil {
			return t, fmt.Errorf("%w: %s: %v", miner.ErrRefused, c, err)
		}
		parts[c] = p
	}
	bad := func(err error) (miner.Telemetry, error) { return t, fmt.Errorf("%w: %v", miner.ErrGarbled, err) }
	sum, err := parts["summary"].First("SUMMARY")
	if err != nil {
		return bad(fmt.Errorf("summary: %w", err))
	}
	if t.HashrateTHs, err = cgminer.SummaryHashrate(sum); err != nil {
		return bad(fmt.Errorf("summary: %w", err))
	}
	pw, err := parts["power"].First("POWER")
	if err != nil {
		return bad(fmt.Errorf("power: %w", err))
	}
	if t.PowerW, err = pw.Float("Watts"); err != nil {
		return bad(fmt.Errorf("power: %w", err))
	}
	if t.PowerW < 0 || t.PowerW > 20_000 {
		return bad(fmt.Errorf("power: implausible %g W", t.PowerW))
	}
	t.PowerKnown = true
	if psu, err := pw.BoolAt("PSU"); err == nil {
		t.PowerEstimated = !psu
	} else if !cgminer.IsMissing(err) {
		return bad(fmt.Errorf("power: %w", err))
	} else {
		t.PowerEstimated = true
	}
	cfg, err := parts["config"].First("CONFIG")
	if err != nil {
		return bad(fmt.Errorf("config: %w", err))
	}
	mode, err := cfg.Str("CurtailMode")
	if err != nil {
		return bad(fmt.Errorf("config: %w", err))
	}
	switch strings.ToLower(mode) {
	case "none", "":
	case "sleep", "idle":
		t.Sleeping = true
	default:
		return bad(fmt.Errorf("config: unknown CurtailMode %q", mode))
	}
	t.Mining = t.HashrateTHs > 0 && !t.Sleeping
	if cfg.Has("ActualPowerTarget") {
		if t.PowerTargetW, err = cfg.Float("ActualPowerTarget"); err != nil {
			return bad(fmt.Errorf("config: %w", err))
		}
	}
	stats, err := parts["stats"].Section("STATS")
	if err != nil && !cgminer.IsMissing(err) {
		return bad(fmt.Errorf("stats: %w", err))
	}
	if maxC, ok, err := cgminer.MaxTemp(stats); err != nil {
		return bad(fmt.Errorf("stats: %w", err))
	} else if ok {
		t.MaxTempC = maxC
	}
	return t, nil
}
