package cgminer

import (
	"errors"
	"strings"
	"testing"
)

// Malformed replies as shipping firmware sends them: each must parse, with
// the repair named, to the value a well-formed reply would give.
func TestParseRepairsWhatFirmwareBends(t *testing.T) {
	cases := []struct {
		name, in, repair string
		check            func(t *testing.T, v Value)
	}{
		{"trailing NULs", `{"a":1}` + "\x00\x00", "trailing NUL", func(t *testing.T, v Value) { wantFloat(t, v, "a", 1) }},
		{"missing comma between objects (bmminer stats)", `{"STATS":[{"a":1}{"b":2}]}`, "missing comma between values", func(t *testing.T, v Value) {
			s, _ := v.Get("STATS")
			if s.Len() != 2 {
				t.Fatalf("want 2 STATS entries, got %d", s.Len())
			}
			b, _ := s.Index(1)
			wantFloat(t, b, "b", 2)
		}},
		{"missing comma between members (btminer)", `{"temp":"x""temp0":3}`, "missing comma between members", func(t *testing.T, v Value) { wantFloat(t, v, "temp0", 3) }},
		{"trailing comma in object (LuxOS reboot)", `{"Board":1,"IsShutdown":false,}`, "trailing comma", func(t *testing.T, v Value) { wantFloat(t, v, "Board", 1) }},
		{"trailing comma in array", `{"a":[1,2,]}`, "trailing comma", func(t *testing.T, v Value) {
			a, _ := v.Get("a")
			if a.Len() != 2 {
				t.Fatalf("len %d", a.Len())
			}
		}},
		{"leading comma in array (bmminer)", `{"a":[,{"x":1}]}`, "leading comma", func(t *testing.T, v Value) {
			a, _ := v.Get("a")
			if a.Len() != 1 {
				t.Fatalf("len %d", a.Len())
			}
		}},
		{"raw newline in a message", "{\"Msg\":\"line1\nline2\"}", "raw control character", func(t *testing.T, v Value) {
			if s, _ := v.Str("Msg"); s != "line1\nline2" {
				t.Fatalf("Msg %q", s)
			}
		}},
		{"bare nan", `{"temp":nan,"ok":2}`, "bare nan", func(t *testing.T, v Value) {
			if _, err := v.Float("temp"); !errors.Is(err, ErrNotANumber) {
				t.Fatalf("nan read as %v, want ErrNotANumber", err)
			}
			wantFloat(t, v, "ok", 2)
		}},
		{"bare -inf", `{"t":-inf}`, "bare inf", func(t *testing.T, v Value) {
			if _, err := v.Float("t"); !errors.Is(err, ErrNotANumber) {
				t.Fatalf("got %v", err)
			}
		}},
		{"duplicate key, same value", `{"Elapsed":5,"Elapsed":5}`, `duplicate key "Elapsed"`, func(t *testing.T, v Value) { wantFloat(t, v, "Elapsed", 5) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, rep, err := Parse([]byte(c.in))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if !containsPrefix(rep, c.repair) {
				t.Fatalf("repairs %q do not name %q", rep, c.repair)
			}
			c.check(t, v)
		})
	}
}

func containsPrefix(list []string, s string) bool {
	for _, l := range list {
		if strings.HasPrefix(l, s) {
			return true
		}
	}
	return false
}

func wantFloat(t *testing.T, v Value, key string, want float64) {
	t.Helper()
	got, err := v.Float(key)
	if err != nil || got != want {
		t.Fatalf("%s = %v, %v; want %v", key, got, err, want)
	}
}

