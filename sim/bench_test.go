package sim

import (
	"context"
	"testing"
	"time"

	"github.com/simonvetter/modbus"
)

// BenchmarkAdvanceSteady is one 10 ms physics step of the default site with
// every miner settled: the cost the loop adds to a demo most of the time.
func BenchmarkAdvanceSteady(b *testing.B) {
	s := New(DefaultConfig())
	b.ReportAllocs()
	for b.Loop() {
		s.Advance(10 * time.Millisecond)
	}
}

// BenchmarkAdvanceAllMoving is one step with all 2,000 miners in
// transition, the worst case; it must stay far below the 10 ms step.
func BenchmarkAdvanceAllMoving(b *testing.B) {
	cfg := DefaultConfig()
	cfg.MinerSleepDelay = 1000 * time.Hour // keep them stopping
	s := New(cfg)
	s.command(0, cfg.Miners, false)
	b.ReportAllocs()
	for b.Loop() {
		s.Advance(10 * time.Millisecond)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(cfg.Step.Nanoseconds())*100, "%cpu-of-realtime")
}

// BenchmarkMeterRead is one Modbus round trip over loopback reading the
// PCC meter's three floats, as the agent's 20 ms poll does.
func BenchmarkMeterRead(b *testing.B) {
	s := New(DefaultConfig())
	if err := s.Start(context.Background(), "127.0.0.1:0"); err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	c, err := modbus.NewClient(&modbus.ClientConfiguration{URL: s.URL(), Timeout: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Open(); err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.SetUnitId(UnitMeter)
	for b.Loop() {
		if _, err := c.ReadFloat32s(0, 3, modbus.INPUT_REGISTER); err != nil {
			b.Fatal(err)
		}
	}
}
