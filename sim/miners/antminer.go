package miners

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Antminer stock firmware as the simulator speaks it: lighttpd CGIs under
// /cgi-bin/ behind HTTP digest authentication (MD5, qop "auth", realm
// "antMiner Configuration", user root), as Bitmain's web UI uses them:
//
//   - GET get_miner_conf.cgi: the config, with "bitmain-work-mode" as a
//     string ("0" normal, "1" sleep, "3" low power) and the pools, fans
//     and frequency level.
//   - POST set_miner_conf.cgi: a JSON body (the UI sends it as
//     text/plain). The mode is honoured only as "miner-mode", a JSON
//     integer; anything else (a string, "bitmain-work-mode") is answered
//     {"stats":"success","code":"M000","msg":"OK!"} and ignored, as field
//     reports of S19-series firmware describe. The CGI answers only after
//     bmminer has restarted with the new config: WriteDelay, ~20 s. A
//     client that hangs up does not stop the write.
//   - GET stats.cgi: STATS[0] with rate_5s / rate_avg / rate_ideal in
//     rate_unit (GH/s), "miner-mode", and per chain temp_pcb / temp_chip.
//   - GET summary.cgi, get_system_info.cgi.
//
// Bitmain publishes no API document for these CGIs; the shapes follow what
// the web UI and field tools exchange. Failures the simulator chooses: a
// body that is not JSON answers {"stats":"error","code":"M001",
// "msg":"Illegal json!"}; nonces live NonceTTL and an expired one is
// answered 401 with stale=true.
//
// Which command sheds fastest: sleep mode (miner-mode 1), one config write;
// it takes effect when the CGI answers, ~20 s after the request. Asleep the
// hashboards are off; Bitmain publishes no figure for the draw, and the
// simulator assumes 60 W (control board, PSU and fans idling), the
// estimate the fleet uses (miner.DefaultSleepW). Waking restarts
// bmminer and re-initialises the chains: field reports give 5 to 10 min to
// full hashrate on an S19 XP; the simulator assumes 1 min before the boards
// draw power and 4 min of ramp.

// AntminerConfig describes a fleet of stock-firmware Antminers.
type AntminerConfig struct {
	Miners int
	// Base is the first miner's address (default 127.30.0.1); Port is
	// shared (0: a free one; real miners use 80).
	Base netip.Addr
	Port int
	// User and Password for digest authentication: "root" / "root".
	User, Password string
	// Physics defaults to an S19j Pro: 3,250 W, 104 TH/s, 60 W asleep,
	// sleep falls in 5 s once applied, wake 60 + 240 s.
	Physics Physics
	// LowPowerW is the draw in low-power mode (miner-mode 3): 75 % of
	// RatedW unless set.
	LowPowerW float64
	// WriteDelay: how long set_miner_conf.cgi takes (20 s).
	WriteDelay time.Duration
	// NonceTTL: a digest nonce's life (10 min).
	NonceTTL time.Duration
	// NoModeInStats: older firmware whose stats.cgi has no "miner-mode".
	NoModeInStats bool
	Now           func() time.Time
}

// DefaultAntminerPhysics is an S19j Pro on stock firmware.
func DefaultAntminerPhysics() Physics {
	return Physics{RatedW: 3250, SleepW: 60, SleepDelay: 0, SleepFall: 5 * time.Second,
		WakeDelay: time.Minute, WakeRamp: 4 * time.Minute, HashrateTHs: 104}
}

const amRealm = "antMiner Configuration"

// AntminerFleet is a running fleet of simulated stock Antminers.
type AntminerFleet struct {
	cfg    AntminerConfig
	http   *amHTTP
	miners []amMiner
	mu     []sync.Mutex // state
	cgi    []sync.Mutex // one config write at a time, as the CGI does
	nonces sync.Map     // nonce → issued time.Time
	seq    amCounter
}

