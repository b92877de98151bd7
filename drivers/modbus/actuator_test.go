package modbus

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/simonvetter/modbus"

	"github.com/siteagent/siteagent/drivers/actuator"
)

// rig is a device behind a real server, an endpoint and an actuator.
func rig(t *testing.T, dev *device, cfg ActuatorConfig, kind actuator.Kind, units int) (*Actuator, *Endpoint) {
	t.Helper()
	_, url := startServer(t, dev)
	cfg.Endpoint = "dev"
	e, _ := newEndpoint(t, EndpointConfig{Name: "dev", URL: url}, nil)
	a, err := NewActuator(cfg, e, kind, units)
	if err != nil {
		t.Fatal(err)
	}
	return a, e
}

func apply(t *testing.T, a *Actuator, cmd actuator.Command) (actuator.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return a.Apply(ctx, cmd)
}

func shedTo(n int) actuator.Command { return actuator.Command{Kind: actuator.Shed, UnitsOn: n} }

func TestShedCoilsWritesOnlyWhatChanged(t *testing.T) {
	dev := &device{}
	a, _ := rig(t, dev, ActuatorConfig{Table: "coil", Address: u16(100)}, actuator.Shed, 10)

	r, err := apply(t, a, shedTo(7))
	if err != nil || !r.Verified || r.UnitsOn != 7 {
		t.Fatalf("UnitsOn 7: %+v, %v", r, err)
	}
	for i := range 10 {
		if dev.coils[100+i] != (i < 7) {
			t.Fatalf("coil %d = %v after UnitsOn 7", 100+i, dev.coils[100+i])
		}
	}
	if w := dev.takeWrites(); !slices.Equal(w, []write{{coilTable, 100, 10}}) {
		t.Errorf("first command wrote %v, want all 10 coils", w)
	}

	if r, err = apply(t, a, shedTo(5)); err != nil || !r.Verified || r.UnitsOn != 5 {
		t.Fatalf("UnitsOn 5: %+v, %v", r, err)
	}
	if w := dev.takeWrites(); !slices.Equal(w, []write{{coilTable, 105, 2}}) {
		t.Errorf("7 -> 5 wrote %v, want coils 105..106 only", w)
	}
	if r, err = apply(t, a, shedTo(5)); err != nil || !r.Verified {
		t.Fatalf("repeat: %+v, %v", r, err)
	}
	if w := dev.takeWrites(); len(w) != 0 {
		t.Errorf("a repeated command wrote %v, want nothing", w)
	}
	if _, err = apply(t, a, shedTo(11)); err == nil || !strings.Contains(err.Error(), "outside 0..10") {
		t.Errorf("UnitsOn 11: %v", err)
	}
	if _, err = apply(t, a, actuator.Command{Kind: actuator.Throttle, CapKW: 5}); err == nil {
		t.Error("a throttle command on a shed group was accepted")
	}
}

func TestShedHoldingRegistersWithOnOffValues(t *testing.T) {
	dev := &device{}
	a, _ := rig(t, dev, ActuatorConfig{Table: "holding", Address: u16(40), OnValue: u16(0xAA), OffValue: u16(0x55)}, actuator.Shed, 4)
	if r, err := apply(t, a, shedTo(1)); err != nil || !r.Verified || r.UnitsOn != 1 {
		t.Fatalf("UnitsOn 1: %+v, %v", r, err)
	}
	if got := dev.holding[40:44]; !slices.Equal(got, []uint16{0xAA, 0x55, 0x55, 0x55}) {
		t.Fatalf("registers % x", got)
	}
	dev.takeWrites()
	if r, err := apply(t, a, shedTo(2)); err != nil || !r.Verified || r.UnitsOn != 2 {
		t.Fatalf("UnitsOn 2: %+v, %v", r, err)
	}
	if w := dev.takeWrites(); !slices.Equal(w, []write{{holdingTable, 41, 1}}) || dev.holding[41] != 0xAA {
		t.Errorf("1 -> 2 wrote %v (register 41 = %#x)", w, dev.holding[41])
	}
}

func TestShedChunksLargeGroups(t *testing.T) {
	dev := &device{}
	a, _ := rig(t, dev, ActuatorConfig{Table: "coil", Address: u16(0)}, actuator.Shed, 3000)
	if r, err := apply(t, a, shedTo(2500)); err != nil || !r.Verified || r.UnitsOn != 2500 {
		t.Fatalf("UnitsOn 2500: %+v, %v", r, err)
	}
	if w := dev.takeWrites(); !slices.Equal(w, []write{{coilTable, 0, 1968}, {coilTable, 1968, 1032}}) {
		t.Errorf("writes %v, want 1968 + 1032 coils", w)
	}
	if !dev.coils[2499] || dev.coils[2500] {
		t.Error("coils around unit 2500 wrong")
	}
}

