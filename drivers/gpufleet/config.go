package gpufleet

import (
	"path"
	"regexp"
	"time"

	"github.com/siteagent/siteagent/agent/config"
)

// Config is a throttle group's [groups.gpu_nodes] table: the GPU servers
// (each running `siteagent node`) that make up the group.
type Config struct {
	// Nodes by id, or Pattern: a glob on node ids ("gpu-train-*", path.Match
	// syntax). Exactly one.
	Nodes   []string `toml:"nodes"`
	Pattern string   `toml:"pattern"`
	// Split: how the group's cap is shared, "demand" (by what each GPU
	// draws, a GPU whose cap bites asking for a tenth of its range more;
	// the default)
	// or "even" (the same fraction of every GPU's range between its floor
	// and ceiling).
	Split string `toml:"split"`
	// Lease: how long a grant holds on a node; the fleet renews every
	// third of it while the control loop runs. 10s unless set.
	Lease time.Duration `toml:"lease"`
	// StaleAfter: a node not heard from for this long counts at its
	// maximum power; 3s unless set.
	StaleAfter time.Duration `toml:"stale_after"`
}

// Split policies.
const (
	SplitDemand = "demand"
	SplitEven   = "even"
)

// Defaults.
const (
	DefaultLease      = 10 * time.Second
	DefaultStaleAfter = 3 * time.Second
)

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// WithDefaults fills the unset keys.
func (c Config) WithDefaults() Config {
	if c.Split == "" {
		c.Split = SplitDemand
	}
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	if c.StaleAfter == 0 {
		c.StaleAfter = DefaultStaleAfter
	}
	return c
}

// Validate checks the table at path of a group of units nodes.
func (c *Config) Validate(p *config.Problems, at string, units int) {
	key := func(k string) string { return config.Join(at, k) }
	switch {
	case len(c.Nodes) > 0 && c.Pattern != "":
		p.Addf(at, "give nodes (a list of ids) or pattern (a glob), not both")
	case len(c.Nodes) == 0 && c.Pattern == "":
		p.Addf(at, "name the group's GPU servers: nodes = [\"gpu-01\", ...] or pattern = \"gpu-train-*\" (their [node] id)")
	}
	seen := map[string]bool{}
	for i, id := range c.Nodes {
		if !nodeIDPattern.MatchString(id) {
			p.Addf(config.Index(key("nodes"), i), "%q is not a node id: letters, digits, '.', '-' and '_'", id)
		}
		if seen[id] {
			p.Addf(config.Index(key("nodes"), i), "node %q is listed twice", id)
		}
		seen[id] = true
	}
	if len(c.Nodes) > 0 && units != len(c.Nodes) {
		p.Addf(config.Join(config.Parent(at), "units"), "a gpu_nodes group counts its nodes: %d nodes are listed, so set units = %d (and unit_kw to one node's GPU power)", len(c.Nodes), len(c.Nodes))
	}
	if c.Pattern != "" {
		if _, err := path.Match(c.Pattern, ""); err != nil {
			p.Addf(key("pattern"), "%q is not a glob: %v", c.Pattern, err)
		}
	}
	switch c.Split {
	case "", SplitDemand, SplitEven:
	default:
		p.Addf(key("split"), "%q: use \"demand\" (by what each GPU draws) or \"even\" (the same share of every GPU's range)", c.Split)
	}
	if c.Lease != 0 && (c.Lease < time.Second || c.Lease > 10*time.Minute) {
		p.Addf(key("lease"), "%s is outside 1s..10m; 10s lets a node fall to its safe cap soon after the controller stops", c.Lease)
	}
	if c.StaleAfter != 0 && (c.StaleAfter < 100*time.Millisecond || c.StaleAfter > time.Minute) {
		p.Addf(key("stale_after"), "%s is outside 100ms..1m; three node telemetry periods suit most sites", c.StaleAfter)
	}
}

// matches reports whether node id belongs to the group.
func (c *Config) matches(id string) bool {
	if c.Pattern != "" {
		ok, _ := path.Match(c.Pattern, id)
		return ok
	}
	for _, n := range c.Nodes {
		if n == id {
			return true
		}
	}
	return false
}
