// Package antminer drives Bitmain Antminers on stock firmware through the
// control board's web server: CGI scripts behind HTTP digest
// authentication (user root; realm "antMiner Configuration").
//
//   - get_miner_conf.cgi returns the configuration; its "bitmain-work-mode"
//     is the work mode: 0 normal, 1 sleep, 3 low power.
//   - set_miner_conf.cgi takes the configuration back as JSON (sent as
//     text/plain, as the web UI does) and answers
//     {"stats":"success","code":"M000","msg":"OK!"}. The firmware reads the
//     mode as "miner-mode", a JSON integer; a string, or the name it is read
//     under, is answered M000 and silently ignored. So every write carries
//     the pools and fan settings it read, "miner-mode" as an integer, and is
//     read back: M000 alone proves nothing.
//   - stats.cgi has the hashrate, the board temperatures and, on current
//     firmware, the effective "miner-mode". Stock firmware reports no
//     power: Telemetry.PowerKnown is false and the fleet estimates.
//
// A mode change restarts bmminer and the CGI answers only when that is done:
// about 20 s. So a mode change runs in the background: Dispatch starts it
// (or joins the one already under way for that miner) and returns a Write to
// wait on; Sleep and Wake are Dispatch plus a wait bounded by the caller's
// context. When the context ends first they return an error wrapping
// ErrPending, and the write goes on: calling Sleep again joins it rather
// than starting another, and Poll reports the mode once it took effect.
package antminer

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
)

// Mode is a work mode, as bitmain-work-mode / miner-mode spell it.
type Mode int

const (
	ModeNormal   Mode = 0
	ModeSleep    Mode = 1
	ModeLowPower Mode = 3
)

func (m Mode) String() string {
	switch m {
	case ModeNormal:
		return "normal"
	case ModeSleep:
		return "sleep"
	case ModeLowPower:
		return "low power"
	}
	return "mode " + strconv.Itoa(int(m))
}

// Options configure a Driver.
type Options struct {
	// User and Password for digest authentication: "root" and, unless
	// set, "root" (the factory default; load the real one from a
	// credential file or systemd credential).
	User, Password string
	// Port of the web server when a miner's Host has none: 80.
	Port int
	// TLS, when set, makes the driver speak HTTPS (stock firmware serves
	// plain HTTP; a TLS-terminating proxy in front of it may not).
	TLS *tls.Config
	// WriteTimeout bounds one background mode change, its reads, write
	// and read-back together: 90 s unless set.
	WriteTimeout time.Duration
	// IOTimeout bounds a poll when the caller's context allows longer:
	// 10 s unless set.
	IOTimeout time.Duration
	// MaxWrites bounds the mode changes in flight at once over all
	// miners; the rest queue: 1000 unless set. A write mostly waits on
	// the miner, so the bound is about sockets, not CPU.
	MaxWrites int
	// Transport, when set, carries the requests (tests, proxies).
	Transport http.RoundTripper
	Now       func() time.Time
}

// DefaultPort is the web server's port.
const DefaultPort = 80

var (
	// ErrAuth marks refused digest credentials. It wraps miner.ErrRefused.
	ErrAuth = fmt.Errorf("%w: authentication", miner.ErrRefused)
	// ErrPending: the caller's context ended before the mode change was
	// acknowledged; it goes on in the background (see Driver.Pending).
	// It wraps miner.ErrInProgress, so the fleet counts it as accepted.
	ErrPending = fmt.Errorf("mode change still in progress: %w", miner.ErrInProgress)
	// ErrSuperseded: a queued mode change was replaced by a later one for
	// the same miner before it started.
	ErrSuperseded = errors.New("superseded by a later mode change")
)

// Driver implements miner.Driver for stock-firmware Antminers.
type Driver struct {
	o      Options
	client *http.Client
	scheme string
	sem    chan struct{}
	hosts  sync.Map // Miner.Host → *hostState
}

var _ miner.Driver = (*Driver)(nil)

type hostState struct {
	mu      sync.Mutex
	ch      *challenge // the last digest challenge, answered preemptively
	nc      uint32
	running *Write
	queued  *Write
	last    *Write
}

// New returns a Driver with o's zero fields set to their defaults.
func New(o Options) *Driver {
	if o.User == "" {
		o.User = "root"
	}
	if o.Password == "" {
		o.Password = "root"
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 90 * time.Second
	}
	if o.IOTimeout <= 0 {
		o.IOTimeout = 10 * time.Second
	}
	if o.MaxWrites <= 0 {
		o.MaxWrites = 1000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	tr := o.Transport
	if tr == nil {
		tr = &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			TLSClientConfig:     o.TLS,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     30 * time.Second,
		}
	}
	d := &Driver{o: o, client: &http.Client{Transport: tr}, scheme: "http", sem: make(chan struct{}, o.MaxWrites)}
	if o.TLS != nil {
		d.scheme = "https"
	}
	return d
}

