package opcua

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/drivers/opcua/uacert"
)

// Security policies by the short names the site file uses.
var policies = map[string]struct {
	uri    string
	secure bool // offers integrity and confidentiality by today's standards
}{
	"None":                  {ua.SecurityPolicyURINone, false},
	"Basic128Rsa15":         {ua.SecurityPolicyURIBasic128Rsa15, false},
	"Basic256":              {ua.SecurityPolicyURIBasic256, false},
	"Basic256Sha256":        {ua.SecurityPolicyURIBasic256Sha256, true},
	"Aes128_Sha256_RsaOaep": {ua.SecurityPolicyURIAes128Sha256RsaOaep, true},
	"Aes256_Sha256_RsaPss":  {ua.SecurityPolicyURIAes256Sha256RsaPss, true},
}

const policyList = "Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss (None, Basic128Rsa15 and Basic256 need allow_insecure = true)"

// PolicyURI returns the URI of a policy's short name.
func PolicyURI(name string) (string, bool) {
	p, ok := policies[name]
	return p.uri, ok
}

// PolicyName returns the short name of a policy URI.
func PolicyName(uri string) string {
	for n, p := range policies {
		if p.uri == uri {
			return n
		}
	}
	return uri
}

// Insecure reports whether a policy is one the agent refuses unless told
// to accept it.
func Insecure(policy string) bool {
	p, ok := policies[policy]
	return ok && !p.secure
}

// ParseMode reads a security mode as written in the site file.
func ParseMode(s string) (ua.MessageSecurityMode, bool) {
	switch s {
	case "None":
		return ua.MessageSecurityModeNone, true
	case "Sign":
		return ua.MessageSecurityModeSign, true
	case "SignAndEncrypt":
		return ua.MessageSecurityModeSignAndEncrypt, true
	}
	return ua.MessageSecurityModeInvalid, false
}

// ModeName is the site file's name of a security mode.
func ModeName(m ua.MessageSecurityMode) string {
	switch m {
	case ua.MessageSecurityModeNone:
		return "None"
	case ua.MessageSecurityModeSign:
		return "Sign"
	case ua.MessageSecurityModeSignAndEncrypt:
		return "SignAndEncrypt"
	}
	return m.String()
}

// WithDefaults returns a copy of c with every unset field at its default.
func (c *SourceConfig) WithDefaults() SourceConfig {
	d := *c
	if d.Mode == "" {
		d.Mode = ModeSubscribe
	}
	if d.PublishingInterval == 0 {
		d.PublishingInterval = DefaultPublishingInterval
	}
	if d.SamplingInterval == 0 {
		d.SamplingInterval = d.PublishingInterval
	}
	if d.QueueSize == 0 {
		d.QueueSize = DefaultQueueSize
	}
	if d.KeepAliveCount == 0 {
		d.KeepAliveCount = DefaultKeepAliveCount
	}
	if d.PollPeriod == 0 {
		d.PollPeriod = DefaultPollPeriod
	}
	if d.Timeout == 0 {
		d.Timeout = DefaultTimeout
	}
	if d.Timestamps == "" {
		d.Timestamps = TimestampsSource
	}
	if d.SecurityPolicy == "" {
		d.SecurityPolicy = DefaultSecurityPolicy
	}
	if d.SecurityMode == "" {
		d.SecurityMode = DefaultSecurityMode
		if d.SecurityPolicy == "None" {
			d.SecurityMode = "None"
		}
	}
	d.Points = make([]PointConfig, len(c.Points))
	for i, p := range c.Points {
		if p.Scale == nil {
			one := 1.0
			p.Scale = &one
		}
		if p.Deadband == nil {
			db := d.Deadband
			p.Deadband = &db
		}
		d.Points[i] = p
	}
	return d
}

// RefreshPeriod is how often the source's values are expected to be
// renewed while all is well: the keep-alive period of a subscription, the
// poll period when polling. A point's stale_after defaults to three of
// these.
func (c *SourceConfig) RefreshPeriod() time.Duration {
	d := c.WithDefaults()
	if d.Mode == ModePoll {
		return d.PollPeriod
	}
	return d.PublishingInterval * time.Duration(d.KeepAliveCount)
}