type amMiner struct {
	m         machine
	mode      int // effective work mode
	pools     []map[string]string
	fanCtrl   bool
	fanPWM    string
	freqLevel string
	writes    int // mode writes applied
	ignored   int // writes answered M000 and not applied
	inFlight  int // writes being processed
	posts     int // set_miner_conf requests received
}

// AntminerState is one simulated Antminer as a test sees it.
type AntminerState struct {
	Mode        Mode
	WorkMode    int // 0 normal, 1 sleep, 3 low power
	PowerW      float64
	HashrateTHs float64
	Writes      int // config writes that changed the mode
	Ignored     int // writes acknowledged and not applied
	InFlight    int // writes the CGI is still processing
	Posts       int // set_miner_conf requests received
	Pools       int
}

// StartAntminer starts the fleet on loopback, every miner hashing.
func StartAntminer(cfg AntminerConfig) (*AntminerFleet, error) {
	if cfg.Miners < 1 {
		return nil, fmt.Errorf("need at least one miner, got %d", cfg.Miners)
	}
	if !cfg.Base.IsValid() {
		cfg.Base = netip.MustParseAddr("127.30.0.1")
	}
	if cfg.User == "" {
		cfg.User = "root"
	}
	if cfg.Password == "" {
		cfg.Password = "root"
	}
	if cfg.Physics.RatedW == 0 {
		cfg.Physics = DefaultAntminerPhysics()
	}
	if cfg.LowPowerW == 0 {
		cfg.LowPowerW = 0.75 * cfg.Physics.RatedW
	}
	if cfg.WriteDelay == 0 {
		cfg.WriteDelay = 20 * time.Second
	}
	if cfg.NonceTTL == 0 {
		cfg.NonceTTL = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &AntminerFleet{cfg: cfg, miners: make([]amMiner, cfg.Miners), mu: make([]sync.Mutex, cfg.Miners),
		cgi: make([]sync.Mutex, cfg.Miners)}
	now := cfg.Now()
	for i := range f.miners {
		f.miners[i] = amMiner{m: machine{mode: Mining, since: now, targetW: cfg.Physics.RatedW}, fanPWM: "100", freqLevel: "100",
			pools: []map[string]string{
				{"url": "stratum+tcp://pool.example:3333", "user": "sim.am" + strconv.Itoa(i), "pass": "123"},
				{"url": "stratum+tcp://pool.example:443", "user": "sim.am" + strconv.Itoa(i), "pass": "123"},
				{"url": "", "user": "", "pass": ""},
			}}
	}
	var err error
	if f.http, err = newAMHTTP(cfg.Base, cfg.Miners, cfg.Port, f.handle); err != nil {
		return nil, err
	}
	return f, nil
}

// Addrs lists each miner's "host:port".
func (f *AntminerFleet) Addrs() []string { return f.http.set.addrs }

// Port is the port every miner's web server listens on.
func (f *AntminerFleet) Port() int { return f.http.set.port }

// Close stops every listener and connection.
func (f *AntminerFleet) Close() { f.http.close() }

// SetFault gives miner i a fault (NoFault clears it). FaultIgnoring
// acknowledges config writes without applying them.
func (f *AntminerFleet) SetFault(i int, fault Fault) { f.http.faults[i].Store(uint32(fault)) }

// SetSlowDelay sets how long a FaultSlow miner takes to answer.
func (f *AntminerFleet) SetSlowDelay(d time.Duration) { f.http.slowDelay.Store(int64(d)) }

// Counters counts connections and requests.
func (f *AntminerFleet) Counters() *Counters { return &f.http.counters }

// State returns miner i's state now.
func (f *AntminerFleet) State(i int) AntminerState {
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	now := f.cfg.Now()
	a := &f.miners[i]
	a.m.settle(&f.cfg.Physics, now)
	return AntminerState{Mode: a.m.mode, WorkMode: a.mode, PowerW: a.m.powerAt(&f.cfg.Physics, now),
		HashrateTHs: a.m.hashrate(&f.cfg.Physics, now), Writes: a.writes, Ignored: a.ignored, InFlight: a.inFlight,
		Posts: a.posts, Pools: len(a.pools)}
}

// Totals sums the fleet now: power in W and how many miners are in each
// mode.
func (f *AntminerFleet) Totals() (powerW float64, modes [4]int) {
	for i := range f.miners {
		s := f.State(i)
		powerW += s.PowerW
		modes[s.Mode]++
	}
	return powerW, modes
}

func (f *AntminerFleet) handle(i int, w http.ResponseWriter, r *http.Request) {
	if !f.authorized(w, r) {
		return
	}
	now := f.cfg.Now()
	switch r.URL.Path {
	case "/cgi-bin/get_miner_conf.cgi":
		f.mu[i].Lock()
		a := &f.miners[i]
		doc := map[string]any{"pools": a.pools, "api-listen": true, "api-network": true,
			"api-groups": "A:stats:pools:devs:summary:version", "api-allow": "A:0/0,W:*",
			"bitmain-fan-ctrl": a.fanCtrl, "bitmain-fan-pwm": a.fanPWM, "bitmain-use-vil": true,
			"bitmain-freq": "675", "bitmain-voltage": "1400", "bitmain-ccdelay": "0", "bitmain-pwth": "0",
			"bitmain-work-mode": strconv.Itoa(a.mode), "bitmain-freq-level": a.freqLevel}
		f.mu[i].Unlock()
		amJSON(w, doc)
	case "/cgi-bin/set_miner_conf.cgi":
		f.setConf(i, w, r)
	case "/cgi-bin/stats.cgi":
		amJSON(w, f.stats(i, now))
	case "/cgi-bin/summary.cgi":
		f.mu[i].Lock()
		a := &f.miners[i]
		a.m.settle(&f.cfg.Physics, now)
		gh := a.m.hashrate(&f.cfg.Physics, now) * 1000
		f.mu[i].Unlock()
		amJSON(w, map[string]any{
			"STATUS": map[string]any{"STATUS": "S", "when": now.Unix(), "Msg": "summary", "api_version": "1.0.0"},
			"INFO":   amInfo(),
			"SUMMARY": []any{map[string]any{"elapsed": 86400, "rate_5s": round(gh, 2), "rate_30m": round(gh, 2),
				"rate_avg": round(gh, 2), "rate_ideal": f.cfg.Physics.HashrateTHs * 1000, "rate_unit": "GH/s",
				"hw_all": 12, "bestshare": 123456789, "status": []any{
					map[string]any{"type": "rate", "status": "s", "code": 0, "msg": ""},
					map[string]any{"type": "network", "status": "s", "code": 0, "msg": ""},
					map[string]any{"type": "fans", "status": "s", "code": 0, "msg": ""},
					map[string]any{"type": "temp", "status": "s", "code": 0, "msg": ""}}}},
		})
	case "/cgi-bin/get_system_info.cgi":
		host, _, _ := net.SplitHostPort(f.http.set.addrs[i])
		amJSON(w, map[string]any{"minertype": "Antminer S19j Pro", "nettype": "DHCP", "netdevice": "eth0",
			"macaddr":  fmt.Sprintf("02:A3:%02X:%02X:%02X:%02X", i>>24&255, i>>16&255, i>>8&255, i&255),
			"hostname": "Antminer", "ipaddress": host, "netmask": "255.0.0.0", "gateway": "", "dnsservers": "",
			"system_mode": "GNU/Linux", "system_kernel_version": "Linux 4.9.38 #1 SMP PREEMPT",
			"system_filesystem_version": "Mon Dec 26 17:10:01 CST 2022", "firmware_type": "Release",
			"serinum": "JYZZSIM" + strconv.Itoa(100000+i)})
	default:
		http.NotFound(w, r)
	}
}

func amInfo() map[string]any {
	return map[string]any{"miner_version": "49.0.1.3", "CompileTime": "Mon Dec 26 17:10:01 CST 2022", "type": "Antminer S19j Pro"}
}

func amJSON(w http.ResponseWriter, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

func (f *AntminerFleet) stats(i int, now time.Time) map[string]any {
	p := &f.cfg.Physics
	f.mu[i].Lock()
	a := &f.miners[i]
	a.m.settle(p, now)
	gh := a.m.hashrate(p, now) * 1000
	mode := a.mode
	f.mu[i].Unlock()
	temp := 30 + 45*gh/(p.HashrateTHs*1000)
	var chains []any
	for c := 0; c < 3; c++ {
		chains = append(chains, map[string]any{"index": c, "freq_avg": 525, "rate_ideal": round(p.HashrateTHs*1000/3, 2),
			"rate_real": round(gh/3, 2), "asic_num": 126, "temp_pic": []float64{round(temp-8, 0), round(temp-8, 0), round(temp-6, 0), round(temp-6, 0)},
			"temp_pcb":  []float64{round(temp-8, 0), round(temp-8, 0), round(temp-6, 0), round(temp-6, 0)},
			"temp_chip": []float64{round(temp, 0), round(temp, 0), round(temp+2, 0), round(temp+2, 0)},
			"hw":        0, "eeprom_loaded": true, "sn": "SIMCHAIN" + strconv.Itoa(c), "hwp": 0.0, "tpl": []any{}})
	}
	row := map[string]any{"elapsed": 86400, "rate_5s": round(gh, 2), "rate_30m": round(gh, 2), "rate_avg": round(gh, 2),
		"rate_ideal": p.HashrateTHs * 1000, "rate_unit": "GH/s", "chain_num": 3, "fan_num": 4,
		"fan": []int{5400, 5400, 5460, 5460}, "hwp_total": 0.0, "freq-level": 100, "chain": chains}
	if !f.cfg.NoModeInStats {
		row["miner-mode"] = mode
	}
	return map[string]any{
		"STATUS": map[string]any{"STATUS": "S", "when": now.Unix(), "Msg": "stats", "api_version": "1.0.0"},
		"INFO":   amInfo(),
		"STATS":  []any{row},
	}
}

// setConf is set_miner_conf.cgi: slow, serialized, and carried through
// even when the client has gone.
func (f *AntminerFleet) setConf(i int, w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	var doc map[string]json.RawMessage
	if err != nil || json.Unmarshal(body, &doc) != nil {
		amJSON(w, map[string]string{"stats": "error", "code": "M001", "msg": "Illegal json!"})
		return
	}
	ignore := f.http.fault(i) == FaultIgnoring
	f.mu[i].Lock()
	f.miners[i].inFlight++
	f.miners[i].posts++
	f.mu[i].Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.cgi[i].Lock()
		defer f.cgi[i].Unlock()
		ok := waitCtx(f.http.ctx, f.cfg.WriteDelay)
		f.mu[i].Lock()
		defer f.mu[i].Unlock()
		f.miners[i].inFlight--
		if ok {
			f.applyConf(&f.miners[i], doc, ignore, f.cfg.Now())
		}
	}()
	select {
	case <-done:
		amJSON(w, map[string]string{"stats": "success", "code": "M000", "msg": "OK!"})
	case <-r.Context().Done():
	}
}

func (f *AntminerFleet) applyConf(a *amMiner, doc map[string]json.RawMessage, ignore bool, now time.Time) {
	if ignore {
		a.ignored++
		return
	}
	var pools []map[string]string
	if json.Unmarshal(doc["pools"], &pools) == nil && len(pools) > 0 {
		a.pools = pools
	}
	var b bool
	if json.Unmarshal(doc["bitmain-fan-ctrl"], &b) == nil {
		a.fanCtrl = b
	}
	var s string
	if json.Unmarshal(doc["bitmain-fan-pwm"], &s) == nil {
		a.fanPWM = s
	}
	if json.Unmarshal(doc["freq-level"], &s) == nil {
		a.freqLevel = s
	}
	// Only an integer "miner-mode" counts.
	var mode float64
	raw := strings.TrimSpace(string(doc["miner-mode"]))
	if raw == "" || raw[0] == '"' || json.Unmarshal(doc["miner-mode"], &mode) != nil || mode != math.Trunc(mode) ||
		(mode != 0 && mode != 1 && mode != 3) {
		a.ignored++
		return
	}
	p := &f.cfg.Physics
	a.m.settle(p, now)
	switch int(mode) {
	case 1:
		a.m.sleep(p, now)
	case 0:
		a.m.targetW = p.RatedW
		a.m.wake(p, now)
	case 3:
		a.m.targetW = f.cfg.LowPowerW
		a.m.wake(p, now)
	}
	if a.mode != int(mode) {
		a.writes++
	}
	a.mode = int(mode)
}

// authorized checks HTTP digest credentials, answering 401 with a fresh
// challenge when they are missing, wrong or stale.
func (f *AntminerFleet) authorized(w http.ResponseWriter, r *http.Request) bool {
	now := f.cfg.Now()
	stale := false
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Digest ") {
		p := amAuthParams(h[len("Digest "):])
		issued, known := f.nonces.Load(p["nonce"])
		switch {
		case p["username"] != f.cfg.User || p["realm"] != amRealm || p["uri"] != r.URL.RequestURI() || !known:
		case now.Sub(issued.(time.Time)) > f.cfg.NonceTTL:
			stale = true
		default:
			ha1 := amMD5(f.cfg.User + ":" + amRealm + ":" + f.cfg.Password)
			ha2 := amMD5(r.Method + ":" + p["uri"])
			want := amMD5(ha1 + ":" + p["nonce"] + ":" + ha2)
			if p["qop"] == "auth" {
				want = amMD5(ha1 + ":" + p["nonce"] + ":" + p["nc"] + ":" + p["cnonce"] + ":auth:" + ha2)
			}
			if p["response"] == want {
				return true
			}
		}
	}
	n := f.seq.next()
	nonce := amMD5(strconv.FormatUint(n, 10) + now.String())
	f.nonces.Store(nonce, now)
	if n%1024 == 0 {
		f.nonces.Range(func(k, v any) bool {
			if now.Sub(v.(time.Time)) > 2*f.cfg.NonceTTL {
				f.nonces.Delete(k)
			}
			return true
		})
	}
	ch := fmt.Sprintf(`Digest realm="%s", nonce="%s", qop="auth"`, amRealm, nonce)
	if stale {
		ch += ", stale=true"
	}
	w.Header().Set("WWW-Authenticate", ch)
	w.Header().Set("Content-Type", "text/html")
	w.WriteHeader(http.StatusUnauthorized)
	io.WriteString(w, "<html><head><title>401 Unauthorized</title></head><body><h1>401 Unauthorized</h1></body></html>")
	return false
}

func amMD5(s string) string {
	h := md5.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}

// amAuthParams splits k="v", k=v pairs (the simulator's own reading of an
// Authorization header, independent of the driver's).
func amAuthParams(s string) map[string]string {
	out := map[string]string{}
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ,")
		k, rest, ok := strings.Cut(s, "=")
		if !ok {
			break
		}
		k = strings.TrimSpace(k)
		if strings.HasPrefix(rest, `"`) {
			end := 1
			var b strings.Builder
			for end < len(rest) && rest[end] != '"' {
				if rest[end] == '\\' && end+1 < len(rest) {
					end++
				}
				b.WriteByte(rest[end])
				end++
			}
			out[k] = b.String()
			s = rest[min(end+1, len(rest)):]
		} else {
			v, after, _ := strings.Cut(rest, ",")
			out[k] = strings.TrimSpace(v)
			s = after
		}
	}
	return out
}

// amCounter numbers nonces.
type amCounter struct {
	mu sync.Mutex
	n  uint64
}

func (c *amCounter) next() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return c.n
}
