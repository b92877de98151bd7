//go:build cgo

package node

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gonvml "github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/node/wire"
	"github.com/siteagent/siteagent/sim/gpunode"
)

const testConfig = `
[node]
site = "site-a"
id = "gpu-01"
telemetry_period = "200ms"

[lease]
safe_cap_w = 150
default = "5s"
max = "30s"

[gpu]
backend = "mock"

[mqtt]
broker = "tcp://127.0.0.1:1"
`

// harness is a node on simulated GPUs whose MQTT messages are captured
// instead of sent (the loop's logic, driven step by step).
type harness struct {
	t    *testing.T
	srv  *gpunode.Server
	host *nvml.Host
	n    *Node
	logs *syncBuffer

	mu   sync.Mutex
	sent []mqtt.Message
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func loadTest(t testing.TB, doc string) *Config {
	t.Helper()
	cfg, err := Load("node.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newHarness(t *testing.T, doc string, gc gpunode.Config) *harness {
	t.Helper()
	h := &harness{t: t, logs: &syncBuffer{}}
	h.srv = gpunode.New(gc)
	host, err := nvml.Open(h.srv.Interface(), nvml.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	h.host = host
	t.Cleanup(func() { host.Close(false) })
	n, err := New(loadTest(t, doc), host, Options{Log: slog.New(slog.NewTextHandler(h.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	n.send = func(m mqtt.Message) bool {
		h.mu.Lock()
		h.sent = append(h.sent, m)
		h.mu.Unlock()
		return true
	}
	n.stats = func() mqtt.Stats { return mqtt.Stats{Connected: true} }
	h.n = n
	return h
}

// last returns the newest captured message of a kind, decoded into v.
func (h *harness) last(kind string, v any) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.sent) - 1; i >= 0; i-- {
		if strings.HasSuffix(h.sent[i].Topic, "/"+kind) {
			if err := json.Unmarshal(h.sent[i].Payload, v); err != nil {
				h.t.Fatal(err)
			}
			return true
		}
	}
	return false
}

func (h *harness) limits() []float64 {
	out := make([]float64, 8)
	for i := range out {
		out[i] = h.srv.LimitW(i)
	}
	return out
}

func (h *harness) grant(g wire.Grant) wire.Ack {
	h.t.Helper()
	b, _ := json.Marshal(g)
	return h.grantRaw(b)
}

func (h *harness) grantRaw(b []byte) wire.Ack {
	h.t.Helper()
	h.n.handle(inbound{payload: b, received: time.Now()})
	var a wire.Ack
	if !h.last(wire.KindAck, &a) {
		h.t.Fatal("no ack")
	}
	return a
}

var seq uint64 = 100

func (h *harness) newGrant(w float64) wire.Grant {
	seq++
	g := wire.Grant{Site: "site-a", Node: "gpu-01", Epoch: 1, Seq: seq, Issued: time.Now(), LeaseMS: 5000}
	for i := 0; i < 8; i++ {
		g.Caps = append(g.Caps, wire.GPUCap{UUID: h.srv.UUID(i), W: w})
	}
	return g
}

func TestStartHoldsTheSafeCap(t *testing.T) {
	h := newHarness(t, testConfig, gpunode.Config{Seed: "a"})
	if err := h.n.start(time.Now()); err != nil {
		t.Fatal(err)
	}
	for i, w := range h.limits() {
		if w != 150 {
			t.Fatalf("GPU %d at %.0f W before any grant; the safe cap is 150 W", i, w)
		}
	}
	if v := h.n.View(); v.State != wire.StateSafe {
		t.Fatalf("%+v", v)
	}
}

func TestGrantAppliedAndAcknowledged(t *testing.T) {
	h := newHarness(t, testConfig, gpunode.Config{Seed: "a", Demand: 1})
	h.n.start(time.Now())
	g := h.newGrant(300)
	g.Caps[7].W = 250
	ack := h.grant(g)
	if ack.Result != wire.Applied || ack.Seq != g.Seq || ack.LeaseUntil == nil || len(ack.GPUs) != 8 {
		t.Fatalf("%+v", ack)
	}
	for i, ga := range ack.GPUs {
		want := 300.0
		if i == 7 {
			want = 250
		}
		if ga.GrantedW != want || ga.EnforcedW != want || !ga.Set || h.srv.LimitW(i) != want {
			t.Fatalf("GPU %d: ack %+v, limit %.0f", i, ga, h.srv.LimitW(i))
		}
	}
	if until := time.Until(*ack.LeaseUntil); until < 3*time.Second || until > 8*time.Second {
		t.Fatalf("lease until %v from now; want about 5s (+2s skew)", until)
	}
	if v := h.n.View(); v.State != wire.StateGranted || v.Seq != g.Seq {
		t.Fatalf("%+v", v)
	}
	// A renewal with the same caps sets nothing.
	sets := h.srv.Sets()
	if ack := h.grant(h.newGrant(300)); ack.Result != wire.Applied {
		t.Fatalf("%+v", ack)
	}
	if h.srv.Sets()-sets != 1 { // only GPU 7 changes (250 -> 300)
		t.Fatalf("renewal made %d set calls, want 1", h.srv.Sets()-sets)
	}
}

func TestNodeWideCapSplitEvenly(t *testing.T) {
	h := newHarness(t, testConfig, gpunode.Config{Seed: "a"})
	h.n.start(time.Now())
	g := h.newGrant(0)
	g.Caps = nil
	w := 2000.0
	g.NodeW = &w
	if ack := h.grant(g); ack.Result != wire.Applied {
		t.Fatalf("%+v", ack)
	}
	for i, l := range h.limits() {
		if l != 250 {
			t.Fatalf("GPU %d at %.0f W; 2000 W over 8 GPUs is 250 W", i, l)
		}
	}
	w = 400 // 50 W each: below the 100 W minimum
	g.NodeW, g.Seq = &w, g.Seq+1
	if ack := h.grant(g); ack.Result != wire.Rejected || !strings.Contains(ack.Reason, "minimum") {
		t.Fatalf("%+v", ack)
	}
}

// Bad input: refused with the reason in the ack and the log, and the GPUs
// keep exactly the caps they had.
func TestBadGrantsRejectedAndChangeNothing(t *testing.T) {
	h := newHarness(t, testConfig, gpunode.Config{Seed: "a"})
	h.n.start(time.Now())
	if ack := h.grant(h.newGrant(200)); ack.Result != wire.Applied {
		t.Fatalf("%+v", ack)
	}
	good := h.limits()
	sets := h.srv.Sets()
	cases := []struct {
		name   string
		mutate func(g *wire.Grant) []byte
		reason string
	}{
		{"unknown GPU", func(g *wire.Grant) []byte { g.Caps[3].UUID = "GPU-nope"; return nil }, `GPU "GPU-nope", which this node does not have`},
		{"cap below constraints", func(g *wire.Grant) []byte { g.Caps[2].W = 50; return nil }, "outside 100..400 W"},
		{"cap above constraints", func(g *wire.Grant) []byte { g.Caps[2].W = 450; return nil }, "outside 100..400 W"},
		{"expired", func(g *wire.Grant) []byte { g.Issued = time.Now().Add(-time.Minute); return nil }, "expired grant"},
		{"from the future", func(g *wire.Grant) []byte { g.Issued = time.Now().Add(time.Minute); return nil }, "in the future"},
		{"wrong site", func(g *wire.Grant) []byte { g.Site = "site-b"; return nil }, `from site "site-b"`},
		{"wrong node", func(g *wire.Grant) []byte { g.Node = "gpu-02"; return nil }, `addressed to node "gpu-02"`},
		{"stale", func(g *wire.Grant) []byte { g.Seq = 1; return nil }, "stale grant"},
		{"malformed JSON", func(g *wire.Grant) []byte { return []byte(`{"site":"site-a","caps":[{"uuid":1}]`) }, "malformed grant"},
		{"no caps", func(g *wire.Grant) []byte { g.Caps = nil; return nil }, "no caps"},
		{"no issue time", func(g *wire.Grant) []byte { g.Issued = time.Time{}; return nil }, "no issue time"},
		{"duplicate GPU", func(g *wire.Grant) []byte { g.Caps[1].UUID = g.Caps[0].UUID; return nil }, "named twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := h.newGrant(300)
			raw := c.mutate(&g)
			var ack wire.Ack
			if raw != nil {
				ack = h.grantRaw(raw)
			} else {
				ack = h.grant(g)
			}
			if ack.Result != wire.Rejected || !strings.Contains(ack.Reason, c.reason) {
				t.Fatalf("want rejected with %q, got %+v", c.reason, ack)
			}
			if !strings.Contains(strings.ReplaceAll(h.logs.String(), `\"`, `"`), c.reason) {
				t.Fatalf("the log lacks the reason %q", c.reason)
			}
			var ev wire.Event
			if !h.last(wire.KindEvents, &ev) || ev.Kind != wire.EventGrantRejected {
				t.Fatalf("no grant_rejected event: %+v", ev)
			}
			for i, w := range h.limits() {
				if w != good[i] {
					t.Fatalf("GPU %d moved to %.0f W on a rejected grant", i, w)
				}
			}
		})
	}
	if h.srv.Sets() != sets {
		t.Fatalf("rejected grants made %d set calls", h.srv.Sets()-sets)
	}
	if v := h.n.View(); v.State != wire.StateGranted {
		t.Fatalf("a rejected grant must keep the current lease: %+v", v)
	}
}

func TestLeaseExpiryFallsToSafeCapNeverUp(t *testing.T) {
	h := newHarness(t, testConfig, gpunode.Config{Seed: "a"})
	h.n.start(time.Now())
	g := h.newGrant(300)
	g.Caps[0].W = 120 // below the 150 W safe cap: stays at 120
	h.grant(g)
	h.n.expire(time.Now()) // early: nothing happens
	if h.n.View().State != wire.StateGranted || h.srv.LimitW(1) != 300 {
		t.Fatal("a lease that has not ended must not expire")
	}
	h.n.expire(h.n.leaseUntil.Add(time.Millisecond))
	want := []float64{120, 150, 150, 150, 150, 150, 150, 150}
	for i, w := range h.limits() {
		if w != want[i] {
			t.Fatalf("GPU %d at %.0f W after the lease ran out, want %.0f", i, w, want[i])
		}
	}
	var ev wire.Event
	if v := h.n.View(); v.State != wire.StateSafe || !h.last(wire.KindEvents, &ev) || ev.Kind != wire.EventLeaseExpired {
		t.Fatalf("%+v %+v", v, ev)
	}
	// The next grant is taken again.
	if ack := h.grant(h.newGrant(350)); ack.Result != wire.Applied || h.srv.LimitW(0) != 350 {
		t.Fatalf("%+v", ack)
	}
}

func TestDriftReappliedAndOtherLimiterNotFought(t *testing.T) {
	h := newHarness(t, testConfig, gpunode.Config{Seed: "a", Demand: 1})
	h.n.start(time.Now())
	h.grant(h.newGrant(250))
	h.srv.ResetLimits()             // driver reload: every limit back to 400 W
	h.srv.SetLimitOutOfBand(5, 380) // and someone ran nvidia-smi -pl on GPU 5
	h.n.observe(h.host.Read(nil))
	for i, w := range h.limits() {
		if w != 250 {
			t.Fatalf("GPU %d at %.0f W after drift; want it re-applied to 250 W", i, w)
		}
	}
	if !strings.Contains(h.logs.String(), "drifted") {
		t.Fatal("drift must be logged")
	}
	var tel wire.Telemetry
	if !h.last(wire.KindTelemetry, &tel) || len(tel.GPUs) != 8 || tel.State != wire.StateGranted {
		t.Fatalf("%+v", tel)
	}

	h.srv.SetExternalLimit(2, 200)
	sets := h.srv.Sets()
	h.n.observe(h.host.Read(nil))
	h.n.observe(h.host.Read(nil))
	if h.srv.Sets() != sets {
		t.Fatal("the node fought another limiter")
	}
	var ev wire.Event
	if !h.last(wire.KindEvents, &ev) || ev.Kind != wire.EventHeldElsewhere || ev.GPU == nil || *ev.GPU != 2 {
		t.Fatalf("%+v", ev)
	}
	h.last(wire.KindTelemetry, &tel)
	if !tel.GPUs[2].HeldElsewhere || *tel.GPUs[2].EnforcedW != 200 || tel.GPUs[2].GrantedW != 250 {
		t.Fatalf("%+v", tel.GPUs[2])
	}
}

func TestRestartReappliesSavedGrant(t *testing.T) {
	dir := t.TempDir()
	doc := strings.Replace(testConfig, `telemetry_period = "200ms"`, `telemetry_period = "200ms"`+"\nstate_file = \""+filepath.Join(dir, "grant.json")+"\"", 1)
	h := newHarness(t, doc, gpunode.Config{Seed: "a"})
	h.n.start(time.Now())
	g := h.newGrant(275)
	g.LeaseMS = 20000
	h.grant(g)
	h.n.write(<-h.n.saves)

	// A new process on the same server (the limits were reset by a reboot).
	h2 := newHarness(t, doc, gpunode.Config{Seed: "a"})
	if err := h2.n.start(time.Now()); err != nil {
		t.Fatal(err)
	}
	if v := h2.n.View(); v.State != wire.StateGranted || v.Seq != g.Seq {
		t.Fatalf("saved grant not re-applied: %+v", v)
	}
	for i, w := range h2.limits() {
		if w != 275 {
			t.Fatalf("GPU %d at %.0f W on start; the saved grant says 275 W", i, w)
		}
	}
	// An older grant is refused after the restart too.
	old := h2.newGrant(300)
	old.Seq = g.Seq
	if ack := h2.grant(old); ack.Result != wire.Rejected {
		t.Fatalf("%+v", ack)
	}

	// A lease that ended while the node was down is not re-applied.
	b, _ := os.ReadFile(filepath.Join(dir, "grant.json"))
	var sg savedGrant
	json.Unmarshal(b, &sg)
	sg.LeaseUntil = time.Now().Add(-time.Second)
	b, _ = json.Marshal(sg)
	os.WriteFile(filepath.Join(dir, "grant.json"), b, 0o600)
	h3 := newHarness(t, doc, gpunode.Config{Seed: "a"})
	h3.n.start(time.Now())
	if v := h3.n.View(); v.State != wire.StateSafe || h3.srv.LimitW(0) != 150 {
		t.Fatalf("an ended lease must give the safe cap: %+v", v)
	}
}

func TestNoPermissionAtStartIsFatalWithTheFix(t *testing.T) {
	srv := gpunode.New(gpunode.Config{Seed: "a"})
	srv.Fail(gpunode.OpSet, -1, gonvml.ERROR_NO_PERMISSION)
	host, err := nvml.Open(srv.Interface(), nvml.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close(false)
	n, err := New(loadTest(t, testConfig), host, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	err = n.start(time.Now())
	if err == nil || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		t.Fatalf("want the CAP_SYS_ADMIN fix, got %v", err)
	}
}

func TestDryRunAcknowledgesWithoutSetting(t *testing.T) {
	doc := strings.Replace(testConfig, `backend = "mock"`, "backend = \"mock\"\ndry_run = true", 1)
	srv := gpunode.New(gpunode.Config{Seed: "a"})
	host, _ := nvml.Open(srv.Interface(), nvml.Options{DryRun: true, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer host.Close(false)
	n, err := New(loadTest(t, doc), host, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var acks []wire.Ack
	n.send = func(m mqtt.Message) bool {
		if strings.HasSuffix(m.Topic, "/ack") {
			var a wire.Ack
			json.Unmarshal(m.Payload, &a)
			acks = append(acks, a)
		}
		return true
	}
	n.start(time.Now())
	g := wire.Grant{Site: "site-a", Node: "gpu-01", Epoch: 1, Seq: 1, Issued: time.Now(), LeaseMS: 5000}
	for i := 0; i < 8; i++ {
		g.Caps = append(g.Caps, wire.GPUCap{UUID: srv.UUID(i), W: 200})
	}
	b, _ := json.Marshal(g)
	n.handle(inbound{payload: b, received: time.Now()})
	if len(acks) != 1 || acks[0].Result != wire.DryRun || srv.Sets() != 0 || srv.LimitW(0) != 400 {
		t.Fatalf("acks %+v sets %d", acks, srv.Sets())
	}
	// No drift fight either: the limits differ from the "caps" on purpose.
	n.observe(host.Read(nil))
	if srv.Sets() != 0 {
		t.Fatal("dry run re-applied drift")
	}
}
