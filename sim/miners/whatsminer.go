package miners

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siteagent/siteagent/drivers/miner/whatsminer/wmcrypto"
)

// Whatsminer as the simulator speaks it, from MicroBT's published API
// documents (WhatsminerAPI V2.0.x; the v3 API reference, 3.0.x):
//
// API v3, TCP 4433 (firmware from May 2024): every message, both ways, is a
// 4-byte little-endian length and that many bytes of JSON; the connection
// stays open between requests (closed after 300 s idle). Replies are
// {"code":0,"when":<unix s>,"msg":…,"desc":"<cmd>"}; codes 0 ok, -1 failed,
// -2 invalid command or parameter, -3 invalid JSON item, -4 no permission.
//   - get.device.info [miner|system|power|network|salt]: "salt" gives the
//     salt that write tokens are made with; "miner" has "working":
//     "true"/"false", the mining service's state.
//   - get.miner.status summary: "hash-realtime" (TH/s), "power-realtime"
//     (W), "power-limit", "chip-temp-max", …
//   - set.* writes carry "ts" (unix s), "account" and "token", the first 8
//     base64 characters of SHA-256(cmd + password + salt + ts).
//     set.miner.service stop|start|restart|enable|disable;
//     set.miner.power_limit <W> (0…99999; btminer restarts to apply it).
//
// API v2, TCP 4028: one JSON request per connection, the reply, close.
// {"cmd":"summary"} (also "command"), status, devs, get_psu, get_version,
// get_token. Privileged commands are {"enc":1,"data":base64(AES-256-ECB(
// {"cmd":…,"token":sign,…}))} with the NUL-padded JSON, key SHA-256 of
// MD5-crypt(admin password, salt), sign MD5-crypt(key + time, newsalt),
// salt/newsalt/time from get_token; the answer is {"enc":base64(…)}.
// Codes: 131 ok, 134 token ok, 135 check token error, 136 token over max
// times (32 per client address), 137 base64 error, 23 invalid JSON, 45
// permission denied, 14 invalid command. A token lives 30 minutes.
// power_off / power_on turn the hashboards' power off and on (the control
// board stays up); adjust_power_limit reboots the miner.
//
// What the documents do not publish and the simulator chooses: a refused v3
// token answers -1 "invalid token" (also for a timestamp more than
// TokenWindow from the miner's clock); the v3 salt changes when btminer
// restarts (RotateSalt); a v2 command encrypted with a wrong key answers 23
// in clear text; errors on the v2 privileged path are answered unencrypted.
//
// Which command sheds fastest: set.miner.service stop (v3) or power_off
// (v2): the PSU's output goes off within seconds. Asleep the control board
// and idle fans draw ~20 W (SleepW; not published). Waking is a boot of the
// hashboards: MicroBT states that with fast boot enabled a miner reaches
// over 85 % of its power within 10 s; without it the time is not
// published, and the simulator assumes 10 s to power the boards and 50 s
// to ramp (WakeDelay + WakeRamp).

// WhatsminerConfig describes a fleet of Whatsminers.
type WhatsminerConfig struct {
	Miners int
	// Base is the first miner's address (default 127.20.0.1). PortV3 and
	// PortV2 are shared by all (0: free ones).
	Base           netip.Addr
	PortV3, PortV2 int
	// NoV3: pre-2024 firmware; nothing listens for API v3.
	NoV3 bool
	// Account and Password sign v3 writes ("super" / "super"); Password is
	// also v2's admin password.
	Account, Password string
	// Physics defaults to an M50S class machine: 3,276 W, 126 TH/s, 20 W
	// asleep, sleep in 1 + 2 s, wake in 10 + 50 s.
	Physics Physics
	// TokenTTL: a v2 token's life (30 min). TokenWindow: how far a v3
	// token's ts may be from the miner's clock (5 min).
	TokenTTL, TokenWindow time.Duration
	// LimitRestart: how long btminer is down to apply a new power limit
	// (20 s) before the boards ramp again.
	LimitRestart time.Duration
	// WriteDisabled: API write access is off (as shipped).
	WriteDisabled bool
	Now           func() time.Time
}

// DefaultWhatsminerPhysics is an M50S.
func DefaultWhatsminerPhysics() Physics {
	return Physics{RatedW: 3276, SleepW: 20, SleepDelay: time.Second, SleepFall: 2 * time.Second,
		WakeDelay: 10 * time.Second, WakeRamp: 50 * time.Second, HashrateTHs: 126}
}