// Family is miner.Antminer.
func (d *Driver) Family() miner.Family { return miner.Antminer }

func (d *Driver) host(h string) *hostState {
	if v, ok := d.hosts.Load(h); ok {
		return v.(*hostState)
	}
	v, _ := d.hosts.LoadOrStore(h, &hostState{})
	return v.(*hostState)
}

// Sleep puts the miner in sleep mode (miner-mode 1) and waits, within ctx,
// for the write to be acknowledged and read back. See ErrPending.
func (d *Driver) Sleep(ctx context.Context, m miner.Miner) error {
	return d.Dispatch(m, ModeSleep).wait(ctx, "sleep")
}

// Wake returns the miner to normal mode (miner-mode 0); like Sleep.
func (d *Driver) Wake(ctx context.Context, m miner.Miner) error {
	return d.Dispatch(m, ModeNormal).wait(ctx, "wake")
}

var errNoPowerTarget = fmt.Errorf("%w: stock Antminer firmware has no power target in watts, only the normal, "+
	"low-power and sleep work modes, each a ~20 s config write that restarts bmminer; use Dispatch with ModeLowPower "+
	"for a fixed reduced mode, or firmware with power targets (LuxOS, Braiins OS+, Vnish)", miner.ErrUnsupported)

// SetPowerTarget answers miner.ErrUnsupported: see errNoPowerTarget.
func (d *Driver) SetPowerTarget(_ context.Context, m miner.Miner, _ float64) error {
	return &miner.Error{Host: m.Host, Op: "power", Err: errNoPowerTarget}
}

// Poll reads stats.cgi (and get_miner_conf.cgi on firmware whose stats
// lack the mode). The mode is the effective one: a change in flight shows
// once the miner has applied it.
func (d *Driver) Poll(ctx context.Context, m miner.Miner) (miner.Telemetry, error) {
	ctx, cancel := context.WithTimeout(ctx, d.o.IOTimeout)
	defer cancel()
	hs := d.host(m.Host)
	b, err := d.request(ctx, hs, m.Host, http.MethodGet, "/cgi-bin/stats.cgi", nil)
	if err != nil {
		return miner.Telemetry{}, &miner.Error{Host: m.Host, Op: "poll", Err: err}
	}
	s, err := parseStats(b)
	if err != nil {
		return miner.Telemetry{}, &miner.Error{Host: m.Host, Op: "poll", Err: garbled("stats.cgi", err)}
	}
	mode := s.mode
	if !s.hasMode {
		c, err := d.readConf(ctx, hs, m.Host)
		if err != nil {
			return miner.Telemetry{}, &miner.Error{Host: m.Host, Op: "poll", Err: err}
		}
		mode = c.mode
	}
	t := miner.Telemetry{At: d.o.Now(), HashrateTHs: s.rateTHs, MaxTempC: s.maxTempC}
	if Mode(mode) == ModeSleep {
		t.Sleeping = true
	} else {
		t.Mining = s.rateTHs > 0
	}
	return t, nil
}

// Write is one work-mode change on one miner, carried out in the
// background.
type Write struct {
	Host    string
	Mode    Mode
	Started time.Time
	done    chan struct{}
	err     error
}

// Done is closed when the write has finished.
func (w *Write) Done() <-chan struct{} { return w.done }

// Err is the write's outcome once Done is closed (nil: acknowledged and
// read back), and nil before.
func (w *Write) Err() error {
	select {
	case <-w.done:
		return w.err
	default:
		return nil
	}
}

// Wait waits for the write, at most until ctx ends.
func (w *Write) Wait(ctx context.Context) error { return w.wait(ctx, "mode") }

func (w *Write) wait(ctx context.Context, op string) error {
	select {
	case <-w.done:
		return w.err
	case <-ctx.Done():
		return &miner.Error{Host: w.Host, Op: op, Err: fmt.Errorf(
			"%w (%w): %s was sent at %s and goes on in the background; Poll shows when it took effect",
			ErrPending, ctx.Err(), w.Mode, w.Started.Format(time.TimeOnly))}
	}
}

// Dispatch starts changing the miner's work mode and returns at once. If a
// change to the same mode is already under way or queued for the miner, it
// returns that one; a queued change to another mode is replaced (its
// waiters get ErrSuperseded). Changes to one miner run one after another,
// the latest target last.
func (d *Driver) Dispatch(m miner.Miner, mode Mode) *Write {
	hs := d.host(m.Host)
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if q := hs.queued; q != nil {
		if q.Mode == mode {
			return q
		}
		q.err = &miner.Error{Host: m.Host, Op: "mode", Err: ErrSuperseded}
		close(q.done)
		hs.queued = nil
	}
	if r := hs.running; r != nil && r.Mode == mode {
		return r
	}
	w := &Write{Host: m.Host, Mode: mode, Started: d.o.Now(), done: make(chan struct{})}
	if hs.running != nil {
		hs.queued = w
		return w
	}
	hs.running = w
	go d.runWrites(hs, w)
	return w
}

