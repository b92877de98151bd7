package mqtt

import (
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/siteagent/siteagent/agent/config"
)

// Config is the [mqtt] table of a site file: one broker connection.
type Config struct {
	// Broker is tcp://host:1883, or ssl://host:8883 (also tls://, mqtts://)
	// for TLS. `siteagent demo` starts an embedded broker when empty.
	Broker string `toml:"broker"`
	// ClientID defaults to "siteagent-<site id>".
	ClientID string `toml:"client_id"`
	// TopicRoot prefixes every topic: <root>/<site>/...; "siteagent" unless set.
	TopicRoot string `toml:"topic_root"`
	// Username and PasswordFile authenticate to the broker; the password is
	// read from a file (or a systemd credential), never written inline. A
	// bare file name (no '/') is looked up in $CREDENTIALS_DIRECTORY when
	// systemd sets it (LoadCredential=); trailing newlines are ignored.
	Username     string `toml:"username"`
	PasswordFile string `toml:"password_file"`
	// TelemetryPeriod between two point batches; 1s unless set.
	TelemetryPeriod time.Duration `toml:"telemetry_period"`
	// Format of the payloads on this connection: "json" (the default) or
	// "sparkplug" (Sparkplug B 3.0).
	Format string `toml:"format"`
	// QueueSize bounds the messages waiting to be sent, QueueMB their size
	// in MiB. When either is reached the oldest waiting message is dropped
	// and counted. 100000 messages and 64 MiB unless set.
	QueueSize int `toml:"queue_size"`
	QueueMB   int `toml:"queue_mb"`
	// ReplayRate: messages per second sent from the backlog after an
	// outage, on top of the live ones (which always go first); 500 unless set.
	ReplayRate int `toml:"replay_rate"`
	// TLS is required by ssl:// brokers and refused with tcp://.
	TLS *TLSConfig `toml:"tls"`
	// Sparkplug options; only with format = "sparkplug".
	Sparkplug *SparkplugConfig `toml:"sparkplug"`
}

// TLSConfig is [mqtt.tls]. There is deliberately no option that skips
// verification of the broker's certificate.
type TLSConfig struct {
	// CAFile holds the PEM certificates that may sign the broker's
	// certificate; the system's roots when empty.
	CAFile string `toml:"ca_file"`
	// CertFile and KeyFile: the agent's client certificate and key (PEM),
	// both or neither.
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// ServerName the broker's certificate must carry; the broker URL's
	// host unless set.
	ServerName string `toml:"server_name"`
}

// SparkplugConfig is [mqtt.sparkplug].
type SparkplugConfig struct {
	// GroupID is the Sparkplug group of this edge node (the site);
	// "siteagent" unless set.
	GroupID string `toml:"group_id"`
	// PrimaryHost is the host id of the primary host application. When
	// set, births wait for its STATE to say online, and data is stored
	// while it is offline.
	PrimaryHost string `toml:"primary_host"`
}

// Formats of a connection.
const (
	FormatJSON      = "json"
	FormatSparkplug = "sparkplug"
)

// Defaults for the keys left out of the [mqtt] table.
const (
	DefaultTopicRoot       = "siteagent"
	DefaultTelemetryPeriod = time.Second
	DefaultQueueSize       = 100_000
	DefaultQueueMB         = 64
	DefaultReplayRate      = 500
	DefaultSparkplugGroup  = "siteagent"
	MinTelemetryPeriod     = 100 * time.Millisecond
	MaxQueueSize           = 10_000_000
	MaxQueueMB             = 64 * 1024
	MaxReplayRate          = 1_000_000
)

