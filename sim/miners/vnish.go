package miners

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Vnish as the simulator speaks it, from the API reference Vnish firmware
// serves (/docs on the miner) and field notes of its behaviour:
//
//   - POST /api/v1/unlock {"pw":…} → {"token":"<32 chars>"}; protected
//     endpoints want "Authorization: Bearer <token>" (a bare token is
//     accepted too, as some clients send it).
//   - POST /api/v1/mining/stop|start|pause|resume|restart: empty 200, or
//     {"err":"CGMiner err: Cgminer error failed-to-activate-pause-mode "}
//     when the miner cannot (pausing a stopped miner, resuming one that is
//     not paused).
//   - GET /api/v1/summary (protected): miner.miner_status.miner_state,
//     hr_realtime (GH/s), power_usage (W), chip_temp, chains.
//   - GET /api/v1/status, /info, /perf-summary (open).
//   - GET /api/v1/autotune/presets: [{"name":"3200","pretty":"3200 watt ~
//     102 TH","status":"tuned","modded_psu_required":false},…].
//   - GET /api/v1/settings, POST /api/v1/settings {"miner":{"overclock":
//     {"preset":"3200"}}} → {"restart_required":false,
//     "reboot_required":false} whether or not the preset exists (an unknown
//     preset is ignored), as field reports describe.
//
// The simulator's own choices where Vnish publishes nothing: a wrong
// password answers 403 {"err":"Wrong password"}; a missing or expired
// token 401 {"err":"Unauthorized"}; a token lives TokenTTL; a paused miner
// reports miner_state "paused".
//
// Which command sheds fastest: mining/stop and mining/pause both act at
// once. Stop powers the hashboards down (the simulator assumes 40 W
// stopped, the fleet's estimate, miner.DefaultSleepW); pause keeps them
// powered and idle, which Vnish does not quantify (the simulator assumes
// PausedW, 150 W), and resumes in seconds.
// Waking from stop re-initialises the boards: not published; the simulator
// assumes 30 s before they draw power and 60 s of ramp.

// VnishConfig describes a fleet of Vnish miners.
type VnishConfig struct {
	Miners int
	// Base is the first miner's address (default 127.40.0.1); Port is
	// shared (0: a free one; real miners use 80).
	Base netip.Addr
	Port int
	// Password of the web interface ("admin").
	Password string
	// Physics defaults to a Vnish S19j Pro at its 3,200 W preset:
	// 40 W stopped, stop in 1 + 2 s, start in 30 + 60 s.
	Physics Physics
	// PausedW is the draw while paused (150 W); ResumeRamp the ramp back
	// to full power after resume (10 s).
	PausedW    float64
	ResumeRamp time.Duration
	// TokenTTL: an unlock token's life (1 h).
	TokenTTL time.Duration
	// PresetNeedsRestart: a new preset answers restart_required and
	// applies at the next mining/restart.
	PresetNeedsRestart bool
	Now                func() time.Time
}

// DefaultVnishPhysics is an S19j Pro on Vnish.
func DefaultVnishPhysics() Physics {
	return Physics{RatedW: 3200, SleepW: 40, SleepDelay: time.Second, SleepFall: 2 * time.Second,
		WakeDelay: 30 * time.Second, WakeRamp: time.Minute, HashrateTHs: 102}
}

// vnPresets are the S19's stock preset list (watts, TH/s); the middle
// ones come tuned.
var vnPresets = []struct {
	w, th float64
	tuned bool
}{{1100, 53, false}, {1500, 63, false}, {1900, 73, true}, {2350, 85, true}, {2620, 91, true},
	{2950, 99, true}, {3200, 102, true}, {3350, 105, true}, {3750, 110, false}, {4260, 120, false}}

// VnishFleet is a running fleet of simulated Vnish miners.
type VnishFleet struct {
	cfg    VnishConfig
	stop   Physics // stop / start
	pause  Physics // pause / resume
	http   *amHTTP
	miners []vnMiner
	mu     []sync.Mutex
}