func TestWellFormedNeedsNoRepair(t *testing.T) {
	in := `{"STATUS":[{"STATUS":"S","When":1681332079,"Code":335,"Msg":"Curtailment command sent","Description":"LUXminer 0.1.0"}],"CURTAIL":[{"Action":"sleep mode"}],"id":1}`
	r, err := ParseReply([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Repaired) != 0 {
		t.Fatalf("repairs on well-formed JSON: %q", r.Repaired)
	}
	st, err := r.Check()
	if err != nil || st.Code != 335 || st.Kind != 'S' || st.When != 1681332079 {
		t.Fatalf("status %+v, %v", st, err)
	}
	e, err := r.First("CURTAIL")
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := e.Str("Action"); a != "sleep mode" {
		t.Fatalf("Action %q", a)
	}
}

// What cannot be repaired without guessing is an error, never a value.
func TestParseRefusesWhatWouldNeedAGuess(t *testing.T) {
	for name, in := range map[string]string{
		"truncated object":      `{"STATUS":[{"STATUS":"S","Code":11`,
		"truncated string":      `{"Msg":"Summ`,
		"garbage":               "\x07\xffgarbage",
		"two documents":         `{"a":1}{"b":2}`,
		"empty":                 "",
		"only NULs":             "\x00\x00",
		"unknown escape":        `{"a":"\q"}`,
		"leading zeros":         `{"a":007}`,
		"numbers run together":  `{"a":[1 2]}`,
		"unquoted key":          `{a:1}`,
		"missing value":         `{"a":}`,
		"half a reply and junk": `{"STATUS":[{"STATUS":"S"` + "\x07\xff}{garbage",
		"too deep":              strings.Repeat("[", 100) + strings.Repeat("]", 100),
	} {
		if v, _, err := Parse([]byte(in)); err == nil {
			t.Errorf("%s: parsed to %v, want an error", name, v.Kind)
		}
	}
}

func TestAccessorsRefuseUntrustworthyValues(t *testing.T) {
	v, _, err := Parse([]byte(`{"t":"nan","na":"N/A","s":"3215.5","w":"abc","d":1,"d":2,"i":1.5}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Float("t"); !errors.Is(err, ErrNotANumber) {
		t.Errorf("quoted nan: %v", err)
	}
	if _, err := v.Float("na"); !errors.Is(err, ErrNotANumber) {
		t.Errorf("N/A: %v", err)
	}
	wantFloat(t, v, "s", 3215.5)
	if _, err := v.Float("w"); !errors.Is(err, ErrType) {
		t.Errorf("word: %v", err)
	}
	if _, err := v.Float("d"); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("duplicate with different values: %v", err)
	}
	if _, err := v.Int("i"); !errors.Is(err, ErrType) {
		t.Errorf("fraction as int: %v", err)
	}
	if _, err := v.Float("absent"); !errors.Is(err, ErrMissing) {
		t.Errorf("absent: %v", err)
	}
}

func TestStatusErrorIsReported(t *testing.T) {
	r, err := ParseReply([]byte(`{"STATUS":[{"STATUS":"E","When":1,"Code":14,"Msg":"Invalid command","Description":"cgminer"}],"id":1}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Check()
	var se *StatusError
	if !errors.As(err, &se) || se.Status.Code != 14 {
		t.Fatalf("want a StatusError with code 14, got %v", err)
	}
	if _, err := (&Reply{Value: Value{Kind: Object}}).Status(); err == nil {
		t.Fatal("a reply without STATUS must be an error")
	}
}

func TestMultiCommandParts(t *testing.T) {
	in := `{"summary":[{"STATUS":[{"STATUS":"S","Code":11,"Msg":"Summary"}],"SUMMARY":[{"GHS 5s":104000.5}],"id":1}],"power":[{"STATUS":[{"STATUS":"S","Code":339,"Msg":"Power"}],"POWER":[{"PSU":true,"Watts":3215}],"id":1}],"id":1}`
	r, err := ParseReply([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.Part("summary")
	if err != nil {
		t.Fatal(err)
	}
	e, _ := s.First("SUMMARY")
	ths, err := SummaryHashrate(e)
	if err != nil || ths < 104 || ths > 104.001 {
		t.Fatalf("hashrate %v %v", ths, err)
	}
	if _, err := r.Part("devs"); err == nil {
		t.Fatal("absent part must be an error")
	}
}

func TestMaxTempSkipsFailedSensors(t *testing.T) {
	v, _, err := Parse([]byte(`[{"temp1":55,"temp2_1":71.5,"temp3":0,"temp_num":3,"temp_pcb":255,"temp_chip1":"56-61-60"},{"Temperature":64,"temp9":nan}]`))
	if err != nil {
		t.Fatal(err)
	}
	maxC, ok, err := MaxTemp(v.Items())
	if err != nil || !ok || maxC != 71.5 {
		t.Fatalf("max %v ok %v err %v; want 71.5", maxC, ok, err)
	}
	_, ok, err = MaxTemp(nil)
	if ok || err != nil {
		t.Fatalf("no entries: ok %v err %v", ok, err)
	}
}