// WhatsminerFleet is a running fleet of simulated Whatsminers.
type WhatsminerFleet struct {
	cfg       WhatsminerConfig
	v3, v2    *loopbackSet
	miners    []wmMiner
	mu        []sync.Mutex
	faults    []atomic.Uint32
	slowDelay atomic.Int64
	writesOff atomic.Bool
	ctx       context.Context
	cancel    context.CancelFunc
	conns     sync.Map // open v3 connections, closed by Close
	seq       atomic.Uint64
	counters  Counters
}

type wmMiner struct {
	m         machine
	limitW    float64   // configured power limit
	restartAt time.Time // btminer restarting to apply a limit: boards ramp then
	salt3     string    // v3 salt
	salt2     string    // the salt of the stored admin password hash (v2)
	aesKey    []byte    // v2, computed on first use
	tokens    map[string]wmToken
	logins    int // get_token answered
	saltReads int // v3 salts handed out
	writes    int // write commands acted on
	lastWrite string
}

type wmToken struct {
	client  string
	expires time.Time
}

// WhatsminerState is one simulated Whatsminer as a test sees it.
type WhatsminerState struct {
	Mode        Mode
	Working     bool // v3 "working"; v2 mineroff is its negation
	PowerW      float64
	HashrateTHs float64
	LimitW      float64
	Logins      int // v2 tokens handed out
	SaltReads   int // v3 salts handed out
	Writes      int // write commands acted on
	LastWrite   string
}

