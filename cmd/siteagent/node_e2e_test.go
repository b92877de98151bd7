package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/node/wire"
	"github.com/siteagent/siteagent/sim"
)

// TestGPUNodesEndToEnd runs the end-to-end scenario with real
// processes and a real broker: the site controller (`siteagent run`) on the
// simulated site (Modbus on loopback), two `siteagent node` processes on
// simulated GPUs (a training server and an inference server), and
// Mosquitto. Everything observed comes over MQTT, as an operator would
// see it.
//
//  1. An under-frequency event caps the training GPUs at the stage's cap
//     while the inference GPUs stay untouched.
//  2. The event clears and the caps ramp back.
//  3. The broker stops for longer than a lease: both nodes fall to their
//     safe cap on their own; the broker comes back and grants resume.
//  4. The site controller is killed: every node falls to its safe cap when
//     its lease runs out.
func TestGPUNodesEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs processes for a minute")
	}
	if !nvml.BuiltIn {
		t.Skip("GPU control is not built in (CGO_ENABLED=0): the mock GPU backend needs cgo too")
	}
	mq := startMosquitto(t)
	bin := buildBinary(t)
	dir := t.TempDir()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	site := sim.New(sim.DefaultConfig())
	if err := site.Start(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer site.Close()

	obs := newObserver(t, mq.url())
	nodes := map[string]*proc{}
	for _, id := range []string{"node-t1", "node-i1"} {
		cfg := filepath.Join(dir, id+".toml")
		writeFile(t, cfg, fmt.Sprintf(`
[node]
site = "demo-site"
id = %q
telemetry_period = "200ms"
state_file = %q

[lease]
safe_cap_w = 150

[gpu]
backend = "mock"

[gpu.mock]
gpus = 8
model = "a100"
demand_pct = 100
latency = "2ms"

[mqtt]
broker = %q
`, id, filepath.Join(dir, id+".grant.json"), mq.url()))
		nodes[id] = startProc(t, bin, "node", "--config", cfg)
	}
	obs.waitTelemetry(t, "both nodes at their safe cap before any grant", func(tt map[string]wire.Telemetry) bool {
		return allCaps(tt["node-t1"], 150) && allCaps(tt["node-i1"], 150)
	})

	siteCfg := filepath.Join(dir, "site.toml")
	writeFile(t, siteCfg, gpuSiteFile(t, site.URL(), mq.url()))
	var out bytes.Buffer
	if code := runMain([]string{"check-config", siteCfg}, &out, &out); code != 0 {
		t.Fatalf("site file:\n%s", out.String())
	}
	controller := startProc(t, bin, "run", "--config", siteCfg)

	obs.waitTelemetry(t, "grants at the groups' ceilings", func(tt map[string]wire.Telemetry) bool {
		return granted(tt["node-t1"], 400) && granted(tt["node-i1"], 400)
	})

	// 1. Under-frequency: uf1 caps training at 50 % (1.6 kW: 200 W per GPU).
	mark := obs.mark()
	site.SetFrequency(59.4)
	obs.waitTelemetry(t, "training capped by stage uf1", func(tt map[string]wire.Telemetry) bool {
		return granted(tt["node-t1"], 200)
	})
	if tel := obs.latest("node-t1"); sumLimits(tel) > 1600+1e-6 {
		t.Fatalf("training caps sum to %.0f W, above the stage's 1600 W", sumLimits(tel))
	}
	// 2. The event clears: after clear_after and the hold-off the training
	// caps ramp back at 1 kW/s.
	site.ClearFrequency()
	obs.waitTelemetry(t, "training caps back at 400 W", func(tt map[string]wire.Telemetry) bool {
		return granted(tt["node-t1"], 400)
	})
	// Inference was never touched: every report since the event began
	// shows its GPUs at 400 W, and no grant changed a limit.
	for _, tel := range obs.since(mark, "node-i1") {
		if !allCaps(tel, 400) {
			t.Fatalf("an inference GPU moved during the event: %+v", tel.GPUs)
		}
	}
	for _, a := range obs.acksSince(mark, "node-i1") {
		for _, g := range a.GPUs {
			if g.Set {
				t.Fatalf("an inference grant changed a limit: %+v", a)
			}
		}
	}
	// The training caps came back through intermediate steps (a ramp,
	// not a jump).
	ramp := false
	for _, a := range obs.acksSince(mark, "node-t1") {
		if len(a.GPUs) > 0 && a.GPUs[0].GrantedW > 200 && a.GPUs[0].GrantedW < 400 {
			ramp = true
		}
	}
	if !ramp {
		t.Fatal("the training caps jumped back to 400 W without ramping")
	}

	// 3. The broker goes away for longer than the 3 s lease: each node
	// falls to its safe cap on its own (its events reach us once the
	// broker is back), then the site's renewals take again.
	mark = obs.mark()
	mq.stop()
	time.Sleep(4500 * time.Millisecond)
	mq.start()
	obs.waitEvents(t, "both nodes report their lease ran out during the outage", mark, func(ev []wire.Event) bool {
		return hasEvent(ev, "node-t1", wire.EventLeaseExpired) && hasEvent(ev, "node-i1", wire.EventLeaseExpired)
	})
	obs.waitTelemetry(t, "grants resume after the broker restart", func(tt map[string]wire.Telemetry) bool {
		return granted(tt["node-t1"], 400) && granted(tt["node-i1"], 400) && tt["node-t1"].TS.After(obs.timeOf(mark))
	})

	// 4. The site controller is killed outright: no renewals, so every
	// node falls to its 150 W safe cap when its lease runs out.
	controller.kill()
	obs.waitTelemetry(t, "every node at its safe cap after the controller died", func(tt map[string]wire.Telemetry) bool {
		return tt["node-t1"].State == wire.StateSafe && allCaps(tt["node-t1"], 150) &&
			tt["node-i1"].State == wire.StateSafe && allCaps(tt["node-i1"], 150)
	})
	for id, p := range nodes {
		if p.exited() {
			t.Fatalf("node %s died:\n%s", id, p.logs())
		}
	}
}

