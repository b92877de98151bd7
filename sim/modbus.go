package sim

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"time"

	"github.com/simonvetter/modbus"
)

// Unit ids of the simulated devices behind the one Modbus server. Every
// float is a float32 in two registers, big-endian (ABCD); addresses are
// zero-based.
const (
	// UnitMeter, the PCC meter and utility relay: input registers 0-1
	// frequency_hz, 2-3 import_kw, 4-5 site_load_kw; discrete input 0
	// breaker_closed (1 = closed, grid-connected).
	UnitMeter uint8 = 1
	// UnitStorage, the BESS and generator controller: input registers 0-1
	// battery_discharge_available_kw, 2-3 battery_soc_pct, 4-5
	// generation_available_kw.
	UnitStorage uint8 = 2
	// UnitPLC, the rack/feeder PLC: coil i runs miner i (1 = run, 0 =
	// sleep); holding registers 0-1 training_cap_kw, 2-3 inference_cap_kw;
	// input registers 0-1 asic_kw, 2-3 training_kw, 4-5 inference_kw, 6-7
	// aux_kw.
	UnitPLC uint8 = 3
	// UnitOps, the ops gateway: holding registers 0-1 curtail_target_kw
	// (0 = none).
	UnitOps uint8 = 4
)

// serverIdle closes client sessions idle this long.
const serverIdle = 60 * time.Second

// dropHold bounds how long a silent meter holds a request before answering
// with an exception. The client has timed out and reconnected long before;
// the bound frees the server's slot for that dead connection, which the
// library only notices once it writes.
const dropHold = 5 * time.Second

// maxClients leaves room for the agent's endpoints, tests, and the dead
// connections a silent meter holds for up to dropHold.
const maxClients = 256

// serve starts the Modbus server. The library does not report the port it
// bound, so port 0 is resolved by binding and releasing a free port first;
// a lost race for that port is retried.
func (s *Site) serve(addr string) (*modbus.ModbusServer, string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, "", fmt.Errorf("sim: listen address %q: %w; write host:port such as 127.0.0.1:0", addr, err)
	}
	var last error
	for attempt := 0; attempt < 5; attempt++ {
		hostPort := net.JoinHostPort(host, port)
		if port == "0" {
			l, err := net.Listen("tcp", hostPort)
			if err != nil {
				return nil, "", fmt.Errorf("sim: finding a free port on %s: %w", host, err)
			}
			hostPort = l.Addr().String()
			l.Close()
		}
		url := "tcp://" + hostPort
		srv, err := modbus.NewServer(&modbus.ServerConfiguration{
			URL:        url,
			Timeout:    serverIdle,
			MaxClients: maxClients,
			Logger:     slog.NewLogLogger(slog.Default().Handler(), slog.LevelDebug),
		}, &handler{s})
		if err != nil {
			return nil, "", fmt.Errorf("sim: Modbus server on %s: %w", url, err)
		}
		if last = srv.Start(); last == nil {
			return srv, url, nil
		}
		if port != "0" {
			break
		}
	}
	return nil, "", fmt.Errorf("sim: Modbus server on %s: %w", addr, last)
}

// FreezeMeter makes the PCC meter (unit 1) answer every request with
// exception 0x0B, gateway target failed to respond: a meter that stopped
// answering behind its gateway.
func (s *Site) FreezeMeter(frozen bool) {
	s.mu.Lock()
	s.frozen = frozen
	s.mu.Unlock()
}

// DropMeter makes the PCC meter silent: requests to unit 1 get no answer
// at all, so clients time out.
func (s *Site) DropMeter(drop bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case drop && s.dropped == nil:
		s.dropped = make(chan struct{})
	case !drop && s.dropped != nil:
		close(s.dropped)
		s.dropped = nil
	}
}

// OnWrite sets a hook called after every write that lands (table is
// "coil" or "holding"). It runs on the server's goroutine: keep it short.
func (s *Site) OnWrite(fn func(unit uint8, table string, addr, qty uint16)) {
	s.mu.Lock()
	s.onWrite = fn
	s.mu.Unlock()
}

func (s *Site) wrote(unit uint8, table string, addr, qty uint16) {
	s.mu.Lock()
	fn := s.onWrite
	s.mu.Unlock()
	if fn != nil {
		fn(unit, table, addr, qty)
	}
}

// handler answers the server's requests from the site's state.
type handler struct{ s *Site }

var _ modbus.RequestHandler = (*handler)(nil)

// gate answers for the devices that are absent or failing, before any
// table is looked at.
func (h *handler) gate(unit uint8) error {
	if unit < UnitMeter || unit > UnitOps {
		return modbus.ErrGWTargetFailedToRespond
	}
	if unit != UnitMeter {
		return nil
	}
	h.s.mu.Lock()
	frozen, dropped, stop := h.s.frozen, h.s.dropped, h.s.stop
	h.s.mu.Unlock()
	if dropped != nil {
		select {
		case <-dropped:
		case <-stop:
		case <-time.After(dropHold):
		}
		return modbus.ErrGWTargetFailedToRespond
	}
	if frozen {
		return modbus.ErrGWTargetFailedToRespond
	}
	return nil
}

