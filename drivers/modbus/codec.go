package modbus

import (
	"fmt"
	"math"

	"github.com/siteagent/siteagent/agent/point"
)

// Type is how a value is laid out in a device's table.
type Type uint8

const (
	Bool Type = iota + 1
	Int16
	Uint16
	Int32
	Uint32
	Int64
	Uint64
	Float32
	Float64
)

var typeNames = [...]string{"", "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"}

// ParseType reads a type name as written in the site file.
func ParseType(s string) (Type, bool) {
	for i := 1; i < len(typeNames); i++ {
		if typeNames[i] == s {
			return Type(i), true
		}
	}
	return 0, false
}

func (t Type) String() string {
	if int(t) > 0 && int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Words is the number of 16-bit registers the type spans (1 for bool).
func (t Type) Words() int {
	switch t {
	case Int32, Uint32, Float32:
		return 2
	case Int64, Uint64, Float64:
		return 4
	}
	return 1
}

func (t Type) isFloat() bool { return t == Float32 || t == Float64 }

// Order is the order of the bytes of a value on the wire, naming the value's
// bytes A (most significant) to D. Values of one register use only the
// byte order (ABCD = CDAB, BADC = DCBA); 64-bit values extend the pattern
// to four words.
type Order uint8

const (
	ABCD Order = iota // big-endian, the Modbus norm
	CDAB              // words swapped, bytes big-endian in each word
	BADC              // bytes swapped in each word, words in order
	DCBA              // little-endian
)

var orderNames = [...]string{"ABCD", "CDAB", "BADC", "DCBA"}

// ParseOrder reads a word/byte order as written in the site file.
func ParseOrder(s string) (Order, bool) {
	for i, n := range orderNames {
		if n == s {
			return Order(i), true
		}
	}
	return 0, false
}

func (o Order) String() string {
	if int(o) < len(orderNames) {
		return orderNames[o]
	}
	return fmt.Sprintf("order(%d)", uint8(o))
}

func (o Order) swapsBytes() bool { return o == BADC || o == DCBA }
func (o Order) swapsWords() bool { return o == CDAB || o == DCBA }

// rawBits assembles the n registers in wire (bytes as sent, each register
// big-endian) into one integer whose most significant byte is A.
func rawBits(wire []byte, n int, o Order) uint64 {
	_ = wire[2*n-1]
	var v uint64
	for i := 0; i < n; i++ {
		w := uint64(wire[2*i])<<8 | uint64(wire[2*i+1])
		if o.swapsBytes() {
			w = w>>8 | (w&0xff)<<8
		}
		if o.swapsWords() {
			v |= w << (16 * i)
		} else {
			v = v<<16 | w
		}
	}
	return v
}

// putBits is the inverse of rawBits.
func putBits(wire []byte, n int, o Order, v uint64) {
	_ = wire[2*n-1]
	for i := 0; i < n; i++ {
		shift := 16 * (n - 1 - i)
		if o.swapsWords() {
			shift = 16 * i
		}
		w := v >> shift & 0xffff
		if o.swapsBytes() {
			w = w>>8 | (w&0xff)<<8
		}
		wire[2*i], wire[2*i+1] = byte(w>>8), byte(w)
	}
}

// valueOf interprets raw bits as a value of type t.
func valueOf(bits uint64, t Type) float64 {
	switch t {
	case Bool:
		if bits != 0 {
			return 1
		}
		return 0
	case Int16:
		return float64(int16(bits))
	case Uint16:
		return float64(uint16(bits))
	case Int32:
		return float64(int32(bits))
	case Uint32:
		return float64(uint32(bits))
	case Int64:
		return float64(int64(bits))
	case Uint64:
		return float64(bits)
	case Float32:
		return float64(math.Float32frombits(uint32(bits)))
	case Float64:
		return math.Float64frombits(bits)
	}
	return math.NaN()
}

// Decode reads a value of type t in order o from the first 2*t.Words()
// bytes of wire, the registers as they came off the wire.
func Decode(wire []byte, t Type, o Order) float64 {
	n := t.Words()
	return valueOf(rawBits(wire[:2*n], n, o), t)
}

// Encode writes v as type t in order o into the first 2*t.Words() bytes of
// wire. Integer types take v rounded to the nearest integer and refuse
// values they cannot hold; float types refuse NaN.
func Encode(wire []byte, t Type, o Order, v float64) error {
	bits, err := bitsOf(v, t)
	if err != nil {
		return err
	}
	n := t.Words()
	putBits(wire[:2*n], n, o, bits)
	return nil
}

// bitsOf is the inverse of valueOf.
func bitsOf(v float64, t Type) (uint64, error) {
	if math.IsNaN(v) {
		return 0, fmt.Errorf("NaN cannot be written as %s", t)
	}
	if t == Float32 {
		if math.Abs(v) > math.MaxFloat32 && !math.IsInf(v, 0) {
			return 0, fmt.Errorf("%g is out of the float32 range", v)
		}
		return uint64(math.Float32bits(float32(v))), nil
	}
	if t == Float64 {
		return math.Float64bits(v), nil
	}
	r := math.Round(v)
	var lo, hi float64
	switch t {
	case Bool, Uint16:
		lo, hi = 0, math.MaxUint16
	case Int16:
		lo, hi = math.MinInt16, math.MaxInt16
	case Uint32:
		lo, hi = 0, math.MaxUint32
	case Int32:
		lo, hi = math.MinInt32, math.MaxInt32
	case Uint64:
		lo, hi = 0, 1<<64 // exclusive bound below
	case Int64:
		lo, hi = math.MinInt64, 1<<63
	default:
		return 0, fmt.Errorf("unknown type %s", t)
	}
	if r < lo || r > hi || ((t == Uint64 || t == Int64) && r == hi) {
		return 0, fmt.Errorf("%g is out of the %s range", v, t)
	}
	switch t {
	case Uint64:
		return uint64(r), nil
	case Bool:
		if r != 0 {
			return 1, nil
		}
		return 0, nil
	}
	return uint64(int64(r)) & (1<<(16*t.Words()) - 1), nil
}

// field is one point's compiled decode recipe inside a read request.
type field struct {
	id    point.ID
	addr  uint16 // first register or bit
	off   int    // registers (or bits) from the start of its request
	typ   Type
	order Order
	scale float64
	shift float64 // the configured offset
	// invalid: the raw value that means "no reading"; integer types compare
	// the raw bits (so 0x8000 matches an int16 -32768), floats the value.
	hasInvalid  bool
	invalidBits uint64
	invalidVal  float64
}

// size is how many registers (or bits) the point spans.
func (f *field) size() int { return f.typ.Words() }

// fromRegisters decodes the point from its request's response bytes. It
// never allocates: it runs for every point on every poll.
func (f *field) fromRegisters(wire []byte) (float64, point.Reason) {
	n := f.typ.Words()
	bits := rawBits(wire[2*f.off:2*(f.off+n)], n, f.order)
	v := valueOf(bits, f.typ)
	if f.hasInvalid {
		if f.typ.isFloat() {
			if v == f.invalidVal {
				return 0, point.InvalidMarker
			}
		} else if bits == f.invalidBits {
			return 0, point.InvalidMarker
		}
	}
	return f.scaled(v)
}

// fromBit decodes a coil or discrete input.
func (f *field) fromBit(on bool) (float64, point.Reason) {
	v := 0.0
	if on {
		v = 1
	}
	return f.scaled(v)
}

func (f *field) scaled(v float64) (float64, point.Reason) {
	v = v*f.scale + f.shift
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, point.DecodeError
	}
	return v, point.OK
}

// markerBits turns a configured invalid marker into the raw bits of an
// integer type: negative markers are two's complement, so -1 and 65535 both
// mean 0xFFFF for a 16-bit register. ok is false when the marker is not an
// integer the type's width can hold.
func markerBits(m float64, t Type) (uint64, bool) {
	width := 16 * t.Words()
	if m != math.Trunc(m) || math.IsInf(m, 0) {
		return 0, false
	}
	lo, hi := -math.Ldexp(1, width-1), math.Ldexp(1, width)
	if m < lo || m >= hi {
		return 0, false
	}
	if m < 0 {
		return uint64(int64(m)) & (1<<width - 1), true
	}
	if width == 64 {
		return uint64(m), true
	}
	return uint64(m) & (1<<width - 1), true
}