func TestShedPartialFailureIsReported(t *testing.T) {
	dev := &device{refuse: func(t table, write bool, addr, qty uint16) error {
		if write && int(addr)+int(qty) > 2000 {
			return modbus.ErrIllegalDataAddress
		}
		return nil
	}}
	a, _ := rig(t, dev, ActuatorConfig{Table: "coil", Address: u16(0)}, actuator.Shed, 3000)
	r, err := apply(t, a, shedTo(3000))
	if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "units 1968..2999") {
		t.Fatalf("error %v, want the refusal of units 1968..2999", err)
	}
	if r.Verified || r.Detail != "units 0..1967 written, 1968..2999 not" {
		t.Errorf("result %+v", r)
	}
	// The next command rewrites everything: the state is not known.
	dev.set(func(d *device) { d.refuse = nil })
	dev.takeWrites()
	if r, err := apply(t, a, shedTo(3000)); err != nil || !r.Verified {
		t.Fatalf("retry: %+v, %v", r, err)
	}
	if w := dev.takeWrites(); len(w) != 2 || w[0].addr != 0 {
		t.Errorf("retry wrote %v, want the whole group again", w)
	}
}

func TestShedReadBackMismatch(t *testing.T) {
	dev := &device{stuck: map[uint16]bool{13: true}}
	a, _ := rig(t, dev, ActuatorConfig{Table: "coil", Address: u16(10)}, actuator.Shed, 8)
	r, err := apply(t, a, shedTo(8))
	if err == nil || !strings.Contains(err.Error(), "unit 3 is off (want on)") || !strings.Contains(err.Error(), "7 of 8 units running") {
		t.Fatalf("error %v, want it to name unit 3", err)
	}
	if r.Verified || r.UnitsOn != 7 {
		t.Errorf("result %+v, want 7 running, not verified", r)
	}

	hold := &device{stuck: map[uint16]bool{2: true}}
	hold.holding[2] = 7
	h, _ := rig(t, hold, ActuatorConfig{Table: "holding", Address: u16(0)}, actuator.Shed, 3)
	if _, err := apply(t, h, shedTo(0)); err == nil || !strings.Contains(err.Error(), "unit 2 reads 7, neither on_value 1 nor off_value 0") {
		t.Fatalf("error %v, want the odd value named", err)
	}
}

func TestShedWithoutReadBack(t *testing.T) {
	dev := &device{}
	no := false
	a, _ := rig(t, dev, ActuatorConfig{Table: "coil", Address: u16(0), ReadBack: &no}, actuator.Shed, 4)
	r, err := apply(t, a, shedTo(2))
	if err != nil || r.Verified || r.UnitsOn != 2 || !strings.Contains(r.Detail, "read_back is off") {
		t.Fatalf("%+v, %v", r, err)
	}
	if !dev.coils[1] || dev.coils[2] {
		t.Error("coils not written")
	}
}

func TestThrottleWritesTheSetpoint(t *testing.T) {
	dev := &device{}
	a, _ := rig(t, dev, ActuatorConfig{Table: "holding", Address: u16(500), Type: "float32", Order: "CDAB", Scale: f64(0.1)}, actuator.Throttle, 1)
	r, err := apply(t, a, actuator.Command{Kind: actuator.Throttle, CapKW: 1234.5})
	if err != nil || !r.Verified || r.CapKW < 1234.49 || r.CapKW > 1234.51 {
		t.Fatalf("%+v, %v", r, err)
	}
	if got, want := dev.holding[500:502], registers(wireOf(Float32, CDAB, 12345)); !slices.Equal(got, want) {
		t.Errorf("registers %04x, want %04x (12345 as float32 CDAB)", got, want)
	}

	u := &device{}
	b, _ := rig(t, u, ActuatorConfig{Table: "holding", Address: u16(7)}, actuator.Throttle, 1)
	if r, err := apply(t, b, actuator.Command{Kind: actuator.Throttle, CapKW: 800.4}); err != nil || !r.Verified || r.CapKW != 800 {
		t.Fatalf("uint16 setpoint: %+v, %v", r, err)
	}
	if w := u.takeWrites(); u.holding[7] != 800 || len(w) != 1 || w[0].qty != 1 {
		t.Errorf("register 7 = %d, writes %v", u.holding[7], w)
	}
	for _, cap := range []float64{70000, -1} {
		if _, err := apply(t, b, actuator.Command{Kind: actuator.Throttle, CapKW: cap}); err == nil {
			t.Errorf("cap %g kW accepted for a uint16 register", cap)
		}
	}
	if w := u.takeWrites(); len(w) != 0 {
		t.Errorf("refused caps wrote %v", w)
	}
}

