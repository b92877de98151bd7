package miners

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"time"

	"github.com/siteagent/siteagent/drivers/miner/whatsminer/wmcrypto"
)

// wmV2MaxTokens is how many live tokens one client address may hold.
const wmV2MaxTokens = 32

// handleV2 serves one API v2 connection: one request, one reply, close.
// btminer closes a connection that sends nothing for 10 s.
func (f *WhatsminerFleet) handleV2(i int, c net.Conn) {
	f.counters.Connections.Add(1)
	if f.fault(i) == FaultRefusing {
		reset(c)
		return
	}
	f.conns.Store(c, nil)
	defer f.conns.Delete(c)
	defer c.Close()
	raw, err := readRequest(c, 10*time.Second)
	if err != nil {
		return
	}
	f.counters.Requests.Add(1)
	fault := f.fault(i)
	if fault == FaultDropping {
		return
	}
	client, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	reply := f.v2Dispatch(i, raw, client, fault == FaultIgnoring)
	if fault == FaultSlow && !waitCtx(f.ctx, time.Duration(f.slowDelay.Load())) {
		return
	}
	if fault == FaultGarbled {
		reply = garble(reply)
	}
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	c.Write(reply)
}

// wmV2Reply is btminer's own reply shape: STATUS is a string.
func wmV2Reply(now time.Time, ok bool, code int, msg any) []byte {
	st := "S"
	if !ok {
		st = "E"
	}
	b, _ := json.Marshal(map[string]any{"STATUS": st, "When": now.Unix(), "Code": code, "Msg": msg, "Description": ""})
	return b
}

// wmV2Report is the cgminer-style shape of summary and devs.
func wmV2Report(now time.Time, code int, msg, section string, rows []map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{
		"STATUS": []any{map[string]any{"STATUS": "S", "When": now.Unix(), "Code": code, "Msg": msg, "Description": "btminer"}},
		section:  rows, "id": 1,
	})
	return b
}

func (f *WhatsminerFleet) v2Dispatch(i int, raw []byte, client string, ignore bool) []byte {
	now := f.cfg.Now()
	var req map[string]json.RawMessage
	if json.Unmarshal(raw, &req) != nil {
		return wmV2Reply(now, false, 23, "invalid JSON message")
	}
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	w := &f.miners[i]
	f.settle(w, now)
	if _, ok := req["enc"]; ok {
		var data string
		json.Unmarshal(req["data"], &data)
		return f.v2Privileged(w, data, ignore, now)
	}
	var cmd string
	if json.Unmarshal(req["cmd"], &cmd) != nil || cmd == "" {
		json.Unmarshal(req["command"], &cmd)
	}
	p := &f.cfg.Physics
	switch cmd {
	case "get_token":
		live := 0
		for k, t := range w.tokens {
			switch {
			case !now.Before(t.expires):
				delete(w.tokens, k)
			case t.client == client:
				live++
			}
		}
		if live >= wmV2MaxTokens {
			return wmV2Reply(now, false, 136, "token over max times")
		}
		t := strconv.FormatInt(now.Unix(), 10)
		newsalt := f.newID()
		sign := wmcrypto.V2Sign(wmcrypto.V2Key(f.cfg.Password, w.salt2), t, newsalt)
		w.tokens[sign] = wmToken{client: client, expires: now.Add(f.cfg.TokenTTL)}
		w.logins++
		return wmV2Reply(now, true, 134, map[string]string{"time": t, "salt": w.salt2, "newsalt": newsalt})
	case "summary":
		hr := w.m.hashrate(p, now)
		pw := w.m.powerAt(p, now)
		temp := 35 + 40*hr/p.HashrateTHs
		mhs := round(hr*1e6, 2)
		return wmV2Report(now, 11, "Summary", "SUMMARY", []map[string]any{{
			"Elapsed": int(now.Sub(w.m.since).Seconds()), "MHS av": mhs, "MHS 5s": mhs, "MHS 1m": mhs, "MHS 5m": mhs,
			"MHS 15m": mhs, "HS RT": mhs, "Accepted": 1000, "Rejected": 1, "Total MH": 0, "Temperature": round(temp-5, 1),
			"freq_avg": round(600*hr/p.HashrateTHs, 0), "Fan Speed In": 5400, "Fan Speed Out": 5500, "Power": round(pw, 0),
			"Power Rate": 26.0, "Pool Rejected%": 0.1, "Pool Stale%": 0, "Uptime": 86400, "Security Mode": 0,
			"Hash Stable": true, "Hash Stable Cost Seconds": 600, "Hash Deviation%": 0.2, "Target Freq": 600,
			"Target MHS": round(p.HashrateTHs*1e6, 0), "Env Temp": 25.0, "Power Mode": "Normal",
			"Factory GHS": round(p.HashrateTHs*1e3, 0), "Power Limit": int(w.limitW), "Chip Temp Min": round(temp-10, 1),
			"Chip Temp Max": round(temp, 1), "Chip Temp Avg": round(temp-3, 1), "Debug": "", "Btminer Fast Boot": "disable",
			"Upfreq Complete": 1, "Firmware Version": "'20230911.12.Rel'",
		}})
	case "status":
		return wmV2Reply(now, true, 131, map[string]string{"mineroff": strconv.FormatBool(!f.working(w)),
			"mineroff_reason": "", "mineroff_time": "", "FirmwareVersion": "'20230911.12.Rel'", "power_mode": "", "hash_percent": ""})
	case "devs":
		hr := w.m.hashrate(p, now) / 3 * 1e6
		var rows []map[string]any
		for s := 0; s < 3; s++ {
			rows = append(rows, map[string]any{"ASC": s, "Slot": s, "Enabled": "Y", "Status": "Alive", "Temperature": 70.0,
				"Chip Frequency": 600, "MHS av": round(hr, 2), "MHS 5s": round(hr, 2), "MHS 1m": round(hr, 2),
				"Effective Chips": 111, "PCB SN": "HEM3SIM" + strconv.Itoa(1000+s), "Chip Temp Min": 60.0,
				"Chip Temp Max": 75.0, "Chip Temp Avg": 68.0})
		}
		return wmV2Report(now, 9, "3 ASC(s)", "DEVS", rows)
	case "get_psu":
		pin := w.m.powerAt(p, now)
		return wmV2Reply(now, true, 131, map[string]string{"name": "P221B", "hw_version": "V01.00", "sw_version": "V01.00.V01.03",
			"model": "P221B", "iin": strconv.Itoa(int(pin / 230 * 1000)), "vin": "23000", "fan_speed": "6000",
			"version": "1", "serial_no": "PSUSIM" + strconv.Itoa(100000+i), "vout": "1250", "pin": strconv.Itoa(int(pin))})
	case "get_version":
		return wmV2Reply(now, true, 131, map[string]string{"api_ver": "2.0.5", "fw_ver": "20230911.12.Rel",
			"platform": "H6OS", "chip": "K210"})
	}
	return wmV2Reply(now, false, 14, "invalid API command or data")
}

