package modbus

import (
	"bytes"
	"math"
	"testing"

	"github.com/siteagent/siteagent/agent/point"
)

// sample values whose bytes all differ, so that any order mistake shows.
var samples = []struct {
	typ Type
	v   float64
}{
	{Int16, -12345},
	{Uint16, 0x1234},
	{Int32, -123456789},
	{Uint32, 0xF1E2D3C4},
	{Int64, -1234567890123456},
	{Uint64, 0x0123456789ABCDEF &^ 0x3ff}, // exactly representable in a float64
	{Float32, -1234.5625},
	{Float64, 3.14159265358979},
}

var orders = []Order{ABCD, CDAB, BADC, DCBA}

func TestDecodeEncodeEveryTypeAndOrder(t *testing.T) {
	for _, s := range samples {
		for _, o := range orders {
			wire := wireOf(s.typ, o, s.v)
			if got := Decode(wire, s.typ, o); got != s.v {
				t.Errorf("Decode %s %s of % x = %v, want %v", s.typ, o, wire, got, s.v)
			}
			enc := make([]byte, 2*s.typ.Words())
			if err := Encode(enc, s.typ, o, s.v); err != nil {
				t.Fatalf("Encode %s %s %v: %v", s.typ, o, s.v, err)
			}
			if !bytes.Equal(enc, wire) {
				t.Errorf("Encode %s %s %v = % x, want % x", s.typ, o, s.v, enc, wire)
			}
		}
	}
}

func TestOrdersDiffer(t *testing.T) {
	// The four orders of a 32-bit value must give four different wires;
	// a codec that ignores the order would pass the round trip above.
	seen := map[string]Order{}
	for _, o := range orders {
		w := make([]byte, 4)
		if err := Encode(w, Uint32, o, 0x11223344); err != nil {
			t.Fatal(err)
		}
		if prev, dup := seen[string(w)]; dup {
			t.Fatalf("%s and %s encode alike: % x", prev, o, w)
		}
		seen[string(w)] = o
	}
	w := make([]byte, 4)
	_ = Encode(w, Uint32, CDAB, 0x11223344)
	if !bytes.Equal(w, []byte{0x33, 0x44, 0x11, 0x22}) {
		t.Fatalf("CDAB of 0x11223344 = % x, want 33 44 11 22", w)
	}
}

func TestEncodeRefusesWhatTheTypeCannotHold(t *testing.T) {
	for _, c := range []struct {
		typ Type
		v   float64
	}{
		{Uint16, 65536}, {Uint16, -1}, {Int16, 32768}, {Int16, -32769},
		{Uint32, -0.6}, {Int32, 1 << 31}, {Uint64, 1 << 64}, {Int64, 1 << 63},
		{Float32, 1e39}, {Float64, math.NaN()}, {Uint16, math.NaN()},
	} {
		if err := Encode(make([]byte, 8), c.typ, ABCD, c.v); err == nil {
			t.Errorf("Encode(%s, %g) succeeded, want an error", c.typ, c.v)
		}
	}
	w := make([]byte, 2)
	if err := Encode(w, Int16, ABCD, -2.6); err != nil || Decode(w, Int16, ABCD) != -3 {
		t.Errorf("Encode(int16, -2.6) rounds to %v (%v), want -3", Decode(w, Int16, ABCD), err)
	}
}

func TestMarkerBits(t *testing.T) {
	for _, c := range []struct {
		m    float64
		typ  Type
		bits uint64
		ok   bool
	}{
		{0x8000, Int16, 0x8000, true},
		{-32768, Int16, 0x8000, true},
		{-1, Uint16, 0xFFFF, true},
		{65535, Uint16, 0xFFFF, true},
		{65536, Uint16, 0, false},
		{-32769, Uint16, 0, false},
		{1.5, Int32, 0, false},
		{-1, Int64, math.MaxUint64, true},
		{0x7FFFFFFF, Int32, 0x7FFFFFFF, true},
	} {
		bits, ok := markerBits(c.m, c.typ)
		if ok != c.ok || (ok && bits != c.bits) {
			t.Errorf("markerBits(%g, %s) = %#x, %v; want %#x, %v", c.m, c.typ, bits, ok, c.bits, c.ok)
		}
	}
}

