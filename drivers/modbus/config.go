package modbus

import (
	"time"

	"github.com/siteagent/siteagent/agent/point"
)

// EndpointConfig is one Modbus TCP device (or gateway unit) that the agent
// polls: a [[modbus]] table in the site file.
type EndpointConfig struct {
	// Name prefixes its points: point "frequency_hz" of endpoint "pcc" is
	// "pcc.frequency_hz" everywhere else in the file.
	Name string `toml:"name,required"`
	// URL is tcp://host:port (port 502 by default on devices), or
	// tcp+tls://host:port for Modbus over TLS (MBAPS, port 802), which
	// needs the [modbus.tls] table.
	URL string `toml:"url,required"`
	// UnitID is the Modbus unit (slave) id; 1 unless set.
	UnitID *uint8 `toml:"unit_id"`
	// PollPeriod between the starts of two polls of every point; 1s unless set.
	PollPeriod time.Duration `toml:"poll_period"`
	// Timeout for one request; 1s unless set.
	Timeout time.Duration `toml:"timeout"`
	// ConnectPause waits after a connection opens before the first request
	// (some gateways drop requests sent too early).
	ConnectPause time.Duration `toml:"connect_pause"`
	// RequestPause waits between two requests on this endpoint.
	RequestPause time.Duration `toml:"request_pause"`
	// MaxRegisters caps registers per read (1..125); 125 unless set.
	MaxRegisters int `toml:"max_registers"`
	// MaxBits caps coils or discrete inputs per read (1..2000); 2000 unless set.
	MaxBits int `toml:"max_bits"`
	// TLS: the agent's client certificate and the CA that signs the
	// device's certificate; required by tcp+tls:// and refused otherwise.
	TLS *TLSConfig `toml:"tls"`
	// Points read from this endpoint.
	Points []PointConfig `toml:"points"`
}

// TLSConfig is [modbus.tls]: Modbus/TCP Security (MBAPS) authenticates
// both ends with certificates. The files are read at every connection, so
// renewed certificates are used from the next reconnect on.
type TLSConfig struct {
	// CAFile holds the PEM certificates that may sign the device's
	// certificate (or the device's own certificate). The device's
	// certificate must name the host of the URL (DNS name or IP address).
	CAFile string `toml:"ca_file"`
	// CertFile and KeyFile: the agent's client certificate and key (PEM).
	// A bare file name is looked up in $CREDENTIALS_DIRECTORY when systemd
	// sets it (LoadCredential=).
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// PointConfig is one value read from an endpoint.
type PointConfig struct {
	Name string `toml:"name,required"`
	// Table: "coil", "discrete", "holding" or "input".
	Table string `toml:"table,required"`
	// Address is the zero-based protocol address (register 40001 is holding 0).
	Address *uint16 `toml:"address,required"`
	// Type: bool, int16, uint16, int32, uint32, int64, uint64, float32,
	// float64. "bool" for coils and discrete inputs (the default there),
	// "uint16" for registers unless set.
	Type string `toml:"type"`
	// Order of the 16-bit words and bytes of multi-register values:
	// ABCD (big-endian, the Modbus norm), CDAB (word-swapped), BADC
	// (byte-swapped), DCBA (little-endian). ABCD unless set.
	Order string `toml:"order"`
	// Value = raw*Scale + Offset. Scale 1 unless set.
	Scale  *float64 `toml:"scale"`
	Offset float64  `toml:"offset"`
	// Invalid is a raw value the device sends for "no reading" (e.g.
	// 0xFFFF, or 0x8000 for int16); such a read makes the point bad.
	Invalid *float64 `toml:"invalid"`

	point.Meta
}

// ActuatorConfig drives a load group through Modbus writes: a [groups.modbus]
// table. Shed groups write one coil (or one holding register holding
// on_value/off_value) per unit at consecutive addresses; throttle groups write
// the group's cap as a setpoint register.
type ActuatorConfig struct {
	// Endpoint names a [[modbus]] endpoint; its connection is shared and
	// writes go ahead of polls.
	Endpoint string `toml:"endpoint,required"`
	// Table: "coil" or "holding".
	Table string `toml:"table,required"`
	// Address of unit 0's coil/register, or of the setpoint register.
	Address *uint16 `toml:"address,required"`
	// Type and Order of the setpoint register (throttle groups); uint16/ABCD
	// unless set.
	Type  string `toml:"type"`
	Order string `toml:"order"`
	// Scale converts kW to the register: raw = kW / Scale. 1 unless set.
	Scale *float64 `toml:"scale"`
	// OnValue/OffValue for shed units on holding registers; 1/0 unless set.
	OnValue  *uint16 `toml:"on_value"`
	OffValue *uint16 `toml:"off_value"`
	// ReadBack re-reads what was written to verify it; true unless set.
	ReadBack *bool `toml:"read_back"`
}
