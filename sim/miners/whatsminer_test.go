package miners

import (
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner/whatsminer/wmcrypto"
)

// These tests speak the wire formats by hand, without the driver: what the
// simulator sends is what MicroBT's documents describe.

func wmFleet(t *testing.T, cfg WhatsminerConfig) *WhatsminerFleet {
	t.Helper()
	cfg.Miners = 1
	cfg.Physics = Physics{RatedW: 3276, SleepW: 20, SleepFall: 30 * time.Millisecond, WakeRamp: 30 * time.Millisecond, HashrateTHs: 126}
	if cfg.LimitRestart == 0 {
		cfg.LimitRestart = 30 * time.Millisecond
	}
	f, err := StartWhatsminer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// v3Exchange writes one framed request on c and reads one framed reply.
func v3Exchange(t *testing.T, c net.Conn, req any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(req)
	hdr := make([]byte, 4)
	binary.LittleEndian.PutUint32(hdr, uint32(len(b)))
	if _, err := c.Write(append(hdr, b...)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint32(hdr)
	body := make([]byte, n)
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("reply is not JSON: %q", body)
	}
	return out
}

func TestWhatsminerV3Wire(t *testing.T) {
	f := wmFleet(t, WhatsminerConfig{})
	c, err := net.Dial("tcp", net.JoinHostPort(f.Hosts()[0], strconv.Itoa(f.PortV3())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0, 0, 0, 0}) // a heartbeat is skipped
	r := v3Exchange(t, c, map[string]string{"cmd": "get.device.info", "param": "salt"})
	salt, _ := r["msg"].(map[string]any)["salt"].(string)
	if r["code"] != 0.0 || len(salt) != 8 || r["desc"] != "get.device.info" {
		t.Fatalf("salt reply %v", r)
	}
	ts := time.Now().Unix()
	write := func(cmd string, param any, token string) map[string]any {
		return v3Exchange(t, c, map[string]any{"cmd": cmd, "param": param, "ts": ts, "account": "super", "token": token})
	}
	if r := write("set.miner.service", "stop", "AAAAAAAA"); r["code"] != -1.0 {
		t.Fatalf("bad token: %v", r)
	}
	if f.State(0).Writes != 0 {
		t.Fatal("a bad token acted")
	}
	if r := write("set.miner.service", "stop", wmcrypto.V3Token("set.miner.service", "super", salt, ts)); r["code"] != 0.0 {
		t.Fatalf("stop: %v", r)
	}
	if s := f.State(0); s.Working || s.Mode == Mining {
		t.Fatalf("after stop: %+v", s)
	}
	r = v3Exchange(t, c, map[string]string{"cmd": "get.device.info", "param": "miner"})
	if r["msg"].(map[string]any)["miner"].(map[string]any)["working"] != "false" {
		t.Fatalf("working after stop: %v", r)
	}
	// A power limit restarts btminer: the service starts, power comes back
	// at the limit.
	write("set.miner.service", "start", wmcrypto.V3Token("set.miner.service", "super", salt, ts))
	if r := write("set.miner.power_limit", 2000, wmcrypto.V3Token("set.miner.power_limit", "super", salt, ts)); r["code"] != 0.0 {
		t.Fatalf("power_limit: %v", r)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.State(0).PowerW != 2000 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if s := f.State(0); s.PowerW != 2000 || s.LimitW != 2000 || !s.Working {
		t.Fatalf("after power_limit: %+v", s)
	}
	if r := write("set.miner.power_limit", "lots", wmcrypto.V3Token("set.miner.power_limit", "super", salt, ts)); r["code"] != -2.0 {
		t.Fatalf("bad param: %v", r)
	}
}

func TestWhatsminerV2Wire(t *testing.T) {
	f := wmFleet(t, WhatsminerConfig{NoV3: true, Password: "hunter2"})
	addr := net.JoinHostPort(f.Hosts()[0], strconv.Itoa(f.PortV2()))
	once := func(req []byte) []byte {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(req)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c) // btminer closes after the reply
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var tok struct {
		STATUS string
		Code   int
		Msg    struct{ Time, Salt, Newsalt string }
	}
	if err := json.Unmarshal(once([]byte(`{"cmd":"get_token"}`)), &tok); err != nil || tok.STATUS != "S" || tok.Code != 134 {
		t.Fatalf("get_token: %+v %v", tok, err)
	}
	key, sign := wmcrypto.V2Keys("hunter2", tok.Msg.Salt, tok.Msg.Newsalt, tok.Msg.Time)
	enc, _ := wmcrypto.EncryptECB(key, []byte(`{"cmd":"power_off","token":"`+sign+`","respbefore":"true"}`))
	var env struct{ Enc string }
	if err := json.Unmarshal(once([]byte(`{"enc":1,"data":"`+enc+`"}`)), &env); err != nil || env.Enc == "" {
		t.Fatalf("power_off reply is not an envelope: %v", err)
	}
	plain, err := wmcrypto.DecryptECB(key, env.Enc)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		STATUS string
		Code   int
	}
	if json.Unmarshal(plain, &r); r.STATUS != "S" || r.Code != 131 {
		t.Fatalf("power_off: %s", plain)
	}
	if s := f.State(0); s.Working || s.LastWrite != "power_off" {
		t.Fatalf("after power_off: %+v", s)
	}
	var st struct{ Msg map[string]string }
	json.Unmarshal(once([]byte(`{"command":"status"}`)), &st)
	if st.Msg["mineroff"] != "true" {
		t.Fatalf("status after power_off: %+v", st)
	}
	// A wrong key decrypts to noise: invalid JSON, in clear text.
	badKey, _ := wmcrypto.V2Keys("wrong", tok.Msg.Salt, tok.Msg.Newsalt, tok.Msg.Time)
	enc, _ = wmcrypto.EncryptECB(badKey, []byte(`{"cmd":"power_on","token":"`+sign+`"}`))
	json.Unmarshal(once([]byte(`{"enc":1,"data":"`+enc+`"}`)), &r)
	if r.STATUS != "E" || r.Code != 23 || f.State(0).Working {
		t.Fatalf("wrong key: %+v", r)
	}
	// An unknown token: 135.
	enc, _ = wmcrypto.EncryptECB(key, []byte(`{"cmd":"power_on","token":"nope"}`))
	json.Unmarshal(once([]byte(`{"enc":1,"data":"`+enc+`"}`)), &r)
	if r.Code != 135 {
		t.Fatalf("unknown token: %+v", r)
	}
}
