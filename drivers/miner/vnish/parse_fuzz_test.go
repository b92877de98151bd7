package vnish

import (
	"math"
	"testing"
)

// The fuzzers check that the parsers never panic and that what they accept
// is plausible: no NaN, no negative power or hashrate, no nameless preset.

func FuzzSummary(f *testing.F) {
	for _, s := range []string{
		`{"miner":{"miner_status":{"miner_state":"mining","miner_state_time":5},"miner_type":"Antminer S19 (Vnish 1.2.6)","hr_realtime":102000.5,"power_usage":3200,"chip_temp":{"min":60,"max":75}}}`,
		`{"miner":{"miner_status":{"miner_state":"failure","description":"Failed to parse miner configuration","failure_code":1002},"hr_realtime":0.0,"power_consumption":0,"chip_temp":{"min":0,"max":0}}}`,
		`{"miner":{"miner_status":{"miner_state":"stopped"},"instant_hashrate":"0","power_usage":null}}`,
		`{"miner":{"miner_status":{"miner_state":""},"hr_realtime":-1}}`,
		`{"miner":{"miner_status":{"miner_state":"mining"},"hr_realtime":"Inf"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseSummary(data)
		if err != nil {
			return
		}
		for _, v := range []float64{s.hashTHs, s.powerW, s.maxTempC} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("accepted %v", v)
			}
		}
		if s.state == "" || s.hashTHs < 0 || s.powerW < 0 || s.maxTempC < -60 || s.maxTempC > 200 {
			t.Fatalf("implausible summary accepted: %+v", s)
		}
	})
}

func FuzzPresets(f *testing.F) {
	for _, s := range []string{
		`[{"name":"disabled","pretty":"Disabled","status":"untuned","modded_psu_required":false},{"name":"3200","pretty":"3200 watt ~ 102 TH","status":"tuned","modded_psu_required":false}]`,
		`{"presets":[{"name":"1100","pretty":"1100 watt ~ 53 TH","status":"untuned","modded_psu_required":true}]}`,
		`[{"name":"eco","pretty":"NaN watt ~ 1 TH","status":"tuned"}]`,
		`[{"pretty":"3200 watt"}]`,
		`[1,2,3]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := parsePresets(data)
		if err != nil {
			return
		}
		for _, p := range ps {
			if p.name == "" || !(p.watts > 0) || math.IsInf(p.watts, 0) {
				t.Fatalf("bad preset accepted: %+v", p)
			}
		}
		if p, ok := pickPreset(ps, 3000, true); ok && (p.watts > 3000 || p.modPSU) {
			t.Fatalf("picked %+v for 3000 W", p)
		}
	})
}

func FuzzSmallReplies(f *testing.F) {
	for _, s := range []string{
		`{"token":"OwpWakIHG7ZE7xg7MGd6uL6UWOMeIzgW"}`,
		`{"token":""}`,
		`{"err":"CGMiner err: Cgminer error failed-to-activate-pause-mode "}`,
		`{"miner_state":"mining","miner_state_time":1}`,
		`{"restart_required":false,"reboot_required":false}`,
		`{"miner":{"overclock":{"preset":"3200"}}}`,
		`{"miner":{"overclock":{"preset":3200}}}`,
		`{"miner":{"overclock":{"preset":{"x":1}}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if tok, err := parseUnlock(data); err == nil && tok == "" {
			t.Fatal("empty token accepted")
		}
		parseErr(data)
		if st, err := parseState(data); err == nil && st == "" {
			t.Fatal("empty state accepted")
		}
		parseSettingsReply(data)
		parseSettingsPreset(data)
	})
}
