package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/mqtt/sparkplug"
	"github.com/siteagent/siteagent/safety"
)

// DefaultStateDir is where state lives when the site file does not say and
// systemd set no $STATE_DIRECTORY; used only when it exists.
const DefaultStateDir = "/var/lib/siteagent"

// opsLink is everything between the agent and central ops beyond the bare
// MQTT client: the payload format, commands, capacity, and the cycle
// timing the benchmarks read.
type opsLink struct {
	gate     *commandGate // read by every cycle; empty when commands are off
	format   string
	stateDir string
	late     *lateSession // Sparkplug: the node, set once every point is known
	spark    *sparkSite
	cmd      *commander
	channel  safety.Channel
	jitter   *cycleTimes
}

// lateSession lets the MQTT client be built before the Sparkplug node
// (the GPU fleets need the client to define their points, and the node
// needs every point). The client calls it only after Start.
type lateSession struct{ n *sparkplug.Node }

func (l *lateSession) Will() mqtt.Message                  { return l.n.Will() }
func (l *lateSession) Farewell() mqtt.Message              { return l.n.Farewell() }
func (l *lateSession) Births(now time.Time) []mqtt.Message { return l.n.Births(now) }
func (l *lateSession) Prepare(m mqtt.Message, h bool) mqtt.Message {
	return l.n.Prepare(m, h)
}
func (l *lateSession) Connected() { l.n.Connected() }

// StateDir resolves where the agent keeps state: the site file's
// state_dir, else systemd's $STATE_DIRECTORY, else DefaultStateDir if it
// exists; "" when none (the MQTT queue then lives in memory). explicit
// tells whether a failure to use it is an error.
func (c *SiteConfig) ResolveStateDir() (dir string, explicit bool) {
	if c.Site.StateDir != "" {
		return c.Site.StateDir, true
	}
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		first, _, _ := strings.Cut(d, ":")
		return first, true
	}
	if st, err := os.Stat(DefaultStateDir); err == nil && st.IsDir() {
		return DefaultStateDir, false
	}
	return "", false
}

