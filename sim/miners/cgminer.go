package miners

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The cgminer RPC API as the simulators speak it (API-README of cgminer
// 4.x): one JSON request per connection, {"command":"summary",
// "parameter":"..."}; the reply is one JSON object with a STATUS section
// [{"STATUS":"S","When":<unix s>,"Code":<n>,"Msg":"...","Description":
// "..."}] and the command's own section, followed by one NUL byte, after
// which the server closes the connection. "summary+devs" asks for several
// report commands at once and is answered {"summary":[{...}],"devs":
// [{...}],"id":1}.

// apiServer answers cgminer-API connections for a set of simulated miners.
type apiServer struct {
	set       *loopbackSet
	faults    []atomic.Uint32
	slowDelay time.Duration
	// respond returns the whole reply to one command of miner i, and
	// whether the command may be part of a multi-command request.
	respond func(i int, command, parameter string, now time.Time) (reply []byte, report bool)
	now     func() time.Time
	ctx     context.Context
	cancel  context.CancelFunc
	// quirk, when set, bends a well-formed reply the way real firmware
	// does.
	quirk func(command string, reply []byte) []byte

	Counters Counters
	perCmd   sync.Map // command -> *atomic.Uint64
	// onCommand, when set, sees every command as it arrives.
	onCommand atomic.Pointer[func(i int, command, parameter string, at time.Time)]
}

func newAPIServer(base netip.Addr, n, port int, now func() time.Time) (*apiServer, error) {
	set, err := listenLoopback(base, n, port)
	if err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	a := &apiServer{set: set, faults: make([]atomic.Uint32, n), slowDelay: 3 * time.Second, now: now}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	return a, nil
}

func (a *apiServer) start() { a.set.serve(a.handle) }

func (a *apiServer) close() {
	a.cancel()
	a.set.close()
	a.set.wg.Wait()
}

func (a *apiServer) fault(i int) Fault { return Fault(a.faults[i].Load()) }

func (a *apiServer) count(command string) {
	c, _ := a.perCmd.LoadOrStore(command, new(atomic.Uint64))
	c.(*atomic.Uint64).Add(1)
}

// commandCount is how many times command was asked, over all miners.
func (a *apiServer) commandCount(command string) uint64 {
	if c, ok := a.perCmd.Load(command); ok {
		return c.(*atomic.Uint64).Load()
	}
	return 0
}

func (a *apiServer) handle(i int, c net.Conn) {
	a.Counters.Connections.Add(1)
	f := a.fault(i)
	if f == FaultRefusing {
		reset(c)
		return
	}
	defer c.Close()
	raw, err := readRequest(c, 5*time.Second)
	if err != nil {
		return
	}
	a.Counters.Requests.Add(1)
	if f == FaultDropping {
		return
	}
	var reply []byte
	if cmd, param, ok := parseRequest(raw); !ok || cmd == "" {
		reply = statusReply(a.now(), 'E', 23, "Invalid JSON", "")
	} else {
		reply = a.dispatch(i, cmd, param)
	}
	if f == FaultSlow && !waitCtx(a.ctx, a.slowDelay) {
		return
	}
	if f == FaultGarbled {
		reply = garble(reply)
	}
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write(append(reply, 0))
}

// parseRequest reads {"command":"...","parameter":...}. The plain form
// every client sends is read directly (at thousands of requests a second
// encoding/json's reflection showed in profiles); anything else goes
// through encoding/json.
func parseRequest(raw []byte) (command, parameter string, ok bool) {
	if c, p, fast := quickRequest(raw); fast {
		return c, p, true
	}
	var req struct {
		Command   string          `json:"command"`
		Parameter json.RawMessage `json:"parameter"`
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		return "", "", false
	}
	return req.Command, paramString(req.Parameter), true
}

// quickRequest handles {"command":"x"} and {"command":"x","parameter":"y"}
// with no escapes and no spaces; fast is false for anything else.
func quickRequest(raw []byte) (command, parameter string, fast bool) {
	rest, ok := bytes.CutPrefix(raw, []byte(`{"command":"`))
	if !ok {
		return "", "", false
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 || bytes.IndexByte(rest[:end], '\\') >= 0 {
		return "", "", false
	}
	command, rest = string(rest[:end]), rest[end+1:]
	if string(rest) == "}" {
		return command, "", true
	}
	rest, ok = bytes.CutPrefix(rest, []byte(`,"parameter":"`))
	if !ok || !bytes.HasSuffix(rest, []byte(`"}`)) {
		return "", "", false
	}
	rest = rest[:len(rest)-2]
	if bytes.ContainsAny(rest, "\\\"") {
		return "", "", false
	}
	return command, string(rest), true
}

// paramString accepts "parameter" as a string or a bare number, as
// cgminer does.
func paramString(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return strings.TrimSpace(string(raw))
}

func (a *apiServer) dispatch(i int, command, param string) []byte {
	now := a.now()
	if fn := a.onCommand.Load(); fn != nil {
		(*fn)(i, command, param, time.Now())
	}
	if !strings.Contains(command, "+") {
		a.count(command)
		r, _ := a.respond(i, command, param, now)
		if a.quirk != nil {
			r = a.quirk(command, r)
		}
		return r
	}
	var b bytes.Buffer
	b.WriteByte('{')
	for _, cmd := range strings.Split(command, "+") {
		a.count(cmd)
		r, report := a.respond(i, cmd, "", now)
		if !report {
			return statusReply(now, 'E', 45, fmt.Sprintf("Invalid command %s in a multi-command request: only report commands may be joined", cmd), "")
		}
		if a.quirk != nil {
			r = a.quirk(cmd, r)
		}
		fmt.Fprintf(&b, "%q:[", cmd)
		b.Write(r)
		b.WriteString("],")
	}
	b.WriteString(`"id":1}`)
	return b.Bytes()
}

// reply marshals sections plus a STATUS section and "id": 1. Go writes
// map keys in sorted order, which is also how LuxOS orders them.
func reply(now time.Time, kind byte, code int, msg, desc string, sections map[string]any) []byte {
	doc := map[string]any{"STATUS": []any{statusEntry(now, kind, code, msg, desc)}, "id": 1}
	for k, v := range sections {
		doc[k] = v
	}
	return appendJSON(make([]byte, 0, 512), doc)
}

func statusEntry(now time.Time, kind byte, code int, msg, desc string) map[string]any {
	return map[string]any{"STATUS": string(kind), "When": now.Unix(), "Code": code, "Msg": msg, "Description": desc}
}

func statusReply(now time.Time, kind byte, code int, msg, desc string) []byte {
	return reply(now, kind, code, msg, desc, nil)
}

// round keeps replies readable: firmware prints a few decimals.
func round(v float64, places int) float64 {
	f, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'f', places, 64), 64)
	return f
}

