package modbus

import (
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/drivers/actuator"
)

// Defaults documented in config.go.
const (
	DefaultUnitID       = 1
	DefaultPollPeriod   = time.Second
	DefaultTimeout      = time.Second
	DefaultMaxRegisters = 125  // the protocol's limit for one read
	DefaultMaxBits      = 2000 // the protocol's limit for one read
)

// Protocol limits for one write request.
const (
	maxWriteCoils     = 1968
	maxWriteRegisters = 123
)

const (
	typeList  = "bool, int16, uint16, int32, uint32, int64, uint64, float32 or float64"
	orderList = "ABCD (big-endian), CDAB (word-swapped), BADC (byte-swapped) or DCBA (little-endian)"
)

// WithDefaults returns a copy of c with every unset field at its default.
// c itself (and its points) is left as read from the file.
func (c *EndpointConfig) WithDefaults() EndpointConfig {
	d := *c
	if d.UnitID == nil {
		u := uint8(DefaultUnitID)
		d.UnitID = &u
	}
	if d.PollPeriod == 0 {
		d.PollPeriod = DefaultPollPeriod
	}
	if d.Timeout == 0 {
		d.Timeout = DefaultTimeout
	}
	if d.MaxRegisters == 0 {
		d.MaxRegisters = DefaultMaxRegisters
	}
	if d.MaxBits == 0 {
		d.MaxBits = DefaultMaxBits
	}
	d.Points = make([]PointConfig, len(c.Points))
	for i, p := range c.Points {
		if p.Type == "" {
			p.Type = "uint16"
			if t, ok := parseTable(p.Table); ok && t.bits() {
				p.Type = "bool"
			}
		}
		if p.Order == "" {
			p.Order = ABCD.String()
		}
		if p.Scale == nil {
			one := 1.0
			p.Scale = &one
		}
		d.Points[i] = p
	}
	return d
}

// Validate checks the endpoint at path (e.g. "modbus[0]") and its points.
func (c *EndpointConfig) Validate(p *config.Problems, path string) {
	d := c.WithDefaults()
	checkName(p, config.Join(path, "name"), c.Name, "endpoint", `name = "pcc"`)
	checkURL(p, config.Join(path, "url"), c.URL)
	checkTLS(p, path, c)
	if u := *d.UnitID; u >= 248 && u <= 254 {
		p.Addf(config.Join(path, "unit_id"), "unit id %d is reserved by the protocol; use 1..247, or 255 (or 0) for a device addressed by its IP alone", u)
	}
	checkPeriod(p, path, "poll_period", c.PollPeriod)
	checkPeriod(p, path, "timeout", c.Timeout)
	checkPause(p, path, "connect_pause", c.ConnectPause)
	checkPause(p, path, "request_pause", c.RequestPause)
	if k := config.Join(path, "max_registers"); d.MaxRegisters < 1 || d.MaxRegisters > 125 || (p.Has(k) && c.MaxRegisters == 0) {
		p.Addf(k, "%d is outside 1..125 (the protocol's limit per read); remove it for 125, or lower it for a device that refuses long reads", c.MaxRegisters)
	}
	if k := config.Join(path, "max_bits"); d.MaxBits < 1 || d.MaxBits > 2000 || (p.Has(k) && c.MaxBits == 0) {
		p.Addf(k, "%d is outside 1..2000 (the protocol's limit per read); remove it for 2000, or lower it for a device that refuses long reads", c.MaxBits)
	}

	seen := map[string]int{}
	for i := range c.Points {
		pp := config.Index(config.Join(path, "points"), i)
		name := c.Points[i].Name
		if j, dup := seen[name]; dup && name != "" {
			p.Addf(config.Join(pp, "name"), "point %q is already defined at points[%d]; give each point of an endpoint its own name", name, j)
		} else {
			seen[name] = i
		}
		d.Points[i].validate(p, pp, d.MaxRegisters)
	}
}