// validateOps checks what belongs to the MQTT side of the site file beyond
// the [mqtt] table itself.
func (c *SiteConfig) validateOps(p *config.Problems) {
	if d := c.Site.StateDir; d != "" && !filepath.IsAbs(d) {
		p.Addf("site.state_dir", "%q is not an absolute path; write e.g. %q", d, DefaultStateDir)
	}
	if c.MQTT != nil && c.MQTT.Format == mqtt.FormatSparkplug {
		// Groups and sources become Sparkplug devices: one topic level each.
		for i, g := range c.Groups {
			if strings.ContainsAny(g.Name, "/+#") {
				p.Addf(config.Join(config.Index("groups", i), "name"), "%q contains '/', '+' or '#': with format = \"sparkplug\" each group is a device, named by one topic level", g.Name)
			}
		}
		for name := range c.points() {
			if src, _, _ := strings.Cut(name, "."); strings.ContainsAny(src, "/+#") {
				p.Addf("mqtt.format", "source %q contains '/', '+' or '#': with format = \"sparkplug\" each source is a device, named by one topic level", src)
				break
			}
		}
	}
	if c.Commands != nil {
		c.Commands.Validate(p, "commands", c.Limits.ImportLimitKW)
		if c.MQTT == nil {
			p.Addf("commands", "commands come over MQTT: add an [mqtt] table, or remove [commands]")
		}
	}
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// buildMQTT makes the broker connection (New, before the sources: GPU
// fleets talk through it).
func (a *Agent) buildMQTT() error {
	a.ops = &opsLink{gate: newCommandGate(), jitter: newCycleTimes(a.cfg.Site.CyclePeriod)}
	cfg := a.cfg.MQTT
	if cfg == nil {
		return nil
	}
	ops := a.ops
	ops.format = cfg.Format
	dir, explicit := a.cfg.ResolveStateDir()
	ops.stateDir = dir
	log := a.log.With("part", "mqtt")
	topics := mqtt.Topics{Root: cfg.TopicRoot, Site: a.cfg.Site.ID}
	// GPU grants are leases: sent at once, whatever the session, never
	// replayed late (drivers/mqtt WithDirect).
	nodes := topics.Topic("nodes") + "/"
	opts := []mqtt.Option{mqtt.WithDirect(func(t string) bool { return strings.HasPrefix(t, nodes) })}
	switch cfg.Format {
	case mqtt.FormatSparkplug:
		ops.late = &lateSession{}
		opts = append(opts, mqtt.WithSession(ops.late))
		if cfg.Sparkplug != nil && cfg.Sparkplug.PrimaryHost != "" {
			opts = append(opts, mqtt.WithGate())
		}
	default:
		own := map[string]bool{topics.Points(): true, topics.Plan(): true, topics.Events(): true, topics.Topic("capacity"): true, topics.Topic("ack"): true}
		opts = append(opts, mqtt.WithHistoricalFlag(func(t string) bool { return own[t] }))
	}
	build := func(queueDir string) (*mqtt.Client, error) {
		o := append([]mqtt.Option{}, opts...)
		if queueDir != "" {
			o = append(o, mqtt.WithQueueDir(queueDir))
		}
		return mqtt.New(*cfg, a.cfg.Site.ID, log, o...)
	}
	queueDir := ""
	if dir != "" {
		queueDir = filepath.Join(dir, "mqtt", unsafeName.ReplaceAllString(cfg.ClientID, "_"))
	}
	c, err := build(queueDir)
	if err != nil && queueDir != "" && !explicit {
		log.Error("the MQTT queue cannot live in the default state directory; it stays in memory and is lost on restart (set [site] state_dir)", "dir", queueDir, "err", err)
		ops.stateDir, queueDir = "", ""
		c, err = build("")
	}
	if err != nil {
		return err
	}
	if queueDir == "" {
		log.Warn("no state directory: the MQTT queue lives in memory and is lost on restart; set [site] state_dir")
	}
	a.mqtt = c
	ops.channel = safety.Channel{Format: cfg.Format, Broker: cfg.Broker, ClientID: cfg.ClientID, Username: c.Identity(), TLS: c.Secure()}
	return nil
}

// finishMQTT defines the Sparkplug node (every point is known now), sets
// up commands and subscribes; New calls it last.
func (a *Agent) finishMQTT() error {
	ops := a.ops
	if a.mqtt == nil {
		return nil
	}
	if err := a.buildCommands(); err != nil {
		return err
	}
	cfg := a.cfg.MQTT
	if cfg.Format == mqtt.FormatSparkplug {
		nc := sparkplug.NodeConfig{GroupID: cfg.Sparkplug.GroupID, NodeID: a.cfg.Site.ID, PrimaryHost: cfg.Sparkplug.PrimaryHost}
		if ops.stateDir != "" {
			nc.BdSeqFile = filepath.Join(ops.stateDir, "mqtt", unsafeName.ReplaceAllString(cfg.ClientID, "_")+".bdseq")
		}
		s, err := newSparkSite(a, nc, a.sparkplugCommand)
		if err != nil {
			return err
		}
		ops.spark, ops.late.n = s, s.node
		return s.node.Attach(a.mqtt)
	}
	if ops.cmd != nil {
		topic := a.mqtt.Topics().Topic("cmd")
		return a.mqtt.Subscribe(topic, 1, func(t string, payload []byte) { a.jsonCommand(t, payload) })
	}
	return nil
}

// buildCommands readies the commander when [commands] is present.
func (a *Agent) buildCommands() error {
	cc := a.cfg.Commands
	if cc == nil {
		return nil
	}
	policy := safety.NewCommandPolicy(*cc, a.cfg.Limits.ImportLimitKW)
	pc := policy.Config()
	c := &commander{site: a.cfg.Site.ID, log: a.log.With("part", "commands"), policy: policy,
		ledger: safety.NewLedger(pc.IDWindow), gate: a.ops.gate, now: time.Now}
	a.ops.gate.policy = policy
	path := pc.AuditLog
	if path == "" && a.ops.stateDir != "" {
		path = filepath.Join(a.ops.stateDir, safety.AuditFileName)
	}
	switch {
	case path == "":
		c.noLog = "no audit log: set [site] state_dir or [commands] audit_log"
		c.log.Error("commands will be refused: " + c.noLog)
	default:
		records, bad, err := safety.ReadAudit(path)
		if err != nil {
			return fmt.Errorf("commands: %w", err)
		}
		if bad > 0 {
			c.log.Warn("audit log has unreadable lines (a crash mid-write?); they are skipped", "file", path, "lines", bad)
		}
		c.ledger.Restore(records, time.Now())
		l, err := safety.OpenAuditLog(path)
		if err != nil {
			if pc.AuditLog != "" {
				return fmt.Errorf("commands: %w", err)
			}
			c.noLog = "the audit log cannot be opened: " + err.Error()
			c.log.Error("commands will be refused: " + c.noLog)
		}
		c.audit = l
	}
	if !a.ops.channel.TLS && !pc.AllowWithoutTLS {
		c.log.Warn("the broker connection has no TLS: every command will be refused (allow_without_tls is not set)")
	}
	a.ops.cmd = c
	return nil
}

// jsonCommand takes one message from <root>/<site>/cmd.
func (a *Agent) jsonCommand(topic string, payload []byte) {
	cmd, err := safety.ParseCommand(payload)
	if err != nil && cmd.ID == "" {
		cmd.ID = bestEffortID(payload)
	}
	ch := a.ops.channel
	ch.Topic = topic
	ack := a.ops.cmd.decide(cmd, err, payload, ch)
	a.send(a.mqtt.Topics().Topic("ack"), qosEvents, false, ack)
}

// bestEffortID digs the id out of a command that does not parse, so that
// its rejection can name it.
func bestEffortID(payload []byte) string {
	var v struct {
		ID any `json:"id"`
	}
	if json.Unmarshal(payload, &v) == nil {
		if s, ok := v.ID.(string); ok && len(s) <= 128 {
			return s
		}
	}
	return ""
}

// sparkplugCommand takes the command metrics of an NCMD (device "") or
// DCMD.
func (a *Agent) sparkplugCommand(device string, metrics []sparkplug.CommandMetric) {
	ch := a.ops.channel
	ch.Topic = a.ops.spark.node.Topic(sparkplug.NCMD, "")
	var cmd safety.Command
	var raw json.RawMessage
	var err error
	if device != "" {
		ch.Topic = a.ops.spark.node.Topic(sparkplug.DCMD, device)
		err = errors.New("schema: commands are site-wide: write them to the node (NCMD), not to device " + device)
		cmd, raw, _ = commandFromMetrics(metrics)
	} else {
		cmd, raw, err = commandFromMetrics(metrics)
	}
	var ack Ack
	if a.ops.cmd == nil {
		ack = Ack{Site: a.cfg.Site.ID, TS: time.Now().UTC(), ID: cmd.ID, Type: cmd.Type, Result: safety.ResultRejected,
			Reason: "refused: this site takes no commands (no [commands] table)"}
		a.log.Warn("sparkplug command refused: no [commands] table", "id", cmd.ID)
	} else {
		ack = a.ops.cmd.decide(cmd, err, raw, ch)
	}
	b, _ := json.Marshal(ack)
	a.ops.spark.publishNow(spAck, string(b), ack.TS)
}

// cycleTimes keeps the start times of control cycles (from the records)
// to measure the loop's tick-to-tick jitter; benchmarks read it.
type cycleTimes struct {
	mu      sync.Mutex
	period  time.Duration
	last    time.Time
	jitters []time.Duration
	on      bool
}

func newCycleTimes(period time.Duration) *cycleTimes { return &cycleTimes{period: period} }

// observe takes one cycle's start. Cycles run early by a trigger or the
// controller's timer are not ticks; the interval across them still is
// whole periods, so it is folded onto the grid.
func (c *cycleTimes) observe(at time.Time, woken bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.on || woken {
		return
	}
	if !c.last.IsZero() {
		d := at.Sub(c.last)
		n := (d + c.period/2) / c.period
		if n >= 1 {
			j := d - n*c.period
			if j < 0 {
				j = -j
			}
			c.jitters = append(c.jitters, j)
		}
	}
	c.last = at
}

// take returns and clears the jitters recorded since the last call (and
// starts recording on the first).
func (c *cycleTimes) take() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.jitters
	c.jitters, c.on, c.last = nil, true, time.Time{}
	return out
}
