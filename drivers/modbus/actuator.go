package modbus

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/simonvetter/modbus"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/drivers/actuator"
)

// Actuator drives one load group through writes on an endpoint's
// connection: one coil (or holding register) per unit for shed groups, a
// setpoint register for throttle groups.
type Actuator struct {
	ep       *Endpoint
	kind     actuator.Kind
	units    int
	table    table
	addr     uint16
	typ      Type
	order    Order
	scale    float64
	on, off  uint16
	readBack bool
	name     string // for errors: "pcc coil 100"

	// busy holds one command at a time, until its last request has ended
	// (which may be after Apply gave up at ctx's deadline).
	busy chan struct{}

	// Guarded by busy.
	known bool     // state is what the units were last verified (or written) to be
	state []bool   // per unit: running
	want  []bool   // per unit: should run
	raw   []uint16 // per unit, holding registers: the value read back
	wire  []byte   // registers to write or compare
}

var _ actuator.Actuator = (*Actuator)(nil)

// NewActuator checks cfg and prepares to drive a group of kind with units
// units (shed groups) through ep, which must be cfg's endpoint.
func NewActuator(cfg ActuatorConfig, ep *Endpoint, kind actuator.Kind, units int) (*Actuator, error) {
	if ep == nil {
		return nil, fmt.Errorf("modbus actuator on %q: no endpoint given", cfg.Endpoint)
	}
	p := config.NewProblems("modbus actuator on "+strconv.Quote(cfg.Endpoint), nil)
	cfg.Validate(p, "", kind, units)
	if cfg.Endpoint != ep.Name() {
		p.Addf("endpoint", "names %q but was wired to endpoint %q", cfg.Endpoint, ep.Name())
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	d := cfg.WithDefaults()
	a := &Actuator{ep: ep, kind: kind, units: units, addr: *d.Address, scale: *d.Scale,
		on: *d.OnValue, off: *d.OffValue, readBack: *d.ReadBack, busy: make(chan struct{}, 1)}
	a.table, _ = parseTable(d.Table)
	a.typ, _ = ParseType(d.Type)
	a.order, _ = ParseOrder(d.Order)
	a.name = fmt.Sprintf("%s %s %d", ep.Name(), a.table, a.addr)
	a.wire = make([]byte, 2*maxWriteRegisters)
	if kind == actuator.Shed {
		a.state, a.want, a.raw = make([]bool, units), make([]bool, units), make([]uint16, units)
	}
	return a, nil
}

// Apply writes cmd and, with read_back, reads back what took effect. It
// returns at ctx's deadline even if a request is still on the wire; the
// next Apply then waits for that request to end.
func (a *Actuator) Apply(ctx context.Context, cmd actuator.Command) (actuator.Result, error) {
	if cmd.Kind != a.kind {
		return actuator.Result{}, a.errorf("got a %s command but drives a %s group", cmd.Kind, a.kind)
	}
	select {
	case a.busy <- struct{}{}:
	case <-ctx.Done():
		return actuator.Result{}, a.errorf("the previous command is still on the wire: %w", ctx.Err())
	}
	type outcome struct {
		r   actuator.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		defer func() { <-a.busy }()
		var o outcome
		if a.kind == actuator.Shed {
			o.r, o.err = a.shed(ctx, cmd.UnitsOn)
		} else {
			o.r, o.err = a.throttle(ctx, cmd.CapKW)
		}
		done <- o
	}()
	select {
	case o := <-done:
		return o.r, o.err
	case <-ctx.Done():
		select {
		case o := <-done:
			return o.r, o.err
		default:
		}
		return actuator.Result{Detail: "no answer before the deadline; a write on the wire may still take effect"}, a.errorf("%w", ctx.Err())
	}
}

// shed switches units 0..on-1 on and the rest off, writing only the range
// that differs from the last verified state.
func (a *Actuator) shed(ctx context.Context, on int) (actuator.Result, error) {
	if on < 0 || on > a.units {
		return actuator.Result{}, a.errorf("UnitsOn %d is outside 0..%d", on, a.units)
	}
	for i := range a.want {
		a.want[i] = i < on
	}
	lo, hi := 0, a.units
	if a.known {
		lo, hi = changed(a.state, a.want)
	}
	a.known = false // until the write and the read-back agree
	chunk := min(maxWriteRegisters, a.ep.cfg.MaxRegisters)
	if a.table == coilTable {
		chunk = min(maxWriteCoils, a.ep.cfg.MaxBits)
	}
	for from := lo; from < hi; from += chunk {
		to := min(from+chunk, hi)
		if err := a.writeUnits(ctx, from, to); err != nil {
			detail := fmt.Sprintf("units %d..%d not written", from, hi-1)
			if from > lo {
				detail = fmt.Sprintf("units %d..%d written, %d..%d not", lo, from-1, from, hi-1)
			}
			return actuator.Result{Detail: detail}, a.errorf("write units %d..%d: %w", from, to-1, refused(err))
		}
	}
	if !a.readBack {
		copy(a.state, a.want)
		a.known = true
		return actuator.Result{UnitsOn: on, Detail: "not verified: read_back is off"}, nil
	}
	odd, err := a.readUnits(ctx)
	if err != nil {
		return actuator.Result{Detail: "written, but the read-back failed"}, a.errorf("read back units: %w", refused(err))
	}
	a.known = !odd
	running := 0
	for _, s := range a.state {
		if s {
			running++
		}
	}
	if msg := a.mismatches(); msg != "" {
		return actuator.Result{UnitsOn: running, Detail: msg},
			a.errorf("read back %d of %d units running, want %d: %s", running, a.units, on, msg)
	}
	return actuator.Result{UnitsOn: running, Verified: true}, nil
}

// changed returns the smallest range [lo, hi) holding every difference.
func changed(have, want []bool) (lo, hi int) {
	lo, hi = len(want), 0
	for i := range want {
		if have[i] != want[i] {
			lo, hi = min(lo, i), i+1
		}
	}
	if lo > hi {
		return 0, 0
	}
	return lo, hi
}

func (a *Actuator) writeUnits(ctx context.Context, from, to int) error {
	if err := a.ep.begin(ctx, true); err != nil {
		return err
	}
	c, addr, n := a.ep.client, a.addr+uint16(from), to-from
	var err error
	switch {
	case a.table == coilTable && n == 1:
		err = c.WriteCoil(addr, a.want[from])
	case a.table == coilTable:
		err = c.WriteCoils(addr, a.want[from:to])
	default:
		for i := range n {
			v := a.value(a.want[from+i])
			a.wire[2*i], a.wire[2*i+1] = byte(v>>8), byte(v)
		}
		// One register goes as function 06, which more devices accept than 16.
		if n == 1 {
			err = c.WriteRegister(addr, uint16(a.wire[0])<<8|uint16(a.wire[1]))
		} else {
			err = c.WriteRawBytes(addr, a.wire[:2*n])
		}
	}
	a.ep.end(err)
	return err
}

// readUnits reads every unit's coil or register into state (and raw). odd
// reports a register holding neither on_value nor off_value.
func (a *Actuator) readUnits(ctx context.Context) (odd bool, err error) {
	chunk := a.ep.cfg.MaxRegisters
	if a.table == coilTable {
		chunk = a.ep.cfg.MaxBits
	}
	for from := 0; from < a.units; from += chunk {
		n := min(chunk, a.units-from)
		if err := a.ep.begin(ctx, true); err != nil {
			return odd, err
		}
		addr := a.addr + uint16(from)
		if a.table == coilTable {
			var bits []bool
			if bits, err = a.ep.client.ReadCoils(addr, uint16(n)); err == nil && len(bits) < n {
				err = modbus.ErrProtocolError
			}
			if err == nil {
				copy(a.state[from:from+n], bits)
			}
		} else {
			var wire []byte
			if wire, err = a.ep.client.ReadRawBytes(addr, uint16(2*n), modbus.HOLDING_REGISTER); err == nil && len(wire) < 2*n {
				err = modbus.ErrProtocolError
			}
			for i := 0; err == nil && i < n; i++ {
				v := uint16(wire[2*i])<<8 | uint16(wire[2*i+1])
				a.raw[from+i], a.state[from+i] = v, v == a.on
				odd = odd || (v != a.on && v != a.off)
			}
		}
		a.ep.end(err)
		if err != nil {
			return odd, err
		}
	}
	return odd, nil
}

// value is the holding register value for a unit that should run (or not).
func (a *Actuator) value(run bool) uint16 {
	if run {
		return a.on
	}
	return a.off
}

// mismatches describes the first few units that do not read as wanted.
func (a *Actuator) mismatches() string {
	var b strings.Builder
	n := 0
	for i, w := range a.want {
		bad := a.state[i] != w
		if a.table == holdingTable {
			bad = a.raw[i] != a.value(w)
		}
		if !bad {
			continue
		}
		if n++; n > 5 {
			b.WriteString(", …")
			break
		}
		if n > 1 {
			b.WriteString(", ")
		}
		want := "off"
		if w {
			want = "on"
		}
		switch {
		case a.table == holdingTable && a.raw[i] != a.on && a.raw[i] != a.off:
			fmt.Fprintf(&b, "unit %d reads %d, neither on_value %d nor off_value %d", i, a.raw[i], a.on, a.off)
		case w:
			fmt.Fprintf(&b, "unit %d is off (want %s)", i, want)
		default:
			fmt.Fprintf(&b, "unit %d is on (want %s)", i, want)
		}
	}
	return b.String()
}

// throttle writes capKW as the setpoint and reads it back.
func (a *Actuator) throttle(ctx context.Context, capKW float64) (actuator.Result, error) {
	if math.IsNaN(capKW) || math.IsInf(capKW, 0) || capKW < 0 {
		return actuator.Result{}, a.errorf("cap %g kW is not a setpoint; want a finite value of 0 or more", capKW)
	}
	n := a.typ.Words()
	w := a.wire[:2*n]
	raw := capKW / a.scale
	if err := Encode(w, a.typ, a.order, raw); err != nil {
		return actuator.Result{}, a.errorf("cap %g kW is %g in the register: %v", capKW, raw, err)
	}
	sent := Decode(w, a.typ, a.order) // after rounding to the type
	if err := a.ep.begin(ctx, true); err != nil {
		return actuator.Result{Detail: "not written"}, a.errorf("write setpoint: %w", err)
	}
	var err error
	if n == 1 {
		err = a.ep.client.WriteRegister(a.addr, uint16(w[0])<<8|uint16(w[1]))
	} else {
		err = a.ep.client.WriteRawBytes(a.addr, w)
	}
	a.ep.end(err)
	if err != nil {
		return actuator.Result{Detail: "not written"}, a.errorf("write setpoint %g kW: %w", capKW, refused(err))
	}
	if !a.readBack {
		return actuator.Result{CapKW: sent * a.scale, Detail: "not verified: read_back is off"}, nil
	}
	if err := a.ep.begin(ctx, true); err != nil {
		return actuator.Result{Detail: "written, but the read-back failed"}, a.errorf("read back setpoint: %w", err)
	}
	back, err := a.ep.client.ReadRawBytes(a.addr, uint16(2*n), modbus.HOLDING_REGISTER)
	if err == nil && len(back) < 2*n {
		err = modbus.ErrProtocolError
	}
	a.ep.end(err)
	if err != nil {
		return actuator.Result{Detail: "written, but the read-back failed"}, a.errorf("read back setpoint: %w", refused(err))
	}
	got := Decode(back, a.typ, a.order)
	if !bytes.Equal(back[:2*n], w) {
		return actuator.Result{CapKW: got * a.scale, Detail: "setpoint differs from what was written"},
			a.errorf("setpoint reads %g kW (raw %g), wrote %g kW (raw %g)", got*a.scale, got, sent*a.scale, sent)
	}
	return actuator.Result{CapKW: got * a.scale, Verified: true}, nil
}

func (a *Actuator) errorf(format string, args ...any) error {
	return fmt.Errorf("modbus actuator %s: "+format, append([]any{a.name}, args...)...)
}

// refused words a Modbus exception as the device refusing the request.
func refused(err error) error {
	if isException(err) {
		return fmt.Errorf("device refused the request: %w", err)
	}
	return err
}
