package node

import (
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/drivers/mqtt"
)

// Config is a node file: everything `siteagent node` needs.
type Config struct {
	Node  NodeSection  `toml:"node,required"`
	Lease LeaseSection `toml:"lease,required"`
	GPU   GPUSection   `toml:"gpu"`
	MQTT  mqtt.Config  `toml:"mqtt,required"`
}

// NodeSection names the node and its site.
type NodeSection struct {
	// Site: the site id of the controller that grants this node power
	// (grants from any other site are refused).
	Site string `toml:"site,required"`
	// ID: this node's name in topics and grants, unique on the site.
	ID string `toml:"id,required"`
	// TelemetryPeriod: how often the GPUs are read, drift is checked and
	// telemetry is published; 1s unless set.
	TelemetryPeriod time.Duration `toml:"telemetry_period"`
	// StateFile keeps the last grant across restarts, so a restarted node
	// re-applies a lease that is still running; "" keeps nothing.
	StateFile string `toml:"state_file"`
}

// LeaseSection: what the node does without a live grant.
type LeaseSection struct {
	// SafeCapW or SafeCapPct (of each GPU's maximum): the cap every GPU
	// falls to when its lease ends unrenewed, and holds from start until
	// the first grant. Exactly one.
	SafeCapW   *float64 `toml:"safe_cap_w"`
	SafeCapPct *float64 `toml:"safe_cap_pct"`
	// Default: the lease of a grant that names none; 10s unless set.
	Default time.Duration `toml:"default"`
	// Max: longer leases are shortened to this; 60s unless set.
	Max time.Duration `toml:"max"`
	// MaxClockSkew: how far the site's clock may differ from the node's
	// before a grant's issue time is distrusted; 2s unless set.
	MaxClockSkew time.Duration `toml:"max_clock_skew"`
}

// GPUSection selects and tunes the GPU backend.
type GPUSection struct {
	// Backend: "nvml" (the host's GPUs, the default) or "mock" (simulated
	// GPUs: for tests and demos only, it controls nothing real).
	Backend string `toml:"backend"`
	// DryRun: read everything and log the caps that would be set.
	DryRun bool `toml:"dry_run"`
	// RestoreOnExit: "keep" the last caps (the default), put every GPU
	// back to its "default" limit, or to the "safe" cap.
	RestoreOnExit string `toml:"restore_on_exit"`
	// Mock describes the simulated server (backend = "mock" only).
	Mock *MockSection `toml:"mock"`
}

// MockSection is the simulated GPU server of backend = "mock".
type MockSection struct {
	GPUs         int           `toml:"gpus"`
	Model        string        `toml:"model"`
	MinW         int           `toml:"min_w"`
	MaxW         int           `toml:"max_w"`
	DefaultW     int           `toml:"default_w"`
	DemandPct    *float64      `toml:"demand_pct"`
	Latency      time.Duration `toml:"latency"`
	InstantPower bool          `toml:"instant_power"`
}

// Backends.
const (
	BackendNVML = "nvml"
	BackendMock = "mock"
)

// Restore policies.
const (
	RestoreKeep    = "keep"
	RestoreDefault = "default"
	RestoreSafe    = "safe"
)

// Defaults.
const (
	DefaultTelemetryPeriod = time.Second
	DefaultLease           = 10 * time.Second
	DefaultMaxLease        = 60 * time.Second
	DefaultMaxClockSkew    = 2 * time.Second
)

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// LoadFile reads and checks a node file; on any problem it returns a
// *config.Error listing every one, each with file:line.
func LoadFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Load(path, data)
}