// v2Privileged decrypts, checks the token and runs a privileged command;
// the answer is encrypted, its errors are not.
func (f *WhatsminerFleet) v2Privileged(w *wmMiner, data string, ignore bool, now time.Time) []byte {
	key := f.v2Key(w)
	plain, err := wmcrypto.DecryptECB(key, data)
	if err != nil {
		var b64 base64.CorruptInputError
		if errors.As(err, &b64) {
			return wmV2Reply(now, false, 137, "base64 decode error")
		}
		return wmV2Reply(now, false, 23, "invalid JSON message")
	}
	var cmd struct {
		Cmd        string `json:"cmd"`
		Token      string `json:"token"`
		PowerLimit string `json:"power_limit"`
	}
	if json.Unmarshal(plain, &cmd) != nil || cmd.Cmd == "" {
		return wmV2Reply(now, false, 23, "invalid JSON message")
	}
	if t, ok := w.tokens[cmd.Token]; !ok || !now.Before(t.expires) {
		return wmV2Reply(now, false, 135, "check token error")
	}
	if f.writesOff.Load() {
		return wmV2Reply(now, false, 45, "permission denied")
	}
	switch cmd.Cmd {
	case "power_off":
		if !ignore {
			f.setService(w, false, now)
		}
	case "power_on":
		if !ignore {
			f.setService(w, true, now)
		}
	case "adjust_power_limit":
		v, err := strconv.ParseFloat(cmd.PowerLimit, 64)
		if err != nil || v < 0 || v > 99999 {
			return wmV2Reply(now, false, 132, "command error")
		}
		if !ignore {
			f.setLimit(w, v, now) // btminer reboots to apply it
		}
	default:
		return wmV2Reply(now, false, 14, "invalid API command or data")
	}
	if !ignore {
		w.writes++
		w.lastWrite = cmd.Cmd
	}
	enc, _ := wmcrypto.EncryptECB(key, wmV2Reply(now, true, 131, "API command OK"))
	b, _ := json.Marshal(map[string]string{"enc": enc})
	return b
}
