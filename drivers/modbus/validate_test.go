package modbus

import (
	"strings"
	"testing"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/actuator"
)

func goodEndpoint() EndpointConfig {
	return EndpointConfig{
		Name: "pcc",
		URL:  "tcp://10.0.0.5:502",
		Points: []PointConfig{
			{Name: "frequency_hz", Table: "input", Address: u16(0), Type: "float32", Order: "CDAB"},
			{Name: "breaker_closed", Table: "discrete", Address: u16(0)},
			{Name: "import_kw", Table: "holding", Address: u16(10), Type: "int32", Scale: f64(0.1), Invalid: f64(-1)},
		},
	}
}

func problemsOf(c EndpointConfig, has ...string) []config.Problem {
	lines := map[string]int{}
	for i, k := range has {
		lines[k] = i + 1
	}
	p := config.NewProblems("site.toml", lines)
	c.Validate(p, "modbus[0]")
	return p.List()
}

func TestEndpointValidateAcceptsAGoodConfig(t *testing.T) {
	if ps := problemsOf(goodEndpoint()); len(ps) != 0 {
		t.Fatalf("good config has problems: %v", ps)
	}
}

func TestEndpointValidate(t *testing.T) {
	cases := []struct {
		name   string
		change func(c *EndpointConfig)
		has    []string // keys written in the file
		key    string
		msg    string
	}{
		{"no name", func(c *EndpointConfig) { c.Name = "" }, nil, "modbus[0].name", "give the endpoint a name"},
		{"dotted name", func(c *EndpointConfig) { c.Name = "p.cc" }, nil, "modbus[0].name", "must not contain dots"},
		{"scheme", func(c *EndpointConfig) { c.URL = "http://10.0.0.5:502" }, nil, "modbus[0].url", `scheme "http" is not supported`},
		{"no port", func(c *EndpointConfig) { c.URL = "tcp://10.0.0.5" }, nil, "modbus[0].url", "needs a host and a port"},
		{"no host", func(c *EndpointConfig) { c.URL = "tcp://:502" }, nil, "modbus[0].url", "needs a host and a port"},
		{"bad port", func(c *EndpointConfig) { c.URL = "tcp://plc:70000" }, nil, "modbus[0].url", "not a number in 1..65535"},
		{"path", func(c *EndpointConfig) { c.URL = "tcp://plc:502/x" }, nil, "modbus[0].url", "more than a host and a port"},
		{"reserved unit", func(c *EndpointConfig) { u := uint8(250); c.UnitID = &u }, nil, "modbus[0].unit_id", "reserved"},
		{"negative poll", func(c *EndpointConfig) { c.PollPeriod = -time.Second }, nil, "modbus[0].poll_period", "above zero"},
		{"zero timeout written", func(c *EndpointConfig) {}, []string{"modbus[0].timeout"}, "modbus[0].timeout", "above zero"},
		{"negative pause", func(c *EndpointConfig) { c.RequestPause = -1 }, nil, "modbus[0].request_pause", "must not be negative"},
		{"max_registers high", func(c *EndpointConfig) { c.MaxRegisters = 126 }, nil, "modbus[0].max_registers", "outside 1..125"},
		{"max_registers zero written", func(c *EndpointConfig) {}, []string{"modbus[0].max_registers"}, "modbus[0].max_registers", "outside 1..125"},
		{"max_bits", func(c *EndpointConfig) { c.MaxBits = 2001 }, nil, "modbus[0].max_bits", "outside 1..2000"},
		{"table", func(c *EndpointConfig) { c.Points[0].Table = "holdings" }, nil, "modbus[0].points[0].table", `"coil", "discrete", "holding" or "input"`},
		{"type", func(c *EndpointConfig) { c.Points[0].Type = "float" }, nil, "modbus[0].points[0].type", "write one of bool, int16"},
		{"bool register", func(c *EndpointConfig) { c.Points[0].Type = "bool" }, nil, "modbus[0].points[0].type", "holds a number, not a bool"},
		{"number in a coil", func(c *EndpointConfig) { c.Points[1].Type = "uint16" }, nil, "modbus[0].points[1].type", `write type = "bool"`},
		{"order", func(c *EndpointConfig) { c.Points[0].Order = "abcd" }, nil, "modbus[0].points[0].order", "write one of ABCD"},
		{"duplicate", func(c *EndpointConfig) { c.Points[2].Name = "frequency_hz" }, nil, "modbus[0].points[2].name", "already defined at points[0]"},
		{"too wide", func(c *EndpointConfig) { c.MaxRegisters = 1 }, nil, "modbus[0].points[0].type", "raise max_registers to at least 2"},
		{"past 65535", func(c *EndpointConfig) { c.Points[2].Address = u16(65535) }, nil, "modbus[0].points[2].address", "past the last address 65535"},
		{"zero scale", func(c *EndpointConfig) { c.Points[2].Scale = f64(0) }, nil, "modbus[0].points[2].scale", "non-zero factor"},
		{"marker out of range", func(c *EndpointConfig) { c.Points[2].Invalid = f64(1 << 32) }, nil, "modbus[0].points[2].invalid", "not a raw int32 value"},
		{"marker on a bit", func(c *EndpointConfig) { c.Points[1].Invalid = f64(1) }, nil, "modbus[0].points[1].invalid", "remove invalid"},
		{"meta checked", func(c *EndpointConfig) { c.Points[0].Meta = point.Meta{Min: f64(2), Max: f64(1)} }, nil, "modbus[0].points[0].min", "swap them"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := goodEndpoint()
			tc.change(&c)
			ps := problemsOf(c, tc.has...)
			for _, p := range ps {
				if p.Key == tc.key && strings.Contains(p.Msg, tc.msg) {
					return
				}
			}
			t.Fatalf("want a problem at %s saying %q; got %v", tc.key, tc.msg, ps)
		})
	}
}

