package opcua

import (
	"fmt"
	"math"
	"reflect"
	"strings"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/agent/point"
)

// number reads a variant holding any numeric or boolean scalar. why says
// what the value is when it is not one.
func number(v *ua.Variant) (x float64, why string) {
	if v == nil {
		return 0, "no value"
	}
	switch t := v.Value().(type) {
	case bool:
		if t {
			return 1, ""
		}
		return 0, ""
	case int8:
		return float64(t), ""
	case uint8:
		return float64(t), ""
	case int16:
		return float64(t), ""
	case uint16:
		return float64(t), ""
	case int32:
		return float64(t), ""
	case uint32:
		return float64(t), ""
	case int64:
		return float64(t), ""
	case uint64:
		return float64(t), ""
	case float32:
		return float64(t), ""
	case float64:
		return t, ""
	case nil:
		return 0, "no value"
	}
	if v.Type() != ua.TypeIDByteString && reflect.ValueOf(v.Value()).Kind() == reflect.Slice {
		return 0, fmt.Sprintf("an array of %s, not one number", typeName(v.Type()))
	}
	return 0, fmt.Sprintf("a %s, not a number or a boolean", typeName(v.Type()))
}

func typeName(t ua.TypeID) string {
	return strings.TrimPrefix(t.String(), "TypeID")
}

// sample is one DataValue turned into a point, with what the driver
// needs to compare it with the next one.
type sample struct {
	p      point.Point
	status ua.StatusCode
	src    int64  // unix ns of the time that gives the value its age
	devTs  int64  // unix ns of the source timestamp; 0 when the server sent none
	why    string // a problem worth logging: bad status, wrong type
}

// convert turns a DataValue received at recv into a point: the status
// gives the quality, the source (or server) timestamp the age.
func (s *Source) convert(it *item, dv *ua.DataValue, recv time.Time) sample {
	rn := recv.UnixNano()
	if dv == nil {
		return sample{p: point.Point{Quality: point.Bad, Reason: point.CommError, Source: rn, Recv: rn}, status: ua.StatusBad, src: rn, why: "the server sent no value"}
	}
	code := ua.StatusOK
	if dv.EncodingMask&ua.DataValueStatusCode != 0 {
		code = dv.Status
	}
	src := s.stamp(dv, recv)
	out := sample{status: code, src: src, p: point.Point{Source: src, Recv: rn}}
	if dv.EncodingMask&ua.DataValueSourceTimestamp != 0 && !dv.SourceTimestamp.IsZero() {
		out.devTs = dv.SourceTimestamp.UnixNano()
	}
	q := point.Good
	switch severity(code) {
	case sevUncertain:
		q = point.Uncertain
	case sevBad:
		q = point.Bad
	}
	if q != point.Good && s.accepted(code) {
		q = point.Good
	}
	if q == point.Bad {
		out.p.Quality, out.p.Reason = point.Bad, point.DeviceError
		out.why = "the server says " + statusName(code)
		return out
	}
	x, why := number(dv.Value)
	if why != "" {
		out.p.Quality, out.p.Reason = point.Bad, point.DecodeError
		out.why = "the node holds " + why + "; point it at a numeric or boolean variable"
		return out
	}
	v := x**it.cfg.Scale + it.cfg.Offset
	if math.IsNaN(v) || math.IsInf(v, 0) {
		out.p.Quality, out.p.Reason = point.Bad, point.DecodeError
		out.why = fmt.Sprintf("the value %g is not a finite number", x)
		return out
	}
	out.p.Value, out.p.Quality = v, q
	if q == point.Uncertain {
		out.p.Reason = point.SourceFlagged
	}
	return out
}

// stamp picks the time that gives the value its age, never later than its
// receipt: a server clock running ahead must not make old values look new.
func (s *Source) stamp(dv *ua.DataValue, recv time.Time) int64 {
	var t time.Time
	src := dv.EncodingMask&ua.DataValueSourceTimestamp != 0 && !dv.SourceTimestamp.IsZero()
	srv := dv.EncodingMask&ua.DataValueServerTimestamp != 0 && !dv.ServerTimestamp.IsZero()
	switch {
	case s.cfg.Timestamps == TimestampsServer && srv:
		t = dv.ServerTimestamp
	case src:
		t = dv.SourceTimestamp
	case srv:
		t = dv.ServerTimestamp
	default:
		t = recv
	}
	if t.After(recv) {
		s.clockAhead(t.Sub(recv))
		t = recv
	}
	return t.UnixNano()
}

// accepted reports whether code is on the source's accept_status list.
// The info bits (the low 16) do not matter.
func (s *Source) accepted(code ua.StatusCode) bool {
	for _, a := range s.accept {
		if a&0xFFFF0000 == code&0xFFFF0000 {
			return true
		}
	}
	return false
}
