package whatsminer

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/siteagent/siteagent/drivers/miner"
)

// Every parser here takes bytes from the network and returns a value or an
// error; none guesses. The callers add the miner's address.

// maxReply bounds what is read from a miner: a summary is a few KiB.
const maxReply = 1 << 20

// v3Reply is API v3's envelope: {"code":0,"when":…,"msg":…,"desc":"…"}.
type v3Reply struct {
	Code int
	Msg  json.RawMessage
	Desc string
}

func parseV3Reply(body []byte) (v3Reply, error) {
	var raw struct {
		Code *json.Number    `json:"code"`
		Msg  json.RawMessage `json:"msg"`
		Desc string          `json:"desc"`
	}
	if err := miner.DecodeReply(body, &raw); err != nil {
		return v3Reply{}, err
	}
	if raw.Code == nil {
		return v3Reply{}, errors.New(`reply has no "code"`)
	}
	code, err := strconv.Atoi(raw.Code.String())
	if err != nil {
		return v3Reply{}, fmt.Errorf("reply code %q is not an integer", raw.Code.String())
	}
	return v3Reply{Code: code, Msg: raw.Msg, Desc: raw.Desc}, nil
}

// msgText is the msg of a failed reply as text, for error messages.
func msgText(m json.RawMessage) string {
	var s string
	if json.Unmarshal(m, &s) == nil {
		return s
	}
	if len(m) > 120 {
		return string(m[:120]) + "…"
	}
	return string(m)
}

// parseV3Salt reads get.device.info's salt: {"salt":"…"}.
func parseV3Salt(msg json.RawMessage) (string, error) {
	var m struct {
		Salt string `json:"salt"`
	}
	if err := miner.DecodeReply(msg, &m); err != nil {
		return "", fmt.Errorf("get.device.info salt: %w", err)
	}
	if m.Salt == "" || len(m.Salt) > 64 {
		return "", fmt.Errorf("get.device.info salt: %q is not a salt", m.Salt)
	}
	return m.Salt, nil
}

// parseV3Working reads get.device.info's miner section: "working" is the
// mining service's state, "true" or "false" (a string on the wire).
func parseV3Working(msg json.RawMessage) (bool, error) {
	var m struct {
		Miner *struct {
			Working json.RawMessage `json:"working"`
		} `json:"miner"`
	}
	if err := miner.DecodeReply(msg, &m); err != nil {
		return false, fmt.Errorf("get.device.info miner: %w", err)
	}
	if m.Miner == nil || m.Miner.Working == nil {
		return false, errors.New(`get.device.info miner: no "working"`)
	}
	return parseBool(m.Miner.Working, "working")
}

// v3Summary is the part of get.miner.status summary the driver uses.
type v3Summary struct {
	HashTHs     float64
	PowerW      float64
	PowerLimitW float64
	MaxTempC    float64
	HasPower    bool
	HasTemp     bool
	HasLimit    bool
}

func parseV3Summary(msg json.RawMessage) (v3Summary, error) {
	var m struct {
		Summary map[string]json.RawMessage `json:"summary"`
	}
	if err := miner.DecodeReply(msg, &m); err != nil {
		return v3Summary{}, fmt.Errorf("get.miner.status summary: %w", err)
	}
	if m.Summary == nil {
		return v3Summary{}, errors.New(`get.miner.status: no "summary"`)
	}
	var s v3Summary
	var ok bool
	var err error
	// hash-realtime is TH/s on API v3.
	if s.HashTHs, ok, err = field(m.Summary, "hash-realtime"); err != nil {
		return v3Summary{}, err
	} else if !ok {
		return v3Summary{}, errors.New(`get.miner.status summary: no "hash-realtime"`)
	}
	if s.PowerW, s.HasPower, err = field(m.Summary, "power-realtime"); err != nil {
		return v3Summary{}, err
	}
	if s.PowerLimitW, s.HasLimit, err = field(m.Summary, "power-limit"); err != nil {
		return v3Summary{}, err
	}
	if s.MaxTempC, s.HasTemp, err = temperature(m.Summary, "chip-temp-max"); err != nil {
		return v3Summary{}, err
	}
	return s, nil
}