func TestEndpointWithDefaults(t *testing.T) {
	c := goodEndpoint()
	d := c.WithDefaults()
	if *d.UnitID != 1 || d.PollPeriod != time.Second || d.Timeout != time.Second || d.MaxRegisters != 125 || d.MaxBits != 2000 {
		t.Errorf("endpoint defaults: %+v", d)
	}
	if d.Points[1].Type != "bool" || d.Points[2].Order != "ABCD" || *d.Points[1].Scale != 1 || *d.Points[2].Scale != 0.1 {
		t.Errorf("point defaults: %+v", d.Points)
	}
	if c.Points[1].Type != "" || c.UnitID != nil {
		t.Errorf("WithDefaults changed its receiver")
	}
	c.Points = append(c.Points, PointConfig{Name: "x", Table: "input", Address: u16(50)})
	if d := c.WithDefaults(); d.Points[3].Type != "uint16" {
		t.Errorf("register default type = %q, want uint16", d.Points[3].Type)
	}
}

func actuatorProblems(c ActuatorConfig, kind actuator.Kind, units int) []config.Problem {
	p := config.NewProblems("site.toml", nil)
	c.Validate(p, "groups[0].modbus", kind, units)
	return p.List()
}

func TestActuatorValidate(t *testing.T) {
	shed := func() ActuatorConfig { return ActuatorConfig{Endpoint: "feeders", Table: "coil", Address: u16(100)} }
	thr := func() ActuatorConfig {
		return ActuatorConfig{Endpoint: "gpus", Table: "holding", Address: u16(500), Type: "float32", Scale: f64(0.1)}
	}
	if ps := actuatorProblems(shed(), actuator.Shed, 40); len(ps) != 0 {
		t.Fatalf("good shed config: %v", ps)
	}
	if ps := actuatorProblems(thr(), actuator.Throttle, 8); len(ps) != 0 {
		t.Fatalf("good throttle config: %v", ps)
	}
	cases := []struct {
		name  string
		cfg   ActuatorConfig
		kind  actuator.Kind
		units int
		key   string
		msg   string
	}{
		{"no endpoint", func() ActuatorConfig { c := shed(); c.Endpoint = ""; return c }(), actuator.Shed, 4, "groups[0].modbus.endpoint", "name the [[modbus]] endpoint"},
		{"input table", func() ActuatorConfig { c := shed(); c.Table = "input"; return c }(), actuator.Shed, 4, "groups[0].modbus.table", `write "coil" or "holding"`},
		{"units past 65535", func() ActuatorConfig { c := shed(); c.Address = u16(65500); return c }(), actuator.Shed, 100, "groups[0].modbus.address", "past the last address"},
		{"no units", shed(), actuator.Shed, 0, "groups[0].modbus", "at least one unit"},
		{"on_value on a coil", func() ActuatorConfig { c := shed(); c.OnValue = u16(2); return c }(), actuator.Shed, 4, "groups[0].modbus", "apply to holding registers"},
		{"on equals off", func() ActuatorConfig { c := shed(); c.Table = "holding"; c.OnValue = u16(0); return c }(), actuator.Shed, 4, "groups[0].modbus.on_value", "both 0"},
		{"type on shed", func() ActuatorConfig { c := shed(); c.Type = "uint16"; return c }(), actuator.Shed, 4, "groups[0].modbus.type", "throttle setpoints"},
		{"throttle coil", func() ActuatorConfig { c := thr(); c.Table = "coil"; return c }(), actuator.Throttle, 1, "groups[0].modbus.table", `write table = "holding"`},
		{"throttle bool", func() ActuatorConfig { c := thr(); c.Type = "bool"; return c }(), actuator.Throttle, 1, "groups[0].modbus.type", "numeric type"},
		{"throttle type", func() ActuatorConfig { c := thr(); c.Type = "real"; return c }(), actuator.Throttle, 1, "groups[0].modbus.type", "unknown"},
		{"throttle order", func() ActuatorConfig { c := thr(); c.Order = "DBCA"; return c }(), actuator.Throttle, 1, "groups[0].modbus.order", "unknown"},
		{"throttle scale", func() ActuatorConfig { c := thr(); c.Scale = f64(0); return c }(), actuator.Throttle, 1, "groups[0].modbus.scale", "non-zero"},
		{"throttle past 65535", func() ActuatorConfig { c := thr(); c.Address = u16(65535); return c }(), actuator.Throttle, 1, "groups[0].modbus.address", "past the last address"},
		{"unknown kind", shed(), actuator.Kind(9), 1, "groups[0].modbus", "cannot be driven"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ps := actuatorProblems(tc.cfg, tc.kind, tc.units)
			for _, p := range ps {
				if p.Key == tc.key && strings.Contains(p.Msg, tc.msg) {
					return
				}
			}
			t.Fatalf("want a problem at %s saying %q; got %v", tc.key, tc.msg, ps)
		})
	}
}

func TestNewEndpointRefusesBadConfig(t *testing.T) {
	c := goodEndpoint()
	c.Points[0].Type = "float"
	_, err := NewEndpoint(c, point.NewStore(), discardLog())
	if err == nil || !strings.Contains(err.Error(), "points[0].type") {
		t.Fatalf("NewEndpoint with a bad type: %v, want an error naming points[0].type", err)
	}
}