// span checks that [addr, addr+qty) lies within a table of n entries.
func span(addr, qty uint16, n int) error {
	if int(addr)+int(qty) > n {
		return modbus.ErrIllegalDataAddress
	}
	return nil
}

func (h *handler) HandleCoils(req *modbus.CoilsRequest) ([]bool, error) {
	if err := h.gate(req.UnitId); err != nil {
		return nil, err
	}
	s := h.s
	s.mu.Lock()
	if req.UnitId != UnitPLC {
		s.mu.Unlock()
		return nil, modbus.ErrIllegalDataAddress
	}
	if err := span(req.Addr, req.Quantity, len(s.miners)); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	ms := s.miners[req.Addr : int(req.Addr)+int(req.Quantity)]
	if !req.IsWrite {
		out := make([]bool, len(ms))
		for i := range ms {
			out[i] = ms[i].run
		}
		s.mu.Unlock()
		return out, nil
	}
	if len(req.Args) != len(ms) {
		s.mu.Unlock()
		return nil, modbus.ErrIllegalDataValue
	}
	for i, run := range req.Args {
		s.setCoil(int(req.Addr)+i, run)
	}
	s.mu.Unlock()
	s.wrote(req.UnitId, "coil", req.Addr, req.Quantity)
	return nil, nil
}

func (h *handler) HandleDiscreteInputs(req *modbus.DiscreteInputsRequest) ([]bool, error) {
	if err := h.gate(req.UnitId); err != nil {
		return nil, err
	}
	if req.UnitId != UnitMeter {
		return nil, modbus.ErrIllegalDataAddress
	}
	if err := span(req.Addr, req.Quantity, 1); err != nil {
		return nil, err
	}
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	return []bool{h.s.breaker}, nil
}

func (h *handler) HandleInputRegisters(req *modbus.InputRegistersRequest) ([]uint16, error) {
	if err := h.gate(req.UnitId); err != nil {
		return nil, err
	}
	h.s.mu.Lock()
	vals := h.s.inputs(req.UnitId)
	h.s.mu.Unlock()
	if err := span(req.Addr, req.Quantity, 2*len(vals)); err != nil {
		return nil, err
	}
	regs := make([]uint16, 0, 2*len(vals))
	for _, v := range vals {
		b := math.Float32bits(float32(v))
		regs = append(regs, uint16(b>>16), uint16(b))
	}
	return regs[req.Addr : req.Addr+req.Quantity], nil
}

// inputs is the input-register image of a unit, in address order.
func (s *Site) inputs(unit uint8) []float64 {
	load := s.asic + s.training + s.infer + s.aux
	switch unit {
	case UnitMeter:
		imp := 0.0
		if s.breaker {
			imp = load
		}
		return []float64{s.hz, imp, load}
	case UnitStorage:
		return []float64{s.batteryAvailable(), s.soc, s.cfg.GenerationKW}
	case UnitPLC:
		return []float64{s.asic, s.training, s.infer, s.aux}
	}
	return nil
}

// holdingBank maps a unit to its bank in s.hold and the bank's size.
func holdingBank(unit uint8) (bank, n int) {
	switch unit {
	case UnitPLC:
		return 0, 4
	case UnitOps:
		return 1, 2
	}
	return -1, 0
}

func (h *handler) HandleHoldingRegisters(req *modbus.HoldingRegistersRequest) ([]uint16, error) {
	if err := h.gate(req.UnitId); err != nil {
		return nil, err
	}
	bank, n := holdingBank(req.UnitId)
	if err := span(req.Addr, req.Quantity, n); err != nil {
		return nil, err
	}
	s := h.s
	s.mu.Lock()
	regs := s.hold[bank][req.Addr : req.Addr+req.Quantity]
	if !req.IsWrite {
		out := append([]uint16(nil), regs...)
		s.mu.Unlock()
		return out, nil
	}
	// Check the floats the write would leave before keeping any of it: a
	// PLC refuses a setpoint it cannot use and keeps the last good one.
	next := s.hold[bank]
	copy(next[req.Addr:], req.Args)
	for i := 0; i < n; i += 2 {
		if v := wordsFloat(next[i], next[i+1]); !(v >= 0) || math.IsInf(float64(v), 0) {
			s.mu.Unlock()
			return nil, modbus.ErrIllegalDataValue
		}
	}
	s.hold[bank] = next
	s.applyHolding()
	s.mu.Unlock()
	s.wrote(req.UnitId, "holding", req.Addr, req.Quantity)
	return nil, nil
}

func wordsFloat(hi, lo uint16) float32 {
	return math.Float32frombits(uint32(hi)<<16 | uint32(lo))
}

// setHolding stores v at addr of a holding bank, big-endian.
func (s *Site) setHolding(bank int, addr uint16, v float32) {
	b := math.Float32bits(v)
	s.hold[bank][addr], s.hold[bank][addr+1] = uint16(b>>16), uint16(b)
}

// applyHolding decodes the setpoints the physics uses from the raw banks.
func (s *Site) applyHolding() {
	s.caps[0] = float64(wordsFloat(s.hold[0][0], s.hold[0][1]))
	s.caps[1] = float64(wordsFloat(s.hold[0][2], s.hold[0][3]))
	s.curtail = float64(wordsFloat(s.hold[1][0], s.hold[1][1]))
}
