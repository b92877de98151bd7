package config

import (
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The structs below mirror the shapes of agent/siteconfig.go and
// drivers/modbus/config.go (those packages import this one, so the tests
// keep their own copies).

type testMeta struct {
	Unit         string        `toml:"unit"`
	StaleAfter   time.Duration `toml:"stale_after"`
	Min          *float64      `toml:"min"`
	Max          *float64      `toml:"max"`
	TriggerBelow *float64      `toml:"trigger_below"`
}

type testPoint struct {
	Name    string   `toml:"name,required"`
	Table   string   `toml:"table,required"`
	Address *uint16  `toml:"address,required"`
	Type    string   `toml:"type"`
	Scale   *float64 `toml:"scale"`
	Offset  float64  `toml:"offset"`
	testMeta
}

type testEndpoint struct {
	Name         string        `toml:"name,required"`
	URL          string        `toml:"url,required"`
	UnitID       *uint8        `toml:"unit_id"`
	PollPeriod   time.Duration `toml:"poll_period"`
	Timeout      time.Duration `toml:"timeout"`
	MaxRegisters int           `toml:"max_registers"`
	Points       []testPoint   `toml:"points"`
}

type testInputs struct {
	FrequencyHz           string   `toml:"frequency_hz,required"`
	BreakerClosed         string   `toml:"breaker_closed,required"`
	ImportKW              string   `toml:"import_kw,required"`
	GenerationAvailableKW []string `toml:"generation_available_kw"`
}

type testSiteSection struct {
	ID          string        `toml:"id,required"`
	Description string        `toml:"description"`
	CyclePeriod time.Duration `toml:"cycle_period"`
	Inputs      testInputs    `toml:"inputs,required"`
}

type testLimits struct {
	ImportLimitKW  float64  `toml:"import_limit_kw,required"`
	MarginKW       float64  `toml:"margin_kw"`
	FailsafeLoadKW float64  `toml:"failsafe_load_kw,required"`
	IntegralGain   *float64 `toml:"integral_gain"`
}

type testActuator struct {
	Endpoint string  `toml:"endpoint,required"`
	Table    string  `toml:"table,required"`
	Address  *uint16 `toml:"address,required"`
	OnValue  *uint16 `toml:"on_value"`
	ReadBack *bool   `toml:"read_back"`
}

type testGroup struct {
	Name           string        `toml:"name,required"`
	Kind           string        `toml:"kind,required"`
	CutOrder       int           `toml:"cut_order,required"`
	Units          int           `toml:"units,required"`
	UnitKW         float64       `toml:"unit_kw,required"`
	FloorKW        float64       `toml:"floor_kw"`
	CeilingKW      *float64      `toml:"ceiling_kw"`
	RestoreHoldoff time.Duration `toml:"restore_holdoff"`
	Modbus         *testActuator `toml:"modbus"`
}

type testAction struct {
	Group  string   `toml:"group,required"`
	CapPct *float64 `toml:"cap_pct"`
	CapKW  *float64 `toml:"cap_kw"`
}

type testStage struct {
	Name         string        `toml:"name,required"`
	BelowHz      float64       `toml:"below_hz,required"`
	Delay        time.Duration `toml:"delay"`
	ClearAboveHz float64       `toml:"clear_above_hz,required"`
	Actions      []testAction  `toml:"actions,required"`
}

type testHTTP struct {
	Listen string `toml:"listen,required"`
}

type testSite struct {
	Site   testSiteSection `toml:"site,required"`
	Limits testLimits      `toml:"limits,required"`
	HTTP   *testHTTP       `toml:"http"`
	Modbus []testEndpoint  `toml:"modbus"`
	Groups []testGroup     `toml:"groups"`
	Stages []testStage     `toml:"stages"`
}

// validSite is a complete, correct site file. Line numbers matter to the
// tests below.
const validSite = `# Demo campus
[site]
id = "campus-1"
description = "ASIC hall + GPU pod"
cycle_period = "250ms"
inputs.frequency_hz = "pcc.frequency_hz"
inputs.breaker_closed = "pcc.breaker"
inputs.import_kw = "pcc.import_kw"
inputs.generation_available_kw = [
  "gen1.available_kw",
  "gen2.available_kw",
]

[limits]
import_limit_kw = 5000
failsafe_load_kw = 1200.5
integral_gain = 0.0

[[modbus]]
name = "pcc"
url = "tcp://10.0.0.10:502"
unit_id = 0x01
poll_period = "100ms"

[[modbus.points]]
name = "frequency_hz"
table = "input"
address = 0
type = "float32"
unit = "Hz"
min = 45
max = 65.0
trigger_below = 59.7
stale_after = "1.5s"

[[modbus.points]]
name = "breaker"
table = "discrete"
address = 1_000

[[groups]]
name = "asic"
kind = "shed"
cut_order = 1
units = 400
unit_kw = 3.25
restore_holdoff = "5m"
modbus = { endpoint = "pcc", table = "coil", address = 100, read_back = false }

[[groups]]
name = "gpu"
kind = "throttle"
cut_order = 2
units = 8
unit_kw = 10.2
floor_kw = 20
ceiling_kw = 80

[groups.modbus]
endpoint = "pcc"
table = "holding"
address = 40

[[stages]]
name = "uf1"
below_hz = 59.5
delay = "200ms"
clear_above_hz = 59.8
actions = [{ group = "asic", cap_pct = 0 }, { group = "gpu", cap_kw = 40 }]

[http]
listen = "127.0.0.1:8080"
`

func ptr[T any](v T) *T { return &v }

func TestDecodeValidSite(t *testing.T) {
	var got testSite
	p := Decode("site.toml", []byte(validSite), &got)
	if err := p.Err(); err != nil {
		t.Fatalf("valid file refused:\n%v", err)
	}
	want := testSite{
		Site: testSiteSection{
			ID: "campus-1", Description: "ASIC hall + GPU pod", CyclePeriod: 250 * time.Millisecond,
			Inputs: testInputs{
				FrequencyHz: "pcc.frequency_hz", BreakerClosed: "pcc.breaker", ImportKW: "pcc.import_kw",
				GenerationAvailableKW: []string{"gen1.available_kw", "gen2.available_kw"},
			},
		},
		Limits: testLimits{ImportLimitKW: 5000, FailsafeLoadKW: 1200.5, IntegralGain: ptr(0.0)},
		HTTP:   &testHTTP{Listen: "127.0.0.1:8080"},
		Modbus: []testEndpoint{{
			Name: "pcc", URL: "tcp://10.0.0.10:502", UnitID: ptr(uint8(1)), PollPeriod: 100 * time.Millisecond,
			Points: []testPoint{
				{Name: "frequency_hz", Table: "input", Address: ptr(uint16(0)), Type: "float32",
					testMeta: testMeta{Unit: "Hz", Min: ptr(45.0), Max: ptr(65.0), TriggerBelow: ptr(59.7), StaleAfter: 1500 * time.Millisecond}},
				{Name: "breaker", Table: "discrete", Address: ptr(uint16(1000))},
			},
		}},
		Groups: []testGroup{
			{Name: "asic", Kind: "shed", CutOrder: 1, Units: 400, UnitKW: 3.25, RestoreHoldoff: 5 * time.Minute,
				Modbus: &testActuator{Endpoint: "pcc", Table: "coil", Address: ptr(uint16(100)), ReadBack: ptr(false)}},
			{Name: "gpu", Kind: "throttle", CutOrder: 2, Units: 8, UnitKW: 10.2, FloorKW: 20, CeilingKW: ptr(80.0),
				Modbus: &testActuator{Endpoint: "pcc", Table: "holding", Address: ptr(uint16(40))}},
		},
		Stages: []testStage{{
			Name: "uf1", BelowHz: 59.5, Delay: 200 * time.Millisecond, ClearAboveHz: 59.8,
			Actions: []testAction{{Group: "asic", CapPct: ptr(0.0)}, {Group: "gpu", CapKW: ptr(40.0)}},
		}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
	}

	// Lines for the owners' own checks, including keys inside dotted keys,
	// arrays, inline tables and array-of-tables elements.
	lines := map[string]int{
		"site":                                   2,
		"site.inputs":                            6,
		"site.inputs.import_kw":                  8,
		"site.inputs.generation_available_kw":    9,
		"site.inputs.generation_available_kw[1]": 11,
		"limits.integral_gain":                   17,
		"modbus":                                 19,
		"modbus[0]":                              19,
		"modbus[0].unit_id":                      22,
		"modbus[0].points":                       25,
		"modbus[0].points[1]":                    36,
		"modbus[0].points[0].stale_after":        34,
		"modbus[0].points[1].address":            39,
		"groups[0].modbus":                       48,
		"groups[0].modbus.read_back":             48,
		"groups[1]":                              50,
		"groups[1].floor_kw":                     56,
		"groups[1].modbus":                       59,
		"groups[1].modbus.address":               62,
		"stages[0].actions":                      69,
		"stages[0].actions[1].cap_kw":            69,
		"http.listen":                            72,
	}
	for key, line := range lines {
		if got := p.Line(key); got != line {
			t.Errorf("Line(%q) = %d, want %d", key, got, line)
		}
	}
	// Absent keys fall back to their table; Has tells them apart.
	if got := p.Line("groups[1].restore_holdoff"); got != 50 {
		t.Errorf("Line of absent key = %d, want its table's line 50", got)
	}
	if p.Has("groups[1].restore_holdoff") || !p.Has("groups[0].restore_holdoff") {
		t.Errorf("Has does not tell written keys from absent ones")
	}
}

// TestDecodeLineMap checks that the line map holds exactly the key paths of
// the file, in every form a key can take.
func TestDecodeLineMap(t *testing.T) {
	src := "a.b = 1\n" +
		"c = [ { d = 1 },\n  { e.f = 2 } ]\n" +
		"[t.u]\n" +
		"[[arr]]\n" +
		"[arr.sub]\n" +
		"g = [[1], [2]]\n" +
		"[[arr]]\n" +
		"\"odd key\" = true\n"
	var v struct{}
	p := Decode("x.toml", []byte(src), &v)
	want := map[string]int{
		"a": 1, "a.b": 1,
		"c": 2, "c[0]": 2, "c[0].d": 2, "c[1]": 3, "c[1].e": 3, "c[1].e.f": 3,
		"t": 4, "t.u": 4,
		"arr": 5, "arr[0]": 5, "arr[0].sub": 6, "arr[0].sub.g": 7,
		"arr[0].sub.g[0]": 7, "arr[0].sub.g[1]": 7, "arr[0].sub.g[0][0]": 7, "arr[0].sub.g[1][0]": 7,
		"arr[1]": 8, `arr[1]."odd key"`: 9,
	}
	if !reflect.DeepEqual(p.lines, want) {
		t.Errorf("line map\n%v\nwant\n%v", p.lines, want)
	}
}

func TestDecodePointerPresence(t *testing.T) {
	type cfg struct {
		Scale   *float64  `toml:"scale"`
		Offset  *float64  `toml:"offset"`
		Enabled *bool     `toml:"enabled"`
		Unit    *uint8    `toml:"unit"`
		Name    *string   `toml:"name"`
		HTTP    *testHTTP `toml:"http"`
	}
	var c cfg
	if err := Decode("x.toml", []byte("offset = 0\nenabled = false\nname = \"\"\n"), &c).Err(); err != nil {
		t.Fatal(err)
	}
	if c.Scale != nil || c.Unit != nil || c.HTTP != nil {
		t.Errorf("absent keys were allocated: %+v", c)
	}
	if c.Offset == nil || *c.Offset != 0 || c.Enabled == nil || *c.Enabled || c.Name == nil || *c.Name != "" {
		t.Errorf("zero values written in the file were lost: %+v", c)
	}
}

func TestDecodeValues(t *testing.T) {
	type kinds struct {
		I8    int8            `toml:"i8"`
		U16   uint16          `toml:"u16"`
		I64   int64           `toml:"i64"`
		F32   float32         `toml:"f32"`
		F64   float64         `toml:"f64"`
		D     time.Duration   `toml:"d"`
		Ds    []time.Duration `toml:"ds"`
		Nums  [][]int         `toml:"nums"`
		Plain string          // untagged: keyed by its lower-cased name
		Skip  string          `toml:"-"`
	}
	src := `i8 = -128
u16 = 0xFFFF
i64 = -9_223_372_036_854_775_808
f32 = 7
f64 = -inf
d = "1h2m3.5s"
ds = ["0s", "-1ms"]
nums = [[1, 2], [], [0o17, 0b11]]
plain = 'literal \n string'
`
	var got kinds
	if err := Decode("x.toml", []byte(src), &got).Err(); err != nil {
		t.Fatal(err)
	}
	want := kinds{I8: -128, U16: 65535, I64: math.MinInt64, F32: 7, F64: math.Inf(-1),
		D: time.Hour + 2*time.Minute + 3500*time.Millisecond, Ds: []time.Duration{0, -time.Millisecond},
		Nums: [][]int{{1, 2}, {}, {15, 3}}, Plain: `literal \n string`}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	var skipped kinds
	p := Decode("x.toml", []byte("skip = \"x\"\n"), &skipped)
	if p.Len() != 1 || !strings.Contains(p.List()[0].Msg, "unknown key") {
		t.Errorf("a `toml:\"-\"` field must not be settable; got %v", p.Err())
	}
}

// TestDecodeEmbedded: keys of an embedded struct belong to the same table;
// an outer field of the same name wins, as in Go.
func TestDecodeEmbedded(t *testing.T) {
	type Common struct {
		Unit string `toml:"unit"`
		Name string `toml:"name"`
	}
	type outer struct {
		Name string `toml:"name,required"`
		Common
	}
	var got outer
	if err := Decode("x.toml", []byte("name = \"f\"\nunit = \"Hz\"\n"), &got).Err(); err != nil {
		t.Fatal(err)
	}
	if got.Name != "f" || got.Unit != "Hz" || got.Common.Name != "" {
		t.Errorf("got %+v", got)
	}
}

type wantProblem struct {
	line int
	key  string
	msg  string // exact message when it starts with "=", else a substring
}

func checkProblems(t *testing.T, p *Problems, want []wantProblem) {
	t.Helper()
	got := p.List()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		w, g := want[i], got[i]
		matches := strings.Contains(g.Msg, w.msg)
		if exact, isExact := strings.CutPrefix(w.msg, "="); isExact {
			matches = g.Msg == exact
		}
		ok = g.File == "site.toml" && g.Line == w.line && g.Key == w.key && matches
	}
	if !ok {
		var b strings.Builder
		for _, g := range got {
			fmt.Fprintf(&b, "\n  %s", g)
		}
		t.Errorf("got %d problems:%s\nwant %d: %+v", len(got), b.String(), len(want), want)
	}
}

// minimal is the required part of a site file; cases append to it.
const minimal = `[site]
id = "s"
inputs = { frequency_hz = "a.f", breaker_closed = "a.b", import_kw = "a.i" }
[limits]
import_limit_kw = 100
failsafe_load_kw = 10
`

func TestDecodeProblems(t *testing.T) {
	cases := []struct {
		name string
		src  string
		want []wantProblem
	}{
		{"syntax error stops with its line", minimal + "[[modbus]]\nname = \"pcc\"\nurl = tcp://10.0.0.1:502\nbogus = 1\n",
			[]wantProblem{{9, "", "not valid TOML at column 7"}}},
		{"unquoted text gets a hint", minimal + "[http]\nlisten = localhost\n",
			[]wantProblem{{8, "", "text values need double quotes"}}},
		{"missing value", "a =\n", []wantProblem{{1, "", "write a value after ="}}},
		{"CRLF line endings", strings.ReplaceAll(minimal+"[http]\nlisten = 8080\n", "\n", "\r\n"),
			[]wantProblem{{8, "http.listen", "=expected a string, got integer 8080; put the value in double quotes"}}},
		{"duplicate key", minimal + "margin_kw = 1\nmargin_kw = 2\n",
			[]wantProblem{{8, "limits.margin_kw", "=set twice (first at line 7); keep only one"}}},
		{"duplicate key in inline table", minimal + "[[stages]]\nname = \"u\"\nbelow_hz = 59\nclear_above_hz = 60\nactions = [{ group = \"a\", group = \"b\" }]\n",
			[]wantProblem{{11, "stages[0].actions[0].group", "set twice (first at line 11)"}}},
		{"duplicate table", minimal + "[http]\nlisten = \":80\"\n[limits]\nmargin_kw = 1\n",
			[]wantProblem{{9, "limits", "=table [limits] is defined twice (first at line 4); merge the two sections into one"}}},
		{"header over dotted keys", minimal + "[site.inputs]\n",
			[]wantProblem{{7, "site.inputs", "already set to a value at line 3"}}},
		{"header over a dotted table", "site.id = \"s\"\n[site]\n",
			[]wantProblem{{0, "limits", "required table [limits] is missing"},
				{1, "site.inputs", "required table [site.inputs] is missing"},
				{2, "site", "was already filled with dotted keys at line 1"}}},
		{"dotted key into a header table", "[site.inputs]\nfrequency_hz = \"f\"\nbreaker_closed = \"b\"\nimport_kw = \"i\"\n[site]\nid = \"s\"\ninputs.extra = 1\n" + minimal[strings.Index(minimal, "[limits]"):],
			[]wantProblem{{7, "site.inputs.extra", "=site.inputs is already defined at line 1; a dotted key cannot add to it, so write this key in that table instead"}}},
		{"single table where a list is wanted", minimal + "[modbus]\nname = \"pcc\"\n",
			[]wantProblem{{7, "modbus", "=expected an array of tables [[modbus]], got a table; write [[modbus]] with double brackets, once for each entry"}}},
		{"list where a single table is wanted", "[site]\nid = \"s\"\ninputs = { frequency_hz = \"f\", breaker_closed = \"b\", import_kw = \"i\" }\n[[limits]]\nimport_limit_kw = 1\n",
			[]wantProblem{{4, "limits", "=expected a table, got an array; write [limits] with single brackets, once"}}},
		{"[x] then [[x]]", minimal + "[http]\nlisten = \":1\"\n[[http]]\n",
			[]wantProblem{{9, "http", "use either [http] once or [[http]] for each entry"}}},
		{"misspelt key gets a suggestion", minimal + "[[modbus]]\nname = \"pcc\"\nurl = \"tcp://a:502\"\npol_period = \"1s\"\n",
			[]wantProblem{{10, "modbus[0].pol_period", `=unknown key; did you mean "poll_period"?`}}},
		{"misspelt key of an embedded struct", minimal + "[[modbus]]\nname = \"pcc\"\nurl = \"tcp://a:502\"\n[[modbus.points]]\nname = \"f\"\ntable = \"input\"\naddress = 1\nstale_aftr = \"1s\"\n",
			[]wantProblem{{14, "modbus[0].points[0].stale_aftr", `did you mean "stale_after"?`}}},
		{"unknown key lists the valid ones", minimal + "[http]\nlisten = \":1\"\nport = 80\n",
			[]wantProblem{{9, "http.port", "=unknown key; the keys allowed here are: listen"}}},
		{"unknown table", minimal + "[mqtt]\nbroker = \"x\"\n",
			[]wantProblem{{7, "mqtt", "unknown key; the keys allowed here are: site, limits, http, modbus, groups, stages"}}},
		{"quoted unknown key", minimal + "\"http.listen\" = 1\n",
			[]wantProblem{{7, `limits."http.listen"`, "unknown key"}}},
		{"duration as a bare number", minimal + "[[stages]]\nname = \"u\"\nbelow_hz = 59\nclear_above_hz = 60\ndelay = 5\nactions = []\n",
			[]wantProblem{{11, "stages[0].delay", `=expected a duration string such as "250ms", got integer 5; write the unit, e.g. "5s" or "5ms"`}}},
		{"invalid duration string", "[site]\ncycle_period = \"5 seconds\"\n" + minimal[7:],
			[]wantProblem{{2, "site.cycle_period", `"5 seconds" is not a duration; write a number with a unit`}}},
		{"duration without unit", "[site]\ncycle_period = \"250\"\n" + minimal[7:],
			[]wantProblem{{2, "site.cycle_period", `"250" is not a duration`}}},
		{"number in quotes", "[limits]\nimport_limit_kw = \"7\"\nfailsafe_load_kw = \"ten\"\n[site]\nid = \"s\"\ninputs = { frequency_hz = \"f\", breaker_closed = \"b\", import_kw = \"i\" }\n",
			[]wantProblem{{2, "limits.import_limit_kw", `=expected a number, got string "7"; remove the quotes`},
				{3, "limits.failsafe_load_kw", `=expected a number, got string "ten"`}}},
		{"whole number wanted", minimal + "[[groups]]\nname = \"g\"\nkind = \"shed\"\ncut_order = 1.5\nunits = \"4\"\nunit_kw = 1\n",
			[]wantProblem{{10, "groups[0].cut_order", "expected a whole number, got decimal number 1.5; write a whole number"},
				{11, "groups[0].units", "expected a whole number, got string \"4\"; remove the quotes"}}},
		{"string wanted", "[site]\nid = 42\ninputs = { frequency_hz = true, breaker_closed = [\"b\"], import_kw = { x = 1 } }\n" + minimal[strings.Index(minimal, "[limits]"):],
			[]wantProblem{{2, "site.id", "expected a string, got integer 42"},
				{3, "site.inputs.breaker_closed", "expected a string, got an array"},
				{3, "site.inputs.frequency_hz", "expected a string, got true"},
				{3, "site.inputs.import_kw", "expected a string, got an inline table"}}},
		{"bool wanted", minimal + "[[groups]]\nname = \"g\"\nkind = \"shed\"\ncut_order = 1\nunits = 4\nunit_kw = 1\nmodbus = { endpoint = \"e\", table = \"coil\", address = 1, read_back = \"yes\" }\n",
			[]wantProblem{{13, "groups[0].modbus.read_back", `=expected true or false, got string "yes"; write true or false without quotes`}}},
		{"array wanted", "[site]\nid = \"s\"\n[site.inputs]\nfrequency_hz = \"f\"\nbreaker_closed = \"b\"\nimport_kw = \"i\"\ngeneration_available_kw = \"g1\"\n" + minimal[strings.Index(minimal, "[limits]"):],
			[]wantProblem{{7, "site.inputs.generation_available_kw", `=expected an array of strings, got string "g1"; write it in brackets: [ ... ]`}}},
		{"array element of the wrong type", "[site]\nid = \"s\"\n[site.inputs]\nfrequency_hz = \"f\"\nbreaker_closed = \"b\"\nimport_kw = \"i\"\ngeneration_available_kw = [\n  \"g1\",\n  2,\n]\n" + minimal[strings.Index(minimal, "[limits]"):],
			[]wantProblem{{9, "site.inputs.generation_available_kw[1]", "expected a string, got integer 2"}}},
		{"inline table where an array is wanted", minimal + "[[stages]]\nname = \"u\"\nbelow_hz = 59\nclear_above_hz = 60\nactions = { group = \"asic\" }\n",
			[]wantProblem{{11, "stages[0].actions", "=expected an array of tables [[stages.actions]], got an inline table {...}; write it in brackets: [ ... ]"}}},
		{"integer out of range", minimal + "[[modbus]]\nname = \"pcc\"\nurl = \"tcp://a:502\"\nunit_id = 300\n[[modbus.points]]\nname = \"f\"\ntable = \"input\"\naddress = -1\n",
			[]wantProblem{{10, "modbus[0].unit_id", "=300 is out of range; it must be between 0 and 255"},
				{14, "modbus[0].points[0].address", "=-1 is out of range; it must be between 0 and 65535"}}},
		{"integer beyond 64 bits", minimal + "[[groups]]\nname = \"g\"\nkind = \"shed\"\ncut_order = 9223372036854775808\nunits = 1\nunit_kw = 1e400\n",
			[]wantProblem{{10, "groups[0].cut_order", "out of range; it must be between -9223372036854775808 and 9223372036854775807"},
				{12, "groups[0].unit_kw", "1e400 is out of range"}}},
		{"malformed numbers", minimal + "margin_kw = 1__0\n[[groups]]\nname = \"g\"\nkind = \"shed\"\ncut_order = 0x\nunits = 1_\nunit_kw = 1.e3\n",
			[]wantProblem{{7, "limits.margin_kw", "1__0 is not a valid number"},
				{11, "groups[0].cut_order", "0x is not a valid number"},
				{12, "groups[0].units", "1_ is not a valid number"},
				{13, "groups[0].unit_kw", "1.e3 is not a valid number"}}},
		{"leading zero", minimal + "margin_kw = 01\n",
			[]wantProblem{{7, "", "=not valid TOML at column 14: expected newline but got U+0031 '1'; fix this line (nothing after it was read); a number cannot start with 0 (write 7, not 07)"}}},
		{"nan refused", minimal + "margin_kw = nan\n",
			[]wantProblem{{7, "limits.margin_kw", "nan (not a number) cannot be used here"}}},
		{"dates refused", minimal + "margin_kw = 1979-05-27T07:32:00Z\n[[stages]]\nname = \"u\"\nbelow_hz = 59\nclear_above_hz = 60\ndelay = 07:32:00\nactions = []\n",
			[]wantProblem{{7, "limits.margin_kw", "=expected a number, got date/time 1979-05-27T07:32:00Z (dates and times are not used in this file)"},
				{12, "stages[0].delay", "expected a duration string such as \"250ms\", got date/time 07:32:00"}}},
		{"missing key in the second of a list", minimal + "[[modbus]]\nname = \"a\"\nurl = \"tcp://a:502\"\n\n[[modbus]]\nname = \"b\"\n",
			[]wantProblem{{11, "modbus[1].url", "=required key is missing in the [[modbus]] table that starts at line 11"}}},
		{"missing keys in a table, an inline table, and at the top", "site.id = \"s\"\nsite.inputs = {}\n[limits]\nfailsafe_load_kw = 1\n",
			[]wantProblem{{2, "site.inputs.breaker_closed", "=required key is missing in the inline table {...} at line 2"},
				{2, "site.inputs.frequency_hz", "in the inline table {...} at line 2"},
				{2, "site.inputs.import_kw", "in the inline table {...} at line 2"},
				{3, "limits.import_limit_kw", "=required key is missing in the [limits] table that starts at line 3"}}},
		{"missing table", "[site]\nid = \"s\"\n",
			[]wantProblem{{0, "limits", "=required table [limits] is missing; add that section"},
				{1, "site.inputs", "=required table [site.inputs] is missing; add that section"}}},
		{"missing array of inline tables", minimal + "[[stages]]\nname = \"u\"\nbelow_hz = 59\nclear_above_hz = 60\n",
			[]wantProblem{{7, "stages[0].actions", "=required key is missing in the [[stages]] table that starts at line 7; add at least one [[stages.actions]] table"}}},
		{"missing key in an implied table", "[site.inputs]\nfrequency_hz = \"f\"\nbreaker_closed = \"b\"\nimport_kw = \"i\"\n" + minimal[strings.Index(minimal, "[limits]"):],
			[]wantProblem{{1, "site.id", "=required key is missing in table site (line 1)"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got testSite
			checkProblems(t, Decode("site.toml", []byte(c.src), &got), c.want)
		})
	}
	t.Run("missing key at the top", func(t *testing.T) {
		var v struct {
			Version int `toml:"version,required"`
		}
		checkProblems(t, Decode("site.toml", []byte("[x]\n"), &v), []wantProblem{
			{0, "version", "=required key is missing at the top of the file (before the first [table])"},
			{1, "x", "=unknown key; the keys allowed here are: version"},
		})
	})
}

// TestDecodeReportsEverything: one pass over a file with many mistakes
// reports them all, in file order, in the form the engineer will read.
func TestDecodeReportsEverything(t *testing.T) {
	src := `[site]
id = "campus-1"
cycle_period = 250
inputs.frequency_hz = "pcc.frequency_hz"
inputs.breaker_closed = "pcc.breaker"

[limits]
import_limit_kw = "5000"
failsafe_load_kw = 1200

[[modbus]]
name = "pcc"
url = "tcp://10.0.0.10:502"
unit_id = 300
pol_period = "100ms"

[[modbus.points]]
name = "frequency_hz"
table = "input"
address = 0
stale_after = "1.5 s"
colour = "red"

[[modbus]]
name = "gen"

[[stages]]
name = "uf1"
below_hz = 59.5
clear_above_hz = 59.8
actions = [{ group = "asic", cap_pct = 0 }, { grup = "gpu" }]
`
	var got testSite
	err := Decode("site.toml", []byte(src), &got).Err()
	want := `site.toml:3: site.cycle_period: expected a duration string such as "250ms", got integer 250; write the unit, e.g. "250s" or "250ms"
site.toml:4: site.inputs.import_kw: required key is missing in table site.inputs (line 4)
site.toml:8: limits.import_limit_kw: expected a number, got string "5000"; remove the quotes
site.toml:14: modbus[0].unit_id: 300 is out of range; it must be between 0 and 255
site.toml:15: modbus[0].pol_period: unknown key; did you mean "poll_period"?
site.toml:21: modbus[0].points[0].stale_after: "1.5 s" is not a duration; write a number with a unit, such as "250ms", "5s" or "2m" (units: ns, us, ms, s, m, h)
site.toml:22: modbus[0].points[0].colour: unknown key; the keys allowed here are: name, table, address, type, scale, offset, unit, stale_after, min, max, trigger_below
site.toml:24: modbus[1].url: required key is missing in the [[modbus]] table that starts at line 24
site.toml:31: stages[0].actions[1].group: required key is missing in the inline table {...} at line 31
site.toml:31: stages[0].actions[1].grup: unknown key; did you mean "group"?`
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
	// What could be read was still filled, for the owners' own checks.
	if got.Site.ID != "campus-1" || len(got.Modbus) != 2 || got.Modbus[0].Points[0].Name != "frequency_hz" {
		t.Errorf("readable keys were not filled: %+v", got)
	}
}

func TestDecodeSyntaxErrorFillsNothing(t *testing.T) {
	got := testSite{Site: testSiteSection{ID: "before"}}
	p := Decode("site.toml", []byte("[site]\nid = \"after\"\n[limits\n"), &got)
	if p.Len() != 1 || got.Site.ID != "before" {
		t.Errorf("got %v, site id %q", p.Err(), got.Site.ID)
	}
}

func TestDecodeNeedsStructPointer(t *testing.T) {
	var s testSite
	for _, v := range []any{nil, s, &[]int{}, (*testSite)(nil)} {
		p := Decode("site.toml", []byte("a = 1\n"), v)
		if p.Len() != 1 || !strings.Contains(p.List()[0].Msg, "needs a pointer to a struct") {
			t.Errorf("Decode(%T): %v", v, p.Err())
		}
	}
}

func TestClosest(t *testing.T) {
	fields := fieldsOf(reflect.TypeOf(testEndpoint{})).list
	for key, want := range map[string]string{
		"pol_period":   "poll_period",
		"poll-period":  "poll_period",
		"Poll_Period":  "poll_period",
		"timout":       "timeout",
		"urll":         "url",
		"nmae":         "name",
		"unitid":       "unit_id",
		"ur":           "url",
		"x":            "",
		"polling_rate": "",
		"address":      "",
	} {
		if got := closest(key, fields); got != want {
			t.Errorf("closest(%q) = %q, want %q", key, got, want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(validSite))
	f.Add([]byte(minimal + "[[modbus]]\nname = \"a\"\nurl = 1\n[modbus.points]\n"))
	f.Add([]byte("a.b.c = [{d = 1}, {e.f = [1979-05-27, 0x1F, inf]}]\n[a.b]\n[[a.b.g]]\n"))
	f.Add([]byte("[site]\r\nid = \"\\u00e9\"\r\ncycle_period = '1s'\r\n\"quoted.key\" = 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got testSite
		p := Decode("fuzz.toml", data, &got)
		lines := strings.Count(string(data), "\n") + 1
		for _, pr := range p.List() {
			if strings.Contains(pr.Msg, "internal error") {
				t.Fatalf("decoder bug: %s", pr)
			}
			if pr.Line < 0 || pr.Line > lines {
				t.Fatalf("line %d outside the file (%d lines): %s", pr.Line, lines, pr)
			}
		}
		// Decoding is deterministic: the same file gives the same report.
		var again testSite
		if a, b := fmt.Sprint(p.Err()), fmt.Sprint(Decode("fuzz.toml", data, &again).Err()); a != b {
			t.Fatalf("two decodes disagree:\n%s\n---\n%s", a, b)
		}
	})
}

func BenchmarkDecodeSite(b *testing.B) {
	data := []byte(validSite)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		var c testSite
		if p := Decode("site.toml", data, &c); p.Len() != 0 {
			b.Fatal(p.Err())
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(strings.Count(validSite, "\n")), "ns/line")
}

// TestDecodeLimits: absurd files get a clear refusal, not a crash (the
// parser recurses per bracket level and a stack overflow kills the agent).
func TestDecodeLimits(t *testing.T) {
	deep := func(open, close string, n int) string {
		return strings.Repeat(open, n) + strings.Repeat(close, n)
	}
	long := "[\"" + strings.Repeat("x", 1<<20) + "\"]\n"
	for i := range 70 {
		long += fmt.Sprintf("k%d = 1\n", i)
	}
	cases := []struct {
		name string
		src  string
		want []wantProblem
	}{
		{"deep arrays", "a = 1\nb = " + deep("[", "]", 1_000_000) + "\n",
			[]wantProblem{{2, "", "=brackets are nested more than 32 levels deep here; a site file never needs that many"}}},
		{"deep inline tables", "\n\nb = " + deep("{a=", "}", 100_000) + "\n",
			[]wantProblem{{3, "", "nested more than 32 levels"}}},
		{"long dotted key", "[site]\n" + strings.Repeat("a.", 40) + "b = 1\n",
			[]wantProblem{{0, "limits", "required table"}, {1, "site.id", "required key"}, {1, "site.inputs", "required table"},
				{2, "", "=this key has more than 32 dotted parts; a site file never needs that many"}}},
		{"too many key bytes", long, []wantProblem{{0, "", "this file is too large to check"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got testSite
			checkProblems(t, Decode("site.toml", []byte(c.src), &got), c.want)
		})
	}
	// Brackets inside strings and comments are text, not nesting.
	var v struct {
		A string `toml:"a"`
		B string `toml:"b"`
		C []int  `toml:"c"`
	}
	src := "a = \"" + deep("[", "]", 40) + "\\\"{\" # " + deep("{", "}", 40) + "\n" +
		"b = '''\n" + deep("[", "", 40) + "''''\n" +
		"c = [1, 2]\n"
	if err := Decode("site.toml", []byte(src), &v).Err(); err != nil || v.B != deep("[", "", 40)+"'" || len(v.C) != 2 {
		t.Errorf("brackets in strings were counted: %v, %+v", err, v)
	}
}

// TestProblemsAfterDecode: owners' checks run on what Decode could fill; a
// check on a key Decode already reported (or inside it) would only echo it.
func TestProblemsAfterDecode(t *testing.T) {
	var got testSite
	p := Decode("site.toml", []byte(minimal+"[[modbus]]\nname = \"pcc\"\nunit_id = 300\nurl = \"tcp://a:502\"\n"), &got)
	if p.Syntax() {
		t.Fatal("a readable file reported as unreadable")
	}
	p.Addf("modbus[0].unit_id", "unit id must be 1..247")    // echo: dropped
	p.Addf("modbus[0].unit_id.x", "inside a reported key")   // echo: dropped
	p.Addf("modbus[0].url", "host %q does not resolve", "a") // new: kept, with its line
	p.Addf("modbus[0]", "endpoint has no points; add some")  // parent: kept
	p.Addf("groups[2].floor_kw", "floor above ceiling")      // absent: line 0
	checkProblems(t, p, []wantProblem{
		{0, "groups[2].floor_kw", "=floor above ceiling"},
		{7, "modbus[0]", "=endpoint has no points; add some"},
		{9, "modbus[0].unit_id", "=300 is out of range; it must be between 0 and 255"},
		{10, "modbus[0].url", `=host "a" does not resolve`},
	})

	for src, unreadable := range map[string]bool{minimal: false, "[site\n": true, "a = " + strings.Repeat("[", 40): true} {
		if p := Decode("site.toml", []byte(src), &got); p.Syntax() != unreadable {
			t.Errorf("Syntax() = %v for %q", p.Syntax(), src)
		}
	}
}
