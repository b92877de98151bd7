package sparkplug

import (
	"fmt"
	"math"
	"time"
)

// Quality of a metric's value, sent as Sparkplug's "Quality" property when
// it is not good.
type Quality uint8

const (
	QualityGood  Quality = iota // the property is left out
	QualityBad                  // Sparkplug code 0
	QualityStale                // Sparkplug code 500
)

// Sparkplug quality codes (the "Quality" property, an Int32).
const (
	codeBad   = 0
	codeGood  = 192
	codeStale = 500
)

// Value is a metric's value: numbers (booleans as 0/1, DateTime as ms since
// the epoch) in Num, strings in Str, Null for "no value".
type Value struct {
	Null    bool
	Num     float64
	Str     string
	Quality Quality
}

// Number, Bool, Text, Time and Null build values.
func Number(v float64) Value {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return Value{Null: true}
	}
	return Value{Num: v}
}

func Bool(b bool) Value {
	if b {
		return Value{Num: 1}
	}
	return Value{}
}

func Text(s string) Value { return Value{Str: s} }

func Time(t time.Time) Value {
	if t.IsZero() {
		return Value{Null: true}
	}
	return Value{Num: float64(t.UnixMilli())}
}

func Null() Value { return Value{Null: true} }

// Def defines one metric.
type Def struct {
	Name string
	Type DataType
}

func isStringType(t DataType) bool {
	return t == DataType_String || t == DataType_Text || t == DataType_UUID
}

// setValue writes v into m as type t.
func setValue(m *Payload_Metric, t DataType, v Value) {
	if v.Null {
		m.IsNull = ptr(true)
	} else {
		switch t {
		case DataType_Int8, DataType_Int16, DataType_Int32:
			m.Value = &Payload_Metric_IntValue{IntValue: uint32(int32(v.Num))}
		case DataType_UInt8, DataType_UInt16, DataType_UInt32:
			m.Value = &Payload_Metric_IntValue{IntValue: uint32(v.Num)}
		case DataType_Int64, DataType_DateTime:
			m.Value = &Payload_Metric_LongValue{LongValue: uint64(int64(v.Num))}
		case DataType_UInt64:
			m.Value = &Payload_Metric_LongValue{LongValue: uint64(v.Num)}
		case DataType_Float:
			m.Value = &Payload_Metric_FloatValue{FloatValue: float32(v.Num)}
		case DataType_Double:
			m.Value = &Payload_Metric_DoubleValue{DoubleValue: v.Num}
		case DataType_Boolean:
			m.Value = &Payload_Metric_BooleanValue{BooleanValue: v.Num != 0}
		default:
			m.Value = &Payload_Metric_StringValue{StringValue: v.Str}
		}
	}
	switch v.Quality {
	case QualityBad:
		m.Properties = qualityProps(codeBad)
	case QualityStale:
		m.Properties = qualityProps(codeStale)
	}
}

func qualityProps(code int32) *Payload_PropertySet {
	return &Payload_PropertySet{
		Keys:   []string{"Quality"},
		Values: []*Payload_PropertyValue{{Type: ptr(uint32(DataType_Int32)), Value: &Payload_PropertyValue_IntValue{IntValue: uint32(code)}}},
	}
}

// ValueOf reads a metric's value as type t (the datatype from its birth
// when the metric itself carries none).
func ValueOf(m *Payload_Metric, t DataType) (Value, error) {
	var v Value
	if m.GetIsNull() {
		v.Null = true
	} else {
		switch x := m.Value.(type) {
		case *Payload_Metric_IntValue:
			switch t {
			case DataType_Int8, DataType_Int16, DataType_Int32:
				v.Num = float64(int32(x.IntValue))
			default:
				v.Num = float64(x.IntValue)
			}
		case *Payload_Metric_LongValue:
			switch t {
			case DataType_Int64, DataType_DateTime:
				v.Num = float64(int64(x.LongValue))
			default:
				v.Num = float64(x.LongValue)
			}
		case *Payload_Metric_FloatValue:
			v.Num = float64(x.FloatValue)
		case *Payload_Metric_DoubleValue:
			v.Num = x.DoubleValue
		case *Payload_Metric_BooleanValue:
			if x.BooleanValue {
				v.Num = 1
			}
		case *Payload_Metric_StringValue:
			v.Str = x.StringValue
		case nil:
			return v, fmt.Errorf("metric %q has no value and is not null", m.GetName())
		default:
			return v, fmt.Errorf("metric %q has a value type (%T) this node does not take", m.GetName(), x)
		}
		if isStringType(t) != isString(m) {
			return v, fmt.Errorf("metric %q: value does not match its datatype %s", m.GetName(), t)
		}
	}
	if ps := m.GetProperties(); ps != nil {
		for i, k := range ps.GetKeys() {
			if k == "Quality" && i < len(ps.GetValues()) {
				switch ps.GetValues()[i].GetIntValue() {
				case codeBad:
					v.Quality = QualityBad
				case codeStale:
					v.Quality = QualityStale
				}
			}
		}
	}
	return v, nil
}

func isString(m *Payload_Metric) bool {
	_, ok := m.Value.(*Payload_Metric_StringValue)
	return ok
}

func ptr[T any](v T) *T { return &v }
