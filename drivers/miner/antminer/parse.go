package antminer

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/siteagent/siteagent/drivers/miner"
)

// Parsers of the CGI replies. Each returns a value or an error, never a
// guess; the caller adds the miner's address and the error's class.

// maxBody bounds what is read from a miner's web server.
const maxBody = 1 << 20

// conf is what a mode write needs from get_miner_conf.cgi.
type conf struct {
	// mode is bitmain-work-mode: 0 normal, 1 sleep, 3 low power.
	mode int
	// keep are the fields a write sends back unchanged, so that a mode
	// change does not reset the pools or the fans. bitmain-freq-level is
	// read under that name and written as "freq-level".
	keep map[string]json.RawMessage
}

// keptFields are echoed back on a write. bitmain-hashrate-percent is not:
// a read never returns it, and sending 100 would undo a miner's tuning.
var keptFields = [][2]string{
	{"pools", "pools"},
	{"bitmain-fan-ctrl", "bitmain-fan-ctrl"},
	{"bitmain-fan-pwm", "bitmain-fan-pwm"},
	{"bitmain-freq-level", "freq-level"},
}

func parseConf(b []byte) (conf, error) {
	var raw map[string]json.RawMessage
	if err := miner.DecodeReply(b, &raw); err != nil {
		return conf{}, err
	}
	mv, ok := raw["bitmain-work-mode"]
	if !ok {
		return conf{}, errors.New(`no "bitmain-work-mode": this firmware has no work modes`)
	}
	mode, err := intValue(mv, "bitmain-work-mode")
	if err != nil {
		return conf{}, err
	}
	var pools []json.RawMessage
	if err := json.Unmarshal(raw["pools"], &pools); err != nil || len(pools) == 0 {
		// Writing a config without its pools would leave the miner without
		// any: refuse rather than guess.
		return conf{}, errors.New(`no "pools" list: cannot write the config back without losing them`)
	}
	c := conf{mode: mode, keep: map[string]json.RawMessage{}}
	for _, f := range keptFields {
		if v, ok := raw[f[0]]; ok && string(v) != "null" {
			c.keep[f[1]] = v
		}
	}
	return c, nil
}

// setBody is the set_miner_conf.cgi body for mode: the kept fields and
// "miner-mode" as a JSON integer, the only form stock firmware acts on.
func setBody(c conf, mode int) []byte {
	doc := make(map[string]json.RawMessage, len(c.keep)+1)
	for k, v := range c.keep {
		doc[k] = v
	}
	doc["miner-mode"] = json.RawMessage(strconv.Itoa(mode))
	b, _ := json.Marshal(doc)
	return b
}

// parseSetReply reads set_miner_conf.cgi's answer:
// {"stats":"success","code":"M000","msg":"OK!"}. refused reports a
// well-formed answer that says no.
func parseSetReply(b []byte) (refused bool, err error) {
	var r struct {
		Stats string `json:"stats"`
		Code  string `json:"code"`
		Msg   string `json:"msg"`
	}
	if err := miner.DecodeReply(b, &r); err != nil {
		return false, err
	}
	if r.Stats == "" && r.Code == "" {
		return false, errors.New(`no "stats" or "code"`)
	}
	if r.Stats != "success" || (r.Code != "" && r.Code != "M000") {
		return true, fmt.Errorf("set_miner_conf answered stats %q code %q: %.80s", r.Stats, r.Code, r.Msg)
	}
	return false, nil
}

// stats is what Poll reads from stats.cgi.
type stats struct {
	mode     int
	hasMode  bool
	rateTHs  float64
	maxTempC float64
	hasTemp  bool
}

func parseStats(b []byte) (stats, error) {
	var doc struct {
		Stats []map[string]json.RawMessage `json:"STATS"`
	}
	if err := miner.DecodeReply(b, &doc); err != nil {
		return stats{}, err
	}
	var row map[string]json.RawMessage
	for _, r := range doc.Stats {
		if _, ok := r["rate_5s"]; ok {
			row = r
			break
		}
	}
	if row == nil {
		return stats{}, errors.New(`no "STATS" row with "rate_5s"`)
	}
	var s stats
	rate, err := miner.ReplyNumber(row["rate_5s"], "rate_5s")
	if err != nil {
		return stats{}, err
	}
	var unit string
	if err := json.Unmarshal(row["rate_unit"], &unit); err != nil {
		return stats{}, errors.New(`no "rate_unit" string`)
	}
	scale, ok := map[string]float64{"MH/s": 1e-6, "GH/s": 1e-3, "TH/s": 1}[strings.TrimSpace(unit)]
	if !ok {
		return stats{}, fmt.Errorf("rate_unit %.20q is not MH/s, GH/s or TH/s", unit)
	}
	if rate < 0 {
		return stats{}, fmt.Errorf("rate_5s %g is negative", rate)
	}
	s.rateTHs = rate * scale
	if mv, ok := row["miner-mode"]; ok {
		if s.mode, err = intValue(mv, "miner-mode"); err != nil {
			return stats{}, err
		}
		s.hasMode = true
	}
	var chains []map[string]json.RawMessage
	if c, ok := row["chain"]; ok {
		if err := json.Unmarshal(c, &chains); err != nil {
			return stats{}, errors.New(`"chain" is not a list of boards`)
		}
	}
	for _, ch := range chains {
		for _, k := range []string{"temp_chip", "temp_pcb"} {
			v, ok := ch[k]
			if !ok {
				continue
			}
			var ts []json.RawMessage
			if err := json.Unmarshal(v, &ts); err != nil {
				return stats{}, fmt.Errorf("%s is not a list", k)
			}
			for _, tr := range ts {
				t, err := miner.ReplyNumber(tr, k)
				if err != nil {
					return stats{}, err
				}
				if t < -60 || t > 200 {
					return stats{}, fmt.Errorf("%s %g °C is not a temperature", k, t)
				}
				if !s.hasTemp || t > s.maxTempC {
					s.maxTempC, s.hasTemp = t, true
				}
			}
			break // temp_chip when present; the PCB's otherwise
		}
	}
	return s, nil
}

// intValue reads a work mode: 0, 1, 2 or 3, as a number or a string.
func intValue(raw json.RawMessage, name string) (int, error) {
	f, err := miner.ReplyNumber(raw, name)
	if err != nil {
		return 0, err
	}
	if f != math.Trunc(f) || f < 0 || f > 3 {
		return 0, fmt.Errorf("%s: %g is not a work mode (0…3)", name, f)
	}
	return int(f), nil
}
