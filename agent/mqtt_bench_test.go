package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/simonvetter/modbus"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/mqtt/mqtttest"
)

// Benchmarks for the MQTT side, each against Mosquitto on loopback:
//   mqtt_points_per_s: telemetry points per second, sustained, from the
//     point store through the JSON encoder, the disk queue and the broker
//     to a subscriber;
//   replay_points_per_s: the backlog of an outage sent after it, while live
//     batches keep flowing;
//   cycle_jitter_p99_ms_broker_up / _broker_down: the real agent's control
//     loop (agent.loop) on the simulated site, tick-to-tick jitter while the
//     broker is up, then while it is down and the queue fills.

var benchLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// bigStore is a store of n points with values, as a large site's.
func bigStore(n int) (*point.Store, []string) {
	s := point.NewStore()
	batch := make([]point.Update, 0, n)
	now := time.Now().UnixNano()
	for i := range n {
		id := s.Register(fmt.Sprintf("src%02d.p%04d", i/100, i))
		batch = append(batch, point.Update{ID: id, Point: point.Point{Value: float64(i) * 1.5, Quality: point.Good, Source: now, Recv: now}})
	}
	s.Write(batch)
	return s, s.Names()
}

// counter counts point batches arriving at a subscriber.
type batchCounter struct {
	n    atomic.Int64
	hist atomic.Int64
}

