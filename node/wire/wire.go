// Package wire is the MQTT protocol between the site controller (its GPU
// fleet groups, drivers/gpufleet) and the node role (`siteagent node`, one
// per GPU server): topic names and JSON payloads. docs/gpu.md describes it
// for people; this file is the one both sides compile against.
//
// Every node has its own topics under <root>/<site>/nodes/<node>/:
//
//	grant      site → node  QoS 1       a lease: a cap per GPU (or per node) with an expiry
//	ack        node → site  QoS 1       what took effect, or why the grant was refused
//	telemetry  node → site  QoS 0       every period: per-GPU power, limits, state, lease
//	inventory  node → site  QoS 1, retained   the GPUs and their constraints
//	events     node → site  QoS 1       lease expired, drift re-applied, held elsewhere, ...
//	status     node → site  QoS 1, retained   online/offline (the Last Will)
package wire

import (
	"strings"
	"time"
)

// Topic kinds.
const (
	KindGrant     = "grant"
	KindAck       = "ack"
	KindTelemetry = "telemetry"
	KindInventory = "inventory"
	KindEvents    = "events"
	KindStatus    = "status"
)

// NodesRoot is <root>/<site>/nodes: the topic root of a site's nodes.
func NodesRoot(root, site string) string { return root + "/" + site + "/nodes" }

// Topic is <root>/<site>/nodes/<node>/<kind>.
func Topic(root, site, node, kind string) string {
	return NodesRoot(root, site) + "/" + node + "/" + kind
}

// Filter subscribes to one kind of message from every node of a site.
func Filter(root, site, kind string) string { return NodesRoot(root, site) + "/+/" + kind }

// Parse splits a node topic into the node id and the kind; ok is false for
// any other topic.
func Parse(root, site, topic string) (node, kind string, ok bool) {
	rest, found := strings.CutPrefix(topic, NodesRoot(root, site)+"/")
	if !found {
		return "", "", false
	}
	node, kind, found = strings.Cut(rest, "/")
	if !found || node == "" || strings.Contains(kind, "/") {
		return "", "", false
	}
	return node, kind, true
}

// Grant is a lease on power: until it expires the node holds its GPUs at
// the caps it names; then it falls to its own safe cap.
type Grant struct {
	Site  string `json:"site"`
	Node  string `json:"node"`
	Group string `json:"group,omitempty"`
	// Epoch names the grantor's run (its start, Unix ms), Seq counts its
	// grants: a node takes only grants newer than the last it took, and a
	// restarted controller's grants supersede the old run's.
	Epoch int64  `json:"epoch"`
	Seq   uint64 `json:"seq"`
	// Issued and LeaseMS: the lease ends LeaseMS after Issued (bounded by
	// the node's own clock and limits).
	Issued  time.Time `json:"issued"`
	LeaseMS int64     `json:"lease_ms"`
	// Caps: one per GPU, by UUID. GPUs not named fall to the safe cap.
	Caps []GPUCap `json:"caps,omitempty"`
	// NodeW: instead of Caps, a cap for the whole node, split evenly over
	// its throttleable GPUs.
	NodeW *float64 `json:"node_w,omitempty"`
}

// GPUCap is one GPU's cap in watts.
type GPUCap struct {
	UUID string  `json:"uuid"`
	W    float64 `json:"w"`
}

// Ack results.
const (
	Applied  = "applied"  // every cap took effect
	Partial  = "partial"  // some GPUs failed (see their errors)
	Failed   = "failed"   // valid, but no GPU could be set (see their errors)
	Rejected = "rejected" // nothing changed (see reason)
	DryRun   = "dry_run"  // valid; logged, not set
)

// Ack answers one grant.
type Ack struct {
	Site   string    `json:"site"`
	Node   string    `json:"node"`
	Epoch  int64     `json:"epoch"`
	Seq    uint64    `json:"seq"`
	TS     time.Time `json:"ts"`
	Result string    `json:"result"`
	Reason string    `json:"reason,omitempty"`
	// LeaseUntil: when the node falls to its safe cap unless renewed.
	LeaseUntil *time.Time `json:"lease_until,omitempty"`
	GPUs       []GPUAck   `json:"gpus,omitempty"`
}

