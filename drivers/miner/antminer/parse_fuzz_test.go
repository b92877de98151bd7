package antminer

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// The fuzzers check that the parsers never panic and that what they accept
// is a plausible reading, and that a config they accept writes back as JSON
// that keeps the pools and carries miner-mode as an integer.

func FuzzConf(f *testing.F) {
	for _, s := range []string{
		`{"pools":[{"url":"stratum+tcp://pool:3333","user":"a.b","pass":"123"}],"api-listen":true,"bitmain-fan-ctrl":false,"bitmain-fan-pwm":"100","bitmain-work-mode":"0","bitmain-freq-level":"100"}`,
		`{"pools":[{"url":"","user":"","pass":""}],"bitmain-work-mode":1,"bitmain-user-ip-cat":null}`,
		`{"pools":[],"bitmain-work-mode":"0"}`,
		`{"pools":[{}],"bitmain-work-mode":"1.5"}`,
		`{"pools":[{}],"bitmain-work-mode":"NaN"}`,
		`{"bitmain-work-mode":"0"}` + "\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseConf(data)
		if err != nil {
			return
		}
		if c.mode < 0 || c.mode > 3 {
			t.Fatalf("mode %d accepted", c.mode)
		}
		body := setBody(c, 1)
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatalf("write body is not JSON: %v: %s", err, body)
		}
		if string(doc["miner-mode"]) != "1" || doc["pools"] == nil {
			t.Fatalf("write body lost the mode or the pools: %s", body)
		}
	})
}

func FuzzSetReply(f *testing.F) {
	for _, s := range []string{
		`{"stats":"success","code":"M000","msg":"OK!"}`,
		`{"stats":"error","code":"M001","msg":"Illegal json!"}`,
		`{"code":"M000","stats":"success"}`,
		`{"code":"M000","success":false}`,
		`<html>401</html>`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		no, err := parseSetReply(data)
		if no && err == nil {
			t.Fatal("refused without a reason")
		}
	})
}

func FuzzStats(f *testing.F) {
	for _, s := range []string{
		`{"STATUS":{"STATUS":"S","when":1,"Msg":"stats","api_version":"1.0.0"},"INFO":{"type":"Antminer S19j Pro"},"STATS":[{"elapsed":1,"rate_5s":104000.5,"rate_unit":"GH/s","miner-mode":0,"chain":[{"index":0,"temp_pcb":[50,51,52,53],"temp_chip":[70,71,72,73]}]}]}`,
		`{"STATS":[{"rate_5s":"0","rate_unit":"TH/s","miner-mode":"1"}]}`,
		`{"STATS":[{"rate_5s":1,"rate_unit":"PH/s"}]}`,
		`{"STATS":[{"rate_5s":1,"rate_unit":"GH/s","chain":[{"temp_chip":[9999]}]}]}`,
		`{"STATS":[{"STATS":0,"ID":"BC50"},{"rate_5s":-1,"rate_unit":"GH/s"}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseStats(data)
		if err != nil {
			return
		}
		for _, v := range []float64{s.rateTHs, s.maxTempC} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("accepted %v", v)
			}
		}
		if s.rateTHs < 0 || s.maxTempC < -60 || s.maxTempC > 200 || s.mode < 0 || s.mode > 3 {
			t.Fatalf("implausible stats accepted: %+v", s)
		}
	})
}

func FuzzChallenge(f *testing.F) {
	for _, s := range []string{
		`Digest realm="antMiner Configuration", nonce="8af871024deba26e9098078766341bd2", qop="auth"`,
		`Digest realm="x", nonce="n", qop="auth,auth-int", stale=true, opaque="o\"q"`,
		`Digest realm="x", nonce="n", algorithm=SHA-256`,
		`Basic realm="x"`,
		`Digest realm="unterminated, nonce=n`,
		`digest nonce=abc`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		c, err := parseChallenge(h)
		if err != nil {
			return
		}
		if c.nonce == "" {
			t.Fatal("challenge without a nonce accepted")
		}
		a := c.authorization("root", "root", "GET", "/cgi-bin/stats.cgi", 1)
		if !strings.HasPrefix(a, "Digest ") {
			t.Fatalf("authorization %q", a)
		}
		// What the driver writes, it must read back the same way.
		p, err := authParams(strings.TrimPrefix(a, "Digest "))
		if err != nil || p["nonce"] != c.nonce || p["realm"] != c.realm {
			t.Fatalf("authorization %q does not round-trip: %v %v", a, p, err)
		}
	})
}