// CGMinerConfig describes a fleet of miners that only speak plain cgminer
// (telemetry only: summary, devs, stats, pools, version). Plain cgminer
// has no command that sheds a miner (only "quit", which kills the process
// and needs someone to restart it), so these never sleep: such miners are
// shed at their feeder, and asleep or waking figures do not apply.
type CGMinerConfig struct {
	Miners int
	// Base is the first miner's address (default 127.20.0.1); Port is
	// shared (0: a free one).
	Base netip.Addr
	Port int
	// Physics: only RatedW and HashrateTHs matter; plain cgminer never
	// sleeps.
	Physics Physics
	// Quirks makes replies malformed the way real firmware's are: "}{"
	// between STATS entries, a trailing comma, a bare nan, a duplicate key.
	Quirks bool
	Now    func() time.Time
}

// CGMinerFleet is a running fleet of plain-cgminer miners.
type CGMinerFleet struct {
	cfg CGMinerConfig
	api *apiServer
}

// StartCGMiner starts the fleet on loopback.
func StartCGMiner(cfg CGMinerConfig) (*CGMinerFleet, error) {
	if cfg.Miners < 1 {
		return nil, fmt.Errorf("need at least one miner, got %d", cfg.Miners)
	}
	if !cfg.Base.IsValid() {
		cfg.Base = netip.MustParseAddr("127.20.0.1")
	}
	if cfg.Physics.RatedW == 0 {
		cfg.Physics = Physics{RatedW: 3250, HashrateTHs: 110}
	}
	api, err := newAPIServer(cfg.Base, cfg.Miners, cfg.Port, cfg.Now)
	if err != nil {
		return nil, err
	}
	f := &CGMinerFleet{cfg: cfg, api: api}
	api.respond = f.respond
	if cfg.Quirks {
		api.quirk = firmwareQuirks
	}
	api.start()
	return f, nil
}

// Addrs lists each miner's "host:port".
func (f *CGMinerFleet) Addrs() []string { return f.api.set.addrs }

