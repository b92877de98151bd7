package opcua

import (
	"time"

	"github.com/siteagent/siteagent/agent/point"
)

// SourceConfig is one OPC UA server (a BMS, a chiller plant controller, a
// battery's EMS) that the agent reads: an [[opcua]] table in the site file.
type SourceConfig struct {
	// Name prefixes its points: point "soc_pct" of source "bms" is
	// "bms.soc_pct" everywhere else in the file.
	Name string `toml:"name,required"`
	// Endpoint is the server's URL: opc.tcp://host:4840[/path].
	Endpoint string `toml:"endpoint,required"`

	// Mode is "subscribe" (monitored items; the default) or "poll" (Read
	// every poll_period). A subscribing source polls the items the server
	// will not monitor, and falls back to polling if the server offers no
	// subscriptions.
	Mode string `toml:"mode"`
	// PublishingInterval of the subscription: how often the server sends
	// what changed; 500ms unless set.
	PublishingInterval time.Duration `toml:"publishing_interval"`
	// SamplingInterval at which the server samples each item; the
	// publishing interval unless set.
	SamplingInterval time.Duration `toml:"sampling_interval"`
	// QueueSize of each monitored item (values kept between two
	// publishes); 1 unless set: only the newest value matters.
	QueueSize uint32 `toml:"queue_size"`
	// Deadband (absolute, in the server's units) below which a change is
	// not reported; 0 reports every change. Points may override it.
	Deadband float64 `toml:"deadband"`
	// KeepAliveCount: the server sends a keep-alive after this many empty
	// publishing intervals; 10 unless set. A subscription silent for
	// three keep-alive periods is recreated.
	KeepAliveCount uint32 `toml:"keepalive_count"`
	// PollPeriod between two reads in poll mode (and of items the
	// subscription cannot serve); 1s unless set.
	PollPeriod time.Duration `toml:"poll_period"`
	// Timeout for one request and for connecting; 5s unless set.
	Timeout time.Duration `toml:"timeout"`
	// VerifyAfter: an item the subscription has not reported for this
	// long is read directly; if the server holds a newer value than was
	// delivered, the subscription is recreated. Half of each point's
	// stale_after unless set.
	VerifyAfter time.Duration `toml:"verify_after"`
	// Timestamps that give a value its age: "source" (the device's, the
	// default) or "server" (the server's time of the value; for servers
	// that stamp a value only when it changes, so that a value which is
	// constant but confirmed by the server stays fresh).
	Timestamps string `toml:"timestamps"`
	// AcceptStatus lists status codes beyond Good that make a point good
	// (names such as "UncertainLastUsableValue" or hex such as
	// "0x40900000"). Bad codes cannot be accepted: they carry no value.
	AcceptStatus []string `toml:"accept_status"`

	// SecurityPolicy: Basic256Sha256 (the default), Aes128_Sha256_RsaOaep
	// or Aes256_Sha256_RsaPss; None, Basic128Rsa15 and Basic256 only
	// with allow_insecure = true.
	SecurityPolicy string `toml:"security_policy"`
	// SecurityMode: SignAndEncrypt (the default) or Sign.
	SecurityMode string `toml:"security_mode"`
	// AllowInsecure permits policy None and the SHA-1 policies; the
	// agent warns about it at every start.
	AllowInsecure bool `toml:"allow_insecure"`
	// CertificateFile and PrivateKeyFile: the agent's application
	// certificate (PEM or DER; `siteagent opcua gen-cert` makes one) and
	// its RSA key. Required unless the policy is None.
	CertificateFile string `toml:"certificate_file"`
	PrivateKeyFile  string `toml:"private_key_file"`
	// ServerCertificateFile (PEM or DER) or ServerFingerprint (SHA-256)
	// pins the server's certificate: a server presenting any other is
	// refused. One of them is required unless the policy is None.
	ServerCertificateFile string `toml:"server_certificate_file"`
	ServerFingerprint     string `toml:"server_fingerprint"`

	// Username and PasswordFile log in with a password (read from a
	// file, or a systemd credential when PasswordFile is a bare name).
	Username     string `toml:"username"`
	PasswordFile string `toml:"password_file"`
	// UserCertificateFile and UserPrivateKeyFile log in with a user
	// certificate. Without a user the session is anonymous.
	UserCertificateFile string `toml:"user_certificate_file"`
	UserPrivateKeyFile  string `toml:"user_private_key_file"`

	// Points read from this server.
	Points []PointConfig `toml:"points"`
}

// PointConfig is one value read from a server.
type PointConfig struct {
	Name string `toml:"name,required"`
	// Node is the node id: "ns=2;s=Chiller1.Power", "ns=3;i=1042",
	// "ns=2;g=<GUID>", or with the namespace by URI,
	// "nsu=urn:vendor:bms;s=Chiller1.Power".
	Node string `toml:"node"`
	// Path is the browse path from the Objects folder instead of a node
	// id: "2:BMS/2:Battery/2:SoC" (namespace index:browse name; a name
	// without an index matches any namespace).
	Path string `toml:"path"`
	// Value = raw*Scale + Offset. Scale 1 unless set.
	Scale  *float64 `toml:"scale"`
	Offset float64  `toml:"offset"`
	// Deadband overrides the source's for this point.
	Deadband *float64 `toml:"deadband"`

	point.Meta
}

// Modes of a source.
const (
	ModeSubscribe = "subscribe"
	ModePoll      = "poll"
)

// Timestamp choices.
const (
	TimestampsSource = "source"
	TimestampsServer = "server"
)

// Defaults for the keys left out of an [[opcua]] table.
const (
	DefaultPublishingInterval = 500 * time.Millisecond
	DefaultQueueSize          = 1
	DefaultKeepAliveCount     = 10
	DefaultPollPeriod         = time.Second
	DefaultTimeout            = 5 * time.Second
	DefaultSecurityPolicy     = "Basic256Sha256"
	DefaultSecurityMode       = "SignAndEncrypt"
	// staleFactor: a point whose stale_after is unset goes stale after this
	// many refresh periods of its source (as the agent counts it).
	staleFactor = 3
)
