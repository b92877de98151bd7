// Package vnish drives Antminers running Vnish firmware through its HTTP
// API (/api/v1, JSON):
//
//   - POST /api/v1/unlock {"pw":"…"} returns {"token":"…"}, sent as
//     "Authorization: Bearer …" on the protected endpoints. The driver
//     keeps one token per miner and unlocks again once when it is refused.
//   - POST /api/v1/mining/stop and /start stop and start mining (hashboards
//     powered down and back up); /pause and /resume pause and resume it.
//     Success is an empty 200; a failure is {"err":"…"}.
//   - GET /api/v1/summary: miner_state, hr_realtime (GH/s), power_usage
//     (W), chip temperatures. GET /api/v1/status: miner_state, unprotected.
//   - Power targets are autotune presets: GET /api/v1/autotune/presets
//     lists them ("3200" = "3200 watt ~ 102 TH", tuned or not); POST
//     /api/v1/settings {"miner":{"overclock":{"preset":"3200"}}} selects
//     one. Its answer, {"restart_required":…,"reboot_required":…}, is the
//     same whether the preset was taken or not, so the driver reads
//     /api/v1/settings back.
//
// Sleep uses mining/stop unless Options.Shed says pause; Wake reads the
// state and sends start or resume to match.
package vnish

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
)

// Shed picks the command Sleep sends.
type Shed uint8

const (
	// ShedStop: mining/stop, hashboards powered down; the deeper cut.
	ShedStop Shed = iota
	// ShedPause: mining/pause; faster to resume, but Vnish publishes no
	// figure for what a paused miner draws.
	ShedPause
)

// Options configure a Driver.
type Options struct {
	// Password of the web interface ("admin" as shipped). Load it from a
	// credential file or systemd credential.
	Password string
	// APIKey, when set, goes in an x-api-key header: newer Vnish asks for
	// one on sensitive endpoints (settings, system).
	APIKey string
	// Port when a miner's Host has none: 80.
	Port int
	// TLS, when set, makes the driver speak HTTPS.
	TLS  *tls.Config
	Shed Shed
	// AllowUntuned lets SetPowerTarget pick a preset the miner has not
	// tuned yet; selecting one starts an autotune that takes a long time.
	AllowUntuned bool
	// IOTimeout bounds one operation when the caller's context allows
	// longer: 10 s unless set.
	IOTimeout time.Duration
	Transport http.RoundTripper
	Now       func() time.Time
}

const DefaultPort = 80

// ErrAuth marks a refused password or token. It wraps miner.ErrRefused.
var ErrAuth = fmt.Errorf("%w: authentication", miner.ErrRefused)

// Driver implements miner.Driver for Vnish.
type Driver struct {
	o      Options
	client *http.Client
	scheme string
	hosts  sync.Map // Miner.Host → *hostState
}

var _ miner.Driver = (*Driver)(nil)

type hostState struct {
	mu    sync.Mutex
	token string
}

