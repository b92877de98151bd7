package whatsminer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/whatsminer/wmcrypto"
)

// The fuzzers feed the parsers anything and check that they never panic,
// that every error is classed for the fleet, and that whatever they accept
// is a plausible reading, never NaN, infinite or negative.

func finite(t *testing.T, what string, vs ...float64) {
	t.Helper()
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < -60 {
			t.Fatalf("%s accepted %v", what, v)
		}
	}
}

func classed(t *testing.T, err error) {
	t.Helper()
	if err != nil && !errors.Is(err, miner.ErrGarbled) && !errors.Is(err, miner.ErrRefused) && !errors.Is(err, miner.ErrUnreachable) {
		t.Fatalf("unclassed error: %v", err)
	}
}

func frame(s string) []byte {
	b := make([]byte, 4+len(s))
	binary.LittleEndian.PutUint32(b, uint32(len(s)))
	copy(b[4:], s)
	return b
}

func FuzzV3Reply(f *testing.F) {
	for _, s := range []string{
		`{"code":0,"when":1720000000,"msg":{"salt":"Abc123xy"},"desc":"get.device.info"}`,
		`{"code":0,"when":1720000000,"msg":{"miner":{"working":"true","type":"M50S_VH50"}},"desc":"get.device.info"}`,
		`{"code":0,"when":1720000000,"msg":{"summary":{"hash-realtime":126.1,"power-realtime":3276,"power-limit":3276,"chip-temp-max":75.2}},"desc":"get.miner.status"}`,
		`{"code":-1,"when":1720000000,"msg":"invalid token","desc":"set.miner.service"}`,
		`{"code":0,"msg":{"summary":{"hash-realtime":"NaN","power-realtime":-3}}}`,
		`{"code":"x"}`,
	} {
		f.Add(frame(s))
	}
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		body, err := readV3Frame(bytes.NewReader(data))
		classed(t, err)
		if err != nil {
			return
		}
		r, err := parseV3Reply(body)
		if err != nil {
			return
		}
		_ = msgText(r.Msg)
		if s, err := parseV3Summary(r.Msg); err == nil {
			finite(t, "summary", s.HashTHs, s.PowerW, s.PowerLimitW, s.MaxTempC)
			if s.HashTHs < 0 || s.PowerW < 0 || s.PowerLimitW < 0 {
				t.Fatalf("negative reading accepted: %+v", s)
			}
		}
		parseV3Working(r.Msg)
		if salt, err := parseV3Salt(r.Msg); err == nil && salt == "" {
			t.Fatal("empty salt accepted")
		}
	})
}

func FuzzV2Reply(f *testing.F) {
	for _, s := range []string{
		`{"STATUS":[{"STATUS":"S","When":1,"Code":11,"Msg":"Summary","Description":"btminer"}],"SUMMARY":[{"HS RT":126000000,"Power":3276,"Power Limit":3276,"Chip Temp Max":75}],"id":1}`,
		`{"STATUS":[{"STATUS":"S","Code":11}],"SUMMARY":[{"MHS 1m":"1.2e8","Power":"3000","Temperature":"70.5"}]}` + "\x00",
		`{"STATUS":"S","When":1,"Code":131,"Msg":{"mineroff":"true","FirmwareVersion":"'20230911.12.Rel'"},"Description":""}`,
		`{"STATUS":"S","Code":131,"Msg":{"btmineroff":false}}`,
		`{"STATUS":"S","When":1,"Code":134,"Msg":{"time":"1759800000","salt":"BQ5hoXV9","newsalt":"nEwSaLt1"},"Description":""}`,
		`{"STATUS":"E","When":1,"Code":135,"Msg":"check token error","Description":""}`,
		`{"STATUS":[],"SUMMARY":[{}]}`,
		`{"STATUS":"S","Msg":{"time":1,"salt":"a$b","newsalt":""}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := parseV2Summary(data)
		classed(t, err)
		if err == nil {
			finite(t, "summary", s.HashTHs, s.PowerW, s.PowerLimitW, s.MaxTempC)
			if s.HashTHs < 0 || s.PowerW < 0 {
				t.Fatalf("negative reading accepted: %+v", s)
			}
		}
		_, err = parseV2Status(data)
		classed(t, err)
		tok, err := parseV2Token(data)
		classed(t, err)
		if err == nil && (!saltLike(tok.Salt) || !saltLike(tok.NewSalt) || tok.Time == "") {
			t.Fatalf("bad token accepted: %+v", tok)
		}
	})
}

func FuzzV2Command(f *testing.F) {
	key, _ := wmcrypto.V2Keys("super", "BQ5hoXV9", "nEwSaLt1", "1759800000")
	ok, _ := wmcrypto.EncryptECB(key, []byte(`{"STATUS":"S","When":1,"Code":131,"Msg":"API command OK","Description":""}`))
	junk, _ := wmcrypto.EncryptECB(key, []byte("\x01\x02not json"))
	for _, s := range []string{
		`{"enc":"` + ok + `"}`,
		`{"enc":"` + junk + `"}`,
		`{"enc":"AAAA"}`,
		`{"enc":5}`,
		`{"STATUS":"E","When":1,"Code":23,"Msg":"invalid JSON message","Description":""}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := parseV2Command(data, func(s string) ([]byte, error) { return wmcrypto.DecryptECB(key, s) })
		if err == nil {
			_ = msgText(r.Msg)
		}
	})
}