func subscribeCount(b *testing.B, url, topic string) *batchCounter {
	b.Helper()
	c := &batchCounter{}
	o := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("count-%d", time.Now().UnixNano())).SetAutoReconnect(true)
	pc := paho.NewClient(o)
	if tok := pc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	b.Cleanup(func() { pc.Disconnect(0) })
	tok := pc.Subscribe(topic, 0, func(_ paho.Client, m paho.Message) {
		// A historical batch starts {"historical":true: no need to parse.
		if len(m.Payload()) > 14 && string(m.Payload()[2:12]) == "historical" {
			c.hist.Add(1)
		}
		c.n.Add(1)
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	return c
}

func encodePoints(site string, names []string, snap []point.Point, now time.Time) []byte {
	p, _ := json.Marshal(pointsReport(site, names, snap, now))
	return p
}

func BenchmarkMQTTPointsPerSecond(b *testing.B) {
	const points = 1000
	m := mqtttest.Start(b, mqtttest.Options{})
	store, names := bigStore(points)
	c, err := mqtt.New(mqtt.Config{Broker: m.URL()}, "bench", benchLog, mqtt.WithQueueDir(b.TempDir()))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Stop()
	sub := subscribeCount(b, m.URL(), c.Topics().Points())
	if err := c.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	for !c.Stats().Session {
		time.Sleep(10 * time.Millisecond)
	}
	batches := max(b.N, 300)
	snap := store.Snapshot(nil)
	b.ResetTimer()
	start := time.Now()
	for i := range batches {
		// Sustained: keep the queue short, so what is measured is what
		// the broker takes, not what the queue can swallow.
		for c.Stats().Queued > 64 {
			time.Sleep(100 * time.Microsecond)
		}
		snap = store.Snapshot(snap)
		snap[0].Value = float64(i)
		c.Publish(mqtt.Message{Topic: c.Topics().Points(), Payload: encodePoints("bench", names, snap, time.Now())})
	}
	for sub.n.Load() < int64(batches) {
		if time.Since(start) > time.Minute {
			b.Fatalf("only %d of %d batches arrived", sub.n.Load(), batches)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(batches*points)/elapsed.Seconds(), "mqtt_points_per_s")
	b.ReportMetric(float64(batches)/elapsed.Seconds(), "mqtt_batches_per_s")
}

func BenchmarkMQTTReplay(b *testing.B) {
	const points, backlog = 1000, 2000
	m := mqtttest.Start(b, mqtttest.Options{})
	relay := mqtttest.NewRelay(b, m.URL())
	store, names := bigStore(points)
	c, err := mqtt.New(mqtt.Config{Broker: relay.URL(), QueueMB: 256}, "bench", benchLog, mqtt.WithQueueDir(b.TempDir()), mqtt.WithHistoricalFlag(nil))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Stop()
	sub := subscribeCount(b, m.URL(), c.Topics().Points())
	if err := c.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	for !c.Stats().Session {
		time.Sleep(10 * time.Millisecond)
	}
	relay.Cut()
	for c.Stats().Connected {
		time.Sleep(10 * time.Millisecond)
	}
	snap := store.Snapshot(nil)
	for range backlog {
		c.Publish(mqtt.Message{Topic: c.Topics().Points(), Payload: encodePoints("bench", names, snap, time.Now())})
	}
	// Live batches keep coming at 10 per second during the replay.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				c.Publish(mqtt.Message{Topic: c.Topics().Points(), Payload: encodePoints("bench", names, snap, time.Now())})
			}
		}
	}()
	b.ResetTimer()
	relay.Mend()
	for !c.Stats().Session {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	for sub.hist.Load() < backlog {
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("only %d of %d historical batches arrived (%d in all); stats %+v", sub.hist.Load(), backlog, sub.n.Load(), c.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	close(stop)
	wg.Wait()
	b.ReportMetric(float64(backlog*points)/elapsed.Seconds(), "replay_points_per_s")
	b.ReportMetric(float64(backlog)/elapsed.Seconds(), "replay_msgs_per_s")
	b.ReportMetric(float64(sub.n.Load()-sub.hist.Load()), "live_batches_during_replay")
}

// BenchmarkCycleJitter runs the real agent on a quiet Modbus plant (so
// that a simulator's physics does not compete for the CPU) with a 20 ms
// cycle and 100 ms telemetry, and measures the control loop's
// tick-to-tick jitter with the broker reachable (and the queue empty) and
// with it unreachable while the disk queue fills. The two phases alternate
// over several rounds so that whatever else the machine does weighs on
// both alike.
func BenchmarkCycleJitter(b *testing.B) {
	rounds, phase := 6, 4*time.Second
	if testing.Short() {
		rounds, phase = 2, 2*time.Second
	}
	m := mqtttest.Start(b, mqtttest.Options{})
	relay := mqtttest.NewRelay(b, m.URL())
	plantURL := startQuietPlant(b)
	cfg, err := Load("jitter.toml", []byte(fmt.Sprintf(jitterSite, plantURL)))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg.Site.CyclePeriod = 20 * time.Millisecond
	cfg.Site.StateDir = b.TempDir()
	cfg.MQTT.Broker = relay.URL()
	cfg.MQTT.TelemetryPeriod = 100 * time.Millisecond
	ready := make(chan struct{})
	var once sync.Once
	a, err := New(cfg, Options{Log: benchLog, Notify: func(s string) {
		if s == "READY=1" {
			once.Do(func() { close(ready) })
		}
	}})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-ready
	waitFor := func(what string, cond func() bool) {
		deadline := time.Now().Add(time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				b.Fatalf("gave up waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(time.Second) // settle
	var up, down []time.Duration
	queued := 0
	b.ResetTimer()
	for range rounds {
		waitFor("a session with an empty queue", func() bool { s := a.mqtt.Stats(); return s.Session && s.Queued == 0 })
		a.ops.jitter.take()
		time.Sleep(phase)
		up = append(up, a.ops.jitter.take()...)
		relay.Cut()
		waitFor("the outage seen", func() bool { return !a.mqtt.Stats().Connected })
		before := a.mqtt.Stats().Queued
		a.ops.jitter.take()
		time.Sleep(phase)
		down = append(down, a.ops.jitter.take()...)
		queued += a.mqtt.Stats().Queued - before
		relay.Mend()
	}
	b.StopTimer()
	cancel()
	<-done
	p99 := func(d []time.Duration) float64 {
		if len(d) == 0 {
			b.Fatal("no cycles observed")
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		return float64(d[int(math.Ceil(0.99*float64(len(d))))-1]) / 1e6
	}
	pu, pd := p99(up), p99(down)
	b.ReportMetric(pu, "cycle_jitter_p99_ms_broker_up")
	b.ReportMetric(pd, "cycle_jitter_p99_ms_broker_down")
	b.ReportMetric(math.Abs(pd-pu), "cycle_jitter_p99_diff_ms")
	b.ReportMetric(float64(len(up)+len(down)), "cycles")
	b.ReportMetric(float64(queued), "queued_while_down")
	if queued <= 0 {
		b.Fatalf("nothing queued while the broker was down: the down phase measured nothing")
	}
}

// quietPlant answers the jitter benchmark's site with fixed readings and
// takes every write: frequency 60 Hz, 5 MW import, 8 MW of generation.
type quietPlant struct {
	mu    sync.Mutex
	coils [100]bool
	hold  [2]uint16
}

func f32(v float32) []uint16 {
	u := math.Float32bits(v)
	return []uint16{uint16(u >> 16), uint16(u)}
}

func (p *quietPlant) HandleCoils(req *modbus.CoilsRequest) ([]bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if int(req.Addr)+int(req.Quantity) > len(p.coils) {
		return nil, modbus.ErrIllegalDataAddress
	}
	if req.IsWrite {
		copy(p.coils[req.Addr:], req.Args)
		return nil, nil
	}
	return append([]bool(nil), p.coils[req.Addr:req.Addr+req.Quantity]...), nil
}

func (p *quietPlant) HandleDiscreteInputs(*modbus.DiscreteInputsRequest) ([]bool, error) {
	return []bool{true}, nil
}

func (p *quietPlant) HandleHoldingRegisters(req *modbus.HoldingRegistersRequest) ([]uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if int(req.Addr)+int(req.Quantity) > len(p.hold) {
		return nil, modbus.ErrIllegalDataAddress
	}
	if req.IsWrite {
		copy(p.hold[req.Addr:], req.Args)
		return nil, nil
	}
	return append([]uint16(nil), p.hold[req.Addr:req.Addr+req.Quantity]...), nil
}

func (p *quietPlant) HandleInputRegisters(req *modbus.InputRegistersRequest) ([]uint16, error) {
	var regs []uint16
	switch req.UnitId {
	case 1:
		regs = append(append(f32(60), f32(5000)...), f32(5000)...)
	case 2:
		regs = f32(8000)
	default:
		return nil, modbus.ErrIllegalDataAddress
	}
	if int(req.Addr)+int(req.Quantity) > len(regs) {
		return nil, modbus.ErrIllegalDataAddress
	}
	return regs[req.Addr : req.Addr+req.Quantity], nil
}

func startQuietPlant(b *testing.B) string {
	b.Helper()
	url := fmt.Sprintf("tcp://127.0.0.1:%d", mqtttest.FreePort(b))
	srv, err := modbus.NewServer(&modbus.ServerConfiguration{URL: url, Timeout: time.Minute, MaxClients: 8}, &quietPlant{})
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Stop() })
	return url
}

const jitterSite = `
[site]
id = "jitter"
[site.inputs]
frequency_hz = "pcc.frequency_hz"
breaker_closed = "pcc.breaker_closed"
import_kw = "pcc.import_kw"
site_load_kw = "pcc.site_load_kw"
generation_available_kw = ["bess.generation_kw"]
[limits]
import_limit_kw = 20000
failsafe_load_kw = 1000
[mqtt]
broker = "tcp://127.0.0.1:1"
[[modbus]]
name = "pcc"
url = "%[1]s"
unit_id = 1
poll_period = "100ms"
  [[modbus.points]]
  name = "frequency_hz"
  table = "input"
  address = 0
  type = "float32"
  unit = "Hz"
  min = 45.0
  max = 65.0
  [[modbus.points]]
  name = "import_kw"
  table = "input"
  address = 2
  type = "float32"
  unit = "kW"
  [[modbus.points]]
  name = "site_load_kw"
  table = "input"
  address = 4
  type = "float32"
  unit = "kW"
  [[modbus.points]]
  name = "breaker_closed"
  table = "discrete"
  address = 0
[[modbus]]
name = "bess"
url = "%[1]s"
unit_id = 2
poll_period = "500ms"
  [[modbus.points]]
  name = "generation_kw"
  table = "input"
  address = 0
  type = "float32"
  unit = "kW"
[[modbus]]
name = "plc"
url = "%[1]s"
unit_id = 3
poll_period = "1s"
[[groups]]
name = "asic"
kind = "shed"
cut_order = 1
units = 100
unit_kw = 3.5
[groups.modbus]
endpoint = "plc"
table = "coil"
address = 0
[[groups]]
name = "training"
kind = "throttle"
cut_order = 2
units = 100
unit_kw = 10
[groups.modbus]
endpoint = "plc"
table = "holding"
address = 0
type = "float32"
`