// New returns a Driver with o's zero fields set to their defaults.
func New(o Options) *Driver {
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.IOTimeout <= 0 {
		o.IOTimeout = 10 * time.Second
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
	d := &Driver{o: o, client: &http.Client{Transport: tr}, scheme: "http"}
	if o.TLS != nil {
		d.scheme = "https"
	}
	return d
}

// Family is miner.Vnish.
func (d *Driver) Family() miner.Family { return miner.Vnish }

func (d *Driver) host(h string) *hostState {
	if v, ok := d.hosts.Load(h); ok {
		return v.(*hostState)
	}
	v, _ := d.hosts.LoadOrStore(h, &hostState{})
	return v.(*hostState)
}

// Sleep sends mining/stop (or mining/pause with ShedPause).
func (d *Driver) Sleep(ctx context.Context, m miner.Miner) error {
	cmd := "stop"
	if d.o.Shed == ShedPause {
		cmd = "pause"
	}
	return d.op(ctx, m, "sleep", func(ctx context.Context, hs *hostState) error { return d.mining(ctx, hs, m.Host, cmd) })
}

// Wake resumes a paused miner and starts a stopped one; a miner already
// mining or on its way is left alone.
func (d *Driver) Wake(ctx context.Context, m miner.Miner) error {
	return d.op(ctx, m, "wake", func(ctx context.Context, hs *hostState) error {
		b, err := d.call(ctx, hs, m.Host, http.MethodGet, "/api/v1/status", nil, false)
		if err != nil {
			return err
		}
		state, err := parseState(b)
		if err != nil {
			return garbled("status", err)
		}
		switch {
		case isPaused(state):
			return d.mining(ctx, hs, m.Host, "resume")
		case state == "mining", state == "starting", state == "initializing", state == "auto-tuning", state == "restarting":
			return nil
		}
		return d.mining(ctx, hs, m.Host, "start")
	})
}

// SetPowerTarget selects the tuned autotune preset with the highest power
// at or below watts, and reads the settings back to confirm it.
func (d *Driver) SetPowerTarget(ctx context.Context, m miner.Miner, watts float64) error {
	if math.IsNaN(watts) || watts <= 0 || watts > 1e5 {
		return &miner.Error{Host: m.Host, Op: "power", Err: fmt.Errorf("power target %g W is not a power", watts)}
	}
	return d.op(ctx, m, "power", func(ctx context.Context, hs *hostState) error {
		b, err := d.call(ctx, hs, m.Host, http.MethodGet, "/api/v1/autotune/presets", nil, true)
		if err != nil {
			return err
		}
		presets, err := parsePresets(b)
		if err != nil {
			return garbled("autotune/presets", err)
		}
		p, ok := pickPreset(presets, watts, d.o.AllowUntuned)
		if !ok {
			return fmt.Errorf("no %spreset at or below %g W (presets: %s)", map[bool]string{false: "tuned ", true: ""}[d.o.AllowUntuned],
				watts, describe(presets))
		}
		body, _ := json.Marshal(map[string]any{"miner": map[string]any{"overclock": map[string]any{"preset": p.name}}})
		b, err = d.call(ctx, hs, m.Host, http.MethodPost, "/api/v1/settings", body, true)
		if err != nil {
			return err
		}
		restart, _, err := parseSettingsReply(b)
		if err != nil {
			return garbled("settings", err)
		}
		b, err = d.call(ctx, hs, m.Host, http.MethodGet, "/api/v1/settings", nil, true)
		if err != nil {
			return fmt.Errorf("reading the preset back: %w", err)
		}
		got, err := parseSettingsPreset(b)
		if err != nil {
			return garbled("settings", err)
		}
		if got != p.name {
			return refused("settings accepted preset %q but the miner has %q", p.name, got)
		}
		if restart {
			// The preset applies when mining restarts.
			return d.mining(ctx, hs, m.Host, "restart")
		}
		return nil
	})
}

// pickPreset is the highest-power preset at or below watts, tuned unless
// untuned is allowed; presets that need a modified PSU are never picked.
func pickPreset(ps []preset, watts float64, untuned bool) (preset, bool) {
	var best preset
	found := false
	for _, p := range ps {
		if p.watts > watts || p.modPSU || (!p.tuned && !untuned) {
			continue
		}
		if !found || p.watts > best.watts {
			best, found = p, true
		}
	}
	return best, found
}

func describe(ps []preset) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.FormatFloat(p.watts, 'f', -1, 64) + " W"
		if !p.tuned {
			s[i] += " untuned"
		}
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// Poll reads /api/v1/summary.
func (d *Driver) Poll(ctx context.Context, m miner.Miner) (miner.Telemetry, error) {
	var t miner.Telemetry
	err := d.op(ctx, m, "poll", func(ctx context.Context, hs *hostState) error {
		b, err := d.call(ctx, hs, m.Host, http.MethodGet, "/api/v1/summary", nil, true)
		if err != nil {
			return err
		}
		s, err := parseSummary(b)
		if err != nil {
			return garbled("summary", err)
		}
		t = miner.Telemetry{At: d.o.Now(), HashrateTHs: s.hashTHs, PowerW: s.powerW, PowerKnown: s.hasPower, MaxTempC: s.maxTempC}
		switch {
		case isPaused(s.state) || s.state == "stopped":
			t.Sleeping = true
		case s.state == "mining" || s.state == "auto-tuning":
			t.Mining = s.hashTHs > 0
		}
		return nil
	})
	return t, err
}

func isPaused(state string) bool { return strings.HasPrefix(state, "pause") }

func (d *Driver) op(ctx context.Context, m miner.Miner, op string, fn func(context.Context, *hostState) error) error {
	ctx, cancel := context.WithTimeout(ctx, d.o.IOTimeout)
	defer cancel()
	if err := fn(ctx, d.host(m.Host)); err != nil {
		return &miner.Error{Host: m.Host, Op: op, Err: err}
	}
	return nil
}

// mining posts /api/v1/mining/<cmd>.
func (d *Driver) mining(ctx context.Context, hs *hostState, host, cmd string) error {
	_, err := d.call(ctx, hs, host, http.MethodPost, "/api/v1/mining/"+cmd, nil, true)
	return err
}

// unlock trades the password for a token.
func (d *Driver) unlock(ctx context.Context, hs *hostState, host string) (string, error) {
	body, _ := json.Marshal(map[string]string{"pw": d.o.Password})
	b, status, err := d.send(ctx, host, http.MethodPost, "/api/v1/unlock", body, "")
	if err != nil {
		return "", err
	}
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		return "", fmt.Errorf("%w: unlock: password refused (HTTP %d): check the Vnish web password", ErrAuth, status)
	}
	if status != http.StatusOK {
		return "", refused("unlock: HTTP %d: %.100s", status, parseErr(b))
	}
	tok, err := parseUnlock(b)
	if err != nil {
		return "", garbled("unlock", err)
	}
	hs.mu.Lock()
	hs.token = tok
	hs.mu.Unlock()
	return tok, nil
}