// validate checks one point, with its defaults filled in.
func (pc *PointConfig) validate(p *config.Problems, path string, maxRegs int) {
	checkName(p, config.Join(path, "name"), pc.Name, "point", `name = "frequency_hz"`)
	pc.Meta.Validate(p, path)
	tbl, tblOK := parseTable(pc.Table)
	if !tblOK {
		p.Addf(config.Join(path, "table"), `table %q is unknown; write "coil", "discrete", "holding" or "input"`, pc.Table)
	}
	typ, typOK := ParseType(pc.Type)
	switch {
	case !typOK:
		p.Addf(config.Join(path, "type"), "type %q is unknown; write one of %s", pc.Type, typeList)
	case tblOK && tbl.bits() && typ != Bool:
		p.Addf(config.Join(path, "type"), "a %s is one bit: write type = \"bool\" or remove type", tbl)
	case tblOK && !tbl.bits() && typ == Bool:
		p.Addf(config.Join(path, "type"), "a %s register holds a number, not a bool: write type = \"uint16\" (test the value with a trigger or in control) or read a coil/discrete input instead", tbl)
	}
	if _, ok := ParseOrder(pc.Order); !ok {
		p.Addf(config.Join(path, "order"), "order %q is unknown; write one of %s", pc.Order, orderList)
	}
	if s := *pc.Scale; s == 0 || math.IsNaN(s) || math.IsInf(s, 0) {
		p.Addf(config.Join(path, "scale"), "scale %g would make every value useless; write a finite non-zero factor, or remove scale for 1", s)
	}
	if math.IsNaN(pc.Offset) || math.IsInf(pc.Offset, 0) {
		p.Addf(config.Join(path, "offset"), "offset %g must be a finite number", pc.Offset)
	}
	if pc.Address == nil {
		p.Addf(config.Join(path, "address"), "set the zero-based address, e.g. address = 0 for register 40001")
	} else if typOK && tblOK {
		words := typ.Words()
		if end := int(*pc.Address) + words - 1; end > 65535 {
			p.Addf(config.Join(path, "address"), "a %s at %d runs to %d, past the last address 65535; lower the address", typ, *pc.Address, end)
		}
		if !tbl.bits() && words > maxRegs {
			p.Addf(config.Join(path, "type"), "a %s spans %d registers but max_registers is %d; raise max_registers to at least %d", typ, words, maxRegs, words)
		}
	}
	if pc.Invalid != nil && typOK {
		m := *pc.Invalid
		switch {
		case typ == Bool:
			p.Addf(config.Join(path, "invalid"), "a bit has no invalid marker; remove invalid")
		case typ.isFloat() && math.IsNaN(m):
			p.Addf(config.Join(path, "invalid"), "NaN never equals anything (and a NaN read is already bad); remove invalid")
		case !typ.isFloat():
			if _, ok := markerBits(m, typ); !ok {
				p.Addf(config.Join(path, "invalid"), "%g is not a raw %s value; write the integer the device sends, e.g. 0xFFFF or -1", m, typ)
			}
		}
	}
}

// WithDefaults returns a copy of c with every unset field at its default.
func (c *ActuatorConfig) WithDefaults() ActuatorConfig {
	d := *c
	if d.Type == "" {
		d.Type = Uint16.String()
	}
	if d.Order == "" {
		d.Order = ABCD.String()
	}
	if d.Scale == nil {
		one := 1.0
		d.Scale = &one
	}
	if d.OnValue == nil {
		on := uint16(1)
		d.OnValue = &on
	}
	if d.OffValue == nil {
		off := uint16(0)
		d.OffValue = &off
	}
	if d.ReadBack == nil {
		yes := true
		d.ReadBack = &yes
	}
	return d
}

// Validate checks the [groups.modbus] table at path for a group of kind
// with units units (shed groups). The endpoint name is checked against
// the [[modbus]] list by the caller, which knows it.
func (c *ActuatorConfig) Validate(p *config.Problems, path string, kind actuator.Kind, units int) {
	d := c.WithDefaults()
	if c.Endpoint == "" {
		p.Addf(config.Join(path, "endpoint"), "name the [[modbus]] endpoint that reaches the device")
	}
	tbl, ok := parseTable(c.Table)
	if !ok || (tbl != coilTable && tbl != holdingTable) {
		p.Addf(config.Join(path, "table"), `table %q cannot be written; write "coil" or "holding"`, c.Table)
		ok = false
	}
	if c.Address == nil {
		p.Addf(config.Join(path, "address"), "set the zero-based address of the first unit's coil or register, or of the setpoint register")
	}
	switch kind {
	case actuator.Shed:
		for _, k := range []struct {
			key string
			set bool
		}{{"type", c.Type != ""}, {"order", c.Order != ""}, {"scale", c.Scale != nil}} {
			if k.set {
				p.Addf(config.Join(path, k.key), "%s applies to throttle setpoints, not to shed groups; remove it", k.key)
			}
		}
		if ok && tbl == coilTable && (c.OnValue != nil || c.OffValue != nil) {
			p.Addf(path, "on_value and off_value apply to holding registers; a coil is on or off: remove them")
		}
		if ok && tbl == holdingTable && *d.OnValue == *d.OffValue {
			p.Addf(config.Join(path, "on_value"), "on_value and off_value are both %d; give them different values", *d.OnValue)
		}
		if units < 1 {
			p.Addf(path, "a shed group needs at least one unit; set the group's units")
		} else if c.Address != nil {
			if end := int(*c.Address) + units - 1; end > 65535 {
				p.Addf(config.Join(path, "address"), "%d units from address %d run to %d, past the last address 65535; lower the address or split the group", units, *c.Address, end)
			}
		}
	case actuator.Throttle:
		if ok && tbl != holdingTable {
			p.Addf(config.Join(path, "table"), `a throttle group writes a setpoint register: write table = "holding"`)
		}
		if c.OnValue != nil || c.OffValue != nil {
			p.Addf(path, "on_value and off_value apply to shed groups; remove them")
		}
		typ, typOK := ParseType(d.Type)
		switch {
		case !typOK:
			p.Addf(config.Join(path, "type"), "type %q is unknown; write one of %s", d.Type, typeList)
		case typ == Bool:
			p.Addf(config.Join(path, "type"), "a setpoint is a number: write a numeric type such as uint16 or float32")
		case c.Address != nil:
			if end := int(*c.Address) + typ.Words() - 1; end > 65535 {
				p.Addf(config.Join(path, "address"), "a %s at %d runs to %d, past the last address 65535; lower the address", typ, *c.Address, end)
			}
		}
		if _, ok := ParseOrder(d.Order); !ok {
			p.Addf(config.Join(path, "order"), "order %q is unknown; write one of %s", d.Order, orderList)
		}
		if s := *d.Scale; s == 0 || math.IsNaN(s) || math.IsInf(s, 0) {
			p.Addf(config.Join(path, "scale"), "scale %g cannot convert kW to the register; write a finite non-zero factor (raw = kW / scale), or remove it for 1", s)
		}
	default:
		p.Addf(path, "load group kind %s cannot be driven through Modbus; use a shed or throttle group", kind)
	}
}

