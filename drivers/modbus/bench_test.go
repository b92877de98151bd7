package modbus

import (
	"context"
	"testing"

	"github.com/simonvetter/modbus"

	"github.com/siteagent/siteagent/agent/point"
)

const benchRegisters = 1000

// benchDevice serves fixed input registers without a lock, so that the
// benchmarks measure the client side rather than the test handler.
type benchDevice struct{ regs []uint16 }

func (d *benchDevice) HandleInputRegisters(req *modbus.InputRegistersRequest) ([]uint16, error) {
	return d.regs[req.Addr : int(req.Addr)+int(req.Quantity)], nil
}
func (d *benchDevice) HandleCoils(*modbus.CoilsRequest) ([]bool, error) {
	return nil, modbus.ErrIllegalFunction
}
func (d *benchDevice) HandleDiscreteInputs(*modbus.DiscreteInputsRequest) ([]bool, error) {
	return nil, modbus.ErrIllegalFunction
}
func (d *benchDevice) HandleHoldingRegisters(*modbus.HoldingRegistersRequest) ([]uint16, error) {
	return nil, modbus.ErrIllegalFunction
}

// benchTable lays out 1,000 input registers as a repeating mix of uint16,
// float32 (CDAB) and int32 points, and the registers holding them.
func benchTable() ([]PointConfig, []uint16) {
	regs := make([]uint16, benchRegisters)
	var pts []PointConfig
	for a := 0; a+5 <= benchRegisters; a += 5 {
		regs[a] = uint16(a)
		copy(regs[a+1:], registers(wireOf(Float32, CDAB, float64(a)/4)))
		copy(regs[a+3:], registers(wireOf(Int32, ABCD, -float64(a))))
		pts = append(pts,
			PointConfig{Name: "u" + itoa(a), Table: "input", Address: u16(uint16(a)), Scale: f64(0.1)},
			PointConfig{Name: "f" + itoa(a), Table: "input", Address: u16(uint16(a + 1)), Type: "float32", Order: "CDAB"},
			PointConfig{Name: "i" + itoa(a), Table: "input", Address: u16(uint16(a + 3)), Type: "int32", Invalid: f64(-0x80000000)})
	}
	return pts, regs
}

// BenchmarkRegistersPerSecond polls 1,000 registers (600 points) on
// loopback as fast as the endpoint can: one PollOnce per op.
func BenchmarkRegistersPerSecond(b *testing.B) {
	pts, regs := benchTable()
	_, url := startServer(b, &benchDevice{regs: regs})
	store := point.NewStore()
	e, err := NewEndpoint(EndpointConfig{Name: "bench", URL: url, Points: pts}, store, discardLog())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := e.PollOnce(ctx); err != nil { // connect outside the timing
		b.Fatal(err)
	}
	b.Logf("%s", e.Plan()[:min(len(e.Plan()), 80)])
	b.ReportAllocs()
	for b.Loop() {
		if err := e.PollOnce(ctx); err != nil {
			b.Fatal(err)
		}
	}
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(benchRegisters*b.N)/sec, "modbus_registers_per_s")
	b.ReportMetric(float64(len(pts)*b.N)/sec, "points/s")
	b.ReportMetric(float64(len(e.reqs)), "requests/op")
	snap := store.Snapshot(nil)
	for i, p := range snap {
		if !p.Good() {
			b.Fatalf("point %d is %s after the benchmark", i, p.Reason)
		}
	}
	if id, _ := store.Lookup("bench.f500"); snap[id].Value != 125 {
		b.Fatalf("bench.f500 = %v, want 125", snap[id].Value)
	}
}

// BenchmarkBareLibrary reads the same 1,000 registers with the library's
// client alone (8 reads of 125), for comparison.
func BenchmarkBareLibrary(b *testing.B) {
	_, regs := benchTable()
	_, url := startServer(b, &benchDevice{regs: regs})
	c, err := modbus.NewClient(&modbus.ClientConfiguration{URL: url})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Open(); err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		for a := 0; a < benchRegisters; a += 125 {
			if _, err := c.ReadRawBytes(uint16(a), 2*uint16(min(125, benchRegisters-a)), modbus.INPUT_REGISTER); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(benchRegisters*b.N)/b.Elapsed().Seconds(), "registers/s")
}

// TestPollAllocatesNoMoreThanTheLibrary: a poll cycle of the benchmark
// table allocates what the library's 8 reads (client and server side)
// allocate, and nothing of its own.
func TestPollAllocatesNoMoreThanTheLibrary(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation count needs a quiet process")
	}
	pts, regs := benchTable()
	_, url := startServer(t, &benchDevice{regs: regs})
	e, err := NewEndpoint(EndpointConfig{Name: "bench", URL: url, Points: pts}, point.NewStore(), discardLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.PollOnce(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := modbus.NewClient(&modbus.ClientConfiguration{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bare := testing.AllocsPerRun(50, func() {
		for i := range e.reqs {
			r := &e.reqs[i]
			if _, err := c.ReadRawBytes(r.start, 2*uint16(r.count), modbus.INPUT_REGISTER); err != nil {
				t.Fatal(err)
			}
		}
	})
	poll := testing.AllocsPerRun(50, func() {
		if err := e.PollOnce(ctx); err != nil {
			t.Fatal(err)
		}
	})
	if poll > bare+1 {
		t.Fatalf("PollOnce allocates %v times, the bare library %v for the same reads", poll, bare)
	}
}
