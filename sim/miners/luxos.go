package miners

import (
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// LuxOS as the simulator speaks it, from Luxor's published API docs
// (docs.luxor.tech, firmware API): the cgminer API on TCP 4028 plus
// LUXminer commands.
//
//   - logon: creates the one session the miner allows and returns
//     {"SESSION":[{"SessionID":"yJN2nlj1"}]} with STATUS S, Code 316,
//     "Session created"; while another session is alive it fails (STATUS E).
//     A session expires one minute after its last use (SessionTTL).
//   - session: the active session's ID, or "" (Code 319).
//   - logoff <id>: ends the session.
//   - curtail <id>,sleep|wakeup: {"CURTAIL":[{"Action":"sleep mode"}]} or
//     "wake up", Code 335, "Curtailment command sent". The command only
//     starts the transition: sleep turns the hashboards and the PSU off
//     over a few seconds (SleepDelay + SleepFall); wakeup powers the PSU
//     and ramps the boards like a reboot (WakeDelay + WakeRamp).
//   - profileset <id>,<profile>: a profile by name ("default", "+1",
//     "-3") or by power ("3000W", "2.8kW") or hashrate ("95THs"); answers
//     {"PROFILE":[{"Board":0,"FrequencyStep":5,"Profile":...,
//     "VoltageStep":0.05}]}, Code 321, "Profile Set".
//   - power: {"POWER":[{"PSU":true,"Watts":3215}]}: PSU says whether the
//     figure is the PSU's measurement or LuxOS's estimate.
//   - config: {"CONFIG":[{"CurtailMode":"None"|"Sleep","Profile":...}]}
//   - summary, stats, devs, pools, version as cgminer.
//
// What the docs do not publish (the codes and messages of failures, the
// profile picked for a power between two profiles, the PSU field's value
// on models without PMBus) is the simulator's own choice: failures are
// STATUS E with codes from 400 up, a power selects the highest profile
// that does not exceed it, PSU is true.
//
// Which command sheds fastest: curtail sleep (one session command; the
// miner is off a few seconds later). Asleep the PSU is off: the control
// board draws ~15 W (SleepW). Waking takes about a minute (boards ramp as
// on a reboot); curtail wakeup with mode=unsafe is faster but wears chips.

// LuxOSConfig describes a fleet of LuxOS miners.
type LuxOSConfig struct {
	Miners int
	// Base is the first miner's address (default 127.10.0.1); Port is
	// shared (0: a free one).
	Base netip.Addr
	Port int
	// Physics defaults to an S19j Pro class machine: 3,250 W, 104 TH/s,
	// 15 W asleep, sleep in 2 + 3 s, wake in 15 + 45 s.
	Physics Physics
	// SessionTTL: a session expires this long after its last use (1 min).
	SessionTTL time.Duration
	// NoPSUPower: "power" answers PSU false (a model whose PSU has no
	// PMBus: the figure is LuxOS's estimate).
	NoPSUPower bool
	// Quirks bends replies the way shipping firmware does.
	Quirks bool
	Now    func() time.Time
}

// DefaultLuxOSPhysics is a LuxOS S19j Pro.
func DefaultLuxOSPhysics() Physics {
	return Physics{RatedW: 3250, SleepW: 15, SleepDelay: 2 * time.Second, SleepFall: 3 * time.Second,
		WakeDelay: 15 * time.Second, WakeRamp: 45 * time.Second, HashrateTHs: 104}
}

// LuxOSFleet is a running fleet of simulated LuxOS miners.
type LuxOSFleet struct {
	cfg    LuxOSConfig
	api    *apiServer
	miners []luxMiner
	mu     []sync.Mutex
	seq    uint64
	seqMu  sync.Mutex
}

type luxMiner struct {
	m         machine
	profile   int // steps from default
	session   string
	lastUse   time.Time
	held      bool // another actor keeps the session alive
	psuOff    bool
	commanded int // curtail commands acted on
}

const luxDesc = "LUXminer 2024.5.1.152220-e0cc6d2d"

// LuxOS profiles: 16 steps down and 8 up from the default, each about 4 %
// of power (25 MHz per step on the hashboards).
const (
	luxMinProfile = -16
	luxMaxProfile = 8
	luxStep       = 0.04
)

// StartLuxOS starts the fleet on loopback, every miner hashing at its
// default profile.
func StartLuxOS(cfg LuxOSConfig) (*LuxOSFleet, error) {
	if cfg.Miners < 1 {
		return nil, fmt.Errorf("need at least one miner, got %d", cfg.Miners)
	}
	if !cfg.Base.IsValid() {
		cfg.Base = netip.MustParseAddr("127.10.0.1")
	}
	if cfg.Physics.RatedW == 0 {
		cfg.Physics = DefaultLuxOSPhysics()
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = time.Minute
	}
	api, err := newAPIServer(cfg.Base, cfg.Miners, cfg.Port, cfg.Now)
	if err != nil {
		return nil, err
	}
	f := &LuxOSFleet{cfg: cfg, api: api, miners: make([]luxMiner, cfg.Miners), mu: make([]sync.Mutex, cfg.Miners)}
	now := api.now()
	for i := range f.miners {
		f.miners[i].m = machine{mode: Mining, since: now, targetW: cfg.Physics.RatedW}
	}
	api.respond = f.respond
	if cfg.Quirks {
		api.quirk = firmwareQuirks
	}
	api.start()
	return f, nil
}

// Addrs lists each miner's "host:port".
func (f *LuxOSFleet) Addrs() []string { return f.api.set.addrs }

// Port is the port every miner listens on.
func (f *LuxOSFleet) Port() int { return f.api.set.port }

// Close stops every listener.
func (f *LuxOSFleet) Close() { f.api.close() }

// SetFault gives miner i a fault (NoFault clears it).
func (f *LuxOSFleet) SetFault(i int, fault Fault) { f.api.faults[i].Store(uint32(fault)) }

// SetSlowDelay sets how long a FaultSlow miner takes to answer.
func (f *LuxOSFleet) SetSlowDelay(d time.Duration) { f.api.slowDelay = d }

// Counters counts connections and requests.
func (f *LuxOSFleet) Counters() *Counters { return &f.api.Counters }

// CommandCount is how many times command was asked, over all miners.
func (f *LuxOSFleet) CommandCount(command string) uint64 { return f.api.commandCount(command) }

// OnCommand calls fn with every command a miner receives (its index,
// the command, its parameter with the session ID, and the wall time).
func (f *LuxOSFleet) OnCommand(fn func(i int, command, parameter string, at time.Time)) {
	f.api.onCommand.Store(&fn)
}

// HoldSession makes another actor hold miner i's only session (held) or
// lets it go.
func (f *LuxOSFleet) HoldSession(i int, held bool) {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	lm := &f.miners[i]
	lm.held = held
	if held {
		lm.session, lm.lastUse = "0therAct", f.api.now()
	} else if lm.session == "0therAct" {
		lm.session = ""
	}
}

// MinerState is one simulated miner as a test sees it.
type MinerState struct {
	Mode        Mode
	PowerW      float64
	HashrateTHs float64
	Session     string
	Profile     string
	TargetW     float64
}

// State returns miner i's state now.
func (f *LuxOSFleet) State(i int) MinerState {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	now := f.api.now()
	lm := &f.miners[i]
	lm.m.settle(&f.cfg.Physics, now)
	return MinerState{Mode: lm.m.mode, PowerW: lm.m.powerAt(&f.cfg.Physics, now), HashrateTHs: lm.m.hashrate(&f.cfg.Physics, now),
		Session: f.liveSession(lm, now), Profile: profileName(lm.profile), TargetW: lm.m.targetW}
}

// Totals sums the fleet now: power in W and how many miners are in each
// mode.
func (f *LuxOSFleet) Totals() (powerW float64, modes [4]int) {
	for i := range f.miners {
		s := f.State(i)
		powerW += s.PowerW
		modes[s.Mode]++
	}
	return powerW, modes
}

// Reset puts every miner back to hashing at its default profile, with no
// session (between benchmark rounds).
func (f *LuxOSFleet) Reset() {
	now := f.api.now()
	for i := range f.miners {
		f.mu[i].Lock()
		f.miners[i] = luxMiner{m: machine{mode: Mining, since: now, targetW: f.cfg.Physics.RatedW}}
		f.mu[i].Unlock()
	}
}

// SleepAll puts every miner to sleep at once (a scenario's starting
// point).
func (f *LuxOSFleet) SleepAll() {
	for i := range f.miners {
		f.mu[i].Lock()
		f.miners[i].m = machine{mode: Sleeping, since: f.api.now(), targetW: f.miners[i].m.targetW}
		f.mu[i].Unlock()
	}
}

func (f *LuxOSFleet) liveSession(lm *luxMiner, now time.Time) string {
	if lm.session != "" && !lm.held && now.Sub(lm.lastUse) >= f.cfg.SessionTTL {
		lm.session = ""
	}
	return lm.session
}

func (f *LuxOSFleet) newSessionID() string {
	f.seqMu.Lock()
	f.seq++
	n := f.seq
	f.seqMu.Unlock()
	const alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	var b [8]byte
	x := n*0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019
	for i := range b {
		b[i] = alphabet[x%uint64(len(alphabet))]
		x /= uint64(len(alphabet))
		x ^= n << (i + 1)
	}
	return string(b[:])
}

func profileName(step int) string {
	if step == 0 {
		return "default"
	}
	return fmt.Sprintf("%+d", step)
}

func (f *LuxOSFleet) profileW(step int) float64 {
	return math.Round(f.cfg.Physics.RatedW * (1 + luxStep*float64(step)))
}

// selectProfile resolves a profileset argument to a profile step.
func (f *LuxOSFleet) selectProfile(arg string) (int, error) {
	a := strings.TrimSpace(arg)
	switch {
	case a == "default":
		return 0, nil
	case strings.HasSuffix(a, "kW") || (strings.HasSuffix(a, "W") && !strings.HasSuffix(a, "kW")):
		mult, num := 1.0, strings.TrimSuffix(a, "W")
		if strings.HasSuffix(a, "kW") {
			mult, num = 1000, strings.TrimSuffix(a, "kW")
		}
		w, err := strconv.ParseFloat(num, 64)
		if err != nil || w <= 0 || math.IsInf(w, 0) {
			return 0, fmt.Errorf("invalid power selector %q", arg)
		}
		w *= mult
		best := luxMinProfile
		for s := luxMinProfile; s <= luxMaxProfile; s++ {
			if f.profileW(s) <= w {
				best = s
			}
		}
		return best, nil
	case strings.HasSuffix(a, "THs"):
		ths, err := strconv.ParseFloat(strings.TrimSuffix(a, "THs"), 64)
		if err != nil || ths <= 0 {
			return 0, fmt.Errorf("invalid hashrate selector %q", arg)
		}
		best := luxMinProfile
		for s := luxMinProfile; s <= luxMaxProfile; s++ {
			if f.cfg.Physics.HashrateTHs*(1+luxStep*float64(s)) <= ths {
				best = s
			}
		}
		return best, nil
	case strings.HasPrefix(a, "+") || strings.HasPrefix(a, "-"):
		s, err := strconv.Atoi(a)
		if err != nil || s < luxMinProfile || s > luxMaxProfile {
			return 0, fmt.Errorf("no profile %q", arg)
		}
		return s, nil
	}
	return 0, fmt.Errorf("no profile %q", arg)
}

func (f *LuxOSFleet) respond(i int, command, param string, now time.Time) ([]byte, bool) {
	// The two commands of every shed take a short path: a fresh
	// goroutine per connection pays for every byte of stack the big
	// switch below needs.
	if command == "logon" || command == "curtail" {
		return f.respondShed(i, command, param, now), false
	}
	return f.respondAll(i, command, param, now)
}

// respondShed answers logon and curtail.
func (f *LuxOSFleet) respondShed(i int, command, param string, now time.Time) []byte {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	lm := &f.miners[i]
	p := &f.cfg.Physics
	lm.m.settle(p, now)
	sid, action, _ := strings.Cut(param, ",")
	ignoring := f.api.fault(i) == FaultIgnoring
	switch command {
	case "logon":
		if s := f.liveSession(lm, now); s != "" {
			return statusReply(now, 'E', 401, "Another session is active", luxDesc)
		}
		lm.session, lm.lastUse = f.newSessionID(), now
		// The two commands of every shed are written directly: at
		// thousands a second the generic encoder showed in profiles.
		return fmt.Appendf(make([]byte, 0, 192), `{"SESSION":[{"SessionID":%q}],"STATUS":[{"Code":316,"Description":%q,"Msg":"Session created","STATUS":"S","When":%d}],"id":1}`,
			lm.session, luxDesc, now.Unix())
	case "curtail":
		if live := f.liveSession(lm, now); live == "" || sid != live {
			return statusReply(now, 'E', 402, "Invalid session id", luxDesc)
		}
		lm.lastUse = now
		if action == "" {
			return statusReply(now, 'E', 403, "Missing curtailment action", luxDesc)
		}
		var done string
		act, _, _ := strings.Cut(action, ",") // further options (mode=unsafe) are accepted and ignored
		switch strings.TrimSpace(act) {
		case "sleep":
			done = "sleep mode"
			if !ignoring {
				lm.m.sleep(p, now)
				lm.commanded++
			}
		case "wakeup":
			done = "wake up"
			if !ignoring {
				lm.m.wake(p, now)
				lm.commanded++
			}
		default:
			return statusReply(now, 'E', 403, fmt.Sprintf("Invalid curtailment action %q: use sleep or wakeup", act), luxDesc)
		}
		return fmt.Appendf(make([]byte, 0, 192), `{"CURTAIL":[{"Action":%q}],"STATUS":[{"Code":335,"Description":%q,"Msg":"Curtailment command sent","STATUS":"S","When":%d}],"id":1}`,
			done, luxDesc, now.Unix())
	}
	return statusReply(now, 'E', 14, "Invalid command", luxDesc)
}

// respondAll answers everything else.
func (f *LuxOSFleet) respondAll(i int, command, param string, now time.Time) ([]byte, bool) {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	lm := &f.miners[i]
	p := &f.cfg.Physics
	lm.m.settle(p, now)
	args := strings.Split(param, ",")
	// checkSession validates and refreshes the session a command names.
	checkSession := func() []byte {
		live := f.liveSession(lm, now)
		if live == "" || args[0] != live || args[0] == "" {
			return statusReply(now, 'E', 402, "Invalid session id", luxDesc)
		}
		lm.lastUse = now
		return nil
	}
	ignoring := f.api.fault(i) == FaultIgnoring
	switch command {
	case "session":
		return reply(now, 'S', 319, "Session information", luxDesc, map[string]any{"SESSION": []any{map[string]any{"SessionID": f.liveSession(lm, now)}}}), true
	case "logoff":
		if e := checkSession(); e != nil {
			return e, false
		}
		lm.session = ""
		return statusReply(now, 'S', 318, "Session terminated", luxDesc), false
	case "kill":
		lm.session, lm.held = "", false
		return statusReply(now, 'S', 320, "Session killed", luxDesc), false
	case "profileset":
		if e := checkSession(); e != nil {
			return e, false
		}
		if len(args) < 2 {
			return statusReply(now, 'E', 404, "Missing profile", luxDesc), false
		}
		step, err := f.selectProfile(args[len(args)-1])
		if err != nil {
			return statusReply(now, 'E', 404, err.Error(), luxDesc), false
		}
		if !ignoring {
			lm.profile = step
			w := f.profileW(step)
			if lm.m.mode == Mining {
				// Re-tuning the boards moves power over the wake ramp.
				lm.m.fromW = lm.m.powerAt(p, now)
				lm.m.mode, lm.m.since = Waking, now.Add(-p.WakeDelay)
			}
			lm.m.targetW = w
		}
		return reply(now, 'S', 321, "Profile Set", luxDesc, map[string]any{"PROFILE": []any{map[string]any{
			"Board": 0, "FrequencyStep": 5, "Profile": profileName(step), "VoltageStep": 0.05}}}), false
	case "profiles":
		var list []any
		for s := luxMinProfile; s <= luxMaxProfile; s++ {
			list = append(list, map[string]any{"Profile Name": profileName(s), "Watts": f.profileW(s),
				"Hashrate": round(p.HashrateTHs*(1+luxStep*float64(s)), 1), "IsDynamic": false})
		}
		return reply(now, 'S', 327, "Profiles", luxDesc, map[string]any{"PROFILES": list}), true
	case "power":
		return reply(now, 'S', 339, "Power", luxDesc, map[string]any{"POWER": []any{map[string]any{
			"PSU": !f.cfg.NoPSUPower, "Watts": math.Round(lm.m.powerAt(p, now))}}}), true
	case "config":
		mode := "None"
		if lm.m.mode == Sleeping || lm.m.mode == Stopping {
			mode = "Sleep"
		}
		return reply(now, 'S', 33, "CGMiner config", luxDesc, map[string]any{"CONFIG": []any{map[string]any{
			"ASC Count": 3, "CurtailMode": mode, "Profile": profileName(lm.profile), "ActualPowerTarget": f.profileW(lm.profile),
			"Hostname": fmt.Sprintf("luxos-%d", i), "Pool Count": 1, "Strategy": "Failover", "Log Interval": 5, "Device Code": "",
			"OS": "Linux", "IsAtmEnabled": false, "IsTuning": false}}}), true
	case "summary":
		ghs := round(lm.m.hashrate(p, now)*1000, 2)
		return reply(now, 'S', 11, "Summary", luxDesc, map[string]any{"SUMMARY": []any{map[string]any{
			"Elapsed": 86400, "GHS 5s": ghs, "GHS av": ghs, "Accepted": 5120, "Rejected": 3, "Hardware Errors": 12,
			"Utility": 3.55, "Best Share": 123456789}}}), true
	case "stats":
		w := lm.m.powerAt(p, now)
		// Boards cool towards ambient while asleep.
		temp := round(25+40*w/p.RatedW+float64(i%9), 1)
		rate := round(lm.m.hashrate(p, now)*1000/3, 2)
		return reply(now, 'S', 70, "CGMiner stats", luxDesc, map[string]any{"STATS": []any{
			map[string]any{"CGMiner": "LUXminer", "Miner": luxDesc, "Type": "Antminer S19j Pro"},
			map[string]any{"STATS": 0, "ID": "BTM_SOC0", "Elapsed": 86400, "temp_num": 3, "temp1": temp - 6, "temp2": temp - 5, "temp3": temp - 6,
				"temp2_1": temp, "temp2_2": temp + 1, "temp2_3": temp, "chain_rate1": rate, "chain_rate2": rate, "chain_rate3": rate,
				"total_rateideal": round(p.HashrateTHs*1000, 2), "rate_unit": "GH"},
		}}), true
	case "devs":
		rate := round(lm.m.hashrate(p, now)*1e6/3, 0)
		var devs []any
		for b := 0; b < 3; b++ {
			devs = append(devs, map[string]any{"ASC": b, "Name": "LUX", "ID": b, "Enabled": "Y", "Status": "Alive", "MHS 5s": rate})
		}
		return reply(now, 'S', 9, "3 ASC(s)", luxDesc, map[string]any{"DEVS": devs}), true
	case "pools":
		return reply(now, 'S', 7, "1 Pool(s)", luxDesc, map[string]any{"POOLS": []any{map[string]any{
			"POOL": 0, "URL": "stratum+tcp://pool.example:700", "Status": "Alive", "Stratum Active": true, "User": "site.lux" + strconv.Itoa(i)}}}), true
	case "version":
		return reply(now, 'S', 22, "LUXminer versions", luxDesc, map[string]any{"VERSION": []any{map[string]any{"LUXminer": "2024.5.1", "API": "3.7"}}}), true
	}
	return statusReply(now, 'E', 14, "Invalid command", luxDesc), false
}
