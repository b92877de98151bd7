package cgminer

import (
	"errors"
	"fmt"
	"strings"
)

// Readers for the telemetry every cgminer-API firmware reports in much the
// same shape. Each returns an error for a value that is there but cannot be
// trusted; an absent optional value is reported as absent, never as zero.

// maxHashrateTHs bounds one machine's plausible hashrate (today's largest
// hydro units make ~1 PH/s).
const maxHashrateTHs = 100_000

// SummaryHashrate reads the current hashrate in TH/s from a SUMMARY entry:
// "GHS 5s" (bmminer, bosminer, LuxOS), else "MHS 5s" (cgminer, btminer),
// else the averages.
func SummaryHashrate(summary Value) (float64, error) {
	for _, k := range []struct {
		key   string
		toTHs float64
	}{{"GHS 5s", 1e-3}, {"MHS 5s", 1e-6}, {"GHS av", 1e-3}, {"MHS av", 1e-6}} {
		if !summary.Has(k.key) {
			continue
		}
		v, err := summary.Float(k.key)
		if err != nil {
			return 0, err
		}
		if ths := v * k.toTHs; ths < 0 || ths > maxHashrateTHs {
			return 0, fmt.Errorf("%q: implausible hashrate %g", k.key, v)
		}
		return v * k.toTHs, nil
	}
	return 0, fmt.Errorf("SUMMARY has no hashrate (GHS 5s, MHS 5s): %w", ErrMissing)
}

// Plausible temperatures in °C; a reading outside is a failed sensor
// (0 for an empty slot, 255 or -64 for a broken one), not a measurement.
const (
	minTempC = -40
	maxTempC = 150
)

// MaxTemp scans entries of DEVS ("Temperature", "Chip Temp Max") or STATS
// ("temp1", "temp2_3", "temp_max") for the hottest plausible reading. ok is
// false when no entry reports a temperature.
func MaxTemp(entries []Value) (maxC float64, ok bool, err error) {
	for _, e := range entries {
		for _, key := range e.Keys() {
			k := strings.ToLower(key)
			if !isTempKey(k) {
				continue
			}
			v, err := e.Get(key)
			if err != nil {
				return 0, false, err
			}
			if v.Kind == String && !looksNumeric(v.str) {
				continue // "56-61-60-55": per-chip lists
			}
			t, err := v.AsFloat()
			if errors.Is(err, ErrNotANumber) {
				continue
			}
			if err != nil {
				return 0, false, fmt.Errorf("%q: %w", key, err)
			}
			if t == 0 || t < minTempC || t > maxTempC {
				continue
			}
			if !ok || t > maxC {
				maxC, ok = t, true
			}
		}
	}
	return maxC, ok, nil
}

func isTempKey(k string) bool {
	switch {
	case k == "temperature", k == "chip temp max", k == "temp_max":
		return true
	case strings.HasPrefix(k, "temp") && !strings.Contains(k, "num") && !strings.Contains(k, "target") && !strings.Contains(k, "hot") && !strings.Contains(k, "dangerous") && !strings.Contains(k, "limit"):
		rest := strings.TrimLeft(k[4:], "_ ")
		return rest == "" || rest[0] >= '0' && rest[0] <= '9' || strings.HasPrefix(rest, "chip") || strings.HasPrefix(rest, "pcb")
	}
	return false
}

func looksNumeric(s string) bool {
	s = strings.TrimSpace(s)
	if s == "" {
		return false
	}
	for i, c := range s {
		if (c < '0' || c > '9') && c != '.' && !(i == 0 && c == '-') {
			return false
		}
	}
	return true
}

// AnyPoolAlive reports whether a POOLS section has a pool whose Status is
// "Alive".
func AnyPoolAlive(pools []Value) bool {
	for _, p := range pools {
		if s, err := p.Str("Status"); err == nil && strings.EqualFold(s, "alive") {
			return true
		}
	}
	return false
}