// gpuSiteFile is the demo site's sources with two GPU-fleet groups and one
// under-frequency stage.
func gpuSiteFile(t *testing.T, modbusURL, brokerURL string) string {
	demo := string(configs.Demo())
	i := strings.Index(demo, "\n[[groups]]")
	if i < 0 {
		t.Fatal("demo.toml has no groups")
	}
	doc := demo[:i]
	doc = strings.ReplaceAll(doc, "tcp://127.0.0.1:15020", modbusURL)
	doc = strings.Replace(doc, `broker = ""`, fmt.Sprintf("broker = %q", brokerURL), 1)
	doc = strings.Replace(doc, "failsafe_load_kw = 8000", "failsafe_load_kw = 5", 1)
	return doc + `
[[groups]]
name = "training"
kind = "throttle"
cut_order = 1
units = 1
unit_kw = 3.2
floor_kw = 0.8
ramp_up_kw_per_s = 1
restore_holdoff = "1s"

[groups.gpu_nodes]
nodes = ["node-t1"]
lease = "3s"
stale_after = "1s"

[[groups]]
name = "inference"
kind = "throttle"
cut_order = 2
units = 1
unit_kw = 3.2
floor_kw = 2.4
restore_holdoff = "1s"

[groups.gpu_nodes]
nodes = ["node-i1"]
lease = "3s"
stale_after = "1s"

[[stages]]
name = "uf1"
below_hz = 59.5
delay = "100ms"
clear_above_hz = 59.7
clear_after = "500ms"

[[stages.actions]]
group = "training"
cap_pct = 50.0
`
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// granted: the node holds a grant and every GPU's limit is w.
func granted(tel wire.Telemetry, w float64) bool {
	return tel.State == wire.StateGranted && allCaps(tel, w)
}

func allCaps(tel wire.Telemetry, w float64) bool {
	if len(tel.GPUs) == 0 {
		return false
	}
	for _, g := range tel.GPUs {
		if g.LimitW == nil || *g.LimitW != w {
			return false
		}
	}
	return true
}

func sumLimits(tel wire.Telemetry) float64 {
	var s float64
	for _, g := range tel.GPUs {
		if g.LimitW != nil {
			s += *g.LimitW
		}
	}
	return s
}

func hasEvent(ev []wire.Event, node, kind string) bool {
	for _, e := range ev {
		if e.Node == node && e.Kind == kind {
			return true
		}
	}
	return false
}

// proc is a siteagent process with its logs.
type proc struct {
	cmd  *exec.Cmd
	out  *syncBuf
	done chan struct{}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func startProc(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), out: &syncBuf{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if !p.exited() {
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				p.cmd.Process.Kill()
			}
		}
		if t.Failed() {
			t.Logf("%s logs:\n%s", strings.Join(args, " "), p.logs())
		}
	})
	return p
}

func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) logs() string {
	p.out.mu.Lock()
	defer p.out.mu.Unlock()
	return p.out.b.String()
}

// observer records every node message, as central ops would see them.
type observer struct {
	mu     sync.Mutex
	tel    []wire.Telemetry
	acks   []wire.Ack
	events []wire.Event
	times  []time.Time // when each mark was taken
}

type obsMark struct{ tel, acks, events, time int }

