package mqtt

import "time"

// Config is the [mqtt] table of a site file: one broker connection.
type Config struct {
	// Broker is tcp://host:1883 (ssl:// and TLS options come with the
	// upstream issue). `siteagent demo` starts an embedded broker when empty.
	Broker string `toml:"broker"`
	// ClientID defaults to "siteagent-<site id>".
	ClientID string `toml:"client_id"`
	// TopicRoot prefixes every topic: <root>/<site>/...; "siteagent" unless set.
	TopicRoot string `toml:"topic_root"`
	// Username and PasswordFile authenticate to the broker; the password is
	// read from a file (or a systemd credential), never written inline.
	Username     string `toml:"username"`
	PasswordFile string `toml:"password_file"`
	// TelemetryPeriod between two point batches; 1s unless set.
	TelemetryPeriod time.Duration `toml:"telemetry_period"`
	// QueueSize bounds the messages waiting to be sent; when full the
	// newest message is dropped and counted. 4096 unless set.
	QueueSize int `toml:"queue_size"`
}