// Validate checks the source at path (e.g. "opcua[0]") and its points.
// It reads no file: certificates and passwords are read when the source
// connects, so a renewed certificate is picked up at the next reconnect.
func (c *SourceConfig) Validate(p *config.Problems, path string) {
	d := c.WithDefaults()
	key := func(k string) string { return config.Join(path, k) }
	checkName(p, key("name"), c.Name, "source", `name = "bms"`)
	checkEndpoint(p, key("endpoint"), c.Endpoint)
	if d.Mode != ModeSubscribe && d.Mode != ModePoll {
		p.Addf(key("mode"), `mode %q is unknown; write "subscribe" (monitored items) or "poll" (Read every poll_period)`, c.Mode)
	}
	for _, f := range []struct {
		k string
		v time.Duration
	}{{"publishing_interval", c.PublishingInterval}, {"sampling_interval", c.SamplingInterval}, {"poll_period", c.PollPeriod}, {"timeout", c.Timeout}, {"verify_after", c.VerifyAfter}} {
		if f.v < 0 || (f.v == 0 && p.Has(key(f.k))) {
			p.Addf(key(f.k), "%s must be above zero; write a duration such as \"500ms\", or remove %s for the default", f.v, f.k)
		}
	}
	if d.PublishingInterval > 0 && d.PublishingInterval < 10*time.Millisecond {
		p.Addf(key("publishing_interval"), "%s is below 10ms, faster than OPC UA servers publish; 50ms is a fast setting", d.PublishingInterval)
	}
	if c.KeepAliveCount == 0 && p.Has(key("keepalive_count")) {
		p.Addf(key("keepalive_count"), "must be at least 1; remove it for %d", DefaultKeepAliveCount)
	}
	if c.QueueSize == 0 && p.Has(key("queue_size")) {
		p.Addf(key("queue_size"), "must be at least 1; remove it for 1")
	}
	if c.Deadband < 0 || math.IsNaN(c.Deadband) || math.IsInf(c.Deadband, 0) {
		p.Addf(key("deadband"), "%g must be zero or a positive finite change", c.Deadband)
	}
	if d.Timestamps != TimestampsSource && d.Timestamps != TimestampsServer {
		p.Addf(key("timestamps"), `%q is unknown; write "source" (the device's time) or "server" (the server's)`, c.Timestamps)
	}
	for i, s := range c.AcceptStatus {
		if _, err := ParseStatus(s); err != nil {
			p.Addf(config.Index(key("accept_status"), i), "%v", err)
		}
	}
	c.validateSecurity(p, path, d)

	seen := map[string]int{}
	for i := range c.Points {
		pp := config.Index(key("points"), i)
		name := c.Points[i].Name
		if j, dup := seen[name]; dup && name != "" {
			p.Addf(config.Join(pp, "name"), "point %q is already defined at points[%d]; give each point of a source its own name", name, j)
		} else {
			seen[name] = i
		}
		d.Points[i].validate(p, pp)
	}
}

