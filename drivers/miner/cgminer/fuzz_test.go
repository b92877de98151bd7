package cgminer

import (
	"encoding/json"
	"testing"
)

// The corpus in testdata/fuzz holds real replies (cgminer, bmminer,
// LuxOS, btminer) and the malformations firmware is known for.

// FuzzParse: the parser never panics, anything encoding/json accepts it
// accepts too, and whatever it returns can be walked.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"STATUS":[{"STATUS":"S","When":1,"Code":11,"Msg":"Summary","Description":"cgminer 4.11.1"}],"SUMMARY":[{"GHS 5s":104000.1}],"id":1}`))
	f.Add([]byte(`{"STATS":[{"a":1}{"b":nan}],"x":[,1],"y":{"k":1,},"id":1,}` + "\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		v, _, err := Parse(data)
		if err != nil {
			if json.Valid(data) && depth(data) < maxDepth-2 {
				t.Fatalf("valid JSON refused: %v", err)
			}
			return
		}
		walk(v, 0)
	})
}

// depth is the bracket nesting of a JSON text (strings skipped).
func depth(b []byte) int {
	d, most, inStr := 0, 0, false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case !inStr && (c == '{' || c == '['):
			d++
			most = max(most, d)
		case !inStr && (c == '}' || c == ']'):
			d--
		}
	}
	return most
}

func walk(v Value, d int) {
	if d > maxDepth+1 {
		panic("deeper than the parser allows")
	}
	switch v.Kind {
	case Array:
		for i := 0; i < v.Len(); i++ {
			it, _ := v.Index(i)
			walk(it, d+1)
		}
	case Object:
		for _, k := range v.Keys() {
			m, _ := v.Get(k)
			m.AsFloat()
			m.AsBool()
			m.AsString()
			walk(m, d+1)
		}
	}
}

// FuzzTelemetry: turning any reply into telemetry never panics, and a
// reply it accepts gives finite, non-negative figures.
func FuzzTelemetry(f *testing.F) {
	f.Add([]byte(`{"summary":[{"STATUS":[{"STATUS":"S"}],"SUMMARY":[{"GHS 5s":1000,"Power":3000}]}],"devs":[{"STATUS":[{"STATUS":"S"}],"DEVS":[{"Temperature":70}]}],"stats":[{"STATUS":[{"STATUS":"S"}],"STATS":[{"temp1":60}]}],"pools":[{"STATUS":[{"STATUS":"S"}],"POOLS":[{"Status":"Alive"}]}],"id":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseReply(data)
		if err != nil {
			return
		}
		r.Status()
		parts := map[string]*Reply{}
		for _, c := range pollCommands {
			if p, err := r.Part(c); err == nil {
				parts[c] = p
			}
		}
		tm, err := TelemetryFrom(parts)
		if err != nil {
			return
		}
		for _, v := range []float64{tm.HashrateTHs, tm.PowerW} {
			if v != v || v < 0 || v > 1e18 {
				t.Fatalf("accepted an untrustworthy figure: %+v", tm)
			}
		}
	})
}