func TestThrottleRefusalAndMismatch(t *testing.T) {
	busy := &device{refuse: func(table, bool, uint16, uint16) error { return modbus.ErrServerDeviceBusy }}
	a, _ := rig(t, busy, ActuatorConfig{Table: "holding", Address: u16(0)}, actuator.Throttle, 1)
	if _, err := apply(t, a, actuator.Command{Kind: actuator.Throttle, CapKW: 100}); err == nil ||
		!strings.Contains(err.Error(), "refused") || !errors.Is(err, modbus.ErrServerDeviceBusy) {
		t.Fatalf("error %v, want the refusal", err)
	}

	clamp := &device{clamp: 1000}
	b, _ := rig(t, clamp, ActuatorConfig{Table: "holding", Address: u16(0), Type: "uint32"}, actuator.Throttle, 1)
	r, err := apply(t, b, actuator.Command{Kind: actuator.Throttle, CapKW: 1500})
	if err == nil || !strings.Contains(err.Error(), "wrote 1500 kW") || r.Verified {
		t.Fatalf("%+v, %v; want a mismatch", r, err)
	}
}

func TestApplyHonoursTheDeadline(t *testing.T) {
	_, url := listenRaw(t, func(c net.Conn) {
		defer c.Close()
		io.Copy(io.Discard, c) // never answers
	})
	e, _ := newEndpoint(t, EndpointConfig{Name: "dev", URL: url, Timeout: 3 * time.Second}, nil)
	a, err := NewActuator(ActuatorConfig{Endpoint: "dev", Table: "coil", Address: u16(0)}, e, actuator.Shed, 2)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := a.Apply(ctx, shedTo(1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Apply past its deadline: %v", err)
	}
	// The next command waits for the request on the wire, within its own
	// deadline.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := a.Apply(ctx2, shedTo(1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Apply: %v", err)
	}
}

func TestApplyAlongsidePolling(t *testing.T) {
	dev := &device{}
	_, url := startServer(t, dev)
	e, store := newEndpoint(t, EndpointConfig{Name: "dev", URL: url, PollPeriod: time.Millisecond, Points: []PointConfig{
		{Name: "c0", Table: "coil", Address: u16(0)},
		{Name: "h", Table: "holding", Address: u16(10), Type: "uint32"},
	}}, nil)
	run(t, e)
	coils, err := NewActuator(ActuatorConfig{Endpoint: "dev", Table: "coil", Address: u16(0)}, e, actuator.Shed, 16)
	if err != nil {
		t.Fatal(err)
	}
	setpoint, err := NewActuator(ActuatorConfig{Endpoint: "dev", Table: "holding", Address: u16(10), Type: "uint32"}, e, actuator.Throttle, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if r, err := apply(t, coils, shedTo(i%17)); err != nil || !r.Verified {
			t.Fatalf("shed %d: %+v, %v", i, r, err)
		}
		if r, err := apply(t, setpoint, actuator.Command{Kind: actuator.Throttle, CapKW: float64(1000 * i)}); err != nil || !r.Verified {
			t.Fatalf("cap %d: %+v, %v", i, r, err)
		}
	}
	waitFor(t, "the poll to see the last setpoint", func() bool {
		p := get(t, store, "dev.h")
		return p.Good() && p.Value == 19000
	})
}

func TestNewActuatorChecks(t *testing.T) {
	e, _ := newEndpoint(t, EndpointConfig{Name: "dev", URL: "tcp://127.0.0.1:502"}, nil)
	if _, err := NewActuator(ActuatorConfig{Endpoint: "other", Table: "coil", Address: u16(0)}, e, actuator.Shed, 2); err == nil ||
		!strings.Contains(err.Error(), `wired to endpoint "dev"`) {
		t.Errorf("wrong endpoint: %v", err)
	}
	if _, err := NewActuator(ActuatorConfig{Endpoint: "dev", Table: "input", Address: u16(0)}, e, actuator.Shed, 2); err == nil {
		t.Error("an input-register actuator was accepted")
	}
	if _, err := NewActuator(ActuatorConfig{Endpoint: "dev", Table: "coil", Address: u16(0)}, nil, actuator.Shed, 2); err == nil {
		t.Error("a nil endpoint was accepted")
	}
}