func (c *SourceConfig) validateSecurity(p *config.Problems, path string, d SourceConfig) {
	key := func(k string) string { return config.Join(path, k) }
	pol, polOK := policies[d.SecurityPolicy]
	mode, modeOK := ParseMode(d.SecurityMode)
	switch {
	case !polOK:
		p.Addf(key("security_policy"), "policy %q is unknown; write %s", c.SecurityPolicy, policyList)
	case !pol.secure && !d.AllowInsecure:
		p.Addf(key("security_policy"), "%s is refused: it does not protect the connection by today's standards; use %s, or set allow_insecure = true if this server offers nothing better", d.SecurityPolicy, policyList)
	}
	switch {
	case !modeOK:
		p.Addf(key("security_mode"), `mode %q is unknown; write "SignAndEncrypt" or "Sign"`, c.SecurityMode)
	case polOK && d.SecurityPolicy == "None" && mode != ua.MessageSecurityModeNone:
		p.Addf(key("security_mode"), `policy None cannot %s; remove security_mode or choose a security policy`, d.SecurityMode)
	case polOK && d.SecurityPolicy != "None" && mode == ua.MessageSecurityModeNone:
		p.Addf(key("security_mode"), `mode None leaves %s unused; write "SignAndEncrypt" or "Sign"`, d.SecurityPolicy)
	}
	secure := polOK && d.SecurityPolicy != "None"
	if secure {
		if c.CertificateFile == "" || c.PrivateKeyFile == "" {
			p.Addf(key("certificate_file"), "policy %s needs the agent's certificate and key: set certificate_file and private_key_file (`siteagent opcua gen-cert` makes them)", d.SecurityPolicy)
		}
		if c.ServerCertificateFile == "" && c.ServerFingerprint == "" {
			p.Addf(key("server_fingerprint"), "pin the server's certificate with server_fingerprint (SHA-256; `siteagent opcua browse` prints it) or server_certificate_file: the agent does not check certificate chains, so an unpinned server could be anyone")
		}
	} else if (c.CertificateFile == "") != (c.PrivateKeyFile == "") {
		p.Addf(key("certificate_file"), "set both certificate_file and private_key_file, or neither")
	}
	if c.ServerCertificateFile != "" && c.ServerFingerprint != "" {
		p.Addf(key("server_fingerprint"), "pin the server either by server_fingerprint or by server_certificate_file, not both")
	}
	if c.ServerFingerprint != "" {
		if _, err := uacert.ParseFingerprint(c.ServerFingerprint); err != nil {
			p.Addf(key("server_fingerprint"), "%v", err)
		}
	}
	user := c.Username != "" || c.PasswordFile != ""
	cert := c.UserCertificateFile != "" || c.UserPrivateKeyFile != ""
	switch {
	case user && cert:
		p.Addf(key("username"), "log in either with a password (username, password_file) or with a user certificate (user_certificate_file, user_private_key_file), not both")
	case user && (c.Username == "" || c.PasswordFile == ""):
		p.Addf(key("username"), "a password login needs both username and password_file (a file, or a systemd credential name)")
	case cert && (c.UserCertificateFile == "" || c.UserPrivateKeyFile == ""):
		p.Addf(key("user_certificate_file"), "a certificate login needs both user_certificate_file and user_private_key_file")
	}
	if (user || cert) && polOK && d.SecurityPolicy == "None" {
		p.Addf(key("security_policy"), "a login over policy None would send the credentials unprotected; choose a security policy, or log in anonymously")
	}
}

func (pc *PointConfig) validate(p *config.Problems, path string) {
	checkName(p, config.Join(path, "name"), pc.Name, "point", `name = "soc_pct"`)
	pc.Meta.Validate(p, path)
	switch {
	case pc.Node == "" && pc.Path == "":
		p.Addf(path, `say where the value is: node = "ns=2;s=Battery.SoC" or path = "2:BMS/2:Battery/2:SoC" (`+"`siteagent opcua browse`"+` lists both)`)
	case pc.Node != "" && pc.Path != "":
		p.Addf(config.Join(path, "path"), "give either node or path, not both")
	case pc.Node != "":
		if _, err := parseNode(pc.Node); err != nil {
			p.Addf(config.Join(path, "node"), "%v", err)
		}
	default:
		if _, err := parsePath(pc.Path); err != nil {
			p.Addf(config.Join(path, "path"), "%v", err)
		}
	}
	if s := *pc.Scale; s == 0 || math.IsNaN(s) || math.IsInf(s, 0) {
		p.Addf(config.Join(path, "scale"), "scale %g would make every value useless; write a finite non-zero factor, or remove scale for 1", s)
	}
	if math.IsNaN(pc.Offset) || math.IsInf(pc.Offset, 0) {
		p.Addf(config.Join(path, "offset"), "offset %g must be a finite number", pc.Offset)
	}
	if db := *pc.Deadband; db < 0 || math.IsNaN(db) || math.IsInf(db, 0) {
		p.Addf(config.Join(path, "deadband"), "%g must be zero or a positive finite change", db)
	}
}

