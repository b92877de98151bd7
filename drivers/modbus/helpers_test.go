package modbus

import (
	"bytes"
	"encoding/binary"
	"io"
	"log"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/simonvetter/modbus"
)

// device is the handler of a real simonvetter/modbus server: four tables
// and hooks to refuse requests or ignore writes.
type device struct {
	mu       sync.Mutex
	coils    [65536]bool
	discrete [65536]bool
	holding  [65536]uint16
	input    [65536]uint16
	// refuse, when set, returns the Modbus error to answer a request with.
	refuse func(t table, write bool, addr, qty uint16) error
	// stuck addresses (coils or holding registers) ignore writes.
	stuck map[uint16]bool
	// clamp, when non-zero, caps every holding register write.
	clamp  uint16
	writes []write
	units  map[uint8]int // requests seen per unit id
}

type write struct {
	table     table
	addr, qty uint16
}

func (d *device) check(t table, write bool, addr, qty uint16) error {
	if d.refuse != nil {
		return d.refuse(t, write, addr, qty)
	}
	return nil
}

func (d *device) HandleCoils(req *modbus.CoilsRequest) ([]bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(coilTable, req.IsWrite, req.Addr, req.Quantity); err != nil {
		return nil, err
	}
	if req.IsWrite {
		d.writes = append(d.writes, write{coilTable, req.Addr, req.Quantity})
		for i, v := range req.Args {
			if a := req.Addr + uint16(i); !d.stuck[a] {
				d.coils[a] = v
			}
		}
		return nil, nil
	}
	return append([]bool(nil), d.coils[req.Addr:int(req.Addr)+int(req.Quantity)]...), nil
}

func (d *device) HandleDiscreteInputs(req *modbus.DiscreteInputsRequest) ([]bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(discreteTable, false, req.Addr, req.Quantity); err != nil {
		return nil, err
	}
	return append([]bool(nil), d.discrete[req.Addr:int(req.Addr)+int(req.Quantity)]...), nil
}

func (d *device) HandleHoldingRegisters(req *modbus.HoldingRegistersRequest) ([]uint16, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.units == nil {
		d.units = map[uint8]int{}
	}
	d.units[req.UnitId]++
	if err := d.check(holdingTable, req.IsWrite, req.Addr, req.Quantity); err != nil {
		return nil, err
	}
	if req.IsWrite {
		d.writes = append(d.writes, write{holdingTable, req.Addr, req.Quantity})
		for i, v := range req.Args {
			if d.clamp != 0 {
				v = min(v, d.clamp)
			}
			if a := req.Addr + uint16(i); !d.stuck[a] {
				d.holding[a] = v
			}
		}
		return nil, nil
	}
	return append([]uint16(nil), d.holding[req.Addr:int(req.Addr)+int(req.Quantity)]...), nil
}

func (d *device) HandleInputRegisters(req *modbus.InputRegistersRequest) ([]uint16, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.check(inputTable, false, req.Addr, req.Quantity); err != nil {
		return nil, err
	}
	return append([]uint16(nil), d.input[req.Addr:int(req.Addr)+int(req.Quantity)]...), nil
}

// set changes the device under its lock.
func (d *device) set(f func(d *device)) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f(d)
}

func (d *device) takeWrites() []write {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.writes
	d.writes = nil
	return w
}

// freeAddr finds a free loopback port.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startServer serves h on a free loopback port; the server stops with the test.
func startServer(t testing.TB, h modbus.RequestHandler) (*modbus.ModbusServer, string) {
	t.Helper()
	addr := freeAddr(t)
	srv := startServerAt(t, h, addr)
	return srv, "tcp://" + addr
}

func startServerAt(t testing.TB, h modbus.RequestHandler, addr string) *modbus.ModbusServer {
	t.Helper()
	srv, err := modbus.NewServer(&modbus.ServerConfiguration{
		URL: "tcp://" + addr, MaxClients: 10, Logger: log.New(io.Discard, "", 0),
	}, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	return srv
}

// rawListener accepts connections and hands each to serve; it counts them.
type rawListener struct {
	l       net.Listener
	accepts atomic.Int32
}

func listenRaw(t testing.TB, serve func(c net.Conn)) (*rawListener, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rawListener{l: l}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			r.accepts.Add(1)
			go serve(c)
		}
	}()
	return r, "tcp://" + l.Addr().String()
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wireOf encodes v the way a device would send it, independently of the
// codec: the value's big-endian bytes, then permuted per order.
func wireOf(typ Type, o Order, v float64) []byte {
	var b []byte
	switch typ {
	case Int16:
		b = binary.BigEndian.AppendUint16(nil, uint16(int16(v)))
	case Uint16:
		b = binary.BigEndian.AppendUint16(nil, uint16(v))
	case Int32:
		b = binary.BigEndian.AppendUint32(nil, uint32(int32(v)))
	case Uint32:
		b = binary.BigEndian.AppendUint32(nil, uint32(v))
	case Int64:
		b = binary.BigEndian.AppendUint64(nil, uint64(int64(v)))
	case Uint64:
		b = binary.BigEndian.AppendUint64(nil, uint64(v))
	case Float32:
		b = binary.BigEndian.AppendUint32(nil, math.Float32bits(float32(v)))
	case Float64:
		b = binary.BigEndian.AppendUint64(nil, math.Float64bits(v))
	}
	out := make([]byte, len(b))
	switch o {
	case ABCD:
		copy(out, b)
	case DCBA:
		for i := range b {
			out[i] = b[len(b)-1-i]
		}
	case BADC:
		for i := 0; i < len(b); i += 2 {
			out[i], out[i+1] = b[i+1], b[i]
		}
	case CDAB:
		for i := 0; i < len(b); i += 2 {
			j := len(b) - 2 - i
			out[i], out[i+1] = b[j], b[j+1]
		}
	}
	return out
}

// registers turns wire bytes into register values.
func registers(wire []byte) []uint16 {
	r := make([]uint16, len(wire)/2)
	for i := range r {
		r[i] = binary.BigEndian.Uint16(wire[2*i:])
	}
	return r
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), substr)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func u16(v uint16) *uint16   { return &v }
func f64(v float64) *float64 { return &v }

func itoa(i int) string { return strconv.Itoa(i) }
