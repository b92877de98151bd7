package sim

import (
	"context"
	"errors"
	"math"
	"os"
	"sync"
	"testing"
	"time"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/simonvetter/modbus"
)

// startSite serves a default site on a free loopback port for one test.
func startSite(t *testing.T) *Site {
	t.Helper()
	s := New(DefaultConfig())
	if err := s.Start(context.Background(), "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// dial opens a real client to the site, talking to unit.
func dial(t *testing.T, s *Site, unit uint8, timeout time.Duration) *modbus.ModbusClient {
	t.Helper()
	c, err := modbus.NewClient(&modbus.ClientConfiguration{URL: s.URL(), Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetUnitId(unit); err != nil {
		t.Fatal(err)
	}
	return c
}

// eventually polls cond until it holds; the deadline is generous because
// the physics runs on the real clock of a possibly busy machine.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func floats(t *testing.T, c *modbus.ModbusClient, addr, n uint16, rt modbus.RegType) []float32 {
	t.Helper()
	v, err := c.ReadFloat32s(addr, n, rt)
	if err != nil {
		t.Fatalf("reading %d floats at %d: %v", n, addr, err)
	}
	return v
}

func TestModbusMapReads(t *testing.T) {
	s := startSite(t)
	if s.URL() == "" || s.URL() == "tcp://127.0.0.1:0" {
		t.Fatalf("URL %q does not name the bound port", s.URL())
	}

	meter := dial(t, s, UnitMeter, time.Second)
	v := floats(t, meter, 0, 3, modbus.INPUT_REGISTER)
	if math.Abs(float64(v[0])-60) > 0.011 {
		t.Errorf("frequency %v, want 60±0.01", v[0])
	}
	if v[1] < 15000 || v[1] > 17500 || v[1] != v[2] {
		t.Errorf("import %v and site load %v: want equal, ~16 MW", v[1], v[2])
	}
	if closed, err := meter.ReadDiscreteInput(0); err != nil || !closed {
		t.Errorf("breaker_closed = %v, %v; want true", closed, err)
	}
	s.OpenBreaker()
	if closed, err := meter.ReadDiscreteInput(0); err != nil || closed {
		t.Errorf("after OpenBreaker breaker_closed = %v, %v; want false", closed, err)
	}
	if imp := floats(t, meter, 2, 1, modbus.INPUT_REGISTER)[0]; imp != 0 {
		t.Errorf("islanded import %v, want 0", imp)
	}

	storage := dial(t, s, UnitStorage, time.Second)
	v = floats(t, storage, 0, 3, modbus.INPUT_REGISTER)
	if v[0] != 4000 || v[1] <= 0 || v[1] > 100 || v[2] != 6000 {
		t.Errorf("storage unit: battery %v kW, SoC %v %%, generation %v kW", v[0], v[1], v[2])
	}

	plc := dial(t, s, UnitPLC, time.Second)
	v = floats(t, plc, 0, 4, modbus.INPUT_REGISTER)
	if v[0] != 7000 || math.Abs(float64(v[1])-5700) > 1 || v[2] < 1790 || v[2] > 2710 || v[3] < 1400 {
		t.Errorf("PLC measurements asic %v, training %v, inference %v, aux %v", v[0], v[1], v[2], v[3])
	}
	if caps := floats(t, plc, 0, 2, modbus.HOLDING_REGISTER); caps[0] != 6000 || caps[1] != 3000 {
		t.Errorf("GPU caps %v, want [6000 3000]", caps)
	}
	coils, err := plc.ReadCoils(0, 2000)
	if err != nil || len(coils) != 2000 {
		t.Fatalf("reading 2000 coils: %v", err)
	}
	for i, on := range coils {
		if !on {
			t.Fatalf("coil %d reads 0 at start", i)
		}
	}
	// Half a float is a legal read of one register.
	if r, err := plc.ReadRegister(1, modbus.INPUT_REGISTER); err != nil || r != uint16(math.Float32bits(7000)) {
		t.Errorf("low word of asic_kw = %#x, %v", r, err)
	}

	ops := dial(t, s, UnitOps, time.Second)
	if tgt := floats(t, ops, 0, 1, modbus.HOLDING_REGISTER)[0]; tgt != 0 {
		t.Errorf("curtail target %v, want 0", tgt)
	}
	s.SetCurtailTarget(9000)
	if tgt := floats(t, ops, 0, 1, modbus.HOLDING_REGISTER)[0]; tgt != 9000 {
		t.Errorf("curtail target %v after SetCurtailTarget(9000)", tgt)
	}
}

func TestModbusExceptions(t *testing.T) {
	s := startSite(t)
	for _, unit := range []uint8{0, 5, 247, 255} {
		c := dial(t, s, unit, time.Second)
		if _, err := c.ReadRegisters(0, 2, modbus.INPUT_REGISTER); !errors.Is(err, modbus.ErrGWTargetFailedToRespond) {
			t.Errorf("unit %d: %v, want gateway target failed to respond", unit, err)
		}
	}
	illegal := map[string]func() error{}
	meter := dial(t, s, UnitMeter, time.Second)
	storage := dial(t, s, UnitStorage, time.Second)
	plc := dial(t, s, UnitPLC, time.Second)
	ops := dial(t, s, UnitOps, time.Second)
	illegal["meter input 6"] = func() error { _, err := meter.ReadRegister(6, modbus.INPUT_REGISTER); return err }
	illegal["meter input 4..7"] = func() error { _, err := meter.ReadRegisters(4, 4, modbus.INPUT_REGISTER); return err }
	illegal["meter discrete 1"] = func() error { _, err := meter.ReadDiscreteInput(1); return err }
	illegal["meter coil 0"] = func() error { _, err := meter.ReadCoil(0); return err }
	illegal["meter holding 0"] = func() error { _, err := meter.ReadRegister(0, modbus.HOLDING_REGISTER); return err }
	illegal["storage write holding"] = func() error { return storage.WriteRegister(0, 1) }
	illegal["storage input 6"] = func() error { _, err := storage.ReadRegister(6, modbus.INPUT_REGISTER); return err }
	illegal["plc coil 2000"] = func() error { _, err := plc.ReadCoil(2000); return err }
	illegal["plc write coil 2000"] = func() error { return plc.WriteCoil(2000, false) }
	illegal["plc holding 4"] = func() error { _, err := plc.ReadRegister(4, modbus.HOLDING_REGISTER); return err }
	illegal["plc input 8"] = func() error { _, err := plc.ReadRegister(8, modbus.INPUT_REGISTER); return err }
	illegal["plc discrete 0"] = func() error { _, err := plc.ReadDiscreteInput(0); return err }
	illegal["ops write holding 2"] = func() error { return ops.WriteRegister(2, 1) }
	for name, f := range illegal {
		if err := f(); !errors.Is(err, modbus.ErrIllegalDataAddress) {
			t.Errorf("%s: %v, want illegal data address", name, err)
		}
	}

	// A setpoint the PLC cannot use is refused and the last good one kept.
	for name, bad := range map[string]float32{"NaN": float32(math.NaN()), "negative": -5, "infinite": float32(math.Inf(1))} {
		if err := plc.WriteFloat32(0, bad); !errors.Is(err, modbus.ErrIllegalDataValue) {
			t.Errorf("writing a %s cap: %v, want illegal data value", name, err)
		}
	}
	if caps := floats(t, plc, 0, 2, modbus.HOLDING_REGISTER); caps[0] != 6000 {
		t.Errorf("training cap %v after refused writes, want 6000 kept", caps[0])
	}
	if s.Snapshot().TrainingCapKW != 6000 {
		t.Errorf("physics took a refused cap: %v", s.Snapshot().TrainingCapKW)
	}
}

func TestFrozenAndSilentMeter(t *testing.T) {
	s := startSite(t)
	meter := dial(t, s, UnitMeter, 300*time.Millisecond)
	storage := dial(t, s, UnitStorage, time.Second)

	s.FreezeMeter(true)
	if !s.Snapshot().MeterFrozen {
		t.Error("snapshot does not show the frozen meter")
	}
	if _, err := meter.ReadFloat32(0, modbus.INPUT_REGISTER); !errors.Is(err, modbus.ErrGWTargetFailedToRespond) {
		t.Errorf("frozen meter registers: %v, want gateway target failed to respond", err)
	}
	if _, err := meter.ReadDiscreteInput(0); !errors.Is(err, modbus.ErrGWTargetFailedToRespond) {
		t.Errorf("frozen meter breaker: %v, want gateway target failed to respond", err)
	}
	if _, err := storage.ReadFloat32(0, modbus.INPUT_REGISTER); err != nil {
		t.Errorf("other units must keep answering while the meter is frozen: %v", err)
	}
	s.FreezeMeter(false)
	if _, err := meter.ReadFloat32(0, modbus.INPUT_REGISTER); err != nil {
		t.Errorf("thawed meter: %v", err)
	}

	s.DropMeter(true)
	if _, err := meter.ReadFloat32(0, modbus.INPUT_REGISTER); !errors.Is(err, modbus.ErrRequestTimedOut) {
		t.Errorf("silent meter: %v, want a timeout", err)
	}
	if _, err := storage.ReadFloat32(0, modbus.INPUT_REGISTER); err != nil {
		t.Errorf("other connections must keep answering while the meter is silent: %v", err)
	}
	s.DropMeter(false)
	fresh := dial(t, s, UnitMeter, time.Second) // a client reopens after a timeout
	if _, err := fresh.ReadFloat32(0, modbus.INPUT_REGISTER); err != nil {
		t.Errorf("meter back: %v", err)
	}
}

type write struct {
	unit      uint8
	table     string
	addr, qty uint16
}

func TestModbusWritesDriveThePhysics(t *testing.T) {
	s := startSite(t)
	var mu sync.Mutex
	var writes []write
	s.OnWrite(func(unit uint8, table string, addr, qty uint16) {
		mu.Lock()
		writes = append(writes, write{unit, table, addr, qty})
		mu.Unlock()
	})
	plc := dial(t, s, UnitPLC, time.Second)

	off := make([]bool, 1000)
	if err := plc.WriteCoils(1000, off); err != nil {
		t.Fatal(err)
	}
	if err := plc.WriteFloat32(0, 3000); err != nil {
		t.Fatal(err)
	}
	if err := plc.WriteFloat32(2, 1500.5); err != nil {
		t.Fatal(err)
	}
	coils, err := plc.ReadCoils(998, 4)
	if err != nil || !coils[0] || !coils[1] || coils[2] || coils[3] {
		t.Errorf("coils 998..1001 = %v, %v; want [true true false false]", coils, err)
	}
	if caps := floats(t, plc, 0, 2, modbus.HOLDING_REGISTER); caps[0] != 3000 || caps[1] != 1500.5 {
		t.Errorf("caps read back %v, want [3000 1500.5]", caps)
	}
	mu.Lock()
	got := append([]write(nil), writes...)
	mu.Unlock()
	want := []write{{UnitPLC, "coil", 1000, 1000}, {UnitPLC, "holding", 0, 2}, {UnitPLC, "holding", 2, 2}}
	if len(got) != len(want) {
		t.Fatalf("OnWrite saw %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("write %d: %+v, want %+v", i, got[i], want[i])
		}
	}

	eventually(t, "1000 miners asleep, training at 3000 kW, inference at its cap", func() bool {
		st := s.Snapshot()
		return st.MinersSleeping == 1000 && st.MinersRunning == 1000 &&
			math.Abs(st.TrainingKW-3000) < 1 && math.Abs(st.InferenceKW-1500.5) < 1
	})
	v := floats(t, plc, 0, 3, modbus.INPUT_REGISTER)
	if math.Abs(float64(v[0])-(1000*3.5+1000*0.05)) > 0.01 {
		t.Errorf("asic_kw register %v after 1000 miners slept", v[0])
	}

	ops := dial(t, s, UnitOps, time.Second)
	if err := ops.WriteFloat32(0, 9000); err != nil {
		t.Fatal(err)
	}
	if st := s.Snapshot(); st.CurtailTargetKW != 9000 {
		t.Errorf("curtail target %v after a write of 9000", st.CurtailTargetKW)
	}
}

// TestDemoConfigMatchesMap reads every point and writes every actuator that
// configs/demo.toml names, through a real client, so the site file and the
// simulator cannot drift apart.
func TestDemoConfigMatchesMap(t *testing.T) {
	data, err := os.ReadFile("../configs/demo.toml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Modbus []struct {
			Name   string
			UnitID uint8 `toml:"unit_id"`
			Points []struct {
				Name, Table, Type string
				Address           uint16
			}
		}
		Groups []struct {
			Name, Kind string
			Units      int
			UnitKW     float64 `toml:"unit_kw"`
			Modbus     struct {
				Endpoint, Table, Type string
				Address               uint16
			}
		}
	}
	if err := toml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	s := startSite(t)
	units := map[string]uint8{}
	for _, ep := range doc.Modbus {
		units[ep.Name] = ep.UnitID
		c := dial(t, s, ep.UnitID, time.Second)
		for _, p := range ep.Points {
			var err error
			switch p.Table {
			case "input", "holding":
				rt := modbus.INPUT_REGISTER
				if p.Table == "holding" {
					rt = modbus.HOLDING_REGISTER
				}
				if p.Type != "float32" {
					t.Errorf("%s.%s: type %q, the simulator serves float32", ep.Name, p.Name, p.Type)
				}
				_, err = c.ReadFloat32(p.Address, rt)
			case "discrete":
				_, err = c.ReadDiscreteInput(p.Address)
			case "coil":
				_, err = c.ReadCoil(p.Address)
			}
			if err != nil {
				t.Errorf("%s.%s (%s %d): %v", ep.Name, p.Name, p.Table, p.Address, err)
			}
		}
	}
	for _, g := range doc.Groups {
		c := dial(t, s, units[g.Modbus.Endpoint], time.Second)
		var err error
		switch g.Kind {
		case "shed":
			// One write carries at most 1968 coils.
			for i := 0; i < g.Units && err == nil; i += 1000 {
				err = c.WriteCoils(g.Modbus.Address+uint16(i), make([]bool, min(1000, g.Units-i)))
			}
			if g.Units != s.cfg.Miners || g.UnitKW != s.cfg.MinerKW {
				t.Errorf("group %s: %d x %v kW, the simulator has %d x %v kW", g.Name, g.Units, g.UnitKW, s.cfg.Miners, s.cfg.MinerKW)
			}
		case "throttle":
			err = c.WriteFloat32(g.Modbus.Address, float32(float64(g.Units)*g.UnitKW))
		}
		if err != nil {
			t.Errorf("group %s (%s %d): %v", g.Name, g.Modbus.Table, g.Modbus.Address, err)
		}
	}
}