func checkName(p *config.Problems, key, name, what, example string) {
	switch {
	case name == "":
		p.Addf(key, "give the %s a name, e.g. %s", what, example)
	case strings.ContainsAny(name, ". \t\n\"'"):
		p.Addf(key, "%s name %q must not contain dots, spaces or quotes (points are named \"source.point\"); rename it", what, name)
	}
}

func checkEndpoint(p *config.Problems, key, raw string) {
	const hint = "write opc.tcp://host:port, e.g. opc.tcp://10.0.0.7:4840"
	u, err := url.Parse(raw)
	if err != nil {
		p.Addf(key, "cannot read %q as a URL; %s", raw, hint)
		return
	}
	if u.Scheme != "opc.tcp" {
		p.Addf(key, "scheme %q is not supported (OPC UA binary over TCP only); %s", u.Scheme, hint)
		return
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		p.Addf(key, "%q carries more than a host, a port and a path; set username and password_file for a login; %s", raw, hint)
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

// ParseStatus reads a status code by name ("UncertainLastUsableValue",
// with or without the "Status" prefix) or number ("0x40900000"). Bad
// codes are refused: they say the value must not be used.
func ParseStatus(s string) (ua.StatusCode, error) {
	var code ua.StatusCode
	found := false
	if n, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "0x"), 16, 32); err == nil && strings.HasPrefix(strings.ToLower(s), "0x") {
		code, found = ua.StatusCode(n), true
	} else {
		want := strings.TrimPrefix(s, "Status")
		for c, d := range ua.StatusCodes {
			if strings.TrimPrefix(d.Name, "Status") == want {
				code, found = c, true
				break
			}
		}
	}
	switch {
	case !found:
		return 0, fmt.Errorf("%q is not an OPC UA status code; write a name such as \"UncertainLastUsableValue\" or a number such as \"0x40900000\"", s)
	case severity(code) == sevBad:
		return 0, fmt.Errorf("%s is a Bad status: the server says the value must not be used, so it cannot be accepted; list only Good or Uncertain codes", statusName(code))
	}
	return code, nil
}

// statusName is a status code's name without the "Status" prefix.
func statusName(c ua.StatusCode) string {
	if d, ok := ua.StatusCodes[c&0xFFFF0000]; ok {
		return strings.TrimPrefix(d.Name, "Status")
	}
	return fmt.Sprintf("0x%08X", uint32(c))
}

type sev uint8

const (
	sevGood sev = iota
	sevUncertain
	sevBad
)

// severity is the top two bits of a status code.
func severity(c ua.StatusCode) sev {
	switch uint32(c) >> 30 {
	case 0:
		return sevGood
	case 1:
		return sevUncertain
	}
	return sevBad
}

// Describe says in one line how the source reads its server, for
// `check-config`'s summary.
func (c *SourceConfig) Describe() string {
	d := c.WithDefaults()
	how := fmt.Sprintf("subscribe every %s (keep-alive %s)", d.PublishingInterval, d.PublishingInterval*time.Duration(d.KeepAliveCount))
	if d.Mode == ModePoll {
		how = "poll every " + d.PollPeriod.String()
	}
	login := "anonymous"
	switch {
	case d.Username != "":
		login = "user " + d.Username
	case d.UserCertificateFile != "":
		login = "user certificate"
	}
	pin := "unpinned"
	switch {
	case d.ServerFingerprint != "":
		pin = "server pinned by fingerprint"
	case d.ServerCertificateFile != "":
		pin = "server pinned by " + d.ServerCertificateFile
	}
	n := len(d.Points)
	points := strconv.Itoa(n) + " points"
	if n == 1 {
		points = "1 point"
	}
	return fmt.Sprintf("%s %s/%s, %s, %s, %s: %s", d.Endpoint, d.SecurityPolicy, d.SecurityMode, login, pin, how, points)
}