type vnMiner struct {
	m          machine
	paused     bool // the last shed was a pause (pause physics in effect)
	preset     string
	pending    string // saved preset not yet in effect: applies at restart
	tokens     map[string]time.Time
	unlocks    int
	commands   int
	lastCmd    string
	restarting time.Time // mining/restart: back up after this
}

// VnishState is one simulated Vnish miner as a test sees it.
type VnishState struct {
	Mode        Mode
	State       string // miner_state as the API reports it
	PowerW      float64
	HashrateTHs float64
	Preset      string
	Unlocks     int
	Commands    int
	LastCommand string
}

// StartVnish starts the fleet on loopback, every miner mining at the
// 3200 W preset.
func StartVnish(cfg VnishConfig) (*VnishFleet, error) {
	if cfg.Miners < 1 {
		return nil, fmt.Errorf("need at least one miner, got %d", cfg.Miners)
	}
	if !cfg.Base.IsValid() {
		cfg.Base = netip.MustParseAddr("127.40.0.1")
	}
	if cfg.Password == "" {
		cfg.Password = "admin"
	}
	if cfg.Physics.RatedW == 0 {
		cfg.Physics = DefaultVnishPhysics()
	}
	if cfg.PausedW == 0 {
		cfg.PausedW = 150
	}
	if cfg.ResumeRamp == 0 {
		cfg.ResumeRamp = 10 * time.Second
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &VnishFleet{cfg: cfg, stop: cfg.Physics, pause: cfg.Physics, miners: make([]vnMiner, cfg.Miners),
		mu: make([]sync.Mutex, cfg.Miners)}
	f.pause.SleepW, f.pause.WakeDelay, f.pause.WakeRamp = cfg.PausedW, 0, cfg.ResumeRamp
	now := cfg.Now()
	for i := range f.miners {
		f.miners[i] = vnMiner{m: machine{mode: Mining, since: now, targetW: cfg.Physics.RatedW},
			preset: strconv.Itoa(int(cfg.Physics.RatedW)), tokens: map[string]time.Time{}}
	}
	var err error
	if f.http, err = newAMHTTP(cfg.Base, cfg.Miners, cfg.Port, f.handle); err != nil {
		return nil, err
	}
	return f, nil
}

// Addrs lists each miner's "host:port".
func (f *VnishFleet) Addrs() []string { return f.http.set.addrs }

// Port is the port every miner's web server listens on.
func (f *VnishFleet) Port() int { return f.http.set.port }

// Close stops every listener and connection.
func (f *VnishFleet) Close() { f.http.close() }

// SetFault gives miner i a fault (NoFault clears it). FaultIgnoring
// acknowledges commands and settings without acting on them.
func (f *VnishFleet) SetFault(i int, fault Fault) { f.http.faults[i].Store(uint32(fault)) }

// SetSlowDelay sets how long a FaultSlow miner takes to answer.
func (f *VnishFleet) SetSlowDelay(d time.Duration) { f.http.slowDelay.Store(int64(d)) }

// Counters counts connections and requests.
func (f *VnishFleet) Counters() *Counters { return &f.http.counters }

// ExpireTokens forgets miner i's tokens, as a reboot does.
func (f *VnishFleet) ExpireTokens(i int) {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	clear(f.miners[i].tokens)
}

// State returns miner i's state now.
func (f *VnishFleet) State(i int) VnishState {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	now := f.cfg.Now()
	v := &f.miners[i]
	p := f.settle(v, now)
	return VnishState{Mode: v.m.mode, State: f.state(v, now), PowerW: v.m.powerAt(p, now), HashrateTHs: v.m.hashrate(p, now),
		Preset: v.preset, Unlocks: v.unlocks, Commands: v.commands, LastCommand: v.lastCmd}
}

// Totals sums the fleet now: power in W and how many miners are in each
// mode.
func (f *VnishFleet) Totals() (powerW float64, modes [4]int) {
	for i := range f.miners {
		s := f.State(i)
		powerW += s.PowerW
		modes[s.Mode]++
	}
	return powerW, modes
}

// phys is the physics in effect for v.
func (f *VnishFleet) phys(v *vnMiner) *Physics {
	if v.paused {
		return &f.pause
	}
	return &f.stop
}

func (f *VnishFleet) settle(v *vnMiner, now time.Time) *Physics {
	if !v.restarting.IsZero() && !now.Before(v.restarting) {
		v.m.wake(&f.stop, v.restarting)
		v.restarting = time.Time{}
	}
	p := f.phys(v)
	v.m.settle(p, now)
	return p
}

// state is miner_state as Vnish reports it.
func (f *VnishFleet) state(v *vnMiner, now time.Time) string {
	switch {
	case !v.restarting.IsZero():
		return "restarting"
	case v.m.mode == Mining:
		return "mining"
	case v.m.mode == Waking:
		return "starting"
	case v.paused:
		return "paused"
	case v.m.mode == Stopping:
		return "shutting-down"
	}
	return "stopped"
}

func (f *VnishFleet) handle(i int, w http.ResponseWriter, r *http.Request) {
	now := f.cfg.Now()
	path := strings.TrimPrefix(r.URL.Path, "/api/v1/")
	if path == "unlock" && r.Method == http.MethodPost {
		f.unlock(i, w, r, now)
		return
	}
	open := map[string]bool{"status": true, "info": true, "perf-summary": true}
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	v := &f.miners[i]
	p := f.settle(v, now)
	if !open[path] && !f.authorized(v, r, now) {
		vnJSON(w, http.StatusUnauthorized, map[string]string{"err": "Unauthorized"})
		return
	}
	ignore := f.http.fault(i) == FaultIgnoring
	switch {
	case path == "status":
		vnJSON(w, 200, map[string]any{"miner_state": f.state(v, now), "miner_state_time": int(now.Sub(v.m.since).Seconds()),
			"description": "", "failure_code": 0, "find_miner": false, "restart_required": v.pending != "",
			"reboot_required": false, "unlocked": false})
	case path == "info":
		host, _, _ := net.SplitHostPort(f.http.set.addrs[i])
		vnJSON(w, 200, map[string]any{"miner": "Antminer S19j Pro", "model": "s19jpro", "fw_name": "Vnish", "fw_version": "1.2.6",
			"platform": "xil", "install_type": "nand", "algorithm": "sha256d", "hr_measure": "GH/s",
			"system": map[string]any{"os": "GNU/Linux", "miner_name": "s19jpro", "network_status": map[string]any{
				"mac": fmt.Sprintf("FE:07:%02X:%02X:%02X:%02X", i>>24&255, i>>16&255, i>>8&255, i&255), "dhcp": true,
				"ip": host, "netmask": "255.0.0.0", "gateway": "", "dns": []string{}, "hostname": "antminer"}, "uptime": "10 days, 4:00"},
			"serial": "N/A"})
	case path == "perf-summary":
		vnJSON(w, 200, map[string]any{"current_preset": f.presetDoc(v.preset), "preset_switcher": map[string]any{"enabled": false}})
	case path == "summary":
		vnJSON(w, 200, f.summary(v, p, now))
	case path == "autotune/presets":
		var list []any
		list = append(list, map[string]any{"name": "disabled", "pretty": "Disabled", "status": "untuned", "modded_psu_required": false})
		for _, ps := range vnPresets {
			list = append(list, f.presetDoc(strconv.Itoa(int(ps.w))))
		}
		vnJSON(w, 200, list)
	case path == "settings" && r.Method == http.MethodGet:
		vnJSON(w, 200, map[string]any{"miner": map[string]any{"overclock": map[string]any{"preset": v.preset, "globals": map[string]any{"volt": 1380, "freq": 675}},
			"cooling": map[string]any{"mode": map[string]any{"name": "auto"}}, "pools": []any{}}})
	case path == "settings" && r.Method == http.MethodPost:
		var doc struct {
			Miner struct {
				Overclock struct {
					Preset string `json:"preset"`
				} `json:"overclock"`
			} `json:"miner"`
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if json.Unmarshal(body, &doc) != nil {
			vnJSON(w, http.StatusBadRequest, map[string]string{"err": "Failed to parse settings"})
			return
		}
		restart := false
		if name := doc.Miner.Overclock.Preset; name != "" && vnPresetW(name) > 0 && !ignore {
			if f.cfg.PresetNeedsRestart {
				// Saved now, in effect from the next mining restart.
				v.preset, v.pending, restart = name, name, true
			} else {
				f.applyPreset(v, p, name, now)
			}
		}
		vnJSON(w, 200, map[string]bool{"restart_required": restart, "reboot_required": false})
	case strings.HasPrefix(path, "mining/") && r.Method == http.MethodPost:
		f.command(v, strings.TrimPrefix(path, "mining/"), ignore, now, w)
	default:
		vnJSON(w, http.StatusNotFound, map[string]string{"err": "Not found"})
	}
}

func (f *VnishFleet) command(v *vnMiner, cmd string, ignore bool, now time.Time, w http.ResponseWriter) {
	running := v.m.mode == Mining || v.m.mode == Waking || !v.restarting.IsZero()
	switch cmd {
	case "stop":
		if !ignore {
			v.restarting = time.Time{}
			if v.paused { // paused already: the boards go down from the pause level
				v.paused = false
			}
			v.m.sleep(&f.stop, now)
		}
	case "pause":
		if !running {
			vnJSON(w, http.StatusInternalServerError, map[string]string{"err": "CGMiner err: Cgminer error failed-to-activate-pause-mode "})
			return
		}
		if !ignore {
			v.paused = true
			v.m.sleep(&f.pause, now)
		}
	case "resume":
		if !v.paused || running {
			vnJSON(w, http.StatusInternalServerError, map[string]string{"err": "CGMiner err: Cgminer error failed-to-activate-resume-mode "})
			return
		}
		if !ignore {
			v.m.wake(&f.pause, now)
		}
	case "start":
		if !ignore && !running {
			if v.paused {
				v.m.wake(&f.pause, now)
			} else {
				v.m.wake(&f.stop, now)
			}
		}
	case "restart":
		if !ignore {
			if v.pending != "" {
				v.m.targetW, v.pending = vnPresetW(v.pending), ""
			}
			v.paused = false
			v.m.sleep(&f.stop, now)
			v.restarting = now.Add(f.stop.SleepDelay + f.stop.SleepFall)
		}
	default:
		vnJSON(w, http.StatusNotFound, map[string]string{"err": "Not found"})
		return
	}
	if !ignore {
		v.commands++
		v.lastCmd = cmd
	}
	w.WriteHeader(http.StatusOK)
}

// applyPreset moves the power target; a mining miner ramps to it.
func (f *VnishFleet) applyPreset(v *vnMiner, p *Physics, name string, now time.Time) {
	v.preset = name
	target := vnPresetW(name)
	if v.m.mode == Mining || v.m.mode == Waking {
		from := v.m.powerAt(p, now)
		v.m.targetW, v.m.fromW, v.m.mode, v.m.since = target, from, Waking, now.Add(-p.WakeDelay)
		return
	}
	v.m.targetW = target
}

func vnPresetW(name string) float64 {
	for _, ps := range vnPresets {
		if strconv.Itoa(int(ps.w)) == name {
			return ps.w
		}
	}
	return 0
}

func (f *VnishFleet) presetDoc(name string) map[string]any {
	for _, ps := range vnPresets {
		if strconv.Itoa(int(ps.w)) == name {
			status := "untuned"
			if ps.tuned {
				status = "tuned"
			}
			return map[string]any{"name": name, "pretty": fmt.Sprintf("%d watt ~ %d TH", int(ps.w), int(ps.th)),
				"status": status, "modded_psu_required": false}
		}
	}
	return map[string]any{"name": "disabled", "pretty": "Disabled", "status": "untuned", "modded_psu_required": false}
}

func (f *VnishFleet) summary(v *vnMiner, p *Physics, now time.Time) map[string]any {
	gh := v.m.hashrate(p, now) * 1000 // follows power, so the preset too
	pw := v.m.powerAt(p, now)
	temp := 30 + 45*v.m.hashrate(p, now)/f.cfg.Physics.HashrateTHs
	var chains []any
	for c := 0; c < 3; c++ {
		chains = append(chains, map[string]any{"id": c + 1, "frequency": 650, "voltage": 13800, "power_consumption": int(pw / 3),
			"hashrate_ideal": round(f.cfg.Physics.HashrateTHs*1000/3, 2), "hashrate_rt": round(gh/3, 2),
			"hashrate_percentage": 100, "hr_error": 0, "hw_errors": 0,
			"pcb_temp":      map[string]any{"min": int(temp - 10), "max": int(temp - 6)},
			"chip_temp":     map[string]any{"min": int(temp - 5), "max": int(temp)},
			"chip_statuses": map[string]any{"red": 0, "orange": 0, "grey": 0},
			"status":        map[string]any{"state": f.state(v, now)}})
	}
	return map[string]any{"miner": map[string]any{
		"miner_status": map[string]any{"miner_state": f.state(v, now), "miner_state_time": int(now.Sub(v.m.since).Seconds())},
		"miner_type":   "Antminer S19j Pro (Vnish 1.2.6)", "hr_stock": f.cfg.Physics.HashrateTHs * 1000,
		"average_hashrate": round(gh, 2), "instant_hashrate": round(gh, 2), "hr_realtime": round(gh, 2),
		"hr_nominal": round(v.m.targetW/f.cfg.Physics.RatedW*f.cfg.Physics.HashrateTHs*1000, 2), "hr_average": round(gh, 2),
		"pcb_temp":          map[string]any{"min": int(temp - 10), "max": int(temp - 6)},
		"chip_temp":         map[string]any{"min": int(temp - 5), "max": int(temp)},
		"power_consumption": int(pw), "power_usage": int(pw), "power_efficiency": 31.4,
		"hw_errors_percent": 0.0, "hr_error": 0.0, "hw_errors": 0, "devfee_percent": 2.8, "devfee": 2.8,
		"pools": []any{map[string]any{"id": 1, "url": "stratum+tcp://pool.example:3333", "pool_type": "UserPool",
			"user": "sim.vnish", "status": "working", "asic_boost": true, "diff": "65.5K", "accepted": 1000, "rejected": 1,
			"stale": 0, "ls_diff": 65536.0, "ls_time": "0:00:05", "diffa": 1.0e9, "ping": 12}},
		"cooling": map[string]any{"fan_num": 4, "fans": []any{map[string]any{"id": 1, "rpm": 5400, "status": "ok", "max_rpm": 6000}},
			"settings": map[string]any{"mode": map[string]any{"name": "auto"}}, "fan_duty": 70},
		"chains": chains, "found_blocks": 0, "best_share": 123456789,
	}}
}

// unlock trades the password for a token.
func (f *VnishFleet) unlock(i int, w http.ResponseWriter, r *http.Request, now time.Time) {
	var req struct {
		PW string `json:"pw"`
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 4<<10))
	if json.Unmarshal(body, &req) != nil {
		vnJSON(w, http.StatusBadRequest, map[string]string{"err": "Failed to parse request"})
		return
	}
	if req.PW != f.cfg.Password {
		vnJSON(w, http.StatusForbidden, map[string]string{"err": "Wrong password"})
		return
	}
	var b [16]byte
	rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	f.mu[i].Lock()
	v := &f.miners[i]
	for k, exp := range v.tokens {
		if !now.Before(exp) {
			delete(v.tokens, k)
		}
	}
	v.tokens[tok] = now.Add(f.cfg.TokenTTL)
	v.unlocks++
	f.mu[i].Unlock()
	vnJSON(w, 200, map[string]string{"token": tok})
}

func (f *VnishFleet) authorized(v *vnMiner, r *http.Request, now time.Time) bool {
	tok := strings.TrimSpace(strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
	exp, ok := v.tokens[tok]
	return ok && now.Before(exp)
}

func vnJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}
