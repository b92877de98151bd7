//go:build cgo

package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/node/wire"
	"github.com/siteagent/siteagent/sim/broker"
	"github.com/siteagent/siteagent/sim/gpunode"
)

// These tests run the node's real loop against a real MQTT broker (the
// embedded one) on loopback.

const patience = 20 * time.Second

type peer struct {
	t  testing.TB
	c  paho.Client
	mu sync.Mutex
	in map[string][][]byte // by kind
}

func newPeer(t testing.TB, url string) *peer {
	p := &peer{t: t, in: map[string][][]byte{}}
	o := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("peer-%d", time.Now().UnixNano()))
	p.c = paho.NewClient(o)
	if tok := p.c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("peer connect: %v", tok.Error())
	}
	t.Cleanup(func() { p.c.Disconnect(100) })
	tok := p.c.Subscribe("siteagent/site-a/nodes/#", 1, func(_ paho.Client, m paho.Message) {
		_, kind, ok := wire.Parse("siteagent", "site-a", m.Topic())
		if !ok {
			return
		}
		p.mu.Lock()
		p.in[kind] = append(p.in[kind], m.Payload())
		p.mu.Unlock()
	})
	tok.WaitTimeout(5 * time.Second)
	return p
}

func (p *peer) count(kind string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.in[kind])
}

func (p *peer) lastOf(kind string, v any) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.in[kind]
	if len(l) == 0 {
		return false
	}
	return json.Unmarshal(l[len(l)-1], v) == nil
}

func (p *peer) send(g wire.Grant) {
	b, _ := json.Marshal(g)
	p.c.Publish(wire.Topic("siteagent", "site-a", g.Node, wire.KindGrant), 1, false, b).WaitTimeout(5 * time.Second)
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type running struct {
	srv    *gpunode.Server
	n      *Node
	cancel context.CancelFunc
	done   chan error
	ready  chan struct{}
}

func runNode(t testing.TB, url string, doc string, gc gpunode.Config, opt Options) *running {
	t.Helper()
	doc = strings.Replace(doc, "tcp://127.0.0.1:1", url, 1)
	r := &running{srv: gpunode.New(gc), done: make(chan error, 1), ready: make(chan struct{})}
	host, err := nvml.Open(r.srv.Interface(), nvml.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	var once sync.Once
	opt.Notify = func(s string) {
		if s == "READY=1" {
			once.Do(func() { close(r.ready) })
		}
	}
	n, err := New(loadTest(t, doc), host, opt)
	if err != nil {
		t.Fatal(err)
	}
	r.n = n
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(patience):
			t.Error("node did not stop")
		}
	})
	select {
	case <-r.ready:
	case err := <-r.done:
		t.Fatalf("node stopped before READY: %v", err)
	case <-time.After(patience):
		t.Fatal("node not ready")
	}
	return r
}