// call sends a request, with the host's token when auth is set; a token
// refused while cached is replaced once (it expired, or the miner
// rebooted).
func (d *Driver) call(ctx context.Context, hs *hostState, host, method, path string, body []byte, auth bool) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		var tok string
		if auth {
			hs.mu.Lock()
			tok = hs.token
			hs.mu.Unlock()
			if tok == "" {
				var err error
				if tok, err = d.unlock(ctx, hs, host); err != nil {
					return nil, err
				}
				attempt++ // a fresh token gets no second chance
			}
		}
		b, status, err := d.send(ctx, host, method, path, body, tok)
		if err != nil {
			return nil, err
		}
		switch {
		case auth && (status == http.StatusUnauthorized || status == http.StatusForbidden):
			hs.mu.Lock()
			if hs.token == tok {
				hs.token = ""
			}
			hs.mu.Unlock()
			if attempt == 0 {
				continue
			}
			return nil, fmt.Errorf("%w: %s: a fresh token was refused (HTTP %d)", ErrAuth, path, status)
		case status < 200 || status > 299:
			msg := parseErr(b)
			if msg == "" {
				msg = http.StatusText(status)
			}
			return nil, refused("%s %s: HTTP %d: %.120s", method, path, status, msg)
		}
		if e := parseErr(b); e != "" {
			return nil, refused("%s %s: %.120s", method, path, e)
		}
		return b, nil
	}
}

func (d *Driver) send(ctx context.Context, host, method, path string, body []byte, tok string) ([]byte, int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.scheme+"://"+d.addr(host)+path, rd)
	if err != nil {
		return nil, 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if d.o.APIKey != "" {
		req.Header.Set("x-api-key", d.o.APIKey)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, 0, unreachable(method+" "+path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, 0, unreachable(method+" "+path, err)
	}
	if len(b) > maxBody {
		return nil, 0, garbled(path, fmt.Errorf("reply exceeds %d bytes", maxBody))
	}
	return b, resp.StatusCode, nil
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
