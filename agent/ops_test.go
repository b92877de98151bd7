package agent_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/mqtt/mqtttest"
	"github.com/siteagent/siteagent/safety"
	"github.com/siteagent/siteagent/sim"
)

// These tests run the real agent on the simulated site against Mosquitto
// and talk to it as central ops would: over TLS with their own client
// certificate, sending commands, reading acknowledgements, plans and
// capacity, and reading the audit log the agent wrote.

type opsHarness struct {
	t      *testing.T
	site   *sim.Site
	cfg    *agent.SiteConfig
	cancel context.CancelFunc
	done   chan error
	pc     paho.Client
	root   string

	mu       sync.Mutex
	acks     []agent.Ack
	plan     agent.PlanReport
	capacity agent.CapacityReport
	caps     int
	events   []agent.EventReport
}

func f64(v float64) *float64 { return &v }

// startOpsSite runs the demo site with the agent on broker url (through
// TLS when agentTLS is set), commands bounded as in a real site file, and
// an ops client on opsURL.
func startOpsSite(t *testing.T, url, opsURL string, agentTLS *mqtt.TLSConfig, opsTLS *tls.Config, tweak func(*agent.SiteConfig)) *opsHarness {
	t.Helper()
	cfg, err := agent.Load("demo.toml", configs.Demo())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	site := sim.New(sim.DefaultConfig())
	if err := site.Start(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Modbus {
		cfg.Modbus[i].URL = site.URL()
	}
	cfg.MQTT.Broker = url
	cfg.MQTT.TLS = agentTLS
	cfg.Site.StateDir = t.TempDir()
	cfg.Commands = &safety.CommandsConfig{MinTargetKW: f64(6000), MaxDuration: 2 * time.Hour}
	if tweak != nil {
		tweak(cfg)
	}
	h := &opsHarness{t: t, site: site, cfg: cfg, cancel: cancel, done: make(chan error, 1), root: cfg.MQTT.TopicRoot + "/" + cfg.Site.ID}
	h.connectOps(opsURL, opsTLS)

	ready := make(chan struct{})
	var once sync.Once
	a, err := agent.New(cfg, agent.Options{Log: quietLog(), Notify: func(s string) {
		if s == "READY=1" {
			once.Do(func() { close(ready) })
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { h.done <- a.Run(ctx) }()
	t.Cleanup(h.stop)
	select {
	case <-ready:
	case err := <-h.done:
		t.Fatalf("agent stopped before READY: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent not ready after 20s")
	}
	return h
}

func (h *opsHarness) stop() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	select {
	case <-h.done:
	case <-time.After(15 * time.Second):
		h.t.Error("agent did not stop within 15s")
	}
	h.site.Close()
	h.cancel = nil
}

func (h *opsHarness) connectOps(url string, tc *tls.Config) {
	o := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("ops-%d", time.Now().UnixNano())).SetAutoReconnect(true)
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	h.pc = paho.NewClient(o)
	if tok := h.pc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		h.t.Fatalf("ops connect: %v", tok.Error())
	}
	h.t.Cleanup(func() { h.pc.Disconnect(100) })
	tok := h.pc.Subscribe(h.root+"/#", 1, func(_ paho.Client, m paho.Message) {
		h.mu.Lock()
		defer h.mu.Unlock()
		switch strings.TrimPrefix(m.Topic(), h.root+"/") {
		case "ack":
			var a agent.Ack
			if err := json.Unmarshal(m.Payload(), &a); err != nil {
				h.t.Errorf("ack is not JSON: %v: %s", err, m.Payload())
			}
			h.acks = append(h.acks, a)
		case "plan":
			var p agent.PlanReport // fresh: readers hold the last one's slices
			json.Unmarshal(m.Payload(), &p)
			h.plan = p
		case "capacity":
			var c agent.CapacityReport
			if err := json.Unmarshal(m.Payload(), &c); err != nil {
				h.t.Errorf("capacity is not JSON: %v: %s", err, m.Payload())
			}
			h.capacity = c
			h.caps++
		case "events":
			var e agent.EventReport
			json.Unmarshal(m.Payload(), &e)
			h.events = append(h.events, e)
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		h.t.Fatalf("ops subscribe: %v", tok.Error())
	}
}

// command publishes a command (a map, so tests can also send broken ones)
// and waits for its acknowledgement (the n-th one for that id).
func (h *opsHarness) command(cmd map[string]any) agent.Ack {
	h.t.Helper()
	id, _ := cmd["id"].(string)
	before := h.ackCount(id)
	b, _ := json.Marshal(cmd)
	if tok := h.pc.Publish(h.root+"/cmd", 1, false, b); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		h.t.Fatalf("publish command: %v", tok.Error())
	}
	var ack agent.Ack
	h.eventually("ack of "+id, 10*time.Second, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		n := 0
		for _, a := range h.acks {
			if a.ID == id {
				if n++; n > before {
					ack = a
					return true
				}
			}
		}
		return false
	})
	return ack
}

func (h *opsHarness) ackCount(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, a := range h.acks {
		if a.ID == id {
			n++
		}
	}
	return n
}

func (h *opsHarness) eventually(what string, d time.Duration, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.mu.Lock()
	plan, _ := json.Marshal(h.plan)
	capacity, _ := json.Marshal(h.capacity)
	h.mu.Unlock()
	h.t.Fatalf("%s: not within %s\nlast plan: %s\nlast capacity: %s", what, d, plan, capacity)
}

func (h *opsHarness) lastPlan() agent.PlanReport {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.plan
}

func (h *opsHarness) lastCapacity() agent.CapacityReport {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.capacity
}

func (h *opsHarness) audit() []safety.AuditRecord {
	h.t.Helper()
	recs, bad, err := safety.ReadAudit(h.cfg.Site.StateDir + "/" + safety.AuditFileName)
	if err != nil || bad != 0 {
		h.t.Fatalf("audit log: %v, %d bad lines", err, bad)
	}
	return recs
}

func issued(d time.Duration) string { return time.Now().Add(d).UTC().Format(time.RFC3339Nano) }

func wantAck(t *testing.T, a agent.Ack, result, reason string) {
	t.Helper()
	if a.Result != result || !strings.Contains(a.Reason, reason) {
		t.Fatalf("ack %+v: want %s with a reason containing %q", a, result, reason)
	}
}

// The whole command path over TLS with client certificates and the
// documented ACL: accepted, rejected for bounds, rejected for expiry, a
// duplicate ignored, a restore hold and its release, a cancellation; each
// acknowledged, each audited, and the accepted ones seen in the plan, the
// capacity report and the site's meter.
func TestCommandsOverTLS(t *testing.T) {
	pki := mqtttest.NewPKI(t)
	m := mqtttest.Start(t, mqtttest.Options{TLS: pki, ACL: strings.ReplaceAll(docACLForTest, "%SITE%", "demo-site")})
	cert, key := pki.Client("demo-site")
	h := startOpsSite(t, m.URL(), m.URL(), &mqtt.TLSConfig{CAFile: pki.CAFile, CertFile: cert, KeyFile: key}, pki.ClientTLS("ops"), nil)
	h.eventually("normal plan", 10*time.Second, func() bool { return h.lastPlan().Mode == "normal" })
	h.eventually("capacity under the import limit", 10*time.Second, func() bool {
		c := h.lastCapacity()
		return c.Constraint == "import_limit" && c.Until == nil && c.HeadroomKW != nil && len(c.Groups) == 3
	})

	// Accepted: a curtailment to 9000 kW for 20 minutes.
	ack := h.command(map[string]any{"id": "c-1", "type": "curtail", "from": "dispatch@ops", "issued": issued(0),
		"target_kw": 9000, "duration": "20m", "reason": "test event"})
	wantAck(t, ack, "accepted", "")
	if !strings.Contains(ack.Effect, "import target 9000 kW") {
		t.Fatalf("effect %q", ack.Effect)
	}
	h.eventually("curtailment binds", 10*time.Second, func() bool {
		p := h.lastPlan()
		return p.Mode == "curtailment" && p.Binding == "curtailment" && p.BudgetKW != nil && *p.BudgetKW == 9000
	})
	h.eventually("the site's import under the target", 20*time.Second, func() bool { return h.site.Snapshot().ImportKW <= 9000 })
	h.eventually("capacity says how long", 10*time.Second, func() bool {
		c := h.lastCapacity()
		return c.Constraint == "curtailment" && c.Until != nil && c.ExpectedS != nil && *c.ExpectedS > 1000 && *c.ExpectedS <= 1200 &&
			strings.Contains(c.Why, "c-1")
	})

	// The same id again: ignored.
	ack = h.command(map[string]any{"id": "c-1", "type": "curtail", "issued": issued(0), "target_kw": 6000, "duration": "20m"})
	wantAck(t, ack, "duplicate", "already handled")

	// Rejected for bounds: above the import limit, deeper than allowed.
	wantAck(t, h.command(map[string]any{"id": "c-2", "type": "curtail", "issued": issued(0), "target_kw": 20000, "duration": "10m"}),
		"rejected", "above the site's import limit")
	wantAck(t, h.command(map[string]any{"id": "c-3", "type": "curtail", "issued": issued(0), "target_kw": 2000, "duration": "10m"}),
		"rejected", "below min_target_kw")
	// Rejected for expiry: issued too long ago, or past its expiry.
	wantAck(t, h.command(map[string]any{"id": "c-4", "type": "curtail", "issued": issued(-5 * time.Minute), "target_kw": 8000, "duration": "10m"}),
		"rejected", "expired")
	wantAck(t, h.command(map[string]any{"id": "c-5", "type": "curtail", "issued": issued(-time.Second), "expires": issued(-time.Millisecond), "target_kw": 8000, "duration": "10m"}),
		"rejected", "expired")
	// Rejected for its schema.
	wantAck(t, h.command(map[string]any{"id": "c-6", "type": "curtail", "issued": issued(0), "target": 8000, "duration": "10m"}),
		"rejected", "schema")
	if p := h.lastPlan(); p.BudgetKW == nil || *p.BudgetKW != 9000 {
		t.Fatalf("a rejected command changed the plan: budget %v", p.BudgetKW)
	}

	// Hold restores, then cancel the curtailment: the cut groups stay cut.
	wantAck(t, h.command(map[string]any{"id": "m-1", "type": "mode", "issued": issued(0), "hold_restores": true, "duration": "10m"}), "accepted", "")
	wantAck(t, h.command(map[string]any{"id": "x-1", "type": "cancel", "issued": issued(0), "cancels": "c-1"}), "accepted", "")
	h.eventually("curtailment over, restores held", 10*time.Second, func() bool {
		p := h.lastPlan()
		return p.Binding == "import_limit" && group(agentPlan(p), "asic").Reason == "held"
	})
	held := group(agentPlan(h.lastPlan()), "asic").UnitsOn
	time.Sleep(2 * time.Second)
	if g := group(agentPlan(h.lastPlan()), "asic"); g.UnitsOn > held || g.Reason != "held" {
		t.Fatalf("miners restored while held: %+v (held at %d)", g, held)
	}
	if c := h.lastCapacity(); c.HoldUntil == nil {
		t.Fatalf("capacity does not show the hold: %+v", c)
	}
	wantAck(t, h.command(map[string]any{"id": "m-2", "type": "mode", "issued": issued(0), "hold_restores": false}), "accepted", "")
	h.eventually("restores once released", 20*time.Second, func() bool { return group(agentPlan(h.lastPlan()), "asic").Reason != "held" })
	wantAck(t, h.command(map[string]any{"id": "x-2", "type": "cancel", "issued": issued(0), "cancels": "c-1"}), "rejected", "nothing pending or active")

	// Every decision is in the audit log, with who and over what.
	recs := h.audit()
	results := map[string][]string{}
	for _, r := range recs {
		if r.Event != "command" {
			continue
		}
		results[r.ID] = append(results[r.ID], r.Result)
		if r.Via == nil || !r.Via.TLS || r.Via.Username != "demo-site" || r.Via.Topic != h.root+"/cmd" {
			t.Fatalf("record %+v: want the TLS connection and identity", r)
		}
		if r.TS.IsZero() || len(r.Request) == 0 {
			t.Fatalf("record without time or request: %+v", r)
		}
	}
	for id, want := range map[string]string{"c-1": "accepted,duplicate", "c-2": "rejected", "c-3": "rejected", "c-4": "rejected",
		"c-5": "rejected", "c-6": "rejected", "m-1": "accepted", "x-1": "accepted", "m-2": "accepted", "x-2": "rejected"} {
		if got := strings.Join(results[id], ","); got != want {
			t.Errorf("audit of %s: %q, want %q", id, got, want)
		}
	}
	var began, ended bool
	for _, r := range recs {
		began = began || (r.Event == "began" && r.ID == "c-1")
		ended = ended || (r.Event == "ended" && r.ID == "c-1")
	}
	if !began || !ended {
		t.Errorf("no began/ended records for c-1: %+v", recs)
	}
	if r := recs[0]; r.From != "dispatch@ops" || r.Type != "curtail" {
		t.Errorf("first record %+v", r)
	}
}

// docACLForTest is the documented ACL's site part and ops part, enough for
// the agent's topics (the full file is tested in drivers/mqtt).
const docACLForTest = `pattern write siteagent/%u/status
pattern write siteagent/%u/plan
pattern write siteagent/%u/events
pattern write siteagent/%u/points
pattern write siteagent/%u/capacity
pattern write siteagent/%u/ack
pattern read siteagent/%u/cmd
user ops
topic read siteagent/#
topic write siteagent/+/cmd
`

func agentPlan(p agent.PlanReport) agent.PlanReport { return p }

// Over a connection without TLS every command is refused, acknowledged
// and audited, and nothing changes.
func TestCommandsRefusedWithoutTLS(t *testing.T) {
	m := mqtttest.Start(t, mqtttest.Options{})
	h := startOpsSite(t, m.URL(), m.URL(), nil, nil, nil)
	h.eventually("normal plan", 10*time.Second, func() bool { return h.lastPlan().Mode == "normal" })
	ack := h.command(map[string]any{"id": "c-1", "type": "curtail", "issued": issued(0), "target_kw": 9000, "duration": "10m"})
	wantAck(t, ack, "rejected", "no TLS")
	time.Sleep(time.Second)
	if p := h.lastPlan(); p.Mode == "curtailment" {
		t.Fatal("a command over plain TCP took effect")
	}
	recs := h.audit()
	if len(recs) != 1 || recs[0].Result != "rejected" || recs[0].Via.TLS || !strings.Contains(recs[0].Reason, "no TLS") {
		t.Fatalf("audit %+v", recs)
	}
}

// allow_without_tls is explicit; with it a reduction request works over
// plain TCP, resolved against the import measured when it begins.
func TestReductionWithoutTLSWhenAllowed(t *testing.T) {
	m := mqtttest.Start(t, mqtttest.Options{})
	h := startOpsSite(t, m.URL(), m.URL(), nil, nil, func(c *agent.SiteConfig) { c.Commands.AllowWithoutTLS = true })
	h.eventually("normal plan", 10*time.Second, func() bool {
		p := h.lastPlan()
		return p.Mode == "normal" && p.Inputs.ImportKW != nil
	})
	before := *h.lastPlan().Inputs.ImportKW
	wantAck(t, h.command(map[string]any{"id": "r-1", "type": "curtail", "issued": issued(0), "reduction_kw": 3000, "duration": "10m"}), "accepted", "")
	h.eventually("curtailment 3000 kW below the import", 10*time.Second, func() bool {
		p := h.lastPlan()
		return p.Binding == "curtailment" && p.BudgetKW != nil && math.Abs(*p.BudgetKW-(before-3000)) < 600
	})
}