// GPUAck is what one GPU did with its cap.
type GPUAck struct {
	Index    int     `json:"index"`
	UUID     string  `json:"uuid"`
	GrantedW float64 `json:"granted_w"`
	// EnforcedW: the limit in force, read back after the set.
	EnforcedW float64 `json:"enforced_w"`
	// Set: a set call was made (the cap changed).
	Set bool `json:"set"`
	// HeldElsewhere: another limiter holds the GPU below its cap.
	HeldElsewhere bool   `json:"held_elsewhere,omitempty"`
	Error         string `json:"error,omitempty"`
}

// Node states.
const (
	StateStarting = "starting"
	StateGranted  = "granted" // holding a lease
	StateSafe     = "safe"    // no lease: at the safe cap
)

// Telemetry is a node's periodic report.
type Telemetry struct {
	Site  string    `json:"site"`
	Node  string    `json:"node"`
	TS    time.Time `json:"ts"`
	State string    `json:"state"`
	// Why the node is in its state (safe: "lease expired ...").
	Reason     string     `json:"reason,omitempty"`
	LeaseUntil *time.Time `json:"lease_until,omitempty"`
	GrantEpoch int64      `json:"grant_epoch,omitempty"`
	GrantSeq   uint64     `json:"grant_seq,omitempty"`
	DryRun     bool       `json:"dry_run,omitempty"`
	// PowerW sums the GPUs whose power was read; PowerUnknown counts the
	// others (the site counts them at their maximum).
	PowerW       float64        `json:"power_w"`
	PowerUnknown int            `json:"power_unknown,omitempty"`
	GPUs         []GPUTelemetry `json:"gpus"`
}

// GPUTelemetry is one GPU in a report. Unknown values are null.
type GPUTelemetry struct {
	Index        int     `json:"index"`
	UUID         string  `json:"uuid"`
	Throttleable bool    `json:"throttleable"`
	MinW         float64 `json:"min_w"`
	MaxW         float64 `json:"max_w"`
	// GrantedW: the cap the node holds the GPU at (0: none).
	GrantedW    float64  `json:"granted_w"`
	PowerW      *float64 `json:"power_w"`
	EnergyJ     *float64 `json:"energy_j"`
	EnforcedW   *float64 `json:"enforced_w"`
	LimitW      *float64 `json:"limit_w"`
	TempC       *float64 `json:"temp_c"`
	UtilPct     *float64 `json:"util_pct"`
	MemUtilPct  *float64 `json:"mem_util_pct"`
	ClockEvents *uint64  `json:"clock_events"`
	// PowerCapped: a software power cap holds the clocks down.
	PowerCapped   bool   `json:"power_capped"`
	HeldElsewhere bool   `json:"held_elsewhere,omitempty"`
	Error         string `json:"error,omitempty"`
}

// Inventory describes a node's GPUs (retained).
type Inventory struct {
	Site     string         `json:"site"`
	Node     string         `json:"node"`
	TS       time.Time      `json:"ts"`
	Version  string         `json:"version"`
	Driver   string         `json:"driver"`
	Backend  string         `json:"backend"`
	DryRun   bool           `json:"dry_run,omitempty"`
	SafeCapW []float64      `json:"safe_cap_w"`
	GPUs     []InventoryGPU `json:"gpus"`
}

// InventoryGPU is one GPU's identity and constraints.
type InventoryGPU struct {
	Index        int     `json:"index"`
	UUID         string  `json:"uuid"`
	Name         string  `json:"name"`
	MinW         float64 `json:"min_w"`
	MaxW         float64 `json:"max_w"`
	DefaultW     float64 `json:"default_w"`
	Throttleable bool    `json:"throttleable"`
	Why          string  `json:"why,omitempty"`
	InstantPower bool    `json:"instant_power"`
}

// Event kinds.
const (
	EventStarted       = "started"
	EventLeaseExpired  = "lease_expired"
	EventGrantRejected = "grant_rejected"
	EventDrift         = "drift_reapplied"
	EventHeldElsewhere = "held_elsewhere"
	EventStopped       = "stopped"
)

// Event is something a person should know about a node.
type Event struct {
	Site string    `json:"site"`
	Node string    `json:"node"`
	TS   time.Time `json:"ts"`
	Kind string    `json:"kind"`
	Text string    `json:"text"`
	GPU  *int      `json:"gpu,omitempty"`
}
