package vnish

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/siteagent/siteagent/drivers/miner"
)

// Parsers of Vnish's JSON replies: a value or an error, never a guess.

const maxBody = 1 << 20

func parseUnlock(b []byte) (string, error) {
	var r struct {
		Token string `json:"token"`
	}
	if err := miner.DecodeReply(b, &r); err != nil {
		return "", err
	}
	if r.Token == "" || len(r.Token) > 512 || strings.ContainsAny(r.Token, " \t\r\n\"") {
		return "", fmt.Errorf("unlock answered no usable token (%.20q)", r.Token)
	}
	return r.Token, nil
}

// parseErr reads {"err":"…"}, Vnish's error body; "" when there is none.
func parseErr(b []byte) string {
	var r struct {
		Err string `json:"err"`
	}
	if miner.DecodeReply(b, &r) != nil {
		return ""
	}
	return r.Err
}

// summary is what Poll reads from /api/v1/summary.
type summary struct {
	state    string
	hashTHs  float64
	powerW   float64
	hasPower bool
	maxTempC float64
	hasTemp  bool
}

func parseSummary(b []byte) (summary, error) {
	var doc struct {
		Miner *struct {
			Status *struct {
				State string `json:"miner_state"`
			} `json:"miner_status"`
			HRRealtime       json.RawMessage `json:"hr_realtime"`
			InstantHashrate  json.RawMessage `json:"instant_hashrate"`
			PowerUsage       json.RawMessage `json:"power_usage"`
			PowerConsumption json.RawMessage `json:"power_consumption"`
			ChipTemp         *struct {
				Max json.RawMessage `json:"max"`
			} `json:"chip_temp"`
		} `json:"miner"`
	}
	if err := miner.DecodeReply(b, &doc); err != nil {
		return summary{}, err
	}
	if doc.Miner == nil || doc.Miner.Status == nil || doc.Miner.Status.State == "" {
		return summary{}, errors.New(`no "miner.miner_status.miner_state"`)
	}
	m := doc.Miner
	s := summary{state: m.Status.State}
	// Vnish reports SHA-256 hashrates in GH/s ("hr_measure": "GH/s").
	hr := m.HRRealtime
	if hr == nil {
		hr = m.InstantHashrate
	}
	if hr == nil {
		return summary{}, errors.New(`no "hr_realtime"`)
	}
	gh, err := nonNegative(hr, "hr_realtime")
	if err != nil {
		return summary{}, err
	}
	s.hashTHs = gh / 1000
	pw := m.PowerUsage
	if pw == nil {
		pw = m.PowerConsumption
	}
	if pw != nil && string(pw) != "null" {
		if s.powerW, err = nonNegative(pw, "power_usage"); err != nil {
			return summary{}, err
		}
		s.hasPower = true
	}
	if m.ChipTemp != nil && m.ChipTemp.Max != nil {
		t, err := miner.ReplyNumber(m.ChipTemp.Max, "chip_temp.max")
		if err != nil {
			return summary{}, err
		}
		if t < -60 || t > 200 {
			return summary{}, fmt.Errorf("chip_temp.max %g °C is not a temperature", t)
		}
		s.maxTempC, s.hasTemp = t, true
	}
	return s, nil
}

// parseState reads /api/v1/status: {"miner_state":"mining",…}.
func parseState(b []byte) (string, error) {
	var r struct {
		State string `json:"miner_state"`
	}
	if err := miner.DecodeReply(b, &r); err != nil {
		return "", err
	}
	if r.State == "" {
		return "", errors.New(`no "miner_state"`)
	}
	return r.State, nil
}

// preset is one autotune preset with its power.
type preset struct {
	name   string
	watts  float64
	tuned  bool
	modPSU bool
}

// parsePresets reads /api/v1/autotune/presets: a list of {"name":"3200",
// "pretty":"3200 watt ~ 102 TH","status":"tuned"|"untuned",…}. "disabled"
// (stock clocks) has no power and is skipped; pyasic's format, an object
// {"presets":[…]}, is read too.
func parsePresets(b []byte) ([]preset, error) {
	var list []json.RawMessage
	if err := miner.DecodeReply(b, &list); err != nil {
		var obj struct {
			Presets []json.RawMessage `json:"presets"`
		}
		if err2 := miner.DecodeReply(b, &obj); err2 != nil || obj.Presets == nil {
			return nil, err
		}
		list = obj.Presets
	}
	var out []preset
	for _, raw := range list {
		var p struct {
			Name   string `json:"name"`
			Pretty string `json:"pretty"`
			Status string `json:"status"`
			ModPSU bool   `json:"modded_psu_required"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, fmt.Errorf("preset: %w", err)
		}
		if p.Name == "" {
			return nil, errors.New("preset without a name")
		}
		if p.Name == "disabled" {
			continue
		}
		w, ok := presetWatts(p.Name, p.Pretty)
		if !ok {
			continue // a preset named otherwise (hashrate-based): no power to match
		}
		out = append(out, preset{name: p.Name, watts: w, tuned: p.Status == "tuned", modPSU: p.ModPSU})
	}
	return out, nil
}

// presetWatts reads a preset's power from its name ("3200") or its pretty
// form ("3200 watt ~ 102 TH").
func presetWatts(name, pretty string) (float64, bool) {
	for _, s := range []string{name, strings.TrimSpace(strings.SplitN(pretty, "watt", 2)[0])} {
		if w, err := strconv.ParseFloat(strings.TrimSpace(s), 64); err == nil && w > 0 && w < 1e5 && !math.IsInf(w, 0) {
			return w, true
		}
	}
	return 0, false
}

// parseSettingsPreset reads the active preset from /api/v1/settings:
// {"miner":{"overclock":{"preset":"3200",…},…},…}.
func parseSettingsPreset(b []byte) (string, error) {
	var doc struct {
		Miner *struct {
			Overclock *struct {
				Preset json.RawMessage `json:"preset"`
			} `json:"overclock"`
		} `json:"miner"`
	}
	if err := miner.DecodeReply(b, &doc); err != nil {
		return "", err
	}
	if doc.Miner == nil || doc.Miner.Overclock == nil || doc.Miner.Overclock.Preset == nil {
		return "", errors.New(`no "miner.overclock.preset"`)
	}
	raw := doc.Miner.Overclock.Preset
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	if _, err := miner.ReplyNumber(raw, "preset"); err == nil {
		return strings.TrimSpace(string(raw)), nil
	}
	return "", fmt.Errorf("preset %.30s is neither a name nor a number", raw)
}

// parseSettingsReply reads POST /api/v1/settings' answer:
// {"restart_required":false,"reboot_required":false}.
func parseSettingsReply(b []byte) (restart, reboot bool, err error) {
	var r struct {
		Restart *bool  `json:"restart_required"`
		Reboot  *bool  `json:"reboot_required"`
		Err     string `json:"err"`
	}
	if err := miner.DecodeReply(b, &r); err != nil {
		return false, false, err
	}
	if r.Err != "" {
		return false, false, fmt.Errorf("settings refused: %.100s", r.Err)
	}
	if r.Restart == nil && r.Reboot == nil {
		return false, false, errors.New(`no "restart_required"`)
	}
	return r.Restart != nil && *r.Restart, r.Reboot != nil && *r.Reboot, nil
}

func nonNegative(raw json.RawMessage, name string) (float64, error) {
	f, err := miner.ReplyNumber(raw, name)
	if err != nil {
		return 0, err
	}
	if f < 0 {
		return 0, fmt.Errorf("%s: %g is negative", name, f)
	}
	return f, nil
}
