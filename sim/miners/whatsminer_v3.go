package miners

import (
	"encoding/binary"
	"encoding/json"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/siteagent/siteagent/drivers/miner/whatsminer/wmcrypto"
)

// wmV3MaxRequest bounds a request frame; a real command is a few hundred
// bytes.
const wmV3MaxRequest = 64 << 10

// handleV3 serves one API v3 connection: frames until the client closes,
// 300 s pass idle, or the fleet closes.
func (f *WhatsminerFleet) handleV3(i int, c net.Conn) {
	f.counters.Connections.Add(1)
	if f.fault(i) == FaultRefusing {
		reset(c)
		return
	}
	f.conns.Store(c, nil)
	defer f.conns.Delete(c)
	defer c.Close()
	var hdr [4]byte
	for {
		c.SetReadDeadline(time.Now().Add(300 * time.Second))
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n == 0 {
			continue // the client's heartbeat
		}
		if n > wmV3MaxRequest {
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(c, body); err != nil {
			return
		}
		f.counters.Requests.Add(1)
		fault := f.fault(i)
		if fault == FaultDropping {
			return
		}
		reply := f.v3Dispatch(i, body, fault == FaultIgnoring)
		if fault == FaultSlow && !waitCtx(f.ctx, time.Duration(f.slowDelay.Load())) {
			return
		}
		if fault == FaultGarbled {
			reply = garble(reply)
		}
		out := make([]byte, 4+len(reply))
		binary.LittleEndian.PutUint32(out, uint32(len(reply)))
		copy(out[4:], reply)
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

func wmV3Reply(now time.Time, code int, msg any, desc string) []byte {
	b, _ := json.Marshal(map[string]any{"code": code, "when": now.Unix(), "msg": msg, "desc": desc})
	return b
}

// v3Dispatch answers one request. ignore acknowledges writes without acting
// on them (FaultIgnoring).
func (f *WhatsminerFleet) v3Dispatch(i int, body []byte, ignore bool) []byte {
	now := f.cfg.Now()
	var req struct {
		Cmd     string          `json:"cmd"`
		Param   json.RawMessage `json:"param"`
		TS      json.Number     `json:"ts"`
		Account string          `json:"account"`
		Token   string          `json:"token"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.Cmd == "" {
		return wmV3Reply(now, -3, "invalid json item", "")
	}
	f.mu[i].Lock()
	defer f.mu[i].Unlock()
	w := &f.miners[i]
	f.settle(w, now)
	param := wmParamString(req.Param)
	switch {
	case req.Cmd == "get.device.info":
		return wmV3Reply(now, 0, f.v3DeviceInfo(i, w, param, now), req.Cmd)
	case req.Cmd == "get.miner.status":
		return wmV3Reply(now, 0, f.v3Status(w, param, now), req.Cmd)
	case req.Cmd == "get.miner.setting":
		return wmV3Reply(now, 0, map[string]any{"power-limit": int(w.limitW), "upfreq-speed": 0, "power-mode": "normal",
			"fast-boot": "disable", "target-freq": 0, "fast-mining": "disable", "power": int(f.cfg.Physics.RatedW), "power-percent": 0}, req.Cmd)
	case strings.HasPrefix(req.Cmd, "set."):
		// Permission first (the write switch, then the account), then the
		// token; then the command.
		if f.writesOff.Load() || req.Account != f.cfg.Account {
			return wmV3Reply(now, -4, "no permission", req.Cmd)
		}
		ts, err := req.TS.Int64()
		if err != nil || req.Token == "" {
			return wmV3Reply(now, -3, "invalid json item", req.Cmd)
		}
		if math.Abs(float64(now.Unix()-ts)) > f.cfg.TokenWindow.Seconds() ||
			req.Token != wmcrypto.V3Token(req.Cmd, f.cfg.Password, w.salt3, ts) {
			return wmV3Reply(now, -1, "invalid token", req.Cmd)
		}
		return f.v3Write(w, req.Cmd, param, ignore, now)
	}
	return wmV3Reply(now, -2, "invalid command", req.Cmd)
}

func (f *WhatsminerFleet) v3Write(w *wmMiner, cmd, param string, ignore bool, now time.Time) []byte {
	switch cmd {
	case "set.miner.service":
		switch param {
		case "stop", "start", "restart", "enable", "disable":
		default:
			return wmV3Reply(now, -2, "invalid param", cmd)
		}
		if !ignore {
			switch param {
			case "stop":
				f.setService(w, false, now)
			case "start":
				f.setService(w, true, now)
			case "restart":
				f.setLimit(w, w.limitW, now)
			}
		}
	case "set.miner.power_limit":
		v, err := strconv.ParseFloat(param, 64)
		if err != nil || v < 0 || v > 99999 || v != math.Trunc(v) {
			return wmV3Reply(now, -2, "invalid param", cmd)
		}
		if !ignore {
			f.setLimit(w, v, now)
		}
	default:
		return wmV3Reply(now, -2, "invalid command", cmd)
	}
	if !ignore {
		w.writes++
		w.lastWrite = cmd + " " + param
	}
	return wmV3Reply(now, 0, "ok", cmd)
}

// wmParamString reads "param" given as a string or a bare number.
func wmParamString(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return strings.TrimSpace(string(raw))
}

func (f *WhatsminerFleet) v3DeviceInfo(i int, w *wmMiner, param string, now time.Time) map[string]any {
	p := &f.cfg.Physics
	host := f.v2.addrs[i]
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	sections := map[string]func() any{
		"network": func() any {
			return map[string]any{"ip": host, "proto": "dhcp", "netmask": "255.0.0.0", "dns": "127.0.0.53",
				"mac":     "C8:14:00:" + strconv.Itoa(10+i/10000%90) + ":" + strconv.Itoa(10+i/100%90) + ":" + strconv.Itoa(10+i%90),
				"gateway": "127.0.0.1", "hostname": "WhatsMiner"}
		},
		"miner": func() any {
			return map[string]any{"working": strconv.FormatBool(f.working(w)), "type": "M50S_VH50", "hash-board": "H50",
				"cointype": "BTC", "pool-strategy": "FAILOVER", "heatmode": "", "hash-percent": "", "board-num": 3,
				"miner-sn": "HTM3SIM" + strconv.Itoa(100000+i)}
		},
		"system": func() any {
			return map[string]any{"api": "3.0.1", "platform": "H616", "fwversion": "20240705.22.REL",
				"control-board-version": "CB6_V10", "ledstatus": "auto"}
		},
		"power": func() any {
			pin := w.m.powerAt(p, now)
			return map[string]any{"type": "P221B", "mode": "normal", "hwversion": "V01.00", "swversion": "V01.00.V01.03",
				"model": "P221B", "iin": round(pin/230, 2), "vin": 230.0, "vout": 12.5, "pin": round(pin, 0),
				"fanspeed": 6000, "temp0": 42.0, "sn": "PSUSIM" + strconv.Itoa(100000+i)}
		},
	}
	out := map[string]any{}
	switch {
	case param == "salt":
		w.saltReads++
		out["salt"] = w.salt3
	case sections[param] != nil:
		out[param] = sections[param]()
	default:
		for k, fn := range sections {
			out[k] = fn()
		}
	}
	return out
}

func (f *WhatsminerFleet) v3Status(w *wmMiner, param string, now time.Time) map[string]any {
	p := &f.cfg.Physics
	out := map[string]any{}
	if strings.Contains(param, "summary") {
		hr := w.m.hashrate(p, now)
		pw := w.m.powerAt(p, now)
		temp := 35 + 40*hr/p.HashrateTHs
		out["summary"] = map[string]any{
			"elapsed": int(now.Sub(w.m.since).Seconds()), "bootup-time": 86400,
			"freq-avg": round(600*hr/p.HashrateTHs, 0), "target-freq": 600, "factory-hash": p.HashrateTHs,
			"hash-average": round(hr, 2), "hash-1min": round(hr, 2), "hash-15min": round(hr, 2), "hash-realtime": round(hr, 2),
			"power-realtime": round(pw, 0), "power-5min": round(pw, 0), "power-limit": int(w.limitW), "power-rate": 0,
			"environment-temperature": 25.0, "board-temperature": []float64{round(temp-5, 1), round(temp-4, 1), round(temp-6, 1)},
			"chip-temp-min": round(temp-10, 1), "chip-temp-avg": round(temp-3, 1), "chip-temp-max": round(temp, 1),
			"up-freq-finish": 1, "fan-speed-in": 5400, "fan-speed-out": 5500,
		}
	}
	if strings.Contains(param, "pools") {
		out["pools"] = []any{map[string]any{"id": 1, "url": "stratum+tcp://pool.example:3333", "status": "alive",
			"account": "sim.worker", "stratum-active": true, "reject-rate": 0.0}}
	}
	if strings.Contains(param, "edevs") {
		hr := w.m.hashrate(p, now) / 3
		var devs []any
		for s := 0; s < 3; s++ {
			devs = append(devs, map[string]any{"id": s, "slot": s, "hash-average": round(hr, 2), "factory-hash": round(p.HashrateTHs/3, 2),
				"freq": 600, "effective-chips": 111, "chip-temp-min": 60, "chip-temp-avg": 68, "chip-temp-max": 75})
		}
		out["edevs"] = devs
	}
	return out
}