// v2Reply is API v2's envelope. STATUS is "S"/"E" on btminer's own
// commands and a cgminer-style array on summary/devs.
type v2Reply struct {
	OK   bool
	Code int
	Msg  json.RawMessage
	Raw  map[string]json.RawMessage
}

func parseV2Reply(body []byte) (v2Reply, error) {
	var raw map[string]json.RawMessage
	if err := miner.DecodeReply(body, &raw); err != nil {
		return v2Reply{}, err
	}
	st, ok := raw["STATUS"]
	if !ok {
		return v2Reply{}, errors.New(`reply has no "STATUS"`)
	}
	r := v2Reply{Msg: raw["Msg"], Raw: raw}
	var s string
	if json.Unmarshal(st, &s) == nil {
		r.OK = s == "S"
		if c, ok := raw["Code"]; ok {
			f, err := miner.ReplyNumber(c, "Code")
			if err != nil {
				return v2Reply{}, err
			}
			r.Code = int(f)
		}
		return r, nil
	}
	var arr []struct {
		Status string          `json:"STATUS"`
		Code   json.RawMessage `json:"Code"`
		Msg    json.RawMessage `json:"Msg"`
	}
	if err := json.Unmarshal(st, &arr); err != nil || len(arr) == 0 {
		return v2Reply{}, errors.New(`"STATUS" is neither "S"/"E" nor a status list`)
	}
	r.OK = arr[0].Status == "S"
	r.Msg = arr[0].Msg
	if arr[0].Code != nil {
		f, err := miner.ReplyNumber(arr[0].Code, "Code")
		if err != nil {
			return v2Reply{}, err
		}
		r.Code = int(f)
	}
	return r, nil
}

// v2Token is get_token's Msg.
type v2Token struct{ Time, Salt, NewSalt string }

func parseV2Token(body []byte) (v2Token, error) {
	r, err := parseV2Reply(body)
	if err != nil {
		return v2Token{}, garbled("get_token", err)
	}
	if !r.OK {
		return v2Token{}, refused("get_token: code %d: %s", r.Code, msgText(r.Msg))
	}
	var m struct {
		Time    json.RawMessage `json:"time"`
		Salt    string          `json:"salt"`
		NewSalt string          `json:"newsalt"`
	}
	if err := miner.DecodeReply(r.Msg, &m); err != nil {
		return v2Token{}, garbled("get_token Msg", err)
	}
	t := strings.Trim(string(m.Time), `"`)
	if !saltLike(m.Salt) || !saltLike(m.NewSalt) || t == "" || len(t) > 20 || strings.Trim(t, "0123456789") != "" {
		return v2Token{}, garbled("get_token Msg", fmt.Errorf("time %q salt %q newsalt %q are not a token", t, m.Salt, m.NewSalt))
	}
	return v2Token{Time: t, Salt: m.Salt, NewSalt: m.NewSalt}, nil
}