// Load checks a node file's contents; name is used in messages.
func Load(name string, data []byte) (*Config, error) {
	var c Config
	p := config.Decode(name, data, &c)
	if p.Syntax() {
		return nil, p.Err()
	}
	c.applyDefaults()
	c.validate(p)
	if err := p.Err(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) applyDefaults() {
	n, l, g := &c.Node, &c.Lease, &c.GPU
	if n.TelemetryPeriod == 0 {
		n.TelemetryPeriod = DefaultTelemetryPeriod
	}
	if l.Default == 0 {
		l.Default = DefaultLease
	}
	if l.Max == 0 {
		l.Max = DefaultMaxLease
	}
	if l.MaxClockSkew == 0 {
		l.MaxClockSkew = DefaultMaxClockSkew
	}
	if g.Backend == "" {
		g.Backend = BackendNVML
	}
	if g.RestoreOnExit == "" {
		g.RestoreOnExit = RestoreKeep
	}
	if c.MQTT.ClientID == "" {
		c.MQTT.ClientID = "siteagent-node-" + n.Site + "-" + n.ID
	}
	c.MQTT = c.MQTT.WithDefaults(n.ID)
}

func (c *Config) validate(p *config.Problems) {
	n, l, g := &c.Node, &c.Lease, &c.GPU
	if !idPattern.MatchString(n.Site) {
		p.Addf("node.site", "%q is not a site id: use letters, digits, '-' and '_' (the site controller's [site] id)", n.Site)
	}
	if !idPattern.MatchString(n.ID) {
		p.Addf("node.id", "%q is not a usable node id: use letters, digits, '.', '-' and '_' (it becomes an MQTT topic level)", n.ID)
	}
	if n.TelemetryPeriod < 100*time.Millisecond || n.TelemetryPeriod > time.Minute {
		p.Addf("node.telemetry_period", "%s is outside 100ms..1m; 1s suits most sites", n.TelemetryPeriod)
	}
	switch {
	case (l.SafeCapW == nil) == (l.SafeCapPct == nil):
		p.Addf("lease", "give exactly one of safe_cap_w (watts per GPU) or safe_cap_pct (of each GPU's maximum): the cap the GPUs fall to when a lease ends unrenewed")
	case l.SafeCapW != nil && !(*l.SafeCapW > 0 && *l.SafeCapW < 5000):
		p.Addf("lease.safe_cap_w", "%g W is not a GPU power cap; write the watts per GPU, e.g. 250", *l.SafeCapW)
	case l.SafeCapPct != nil && !(*l.SafeCapPct >= 0 && *l.SafeCapPct <= 100):
		p.Addf("lease.safe_cap_pct", "%g is outside 0..100 (0 holds every GPU at its minimum)", *l.SafeCapPct)
	}
	if l.Default < 500*time.Millisecond || l.Default > l.Max {
		p.Addf("lease.default", "%s must lie between 500ms and lease.max (%s)", l.Default, l.Max)
	}
	if l.Max > 10*time.Minute {
		p.Addf("lease.max", "%s is too long for a fail-safe: a node whose controller died keeps its grant that long; 60s or less", l.Max)
	}
	if l.MaxClockSkew < 0 || l.MaxClockSkew > time.Minute {
		p.Addf("lease.max_clock_skew", "%s is outside 0..1m; keep the hosts on NTP and leave it at 2s", l.MaxClockSkew)
	}
	switch g.Backend {
	case BackendNVML:
		if g.Mock != nil {
			p.Addf("gpu.mock", "[gpu.mock] only applies with backend = \"mock\"; remove it")
		}
	case BackendMock:
		if g.Mock == nil {
			g.Mock = &MockSection{}
		}
		g.Mock.validate(p, "gpu.mock")
	default:
		p.Addf("gpu.backend", "%q is not a backend: use \"nvml\" (this host's GPUs) or \"mock\" (simulated GPUs, for tests and demos only)", g.Backend)
	}
	switch g.RestoreOnExit {
	case RestoreKeep, RestoreDefault, RestoreSafe:
	default:
		p.Addf("gpu.restore_on_exit", "%q: use \"keep\" (leave the last caps), \"default\" (each GPU's default limit) or \"safe\" (the safe cap)", g.RestoreOnExit)
	}
	c.MQTT.Validate(p, "mqtt")
	if p.Has("mqtt.telemetry_period") {
		p.Addf("mqtt.telemetry_period", "a node reports every node.telemetry_period; move it there")
	}
	if c.MQTT.Broker == "" {
		p.Addf("mqtt.broker", "required: the site's broker, e.g. \"tcp://10.20.0.5:1883\"")
	}
}

func (m *MockSection) validate(p *config.Problems, path string) {
	key := func(k string) string { return config.Join(path, k) }
	if m.GPUs < 0 || m.GPUs > 8 {
		p.Addf(key("gpus"), "%d: the mock server has 1..8 GPUs (8 unless set)", m.GPUs)
	}
	if m.Model != "" && m.Model != "a100" && m.Model != "h100" {
		p.Addf(key("model"), "%q: use \"a100\" (100..400 W) or \"h100\" (200..700 W)", m.Model)
	}
	for _, f := range []struct {
		k string
		v int
	}{{"min_w", m.MinW}, {"max_w", m.MaxW}, {"default_w", m.DefaultW}} {
		if f.v < 0 || f.v > 5000 {
			p.Addf(key(f.k), "%d W is not a GPU power limit", f.v)
		}
	}
	if m.MinW > 0 && m.MaxW > 0 && m.MinW > m.MaxW {
		p.Addf(key("min_w"), "%d W is above max_w %d W", m.MinW, m.MaxW)
	}
	if m.DemandPct != nil && !(*m.DemandPct >= 0 && *m.DemandPct <= 100) {
		p.Addf(key("demand_pct"), "%g is outside 0..100", *m.DemandPct)
	}
	if m.Latency < 0 || m.Latency > time.Second {
		p.Addf(key("latency"), "%s is outside 0..1s (real NVML calls take 10-20ms)", m.Latency)
	}
}

// Demand is the mock's workload as a fraction (90 % unless set).
func (m *MockSection) Demand() float64 {
	if m.DemandPct == nil {
		return 0.9
	}
	return *m.DemandPct / 100
}

// SafeCapMW is the safe cap of a GPU with the given constraints (mW),
// clamped into them.
func (l *LeaseSection) SafeCapMW(minMW, maxMW uint32) uint32 {
	var w float64
	if l.SafeCapW != nil {
		w = *l.SafeCapW * 1000
	} else {
		w = float64(maxMW) * *l.SafeCapPct / 100
	}
	w = math.Max(float64(minMW), math.Min(float64(maxMW), math.Round(w)))
	return uint32(w)
}

// Summarize writes what check prints for a good file.
func (c *Config) Summarize(w io.Writer) error {
	n, l, g := &c.Node, &c.Lease, &c.GPU
	fmt.Fprintf(w, "node %s of site %s, telemetry every %s\n", n.ID, n.Site, n.TelemetryPeriod)
	safe := ""
	if l.SafeCapW != nil {
		safe = fmt.Sprintf("%g W per GPU", *l.SafeCapW)
	} else {
		safe = fmt.Sprintf("%g %% of each GPU's maximum", *l.SafeCapPct)
	}
	fmt.Fprintf(w, "lease: safe cap %s; default lease %s, at most %s, clock skew allowed %s\n", safe, l.Default, l.Max, l.MaxClockSkew)
	state := n.StateFile
	if state == "" {
		state = "none (a restart starts at the safe cap)"
	}
	fmt.Fprintf(w, "last grant kept in: %s\n", state)
	fmt.Fprintf(w, "gpu: backend %s", g.Backend)
	if g.Backend == BackendMock {
		fmt.Fprint(w, " (SIMULATED GPUs: for tests and demos only)")
	}
	if g.DryRun {
		fmt.Fprint(w, ", DRY RUN (caps are logged, never set)")
	}
	fmt.Fprintf(w, ", on exit: %s\n", g.RestoreOnExit)
	t := c.topicsRoot()
	fmt.Fprintf(w, "mqtt: %s as %s; grants on %s/grant, acks, telemetry, inventory and events beside it\n", c.MQTT.Broker, c.MQTT.ClientID, t)
	return nil
}

// topicsRoot is <root>/<site>/nodes/<node>.
func (c *Config) topicsRoot() string {
	return c.MQTT.TopicRoot + "/" + c.Node.Site + "/nodes/" + c.Node.ID
}