func TestFieldScalesAndMarksBad(t *testing.T) {
	f := field{typ: Int16, scale: 0.1, shift: -5, hasInvalid: true}
	f.invalidBits, _ = markerBits(0x8000, Int16)
	if v, why := f.fromRegisters(wireOf(Int16, ABCD, 1234)); why != point.OK || math.Abs(v-118.4) > 1e-9 {
		t.Errorf("1234*0.1-5 = %v (%v), want 118.4", v, why)
	}
	if _, why := f.fromRegisters(wireOf(Int16, ABCD, -32768)); why != point.InvalidMarker {
		t.Errorf("raw 0x8000 with marker 0x8000: %v, want invalid marker", why)
	}
	g := field{typ: Float32, order: CDAB, scale: 1, hasInvalid: true, invalidVal: -9999}
	if _, why := g.fromRegisters(wireOf(Float32, CDAB, -9999)); why != point.InvalidMarker {
		t.Errorf("float marker: %v, want invalid marker", why)
	}
	for _, v := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if _, why := g.fromRegisters(wireOf(Float32, CDAB, v)); why != point.DecodeError {
			t.Errorf("float32 %v: %v, want decode error", v, why)
		}
	}
	huge := field{typ: Float64, scale: 1e300}
	if _, why := huge.fromRegisters(wireOf(Float64, ABCD, 1e300)); why != point.DecodeError {
		t.Errorf("scaling to +Inf: %v, want decode error", why)
	}
}

func TestDecodeAllocatesNothing(t *testing.T) {
	wire := wireOf(Float64, DCBA, 1.5)
	f := field{typ: Float64, order: DCBA, scale: 2, hasInvalid: true, invalidVal: -1}
	var sink float64
	if n := testing.AllocsPerRun(1000, func() {
		v, _ := f.fromRegisters(wire)
		sink += v
	}); n != 0 {
		t.Fatalf("fromRegisters allocates %v times per call, want 0", n)
	}
	if sink == 0 {
		t.Fatal("decoded nothing")
	}
}

// FuzzDecode checks that any bytes decode without a panic, that raw bits
// survive a round trip in every order, and that only finite values pass.
// Its seed corpus is in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Add([]byte{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0}, uint8(Float32), uint8(CDAB), 0.1)
	f.Fuzz(func(t *testing.T, wire []byte, typ, ord uint8, scale float64) {
		tp := Type(typ%9 + 1)
		o := Order(ord % 4)
		n := tp.Words()
		if len(wire) < 2*n {
			return
		}
		bits := rawBits(wire, n, o)
		back := make([]byte, 2*n)
		putBits(back, n, o, bits)
		if !bytes.Equal(back, wire[:2*n]) {
			t.Fatalf("%s %s: % x -> %#x -> % x", tp, o, wire[:2*n], bits, back)
		}
		v := Decode(wire, tp, o)
		if tp != Bool && tp != Int64 && tp != Uint64 && !math.IsNaN(v) {
			// Exact types: encoding the decoded value gives the same bytes.
			enc := make([]byte, 2*n)
			if err := Encode(enc, tp, o, v); err != nil || !bytes.Equal(enc, wire[:2*n]) {
				t.Fatalf("%s %s: % x decodes to %v, encodes to % x (%v)", tp, o, wire[:2*n], v, enc, err)
			}
		}
		fd := field{typ: tp, order: o, scale: scale, hasInvalid: !tp.isFloat(), invalidBits: bits}
		got, why := fd.fromRegisters(wire)
		switch {
		case tp.isFloat() && why == point.InvalidMarker:
			t.Fatalf("float marker unset but reported")
		case !tp.isFloat() && why != point.InvalidMarker:
			t.Fatalf("%s: raw bits equal to the marker gave %v", tp, why)
		case why == point.OK && (math.IsNaN(got) || math.IsInf(got, 0)):
			t.Fatalf("%s %s: %v passed as good", tp, o, got)
		case why == point.DecodeError && !math.IsNaN(v*scale) && !math.IsInf(v*scale, 0):
			t.Fatalf("%s %s: finite %v*%v marked as a decode error", tp, o, v, scale)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	// One poll's worth of the benchmark's point mix: uint16, float32 CDAB,
	// int32 with a marker.
	wire := make([]byte, 2*125)
	fields := []field{
		{typ: Uint16, scale: 0.1},
		{off: 1, typ: Float32, order: CDAB, scale: 1},
		{off: 3, typ: Int32, scale: 1, hasInvalid: true, invalidBits: 0x80000000},
	}
	b.ReportAllocs()
	var sink float64
	for b.Loop() {
		for i := range fields {
			v, _ := fields[i].fromRegisters(wire)
			sink += v
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(fields)), "ns/point")
	_ = sink
}