func checkName(p *config.Problems, key, name, what, example string) {
	switch {
	case name == "":
		p.Addf(key, "give the %s a name, e.g. %s", what, example)
	case strings.ContainsAny(name, ". \t\n\"'"):
		p.Addf(key, "%s name %q must not contain dots, spaces or quotes (points are named \"endpoint.point\"); rename it", what, name)
	}
}

func checkURL(p *config.Problems, key, raw string) {
	const hint = "write tcp://host:port, e.g. tcp://10.0.0.5:502 (or tcp+tls://10.0.0.5:802 for Modbus over TLS)"
	u, err := url.Parse(raw)
	if err != nil {
		p.Addf(key, "cannot read %q as a URL; %s", raw, hint)
		return
	}
	if u.Scheme != "tcp" && u.Scheme != schemeTLS {
		p.Addf(key, "scheme %q is not supported (Modbus TCP only); %s", u.Scheme, hint)
		return
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		p.Addf(key, "%q has more than a host and a port; %s", raw, hint)
		return
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		p.Addf(key, "%q needs a host and a port; %s", raw, hint)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		p.Addf(key, "port %q is not a number in 1..65535; %s", port, hint)
	}
}

// schemeTLS is Modbus over TLS (MBAPS).
const schemeTLS = "tcp+tls"

// usesTLS reports whether the endpoint's URL asks for TLS.
func (c *EndpointConfig) usesTLS() bool { return strings.HasPrefix(c.URL, schemeTLS+"://") }

// checkTLS checks [modbus.tls] against the URL's scheme: MBAPS
// authenticates both ends, so every file is required.
func checkTLS(p *config.Problems, path string, c *EndpointConfig) {
	key := config.Join(path, "tls")
	switch {
	case c.usesTLS() && c.TLS == nil:
		p.Addf(config.Join(path, "url"), "tcp+tls:// needs a [modbus.tls] table with ca_file (the CA of the device's certificate), cert_file and key_file (the agent's client certificate)")
	case !c.usesTLS() && c.TLS != nil:
		p.Addf(key, "[modbus.tls] applies to tcp+tls:// endpoints; write url = \"tcp+tls://host:802\" or remove the table")
	case c.TLS != nil:
		for _, f := range []struct{ k, v, what string }{
			{"ca_file", c.TLS.CAFile, "the PEM file of the CA that signs the device's certificate"},
			{"cert_file", c.TLS.CertFile, "the agent's client certificate (PEM): Modbus over TLS requires one"},
			{"key_file", c.TLS.KeyFile, "the key of the agent's client certificate (PEM)"},
		} {
			if f.v == "" {
				p.Addf(config.Join(key, f.k), "set %s to %s", f.k, f.what)
			}
		}
	}
}

func checkPeriod(p *config.Problems, path, key string, d time.Duration) {
	k := config.Join(path, key)
	if d < 0 || (d == 0 && p.Has(k)) {
		p.Addf(k, "%s must be above zero; write a duration such as \"1s\", or remove %s for the default", d, key)
	}
}

func checkPause(p *config.Problems, path, key string, d time.Duration) {
	if d < 0 {
		p.Addf(config.Join(path, key), "%s must not be negative; write a duration such as \"50ms\", or remove %s for no pause", d, key)
	}
}
