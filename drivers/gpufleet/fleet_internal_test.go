package gpufleet

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/node/wire"
)

// fakeClient records publishes; nothing is sent.
type fakeClient struct {
	sent []mqtt.Message
	down bool
}

func (c *fakeClient) Publish(m mqtt.Message) bool { c.sent = append(c.sent, m); return true }
func (c *fakeClient) Subscribe(string, byte, func(string, []byte)) error {
	return nil
}
func (c *fakeClient) Topics() mqtt.Topics { return mqtt.Topics{Root: "siteagent", Site: "s"} }
func (c *fakeClient) Stats() mqtt.Stats   { return mqtt.Stats{Connected: !c.down} }

func newTestFleet(t *testing.T, cfg Config, units int) (*Fleet, *fakeClient) {
	c := &fakeClient{}
	h, err := NewHub(c, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	f, err := h.NewFleet(Options{Group: "g", Config: cfg, Units: units, UnitKW: 3.2, Store: point.NewStore(),
		Alive: time.Now, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

// report sends telemetry for a node whose 8 GPUs (100..400 W) want
// demandW each and are held at caps.
func report(f *Fleet, id string, demandW float64, caps []float64) {
	t := wire.Telemetry{Site: "s", Node: id, TS: time.Now(), State: wire.StateGranted}
	for i := 0; i < 8; i++ {
		cap := 400.0
		if caps != nil {
			cap = caps[i]
		}
		p := math.Min(demandW, cap)
		t.PowerW += p
		t.GPUs = append(t.GPUs, wire.GPUTelemetry{Index: i, UUID: fmt.Sprintf("%s-%d", id, i), Throttleable: true, MinW: 100, MaxW: 400,
			GrantedW: cap, PowerW: &p, PowerCapped: demandW > cap})
	}
	b, _ := json.Marshal(t)
	f.onTelemetry(id, b)
}

func capsOf(grants []wire.Grant, node string) []float64 {
	for _, g := range grants {
		if g.Node == node {
			var out []float64
			for _, c := range g.Caps {
				out = append(out, c.W)
			}
			return out
		}
	}
	return nil
}

// The demand split, repeated as renewals would, converges: the node that
// wants 200 W per GPU gets what it wants, the other the rest, and the
// group never exceeds its cap on the way.
func TestDemandSplitConvergesOverRenewals(t *testing.T) {
	f, _ := newTestFleet(t, Config{Nodes: []string{"a", "b"}}, 2)
	var ca, cb []float64
	report(f, "a", 400, nil)
	report(f, "b", 200, nil)
	for round := 0; round < 40; round++ {
		f.mu.Lock()
		f.capW, f.hasCap = 4000, true
		grants := f.plan(time.Now())
		f.mu.Unlock()
		ca, cb = capsOf(grants, "a"), capsOf(grants, "b")
		var sum float64
		for i := range ca {
			sum += ca[i] + cb[i]
		}
		if sum > 4000+1e-6 {
			t.Fatalf("round %d: caps sum to %.3f W over the 4000 W cap", round, sum)
		}
		report(f, "a", 400, ca)
		report(f, "b", 200, cb)
	}
	if cb[0] < 200-1e-6 || math.Abs(ca[0]-(500-cb[0])) > 1e-3 {
		t.Fatalf("after 40 renewals: a %.1f W, b %.1f W per GPU; want b at its 200 W demand and a the rest", ca[0], cb[0])
	}
}

func TestGrantsCarryLeaseEpochAndSeq(t *testing.T) {
	f, c := newTestFleet(t, Config{Nodes: []string{"a"}, Lease: 4 * time.Second}, 1)
	report(f, "a", 400, nil)
	f.mu.Lock()
	f.capW, f.hasCap = 2400, true
	f.publish(f.plan(time.Now()), time.Now())
	f.publish(f.plan(time.Now()), time.Now())
	f.mu.Unlock()
	if len(c.sent) != 2 || c.sent[0].Topic != "siteagent/s/nodes/a/grant" || c.sent[0].QoS != 1 || c.sent[0].Retain {
		t.Fatalf("%+v", c.sent)
	}
	var g1, g2 wire.Grant
	json.Unmarshal(c.sent[0].Payload, &g1)
	json.Unmarshal(c.sent[1].Payload, &g2)
	if g1.LeaseMS != 4000 || g1.Epoch == 0 || g2.Epoch != g1.Epoch || g2.Seq != g1.Seq+1 || g1.Site != "s" || g1.Group != "g" || len(g1.Caps) != 8 || g1.Caps[0].W != 300 {
		t.Fatalf("%+v\n%+v", g1, g2)
	}
}

func TestRenewalPausedWhileControlLoopStalls(t *testing.T) {
	c := &fakeClient{}
	h, _ := NewHub(c, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var last time.Time
	f, _ := h.NewFleet(Options{Group: "g", Config: Config{Nodes: []string{"a"}, Lease: 3 * time.Second}, Units: 1, UnitKW: 3.2,
		Store: point.NewStore(), Alive: func() time.Time { return last }, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	report(f, "a", 400, nil)
	f.mu.Lock()
	f.capW, f.hasCap = 2400, true
	f.mu.Unlock()
	now := time.Now()
	last = now.Add(-2 * time.Second) // older than a renewal period (1 s)
	f.renew(now, "test")
	if len(c.sent) != 0 {
		t.Fatal("renewed although the control loop stalled")
	}
	last = now.Add(-100 * time.Millisecond)
	f.renew(now, "test")
	if len(c.sent) != 1 {
		t.Fatal("not renewed although the control loop runs")
	}
}

func TestConfigValidation(t *testing.T) {
	// (file:line reporting is the decoder's; here: the checks themselves)
	cases := []struct {
		cfg   Config
		units int
		want  string
	}{
		{Config{}, 1, "name the group's GPU servers"},
		{Config{Nodes: []string{"a"}, Pattern: "b*"}, 1, "not both"},
		{Config{Nodes: []string{"a", "a"}}, 2, "listed twice"},
		{Config{Nodes: []string{"a/b"}}, 1, "not a node id"},
		{Config{Nodes: []string{"a", "b"}}, 3, "set units = 2"},
		{Config{Pattern: "[a"}, 1, "not a glob"},
		{Config{Nodes: []string{"a"}, Split: "fair"}, 1, `"demand"`},
		{Config{Nodes: []string{"a"}, Lease: 100 * time.Millisecond}, 1, "outside 1s..10m"},
	}
	for _, c := range cases {
		p := newProblems()
		c.cfg.Validate(p, "groups[0].gpu_nodes", c.units)
		if err := p.Err(); err == nil || !contains(err.Error(), c.want) {
			t.Errorf("%+v: want %q, got %v", c.cfg, c.want, err)
		}
	}
	p := newProblems()
	good := Config{Nodes: []string{"gpu-01", "gpu.02"}, Split: SplitEven, Lease: 5 * time.Second}
	good.Validate(p, "g", 2)
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
}

func newProblems() *config.Problems { return config.NewProblems("site.toml", nil) }

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// While the broker is away no grant is queued (it would arrive expired);
// when the connection comes back every node gets a fresh one at once.
func TestNoGrantsQueuedWhileBrokerIsDown(t *testing.T) {
	f, c := newTestFleet(t, Config{Nodes: []string{"a"}}, 1)
	report(f, "a", 400, nil)
	f.mu.Lock()
	f.capW, f.hasCap = 2400, true
	f.mu.Unlock()
	c.down = true
	f.reconnected()
	f.renew(time.Now(), "test")
	if len(c.sent) != 0 {
		t.Fatalf("%d grants queued while the broker was down", len(c.sent))
	}
	c.down = false
	if !f.reconnected() {
		t.Fatal("the reconnection was not noticed")
	}
	f.renew(time.Now(), "broker connection back")
	if len(c.sent) != 1 {
		t.Fatalf("want one fresh grant after the reconnection, got %d", len(c.sent))
	}
}

// Telemetry that was already stale when it arrived (replayed after an
// outage) does not make a node live.
func TestLateTelemetryIgnored(t *testing.T) {
	f, _ := newTestFleet(t, Config{Nodes: []string{"a"}, StaleAfter: time.Second}, 1)
	p := 100.0
	old := wire.Telemetry{Site: "s", Node: "a", TS: time.Now().Add(-5 * time.Second), PowerW: 100,
		GPUs: []wire.GPUTelemetry{{UUID: "u", Throttleable: true, MinW: 100, MaxW: 400, PowerW: &p}}}
	b, _ := json.Marshal(old)
	f.onTelemetry("a", b)
	if st := f.Status(); st[0].Live || !st[0].Heard.IsZero() {
		t.Fatalf("a late report made the node live: %+v", st[0])
	}
}