// WithDefaults returns c with every unset key given its default. siteID
// names the default client id.
func (c Config) WithDefaults(siteID string) Config {
	if c.ClientID == "" {
		c.ClientID = "siteagent-" + siteID
	}
	if c.TopicRoot == "" {
		c.TopicRoot = DefaultTopicRoot
	}
	if c.TelemetryPeriod == 0 {
		c.TelemetryPeriod = DefaultTelemetryPeriod
	}
	if c.Format == "" {
		c.Format = FormatJSON
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.QueueMB == 0 {
		c.QueueMB = DefaultQueueMB
	}
	if c.ReplayRate == 0 {
		c.ReplayRate = DefaultReplayRate
	}
	if c.Format == FormatSparkplug {
		sp := SparkplugConfig{}
		if c.Sparkplug != nil {
			sp = *c.Sparkplug
		}
		if sp.GroupID == "" {
			sp.GroupID = DefaultSparkplugGroup
		}
		c.Sparkplug = &sp
	}
	return c
}

// UsesTLS reports whether the broker URL asks for TLS.
func (c *Config) UsesTLS() bool {
	u, err := url.Parse(c.Broker)
	return err == nil && tlsScheme(u.Scheme)
}

func tlsScheme(s string) bool {
	switch s {
	case "ssl", "tls", "mqtts", "tcps":
		return true
	}
	return false
}

// Validate checks the table as written (before defaults). An empty broker
// is accepted here because `siteagent demo` fills it in; New refuses it.
// The password and certificate files are only read by New, so that a
// config can be checked on a machine that does not hold the secrets.
func (c *Config) Validate(p *config.Problems, path string) {
	if c.Broker != "" {
		if msg := checkBrokerURL(c.Broker); msg != "" {
			p.Addf(config.Join(path, "broker"), "%s", msg)
		} else if c.UsesTLS() && c.TLS == nil {
			p.Addf(config.Join(path, "tls"), "%s asks for TLS: add a [mqtt.tls] table with ca_file (and cert_file, key_file for a client certificate)", c.Broker)
		} else if !c.UsesTLS() && c.TLS != nil {
			p.Addf(config.Join(path, "broker"), "[mqtt.tls] is set but %s is plain TCP; write ssl://host:8883", c.Broker)
		}
	}
	if c.TopicRoot != "" {
		if msg := checkTopicRoot(c.TopicRoot); msg != "" {
			p.Addf(config.Join(path, "topic_root"), "%s", msg)
		}
	}
	if strings.ContainsAny(c.ClientID, "\x00") {
		p.Addf(config.Join(path, "client_id"), "contains a NUL character; use printable characters")
	}
	if c.PasswordFile != "" && c.Username == "" {
		p.Addf(config.Join(path, "username"), "password_file is set but username is empty; set username (MQTT sends no password without a user name)")
	}
	if c.TelemetryPeriod != 0 && c.TelemetryPeriod < MinTelemetryPeriod {
		p.Addf(config.Join(path, "telemetry_period"), "%s is below %s; write at least \"100ms\" (or leave it out for %s)", c.TelemetryPeriod, MinTelemetryPeriod, DefaultTelemetryPeriod)
	}
	if c.QueueSize < 0 || c.QueueSize > MaxQueueSize {
		p.Addf(config.Join(path, "queue_size"), "%d is out of range; write 1..%d messages (or leave it out for %d)", c.QueueSize, MaxQueueSize, DefaultQueueSize)
	}
	if c.QueueMB < 0 || c.QueueMB > MaxQueueMB {
		p.Addf(config.Join(path, "queue_mb"), "%d is out of range; write 1..%d MiB (or leave it out for %d)", c.QueueMB, MaxQueueMB, DefaultQueueMB)
	}
	if c.ReplayRate < 0 || c.ReplayRate > MaxReplayRate {
		p.Addf(config.Join(path, "replay_rate"), "%d is out of range; write 1..%d messages per second (or leave it out for %d)", c.ReplayRate, MaxReplayRate, DefaultReplayRate)
	}
	switch c.Format {
	case "", FormatJSON:
		if c.Sparkplug != nil {
			p.Addf(config.Join(path, "sparkplug"), "[mqtt.sparkplug] is set but format is json; add format = \"sparkplug\" or remove the table")
		}
	case FormatSparkplug:
		if c.Sparkplug != nil {
			c.Sparkplug.validate(p, config.Join(path, "sparkplug"))
		}
	default:
		p.Addf(config.Join(path, "format"), "%q is not a format; write \"json\" or \"sparkplug\"", c.Format)
	}
	if c.TLS != nil {
		c.TLS.validate(p, config.Join(path, "tls"))
	}
}

func (t *TLSConfig) validate(p *config.Problems, path string) {
	if (t.CertFile == "") != (t.KeyFile == "") {
		p.Addf(path, "give both cert_file and key_file (the client certificate and its key), or neither")
	}
	if strings.ContainsAny(t.ServerName, " /:") {
		p.Addf(config.Join(path, "server_name"), "%q is not a host name; write the name in the broker's certificate, e.g. \"mqtt.ops.example.net\"", t.ServerName)
	}
}

func (s *SparkplugConfig) validate(p *config.Problems, path string) {
	if s.GroupID != "" {
		if msg := checkSparkplugID(s.GroupID); msg != "" {
			p.Addf(config.Join(path, "group_id"), "%s", msg)
		}
	}
	if s.PrimaryHost != "" {
		if msg := checkSparkplugID(s.PrimaryHost); msg != "" {
			p.Addf(config.Join(path, "primary_host"), "%s", msg)
		}
	}
}

// checkSparkplugID returns what is wrong with one Sparkplug topic level.
func checkSparkplugID(s string) string {
	if strings.ContainsAny(s, "/+#\x00") {
		return strconv.Quote(s) + " contains '/', '+', '#' or NUL; a Sparkplug id is one topic level"
	}
	return ""
}

// checkBrokerURL returns what is wrong with a broker address, or "".
func checkBrokerURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.Opaque != "" {
		return strconv.Quote(s) + " is not a URL; write tcp://host:1883 or ssl://host:8883"
	}
	switch {
	case u.Scheme == "tcp", tlsScheme(u.Scheme):
	default:
		return "scheme " + strconv.Quote(u.Scheme) + " is not supported; write tcp://host:1883 or ssl://host:8883"
	}
	if u.User != nil {
		return "the URL carries credentials; set username and password_file instead"
	}
	if u.Hostname() == "" {
		return "no host in " + strconv.Quote(s) + "; write " + u.Scheme + "://host:port"
	}
	port := u.Port()
	if port == "" {
		return "no port in " + strconv.Quote(s) + "; write " + u.Scheme + "://" + u.Hostname() + ":" + map[bool]string{true: "8883", false: "1883"}[tlsScheme(u.Scheme)]
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "port " + strconv.Quote(port) + " is not 1..65535"
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "unexpected path or query in " + strconv.Quote(s) + "; write " + u.Scheme + "://host:port only"
	}
	return ""
}

// checkTopicRoot returns what is wrong with a topic root, or "".
func checkTopicRoot(s string) string {
	switch {
	case strings.ContainsAny(s, "+#"):
		return strconv.Quote(s) + " contains a wildcard (+ or #); topics we publish to must be literal"
	case strings.HasPrefix(s, "/") || strings.HasSuffix(s, "/"):
		return strconv.Quote(s) + " starts or ends with '/'; write it without, e.g. \"acme/sites\""
	case strings.Contains(s, "//"):
		return strconv.Quote(s) + " has an empty level (//); remove it"
	case strings.HasPrefix(s, "$"):
		return strconv.Quote(s) + " starts with '$', which brokers reserve for their own topics"
	case strings.ContainsRune(s, 0):
		return "contains a NUL character"
	}
	return ""
}