func newObserver(t *testing.T, url string) *observer {
	o := &observer{}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("e2e-gpu-%d", time.Now().UnixNano())).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(200 * time.Millisecond).SetMaxReconnectInterval(500 * time.Millisecond)
	opts.SetOnConnectHandler(func(c paho.Client) {
		c.Subscribe("siteagent/demo-site/nodes/#", 1, func(_ paho.Client, m paho.Message) {
			_, kind, ok := wire.Parse("siteagent", "demo-site", m.Topic())
			if !ok {
				return
			}
			o.mu.Lock()
			defer o.mu.Unlock()
			switch kind {
			case wire.KindTelemetry:
				var v wire.Telemetry
				if json.Unmarshal(m.Payload(), &v) == nil {
					o.tel = append(o.tel, v)
				}
			case wire.KindAck:
				var v wire.Ack
				if json.Unmarshal(m.Payload(), &v) == nil {
					o.acks = append(o.acks, v)
				}
			case wire.KindEvents:
				var v wire.Event
				if json.Unmarshal(m.Payload(), &v) == nil {
					o.events = append(o.events, v)
				}
			}
		})
	})
	c := paho.NewClient(opts)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("observer: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return o
}

func (o *observer) mark() obsMark {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.times = append(o.times, time.Now())
	return obsMark{len(o.tel), len(o.acks), len(o.events), len(o.times) - 1}
}

func (o *observer) timeOf(m obsMark) time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.times[m.time]
}

func (o *observer) latest(node string) wire.Telemetry {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := len(o.tel) - 1; i >= 0; i-- {
		if o.tel[i].Node == node {
			return o.tel[i]
		}
	}
	return wire.Telemetry{}
}

func (o *observer) since(m obsMark, node string) []wire.Telemetry {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []wire.Telemetry
	for _, v := range o.tel[m.tel:] {
		if v.Node == node {
			out = append(out, v)
		}
	}
	return out
}

func (o *observer) acksSince(m obsMark, node string) []wire.Ack {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []wire.Ack
	for _, v := range o.acks[m.acks:] {
		if v.Node == node {
			out = append(out, v)
		}
	}
	return out
}

const e2ePatience = 30 * time.Second

func (o *observer) waitTelemetry(t *testing.T, what string, cond func(map[string]wire.Telemetry) bool) {
	t.Helper()
	deadline := time.Now().Add(e2ePatience)
	for {
		latest := map[string]wire.Telemetry{}
		o.mu.Lock()
		for _, v := range o.tel {
			latest[v.Node] = v
		}
		o.mu.Unlock()
		if cond(latest) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; latest reports:\n%s", what, describe(latest))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (o *observer) waitEvents(t *testing.T, what string, m obsMark, cond func([]wire.Event) bool) {
	t.Helper()
	deadline := time.Now().Add(e2ePatience)
	for {
		o.mu.Lock()
		ev := append([]wire.Event(nil), o.events[m.events:]...)
		o.mu.Unlock()
		if cond(ev) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; events: %+v", what, ev)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func describe(tt map[string]wire.Telemetry) string {
	var b strings.Builder
	for id, v := range tt {
		fmt.Fprintf(&b, "  %s: state %s (%s), limits", id, v.State, v.Reason)
		for _, g := range v.GPUs {
			if g.LimitW != nil {
				fmt.Fprintf(&b, " %.0f", *g.LimitW)
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// mosquitto is a Mosquitto process on a fixed loopback port that the test
// can stop and start again.
type mosquitto struct {
	t    *testing.T
	port int
	conf string
	cmd  *exec.Cmd
}

const mosquittoBin = "/usr/sbin/mosquitto"

func startMosquitto(t *testing.T) *mosquitto {
	t.Helper()
	if _, err := os.Stat(mosquittoBin); err != nil {
		if os.Getenv("SITEAGENT_REQUIRE_MOSQUITTO") == "1" {
			t.Fatalf("mosquitto required (SITEAGENT_REQUIRE_MOSQUITTO=1): %v", err)
		}
		t.Skipf("no %s: %v", mosquittoBin, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &mosquitto{t: t, port: l.Addr().(*net.TCPAddr).Port, conf: filepath.Join(t.TempDir(), "mosquitto.conf")}
	l.Close()
	// set_tcp_nodelay: without it each hop waits on Nagle's algorithm
	// (~40 ms on loopback).
	conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n", m.port)
	if os.Geteuid() == 0 {
		conf += "user root\n"
	}
	writeFile(t, m.conf, conf)
	m.start()
	t.Cleanup(m.stop)
	return m
}

func (m *mosquitto) url() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.port) }

func (m *mosquitto) start() {
	m.t.Helper()
	m.cmd = exec.Command(mosquittoBin, "-c", m.conf)
	m.cmd.Stdout, m.cmd.Stderr = io.Discard, io.Discard
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	deadline := time.Now().Add(e2ePatience)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", m.port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("mosquitto not listening: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (m *mosquitto) stop() {
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Signal(syscall.SIGTERM)
	m.cmd.Wait()
	m.cmd = nil
}