// StartWhatsminer starts the fleet on loopback, every miner hashing.
func StartWhatsminer(cfg WhatsminerConfig) (*WhatsminerFleet, error) {
	if cfg.Miners < 1 {
		return nil, fmt.Errorf("need at least one miner, got %d", cfg.Miners)
	}
	if !cfg.Base.IsValid() {
		cfg.Base = netip.MustParseAddr("127.20.0.1")
	}
	if cfg.Account == "" {
		cfg.Account = "super"
	}
	if cfg.Password == "" {
		cfg.Password = "super"
	}
	if cfg.Physics.RatedW == 0 {
		cfg.Physics = DefaultWhatsminerPhysics()
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = 30 * time.Minute
	}
	if cfg.TokenWindow == 0 {
		cfg.TokenWindow = 5 * time.Minute
	}
	if cfg.LimitRestart == 0 {
		cfg.LimitRestart = 20 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &WhatsminerFleet{cfg: cfg, miners: make([]wmMiner, cfg.Miners), mu: make([]sync.Mutex, cfg.Miners),
		faults: make([]atomic.Uint32, cfg.Miners)}
	f.slowDelay.Store(int64(3 * time.Second))
	f.writesOff.Store(cfg.WriteDisabled)
	f.ctx, f.cancel = context.WithCancel(context.Background())
	now := cfg.Now()
	for i := range f.miners {
		f.miners[i] = wmMiner{m: machine{mode: Mining, since: now, targetW: cfg.Physics.RatedW}, limitW: cfg.Physics.RatedW,
			salt3: f.newID(), salt2: f.newID(), tokens: map[string]wmToken{}}
	}
	var err error
	if f.v2, err = listenLoopback(cfg.Base, cfg.Miners, cfg.PortV2); err != nil {
		return nil, err
	}
	if !cfg.NoV3 {
		if f.v3, err = listenLoopback(cfg.Base, cfg.Miners, cfg.PortV3); err != nil {
			f.v2.close()
			return nil, err
		}
		f.v3.serve(f.handleV3)
	}
	f.v2.serve(f.handleV2)
	return f, nil
}

// Hosts lists each miner's address without a port (the driver adds its
// PortV3 / PortV2).
func (f *WhatsminerFleet) Hosts() []string {
	out := make([]string, len(f.v2.addrs))
	for i, a := range f.v2.addrs {
		out[i], _, _ = net.SplitHostPort(a)
	}
	return out
}

// PortV3 is the port API v3 listens on (0 with NoV3); PortV2 API v2's.
func (f *WhatsminerFleet) PortV3() int {
	if f.v3 == nil {
		return 0
	}
	return f.v3.port
}

func (f *WhatsminerFleet) PortV2() int { return f.v2.port }

// Close stops every listener and open connection.
func (f *WhatsminerFleet) Close() {
	f.cancel()
	if f.v3 != nil {
		f.v3.close()
	}
	f.v2.close()
	f.conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	if f.v3 != nil {
		f.v3.wg.Wait()
	}
	f.v2.wg.Wait()
}

// SetFault gives miner i a fault (NoFault clears it). FaultRefusing resets
// connections on both ports.
func (f *WhatsminerFleet) SetFault(i int, fault Fault) { f.faults[i].Store(uint32(fault)) }

// SetSlowDelay sets how long a FaultSlow miner takes to answer.
func (f *WhatsminerFleet) SetSlowDelay(d time.Duration) { f.slowDelay.Store(int64(d)) }

// SetWriteDisabled turns API write access off (or on) on every miner.
func (f *WhatsminerFleet) SetWriteDisabled(off bool) { f.writesOff.Store(off) }

// Counters counts connections and requests on both ports.
func (f *WhatsminerFleet) Counters() *Counters { return &f.counters }

// RotateSalt is what a btminer restart does to miner i's credentials: a
// new v3 salt and every v2 token forgotten.
func (f *WhatsminerFleet) RotateSalt(i int) {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	f.miners[i].salt3 = f.newID()
	clear(f.miners[i].tokens)
}

// ExpireTokens ages miner i's v2 tokens past their life.
func (f *WhatsminerFleet) ExpireTokens(i int) {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	for k, t := range f.miners[i].tokens {
		t.expires = time.Time{}
		f.miners[i].tokens[k] = t
	}
}

// State returns miner i's state now.
func (f *WhatsminerFleet) State(i int) WhatsminerState {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	now := f.cfg.Now()
	w := &f.miners[i]
	f.settle(w, now)
	return WhatsminerState{Mode: w.m.mode, Working: f.working(w), PowerW: w.m.powerAt(&f.cfg.Physics, now),
		HashrateTHs: w.m.hashrate(&f.cfg.Physics, now), LimitW: w.limitW, Logins: w.logins, SaltReads: w.saltReads,
		Writes: w.writes, LastWrite: w.lastWrite}
}

// Totals sums the fleet now: power in W and how many miners are in each
// mode.
func (f *WhatsminerFleet) Totals() (powerW float64, modes [4]int) {
	for i := range f.miners {
		s := f.State(i)
		powerW += s.PowerW
		modes[s.Mode]++
	}
	return powerW, modes
}

func (f *WhatsminerFleet) fault(i int) Fault { return Fault(f.faults[i].Load()) }

// settle finishes transitions, including the restart after a power limit.
func (f *WhatsminerFleet) settle(w *wmMiner, now time.Time) {
	if !w.restartAt.IsZero() && !now.Before(w.restartAt) {
		w.m.wake(&f.cfg.Physics, w.restartAt)
		w.restartAt = time.Time{}
	}
	w.m.settle(&f.cfg.Physics, now)
}

// working: the mining service runs (or restarts to apply a limit).
func (f *WhatsminerFleet) working(w *wmMiner) bool {
	return w.m.mode == Mining || w.m.mode == Waking || !w.restartAt.IsZero()
}

func (f *WhatsminerFleet) setService(w *wmMiner, on bool, now time.Time) {
	w.restartAt = time.Time{}
	if on {
		w.m.wake(&f.cfg.Physics, now)
	} else {
		w.m.sleep(&f.cfg.Physics, now)
	}
}

// setLimit applies a power limit the way btminer does: stop, restart,
// ramp to the new target. A sleeping miner just keeps the new limit.
func (f *WhatsminerFleet) setLimit(w *wmMiner, watts float64, now time.Time) {
	w.limitW = watts
	w.m.targetW = min(watts, f.cfg.Physics.RatedW)
	if f.working(w) {
		w.m.sleep(&f.cfg.Physics, now)
		w.restartAt = now.Add(f.cfg.LimitRestart)
	}
}

// newID is an 8-character salt or token: [0-9A-Za-z], unpredictable enough
// for a simulator and reproducible from the sequence.
func (f *WhatsminerFleet) newID() string {
	const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	n := f.seq.Add(1)
	x := n*0x9E3779B97F4A7C15 ^ uint64(time.Now().UnixNano())
	var b [8]byte
	for i := range b {
		x ^= x >> 29
		x *= 0xBF58476D1CE4E5B9
		b[i] = alphabet[(x>>32)%uint64(len(alphabet))]
	}
	return string(b[:])
}

func (f *WhatsminerFleet) v2Key(w *wmMiner) []byte {
	if w.aesKey == nil {
		w.aesKey = wmcrypto.V2AESKey(wmcrypto.V2Key(f.cfg.Password, w.salt2))
	}
	return w.aesKey
}