func TestNodeOverMQTT(t *testing.T) {
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p := newPeer(t, b.URL())
	doc := strings.Replace(testConfig, `default = "5s"`, `default = "1s"`, 1)
	r := runNode(t, b.URL(), doc, gpunode.Config{Seed: "mq", Demand: 1}, Options{})

	// Inventory (retained), status and telemetry arrive on their own.
	waitFor(t, "inventory and telemetry", func() bool { return p.count(wire.KindInventory) > 0 && p.count(wire.KindTelemetry) > 1 })
	var inv wire.Inventory
	p.lastOf(wire.KindInventory, &inv)
	if len(inv.GPUs) != 8 || inv.GPUs[0].UUID != r.srv.UUID(0) || inv.GPUs[0].MaxW != 400 || inv.Backend != "mock" || inv.SafeCapW[0] != 150 {
		t.Fatalf("%+v", inv)
	}
	var tel wire.Telemetry
	p.lastOf(wire.KindTelemetry, &tel)
	if tel.State != wire.StateSafe || len(tel.GPUs) != 8 || tel.GPUs[0].PowerW == nil || *tel.GPUs[0].PowerW != 150 || math.Abs(tel.PowerW-1200) > 1e-6 {
		t.Fatalf("%+v", tel)
	}

	// A grant with a short lease: applied, acknowledged; then, without
	// renewal, the node falls back to the safe cap on its own.
	g := wire.Grant{Site: "site-a", Node: "gpu-01", Epoch: 7, Seq: 1, Issued: time.Now(), LeaseMS: 800}
	for i := 0; i < 8; i++ {
		g.Caps = append(g.Caps, wire.GPUCap{UUID: r.srv.UUID(i), W: 320})
	}
	p.send(g)
	waitFor(t, "ack", func() bool { return p.count(wire.KindAck) > 0 })
	var ack wire.Ack
	p.lastOf(wire.KindAck, &ack)
	if ack.Result != wire.Applied || ack.Seq != 1 || r.srv.LimitW(3) != 320 {
		t.Fatalf("%+v (limit %.0f)", ack, r.srv.LimitW(3))
	}
	waitFor(t, "lease expiry to the safe cap", func() bool { return r.srv.LimitW(3) == 150 })
	var ev wire.Event
	waitFor(t, "lease_expired event", func() bool { return p.lastOf(wire.KindEvents, &ev) && ev.Kind == wire.EventLeaseExpired })
	waitFor(t, "telemetry in state safe", func() bool {
		return p.lastOf(wire.KindTelemetry, &tel) && tel.State == wire.StateSafe && tel.GrantSeq == 1
	})
}

// BenchmarkGrantToCaps measures, on a node with 8 simulated GPUs whose
// every NVML call takes 15 ms, the time from a grant reaching the node to
// the last of the 8 caps being set (gpu_grant_to_caps_p50_ms / _p99_ms),
// and to the acknowledgement being queued after the enforced limits were
// read back (gpu_grant_to_ack_p99_ms). Grants arrive over MQTT from the
// embedded broker; each changes every cap.
func BenchmarkGrantToCaps(b *testing.B) {
	br, err := broker.Start("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	p := newPeer(b, br.URL())
	timings := make(chan GrantTiming, 1)
	r := runNode(b, br.URL(), testConfig, gpunode.Config{Seed: "bench", Demand: 1, Latency: 15 * time.Millisecond},
		Options{OnGrant: func(t GrantTiming) { timings <- t }})
	// The node reports ready before its broker connection is up: wait
	// until a grant gets through.
	waitFor(b, "the node's subscription", func() bool {
		p.send(wire.Grant{Site: "site-a", Node: "gpu-01", Epoch: 0, Seq: uint64(time.Now().UnixNano()), Issued: time.Now(), LeaseMS: 10000, Caps: []wire.GPUCap{{UUID: r.srv.UUID(0), W: 200}}})
		select {
		case <-timings:
			return true
		case <-time.After(200 * time.Millisecond):
			return false
		}
	})
	n := 200
	if b.N > n {
		n = b.N
	}
	var toCaps, toAck []float64
	b.ResetTimer()
	for i := 0; i < n; i++ {
		g := wire.Grant{Site: "site-a", Node: "gpu-01", Epoch: 1, Seq: uint64(i + 1), Issued: time.Now(), LeaseMS: 10000}
		w := 250.0 + float64(i%2)*50
		for k := 0; k < 8; k++ {
			g.Caps = append(g.Caps, wire.GPUCap{UUID: r.srv.UUID(k), W: w})
		}
		p.send(g)
		select {
		case t := <-timings:
			if t.Result != wire.Applied || t.CapsSet.IsZero() {
				b.Fatalf("grant %d: %+v", i, t.Ack)
			}
			toCaps = append(toCaps, ms(t.CapsSet.Sub(t.Received)))
			toAck = append(toAck, ms(t.Acked.Sub(t.Received)))
		case <-time.After(patience):
			b.Fatal("no grant handled")
		}
	}
	b.StopTimer()
	b.ReportMetric(pct(toCaps, 50), "gpu_grant_to_caps_p50_ms")
	b.ReportMetric(pct(toCaps, 99), "gpu_grant_to_caps_p99_ms")
	b.ReportMetric(pct(toAck, 99), "gpu_grant_to_ack_p99_ms")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func pct(v []float64, p float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