// saltLike: crypt(3) salts are [./0-9A-Za-z]; MicroBT's also use '_'.
func saltLike(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for _, c := range s {
		if !(c == '.' || c == '/' || c == '_' || c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

// v2Summary is the part of btminer's summary the driver uses.
type v2Summary struct {
	HashTHs     float64
	PowerW      float64
	PowerLimitW float64
	MaxTempC    float64
	HasPower    bool
	HasTemp     bool
	HasLimit    bool
}

func parseV2Summary(body []byte) (v2Summary, error) {
	r, err := parseV2Reply(body)
	if err != nil {
		return v2Summary{}, garbled("summary", err)
	}
	if !r.OK {
		return v2Summary{}, refused("summary: code %d: %s", r.Code, msgText(r.Msg))
	}
	s, err := v2SummaryRow(r)
	if err != nil {
		return v2Summary{}, garbled("summary", err)
	}
	return s, nil
}

func v2SummaryRow(r v2Reply) (v2Summary, error) {
	var rows []map[string]json.RawMessage
	if err := json.Unmarshal(r.Raw["SUMMARY"], &rows); err != nil || len(rows) == 0 {
		return v2Summary{}, errors.New(`no "SUMMARY" row`)
	}
	row := rows[0]
	var s v2Summary
	// btminer reports hashrate in MH/s; "HS RT" is real-time, "MHS 1m" older.
	var mhs float64
	var ok bool
	var err error
	for _, k := range []string{"HS RT", "MHS 1m", "MHS av"} {
		if mhs, ok, err = field(row, k); err != nil {
			return v2Summary{}, err
		} else if ok {
			break
		}
	}
	if !ok {
		return v2Summary{}, errors.New(`no hashrate ("HS RT", "MHS 1m" or "MHS av")`)
	}
	s.HashTHs = mhs / 1e6
	if s.PowerW, s.HasPower, err = field(row, "Power"); err != nil {
		return v2Summary{}, err
	}
	if s.PowerLimitW, s.HasLimit, err = field(row, "Power Limit"); err != nil {
		return v2Summary{}, err
	}
	if s.MaxTempC, s.HasTemp, err = temperature(row, "Chip Temp Max"); err != nil {
		return v2Summary{}, err
	}
	if !s.HasTemp {
		if s.MaxTempC, s.HasTemp, err = temperature(row, "Temperature"); err != nil {
			return v2Summary{}, err
		}
	}
	return s, nil
}

// parseV2Status reads btminer's status: Msg.mineroff (or btmineroff on
// older firmware) is "true" while the hashboards are powered off.
func parseV2Status(body []byte) (off bool, err error) {
	r, err := parseV2Reply(body)
	if err != nil {
		return false, garbled("status", err)
	}
	if !r.OK {
		return false, refused("status: code %d: %s", r.Code, msgText(r.Msg))
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(r.Msg, &m); err != nil {
		return false, garbled("status", errors.New("Msg is not an object"))
	}
	for _, k := range []string{"mineroff", "btmineroff"} {
		if v, ok := m[k]; ok {
			off, err := parseBool(v, k)
			if err != nil {
				return false, garbled("status", err)
			}
			return off, nil
		}
	}
	return false, garbled("status", errors.New(`no "mineroff"`))
}

// parseV2Command reads the answer to a privileged command: an {"enc":…}
// envelope decrypted with decrypt, or a plain error reply (btminer answers
// token and decryption errors in clear text).
func parseV2Command(body []byte, decrypt func(string) ([]byte, error)) (v2Reply, error) {
	var env map[string]json.RawMessage
	if err := miner.DecodeReply(body, &env); err != nil {
		return v2Reply{}, err
	}
	if enc, ok := env["enc"]; ok {
		var s string
		if err := json.Unmarshal(enc, &s); err != nil {
			return v2Reply{}, errors.New(`"enc" is not a string`)
		}
		plain, err := decrypt(s)
		if err != nil {
			return v2Reply{}, fmt.Errorf("encrypted reply: %w", err)
		}
		r, err := parseV2Reply(plain)
		if err != nil {
			return v2Reply{}, fmt.Errorf("decrypted reply: %w", err)
		}
		return r, nil
	}
	return parseV2Reply(body)
}

// field reads an optional non-negative number: (value, present, error).
func field(m map[string]json.RawMessage, k string) (float64, bool, error) {
	raw, ok := m[k]
	if !ok || string(raw) == "null" {
		return 0, false, nil
	}
	f, err := miner.ReplyNumber(raw, k)
	if err != nil {
		return 0, false, err
	}
	if f < 0 {
		return 0, false, fmt.Errorf("%s: %g is negative", k, f)
	}
	return f, true, nil
}

// temperature reads an optional temperature in °C within what silicon and
// sensors can report; anything else is a broken sensor or reply.
func temperature(m map[string]json.RawMessage, k string) (float64, bool, error) {
	raw, ok := m[k]
	if !ok || string(raw) == "null" {
		return 0, false, nil
	}
	f, err := miner.ReplyNumber(raw, k)
	if err != nil {
		return 0, false, err
	}
	if f < -60 || f > 200 {
		return 0, false, fmt.Errorf("%s: %g °C is not a temperature", k, f)
	}
	return f, true, nil
}

// parseBool accepts true/false as JSON booleans or the strings btminer uses.
func parseBool(raw json.RawMessage, name string) (bool, error) {
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return b, nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		switch strings.ToLower(strings.TrimSpace(s)) {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
	}
	return false, fmt.Errorf("%s: %.40s is not true or false", name, raw)
}
