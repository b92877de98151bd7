package agent_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/simonvetter/modbus"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/drivers/actuator"
)

// benchPlant is a bare Modbus server whose frequency register changes the
// instant the benchmark says so (the simulator moves its registers on a
// 10 ms physics step, which would blur the measurement).
type benchPlant struct {
	freq  atomic.Uint32 // float32 bits
	mu    sync.Mutex
	coils [200]bool
	hold  [2]uint16
}

func f32regs(v float32) []uint16 {
	b := math.Float32bits(v)
	return []uint16{uint16(b >> 16), uint16(b)}
}

func (p *benchPlant) HandleCoils(req *modbus.CoilsRequest) ([]bool, error) {
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

func (p *benchPlant) HandleDiscreteInputs(req *modbus.DiscreteInputsRequest) ([]bool, error) {
	return []bool{true}, nil // breaker closed
}

func (p *benchPlant) HandleHoldingRegisters(req *modbus.HoldingRegistersRequest) ([]uint16, error) {
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

func (p *benchPlant) HandleInputRegisters(req *modbus.InputRegistersRequest) ([]uint16, error) {
	var regs []uint16
	switch req.UnitId {
	case 1: // frequency, import, site load
		regs = append(regs, uint16(p.freq.Load()>>16), uint16(p.freq.Load()))
		regs = append(regs, f32regs(5000)...)
		regs = append(regs, f32regs(5000)...)
	case 2: // generation available
		regs = f32regs(8000)
	default:
		return nil, modbus.ErrIllegalDataAddress
	}
	if int(req.Addr)+int(req.Quantity) > len(regs) {
		return nil, modbus.ErrIllegalDataAddress
	}
	return regs[req.Addr : req.Addr+req.Quantity], nil
}

const benchSite = `
[site]
id = "bench"
cycle_period = "100ms"
[site.inputs]
frequency_hz = "pcc.frequency_hz"
breaker_closed = "pcc.breaker_closed"
import_kw = "pcc.import_kw"
site_load_kw = "pcc.site_load_kw"
generation_available_kw = ["bess.generation_kw"]
[limits]
import_limit_kw = 20000
failsafe_load_kw = 1000
[[modbus]]
name = "pcc"
url = "%[1]s"
unit_id = 1
poll_period = "20ms"
timeout = "200ms"
  [[modbus.points]]
  name = "frequency_hz"
  table = "input"
  address = 0
  type = "float32"
  unit = "Hz"
  min = 45.0
  max = 65.0
  trigger_below = 59.9
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
  trigger_on_change = true
[[modbus]]
name = "bess"
url = "%[1]s"
unit_id = 2
poll_period = "200ms"
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
units = 200
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
[[stages]]
name = "uf1"
below_hz = 59.8
clear_above_hz = 59.85
actions = [{ group = "asic", cap_pct = 0 }, { group = "training", cap_pct = 50 }]
`

// BenchmarkSenseToDispatch measures, over 1,000 under-frequency events,
// the time from the frequency register changing on a Modbus TCP server on
// loopback (polled every 20 ms) to the dispatcher having every resulting
// command applied and read back: the miners' coils and the training
// setpoint. Reported as sense_to_dispatch_p50_ms and _p99_ms.
func BenchmarkSenseToDispatch(b *testing.B) {
	events := 1000
	if testing.Short() {
		events = 50
	}
	plant := &benchPlant{}
	plant.freq.Store(math.Float32bits(60))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv, err := modbus.NewServer(&modbus.ServerConfiguration{URL: "tcp://" + addr, Timeout: time.Minute, MaxClients: 16}, plant)
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer srv.Stop()

	cfg, err := agent.Load("bench.toml", []byte(fmt.Sprintf(benchSite, "tcp://"+addr)))
	if err != nil {
		b.Fatal(err)
	}
	type applied struct {
		at  time.Time
		cmd actuator.Command
	}
	appliedCh := make(chan applied, 64)
	ready := make(chan struct{})
	var once sync.Once
	a, err := agent.New(cfg, agent.Options{Log: quietLog(), Notify: func(s string) {
		if s == "READY=1" {
			once.Do(func() { close(ready) })
		}
	}, OnApplied: func(g int, cmd actuator.Command, res actuator.Result, err error, took time.Duration) {
		if err == nil {
			appliedCh <- applied{time.Now(), cmd}
		}
	}})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	<-ready

	// waitFor drains applied commands until both groups reached the
	// wanted targets; it returns when the later of the two landed.
	waitFor := func(units int, capKW float64) time.Time {
		var asic, training time.Time
		timeout := time.After(10 * time.Second)
		for asic.IsZero() || training.IsZero() {
			select {
			case ap := <-appliedCh:
				if ap.cmd.Group == "asic" && ap.cmd.UnitsOn == units {
					asic = ap.at
				}
				if ap.cmd.Group == "training" && math.Abs(ap.cmd.CapKW-capKW) < 1e-6 {
					training = ap.at
				}
			case <-timeout:
				b.Fatalf("commands for units=%d cap=%g not applied within 10s", units, capKW)
			}
		}
		if asic.After(training) {
			return asic
		}
		return training
	}
	waitFor(200, 1000) // the first full-power commands

	lat := make([]float64, 0, events)
	r := rand.New(rand.NewPCG(1, 2))
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		lat = lat[:0]
		for i := 0; i < events; i++ {
			// Land at a random phase of the 20 ms poll.
			time.Sleep(time.Duration(r.IntN(20_000)) * time.Microsecond)
			t0 := time.Now()
			plant.freq.Store(math.Float32bits(59.7))
			t1 := waitFor(0, 500)
			lat = append(lat, float64(t1.Sub(t0).Microseconds())/1000)
			plant.freq.Store(math.Float32bits(60))
			waitFor(200, 1000)
		}
	}
	b.StopTimer()
	cancel()
	<-done
	sort.Float64s(lat)
	pct := func(p float64) float64 { return lat[int(math.Ceil(p*float64(len(lat))))-1] }
	b.ReportMetric(pct(0.50), "sense_to_dispatch_p50_ms")
	b.ReportMetric(pct(0.99), "sense_to_dispatch_p99_ms")
	b.ReportMetric(lat[len(lat)-1], "sense_to_dispatch_max_ms")
	b.ReportMetric(float64(len(lat)), "events")
}