// Port is the port every miner listens on.
func (f *CGMinerFleet) Port() int { return f.api.set.port }

// SetFault gives miner i a fault (NoFault clears it).
func (f *CGMinerFleet) SetFault(i int, fault Fault) { f.api.faults[i].Store(uint32(fault)) }

// SetSlowDelay sets how long a FaultSlow miner takes to answer.
func (f *CGMinerFleet) SetSlowDelay(d time.Duration) { f.api.slowDelay = d }

// Counters counts connections and requests.
func (f *CGMinerFleet) Counters() *Counters { return &f.api.Counters }

// Close stops every listener.
func (f *CGMinerFleet) Close() { f.api.close() }

const cgminerDesc = "cgminer 4.11.1"

func (f *CGMinerFleet) respond(i int, command, _ string, now time.Time) ([]byte, bool) {
	p := &f.cfg.Physics
	// A little spread between machines, stable per miner.
	ths := p.HashrateTHs * (1 + float64(i%7-3)/100)
	temp := 60 + float64(i%11)
	switch command {
	case "summary":
		return reply(now, 'S', 11, "Summary", cgminerDesc, map[string]any{"SUMMARY": []any{map[string]any{
			"Elapsed": 86400, "GHS 5s": round(ths*1000, 2), "GHS av": round(ths*1000, 2), "Accepted": 5120, "Rejected": 3,
			"Hardware Errors": 12, "Utility": 3.55, "Best Share": 123456789,
		}}}), true
	case "devs":
		var devs []any
		for b := 0; b < 3; b++ {
			devs = append(devs, map[string]any{"ASC": b, "Name": "BTM", "ID": b, "Enabled": "Y", "Status": "Alive",
				"Temperature": round(temp+float64(b), 1), "MHS 5s": round(ths*1e6/3, 0), "Accepted": 1700})
		}
		return reply(now, 'S', 9, fmt.Sprintf("%d ASC(s)", len(devs)), cgminerDesc, map[string]any{"DEVS": devs}), true
	case "stats":
		return reply(now, 'S', 70, "CGMiner stats", cgminerDesc, map[string]any{"STATS": []any{
			map[string]any{"CGMiner": "4.11.1", "Miner": "16.8.1.3", "CompileTime": "Fri Nov 17 2023", "Type": "Antminer S19"},
			map[string]any{"STATS": 0, "ID": "BTM_SOC0", "Elapsed": 86400, "temp_num": 3, "temp1": temp - 8, "temp2": temp - 6, "temp3": temp - 7,
				"temp2_1": temp, "temp2_2": temp + 1, "temp2_3": temp - 1, "temp_max": temp + 1, "chain_rate1": round(ths*1000/3, 2),
				"chain_rate2": round(ths*1000/3, 2), "chain_rate3": round(ths*1000/3, 2), "total_rateideal": round(ths*1000, 2), "rate_unit": "GH"},
		}}), true
	case "pools":
		return reply(now, 'S', 7, "1 Pool(s)", cgminerDesc, map[string]any{"POOLS": []any{map[string]any{
			"POOL": 0, "URL": "stratum+tcp://pool.example:3333", "Status": "Alive", "Priority": 0, "Stratum Active": true, "User": "site.worker" + strconv.Itoa(i),
		}}}), true
	case "version":
		return reply(now, 'S', 22, "CGMiner versions", cgminerDesc, map[string]any{"VERSION": []any{map[string]any{"CGMiner": "4.11.1", "API": "3.7"}}}), true
	}
	return statusReply(now, 'E', 14, "Invalid command", cgminerDesc), false
}

// firmwareQuirks bends well-formed replies the way shipping firmware
// does, so that the client's repairs are exercised end to end: bmminer's
// missing comma between STATS entries, a trailing comma before the
// closing brace, a bare nan for an unpopulated sensor, and a key written
// twice with the same value.
func firmwareQuirks(command string, b []byte) []byte {
	switch command {
	case "stats":
		b = bytes.Replace(b, []byte("},{"), []byte("}{"), 1)
		b = bytes.Replace(b, []byte(`"temp_num":`), []byte(`"temp_pcb9":nan,"temp_num":`), 1)
	case "summary":
		b = bytes.Replace(b, []byte(`"Accepted":`), []byte(`"Elapsed":86400,"Accepted":`), 1)
	}
	return bytes.Replace(b, []byte(`"id":1}`), []byte(`"id":1,}`), 1)
}
