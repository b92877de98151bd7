//go:build cgo

package gpufleet_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/actuator"
	"github.com/siteagent/siteagent/drivers/gpufleet"
	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/node"
	"github.com/siteagent/siteagent/node/wire"
	"github.com/siteagent/siteagent/sim/broker"
	"github.com/siteagent/siteagent/sim/gpunode"
)

// These tests run fleets and real node loops (on simulated GPUs) talking
// through a real MQTT broker on loopback.

const patience = 20 * time.Second

func quiet() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
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

type gpuNode struct {
	srv    *gpunode.Server
	n      *node.Node
	cancel context.CancelFunc
	done   chan struct{}
}

func (g *gpuNode) stop() {
	g.cancel()
	<-g.done
}

func (g *gpuNode) limits() []float64 {
	out := make([]float64, g.srv.Config().GPUs)
	for i := range out {
		out[i] = g.srv.LimitW(i)
	}
	return out
}

// startNode runs `siteagent node`'s loop in this process on simulated GPUs.
func startNode(t testing.TB, url, id string, gc gpunode.Config, extra string) *gpuNode {
	t.Helper()
	doc := fmt.Sprintf(`
[node]
site = "site-a"
id = %q
telemetry_period = "100ms"
%s
[lease]
safe_cap_w = 150
[gpu]
backend = "mock"
[mqtt]
broker = %q
`, id, extra, url)
	cfg, err := node.Load("node.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	gc.Seed = id
	g := &gpuNode{srv: gpunode.New(gc), done: make(chan struct{})}
	host, err := nvml.Open(g.srv.Interface(), nvml.Options{Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	var once sync.Once
	n, err := node.New(cfg, host, node.Options{Log: quiet().With("node", id), Notify: func(s string) {
		if s == "READY=1" {
			once.Do(func() { close(ready) })
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	g.n = n
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	go func() {
		defer close(g.done)
		n.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-g.done })
	<-ready
	return g
}

// site is the site controller's side: its MQTT client, a point store, a
// hub and one fleet, with a control loop that can be declared dead.
type site struct {
	client *mqtt.Client
	store  *point.Store
	hub    *gpufleet.Hub
	fleet  *gpufleet.Fleet
	alive  atomic.Bool
	logs   *strings.Builder
	mu     sync.Mutex
}

func startSite(t testing.TB, url string, cfg gpufleet.Config, units int, unitKW float64) *site {
	t.Helper()
	s := &site{store: point.NewStore()}
	s.alive.Store(true)
	c, err := mqtt.New(mqtt.Config{Broker: url}, "site-a", quiet())
	if err != nil {
		t.Fatal(err)
	}
	s.client = c
	hub, err := gpufleet.NewHub(c, quiet())
	if err != nil {
		t.Fatal(err)
	}
	s.hub = hub
	f, err := hub.NewFleet(gpufleet.Options{Group: "training", Config: cfg, Units: units, UnitKW: unitKW, Store: s.store, Log: quiet(),
		Alive: func() time.Time {
			if s.alive.Load() {
				return time.Now()
			}
			return time.Now().Add(-time.Hour)
		}})
	if err != nil {
		t.Fatal(err)
	}
	s.fleet = f
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done; c.Stop() })
	return s
}

func (s *site) get(name string) point.Point {
	id, ok := s.store.Lookup(name)
	if !ok {
		panic("no point " + name)
	}
	return s.store.Get(id)
}

func (s *site) apply(t testing.TB, kw float64) (actuator.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.fleet.Apply(ctx, actuator.Command{Group: "training", Kind: actuator.Throttle, CapKW: kw})
}

func TestFleetSplitsByDemandAndCountsStaleNodesAtMaximum(t *testing.T) {
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a := startNode(t, b.URL(), "gpu-a", gpunode.Config{Demand: 1}, "")
	bn := startNode(t, b.URL(), "gpu-b", gpunode.Config{Demand: 0.5}, "")
	// A long lease: no renewal re-splits the cap while the test checks it.
	s := startSite(t, b.URL(), gpufleet.Config{Nodes: []string{"gpu-a", "gpu-b"}, Lease: time.Minute, StaleAfter: time.Second}, 2, 3.2)

	select {
	case <-s.fleet.Ready():
	case <-time.After(patience):
		t.Fatal("fleet not ready")
	}
	// Before any grant the nodes hold their 150 W safe caps.
	waitFor(t, "both nodes live", func() bool {
		st := s.fleet.Status()
		return len(st) == 2 && st[0].Live && st[1].Live
	})

	// The whole group's ceiling: every GPU at its maximum.
	res, err := s.apply(t, 6.4)
	if err != nil || !res.Verified {
		t.Fatalf("%+v %v", res, err)
	}
	for _, n := range []*gpuNode{a, bn} {
		for i, w := range n.limits() {
			if w != 400 {
				t.Fatalf("GPU %d at %.0f W; the ceiling gives every GPU 400 W", i, w)
			}
		}
	}
	// Let telemetry catch up with the uncapped draws (a: 400 W, b: 200 W).
	waitFor(t, "telemetry at full power", func() bool { return math.Abs(s.get("training.power_kw").Value-4.8) < 1e-6 })

	// 4 kW: demands (4.8 kW) do not fit; floors (1.6 kW) plus 2.4 kW shared
	// by demand above the floor (300 and 100 W per GPU): 325 and 175 W.
	res, err = s.apply(t, 4.0)
	if err != nil || !res.Verified || math.Abs(res.CapKW-4.0) > 1e-6 {
		t.Fatalf("%+v %v", res, err)
	}
	for i := 0; i < 8; i++ {
		if a.srv.LimitW(i) != 325 || bn.srv.LimitW(i) != 175 {
			t.Fatalf("GPU %d: a %.1f W, b %.1f W; want 325 and 175", i, a.srv.LimitW(i), bn.srv.LimitW(i))
		}
	}
	waitFor(t, "group power under the cap", func() bool { return math.Abs(s.get("training.power_kw").Value-4.0) < 1e-6 })
	if p := s.get("training.gpu-a.granted_kw"); math.Abs(p.Value-2.6) > 1e-6 {
		t.Fatalf("granted point %+v", p)
	}

	// Node b goes silent: after stale_after it counts at its maximum
	// (8 × 400 W) and is reported; the cap goes to the live node, with b's
	// worst case reserved (4 - 3.2 = 0.8 kW: a at its floors).
	bn.stop()
	waitFor(t, "node b stale", func() bool { return s.get("training.stale_nodes").Value == 1 })
	if p := s.get("training.power_kw"); math.Abs(p.Value-(2.6+3.2)) > 1e-6 || p.Quality != point.Good {
		t.Fatalf("group power with a stale node: %+v; want a's 2.6 kW + b's 3.2 kW maximum", p)
	}
	if p := s.get("training.gpu-b.power_kw"); p.Quality != point.Bad {
		t.Fatalf("a stale node's own point must be bad: %+v", p)
	}
	res, err = s.apply(t, 4.0)
	if err != nil || !res.Verified || !strings.Contains(res.Detail, "1 stale") {
		t.Fatalf("%+v %v", res, err)
	}
	for i := 0; i < 8; i++ {
		if a.srv.LimitW(i) != 100 {
			t.Fatalf("GPU %d of a at %.1f W; b's worst case leaves a its floors", i, a.srv.LimitW(i))
		}
	}
}

func TestLeasesRenewedOnlyWhileTheControlLoopRuns(t *testing.T) {
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n := startNode(t, b.URL(), "gpu-a", gpunode.Config{Demand: 1}, "")
	s := startSite(t, b.URL(), gpufleet.Config{Nodes: []string{"gpu-a"}, Lease: time.Second, StaleAfter: time.Second, Split: gpufleet.SplitEven}, 1, 3.2)
	waitFor(t, "node live", func() bool { st := s.fleet.Status(); return len(st) == 1 && st[0].Live })
	if res, err := s.apply(t, 2.4); err != nil || !res.Verified {
		t.Fatalf("%+v %v", res, err)
	}
	if n.srv.LimitW(0) != 300 {
		t.Fatalf("even split of 2.4 kW over 8 GPUs: %.1f W", n.srv.LimitW(0))
	}
	// Three leases long: the renewals keep the grant alive.
	time.Sleep(3 * time.Second)
	if v := n.n.View(); v.State != wire.StateGranted || n.srv.LimitW(0) != 300 {
		t.Fatalf("the lease lapsed although the control loop ran: %+v", v)
	}
	// The control loop stops completing cycles: renewals stop, the lease
	// runs out and the node falls to its 150 W safe cap on its own.
	s.alive.Store(false)
	waitFor(t, "safe cap after the lease ran out", func() bool { return n.srv.LimitW(0) == 150 })
	if v := n.n.View(); v.State != wire.StateSafe {
		t.Fatalf("%+v", v)
	}
	// The loop comes back: grants resume with the next renewal.
	s.alive.Store(true)
	waitFor(t, "grants resume", func() bool { return n.srv.LimitW(0) == 300 })
}

func TestPatternGroupCountsUnseenNodesAtRating(t *testing.T) {
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	startNode(t, b.URL(), "train-1", gpunode.Config{Demand: 0.5}, "")
	startNode(t, b.URL(), "infer-1", gpunode.Config{Demand: 0.5}, "") // another group's: ignored
	s := startSite(t, b.URL(), gpufleet.Config{Pattern: "train-*", StaleAfter: time.Second}, 3, 3.2)
	waitFor(t, "train-1 live", func() bool { st := s.fleet.Status(); return len(st) == 1 && st[0].Live })
	// One of three expected nodes heard: it draws 8 × 150 W (its safe cap:
	// no grant yet), the two unseen count at the 3.2 kW unit rating each.
	waitFor(t, "group power", func() bool { return math.Abs(s.get("training.power_kw").Value-(1.2+6.4)) < 1e-6 })
	if v := s.get("training.stale_nodes").Value; v != 2 {
		t.Fatalf("stale nodes %v, want the 2 unseen", v)
	}
	for _, st := range s.fleet.Status() {
		if st.ID == "infer-1" {
			t.Fatal("a node outside the pattern joined the group")
		}
	}
}

// BenchmarkSiteToNode measures a site decision (the fleet's Apply with a
// new cap) to the node's acknowledgement arriving back at the site,
// through a broker on loopback (Mosquitto when installed, else the
// embedded one): site_to_node_p50_ms / _p99_ms. The node's GPUs answer
// instantly here, so the figure is the messaging path; the GPU side is
// gpu_grant_to_caps in package node, and BenchmarkSiteToNodeNVML15 gives
// the two together.
func BenchmarkSiteToNode(b *testing.B) { benchSiteToNode(b, 0, "site_to_node") }

// BenchmarkSiteToNodeNVML15 is BenchmarkSiteToNode with 15 ms per NVML
// call on the node: decision to acknowledgement with all 8 caps set and
// read back (site_to_node_nvml15_p50_ms / _p99_ms).
func BenchmarkSiteToNodeNVML15(b *testing.B) {
	benchSiteToNode(b, 15*time.Millisecond, "site_to_node_nvml15")
}

func benchSiteToNode(b *testing.B, latency time.Duration, name string) {
	url, stop := benchBroker(b)
	defer stop()
	startNode(b, url, "gpu-a", gpunode.Config{Demand: 1, Latency: latency}, "")
	s := startSite(b, url, gpufleet.Config{Nodes: []string{"gpu-a"}, Lease: 10 * time.Second, Split: gpufleet.SplitEven}, 1, 3.2)
	waitFor(b, "node live", func() bool { st := s.fleet.Status(); return len(st) == 1 && st[0].Live })
	n := 300
	if b.N > n {
		n = b.N
	}
	lat := make([]float64, 0, n)
	b.ResetTimer()
	for i := 0; i < n; i++ {
		start := time.Now()
		res, err := s.apply(b, 2.0+float64(i%2)*0.8)
		if err != nil || !res.Verified {
			b.Fatalf("%+v %v", res, err)
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
	}
	b.StopTimer()
	sort.Float64s(lat)
	b.ReportMetric(lat[len(lat)/2], name+"_p50_ms")
	b.ReportMetric(lat[int(math.Ceil(0.99*float64(len(lat))))-1], name+"_p99_ms")
}