// Pending is the miner's mode change under way, or the queued one when
// there is one, or nil.
func (d *Driver) Pending(host string) *Write {
	hs := d.host(host)
	hs.mu.Lock()
	defer hs.mu.Unlock()
	if hs.queued != nil {
		return hs.queued
	}
	return hs.running
}

// LastWrite is the miner's last finished mode change, or nil.
func (d *Driver) LastWrite(host string) *Write {
	hs := d.host(host)
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return hs.last
}

func (d *Driver) runWrites(hs *hostState, w *Write) {
	for w != nil {
		err := d.apply(hs, w)
		hs.mu.Lock()
		if err != nil {
			w.err = &miner.Error{Host: w.Host, Op: opName(w.Mode), Err: err}
		}
		close(w.done)
		hs.last = w
		w, hs.queued = hs.queued, nil
		hs.running = w
		hs.mu.Unlock()
	}
}

func opName(m Mode) string {
	switch m {
	case ModeSleep:
		return "sleep"
	case ModeNormal:
		return "wake"
	}
	return "mode"
}

// apply reads the config, writes it back with the new mode, and reads it
// again to see the mode stuck.
func (d *Driver) apply(hs *hostState, w *Write) error {
	ctx, cancel := context.WithTimeout(context.Background(), d.o.WriteTimeout)
	defer cancel()
	select {
	case d.sem <- struct{}{}:
		defer func() { <-d.sem }()
	case <-ctx.Done():
		return unreachable("waiting for a write slot", ctx.Err())
	}
	c, err := d.readConf(ctx, hs, w.Host)
	if err != nil {
		return err
	}
	if Mode(c.mode) == w.Mode {
		return nil // already there: spare the miner a bmminer restart
	}
	b, err := d.request(ctx, hs, w.Host, http.MethodPost, "/cgi-bin/set_miner_conf.cgi", setBody(c, int(w.Mode)))
	if err != nil {
		return err
	}
	if no, err := parseSetReply(b); no {
		return refused("%v", err)
	} else if err != nil {
		return garbled("set_miner_conf.cgi", err)
	}
	after, err := d.readConf(ctx, hs, w.Host)
	if err != nil {
		return fmt.Errorf("reading the mode back: %w", err)
	}
	if Mode(after.mode) != w.Mode {
		return refused("set_miner_conf answered M000 but bitmain-work-mode reads %d, not %d: the firmware did not apply the change",
			after.mode, int(w.Mode))
	}
	return nil
}

func (d *Driver) readConf(ctx context.Context, hs *hostState, host string) (conf, error) {
	b, err := d.request(ctx, hs, host, http.MethodGet, "/cgi-bin/get_miner_conf.cgi", nil)
	if err != nil {
		return conf{}, err
	}
	c, err := parseConf(b)
	if err != nil {
		return conf{}, garbled("get_miner_conf.cgi", err)
	}
	return c, nil
}

// request sends one request with digest authentication, answering the
// cached challenge preemptively and a new one once.
func (d *Driver) request(ctx context.Context, hs *hostState, host, method, path string, body []byte) ([]byte, error) {
	url := d.scheme + "://" + d.addr(host) + path
	for attempt := 0; ; attempt++ {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, url, rd)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", method, path, err)
		}
		if body != nil {
			req.Header.Set("Content-Type", "text/plain;charset=UTF-8")
		}
		hs.mu.Lock()
		ch := hs.ch
		hs.nc++
		nc := hs.nc
		hs.mu.Unlock()
		if ch != nil {
			req.Header.Set("Authorization", ch.authorization(d.o.User, d.o.Password, method, path, nc))
		}
		resp, err := d.client.Do(req)
		if err != nil {
			return nil, unreachable(method+" "+path, err)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
		resp.Body.Close()
		if err != nil {
			return nil, unreachable(method+" "+path, err)
		}
		switch {
		case resp.StatusCode == http.StatusUnauthorized:
			c, err := parseChallenge(resp.Header.Get("WWW-Authenticate"))
			if err != nil {
				return nil, garbled(path, err)
			}
			hs.mu.Lock()
			hs.ch, hs.nc = &c, 0
			hs.mu.Unlock()
			if attempt == 0 {
				continue // first contact, or a stale or forgotten nonce
			}
			return nil, fmt.Errorf("%w: %s: digest credentials for user %q refused: check the password", ErrAuth, path, d.o.User)
		case resp.StatusCode != http.StatusOK:
			return nil, refused("%s %s: HTTP %d", method, path, resp.StatusCode)
		case len(b) > maxBody:
			return nil, garbled(path, fmt.Errorf("reply exceeds %d bytes", maxBody))
		}
		return b, nil
	}
}

func (d *Driver) addr(host string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(d.o.Port))
}

func unreachable(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", miner.ErrUnreachable, what, err)
}

func garbled(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", miner.ErrGarbled, what, err)
}

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{miner.ErrRefused}, args...)...)
}
