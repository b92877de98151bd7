package sparkplug

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/siteagent/siteagent/drivers/mqtt"
)

// Namespace is the first topic level of Sparkplug B.
const Namespace = "spBv1.0"

// Message types (the topic's verb).
const (
	NBIRTH = "NBIRTH"
	NDEATH = "NDEATH"
	DBIRTH = "DBIRTH"
	DDEATH = "DDEATH"
	NDATA  = "NDATA"
	DDATA  = "DDATA"
	NCMD   = "NCMD"
	DCMD   = "DCMD"
	STATE  = "STATE"
)

// Metric names the specification fixes.
const (
	MetricBdSeq   = "bdSeq"
	MetricRebirth = "Node Control/Rebirth"
	// DeviceRebirth, written to a device with a DCMD, asks for a rebirth
	// too (of the whole node: one birth sequence keeps seq simple).
	DeviceRebirth = "Device Control/Rebirth"
)

// NodeConfig names the edge node.
type NodeConfig struct {
	GroupID string
	NodeID  string
	// PrimaryHost, when set, gates the session on that host's STATE.
	PrimaryHost string
	// BdSeqFile keeps the last bdSeq across restarts, so that a host never
	// takes a death certificate from before the restart for the new
	// session; "" keeps it in memory.
	BdSeqFile string
}

// Device is one Sparkplug device of the node and its metrics.
type Device struct {
	ID      string
	Metrics []Def
}

// CommandMetric is one metric of an NCMD or DCMD, resolved to its name and
// read as its defined type.
type CommandMetric struct {
	Name  string
	Type  DataType
	Value Value
}

// Node is a Sparkplug B edge node on top of an mqtt.Client: it is the
// client's Session (will, births, seq numbers, historical flags), keeps the
// current value of every metric, publishes changes as NDATA and DDATA, and
// answers rebirth requests and the primary host's STATE.
//
// Metrics are addressed by index: the node's own metrics as defined in
// NewNode (after the two the specification requires: bdSeq and Node
// Control/Rebirth), and each device's.
type Node struct {
	cfg    NodeConfig
	log    *slog.Logger
	client *mqtt.Client
	onCmd  func(device string, metrics []CommandMetric)

	mu      sync.Mutex
	node    metricSet
	devs    []*metricSet
	devIDs  []string
	byAlias map[uint64]ref
	byName  map[string]ref // "device/name", "" device for the node
	bdSeq   uint64         // in the will of the latest connection attempt
	nextBd  uint64         // for the next one
	stateTS int64          // timestamp of the last STATE taken
	seq     uint64
	online  bool // the primary host's last STATE said online
}

type ref struct{ dev, idx int } // dev -1: the node

type metricSet struct {
	topic string // for DATA
	defs  []Def
	alias []uint64
	vals  []Value
	ts    []int64 // ms
	dirty []bool
	any   bool
}

func newSet(topic string, defs []Def) *metricSet {
	n := len(defs)
	return &metricSet{topic: topic, defs: defs, alias: make([]uint64, n), vals: make([]Value, n), ts: make([]int64, n), dirty: make([]bool, n)}
}

// NewNode defines the edge node and its devices. Every metric starts null.
// onCommand receives every NCMD and DCMD metric other than a rebirth
// request (device "" for the node); it runs on the MQTT receive goroutine.
func NewNode(cfg NodeConfig, metrics []Def, devices []Device, onCommand func(device string, metrics []CommandMetric), log *slog.Logger) (*Node, error) {
	if log == nil {
		log = slog.Default()
	}
	for _, id := range []string{cfg.GroupID, cfg.NodeID} {
		if id == "" || strings.ContainsAny(id, "/+#") {
			return nil, fmt.Errorf("sparkplug: group and node ids must be single, non-empty topic levels, got %q", id)
		}
	}
	n := &Node{cfg: cfg, log: log, onCmd: onCommand, byAlias: map[uint64]ref{}, byName: map[string]ref{}}
	n.node = *newSet(n.Topic(NDATA, ""), metrics)
	seen := map[string]bool{}
	for _, d := range devices {
		if d.ID == "" || strings.ContainsAny(d.ID, "/+#") || seen[d.ID] {
			return nil, fmt.Errorf("sparkplug: device id %q is empty, not one topic level, or used twice", d.ID)
		}
		seen[d.ID] = true
		n.devIDs = append(n.devIDs, d.ID)
		n.devs = append(n.devs, newSet(n.Topic(DDATA, d.ID), d.Metrics))
	}
	// Aliases are a hash of the device and metric name, so that they stay
	// the same across restarts and configuration changes: data queued
	// before a restart still names the right metric after it.
	assign := func(dev int, set *metricSet, device string) error {
		for i, d := range set.defs {
			key := device + "/" + d.Name
			if _, dup := n.byName[key]; dup || d.Name == "" || d.Name == MetricBdSeq || d.Name == MetricRebirth {
				return fmt.Errorf("sparkplug: metric %q of %q is empty, reserved or defined twice", d.Name, device)
			}
			if d.Type == DataType_Unknown || d.Type > DataType_Text {
				return fmt.Errorf("sparkplug: metric %q has datatype %s, which this node does not publish", d.Name, d.Type)
			}
			h := fnv.New64a()
			h.Write([]byte(key))
			a := h.Sum64() >> 1 // keep it a positive int64 for hosts that use signed longs
			for _, taken := n.byAlias[a]; taken || a == 0; _, taken = n.byAlias[a] {
				a++
			}
			set.alias[i] = a
			set.vals[i] = Null()
			n.byAlias[a] = ref{dev, i}
			n.byName[key] = ref{dev, i}
		}
		return nil
	}
	if err := assign(-1, &n.node, ""); err != nil {
		return nil, err
	}
	for i, d := range n.devs {
		if err := assign(i, d, n.devIDs[i]); err != nil {
			return nil, err
		}
	}
	if cfg.BdSeqFile != "" {
		if b, err := os.ReadFile(cfg.BdSeqFile); err == nil {
			if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 8); err == nil {
				n.bdSeq, n.nextBd = v, (v+1)%256
			}
		}
	}
	return n, nil
}

// Topic is spBv1.0/<group>/<verb>/<node>[/<device>].
func (n *Node) Topic(verb, device string) string {
	t := Namespace + "/" + n.cfg.GroupID + "/" + verb + "/" + n.cfg.NodeID
	if device != "" {
		t += "/" + device
	}
	return t
}

// StateTopic is the primary host's STATE topic.
func StateTopic(host string) string { return Namespace + "/" + STATE + "/" + host }

// Options are the mqtt.Client options the node needs.
func (n *Node) Options() []mqtt.Option {
	o := []mqtt.Option{mqtt.WithSession(n)}
	if n.cfg.PrimaryHost != "" {
		o = append(o, mqtt.WithGate())
	}
	return o
}

// Attach ties the node to its client (made with n.Options()) and subscribes
// to the node's commands and the primary host's STATE. Call it before the
// client's Start.
func (n *Node) Attach(c *mqtt.Client) error {
	n.client = c
	if err := c.Subscribe(n.Topic(NCMD, ""), 1, n.handleCommand); err != nil {
		return err
	}
	if err := c.Subscribe(n.Topic(DCMD, "+"), 1, n.handleCommand); err != nil {
		return err
	}
	if n.cfg.PrimaryHost != "" {
		if err := c.Subscribe(StateTopic(n.cfg.PrimaryHost), 1, n.handleState); err != nil {
			return err
		}
	}
	return nil
}

// NodeMetric and DeviceMetric find a metric's index; -1 when unknown.
func (n *Node) NodeMetric(name string) int {
	if r, ok := n.byName["/"+name]; ok {
		return r.idx
	}
	return -1
}

func (n *Node) DeviceMetric(device, name string) (dev, idx int) {
	if r, ok := n.byName[device+"/"+name]; ok {
		return r.dev, r.idx
	}
	return -1, -1
}

// Device returns a device's index; -1 when unknown.
func (n *Node) Device(id string) int {
	for i, d := range n.devIDs {
		if d == id {
			return i
		}
	}
	return -1
}

func (n *Node) set(dev int) *metricSet {
	if dev < 0 {
		return &n.node
	}
	return n.devs[dev]
}

// Set changes a metric of the node (dev -1) or of device dev; the change
// goes out with the next Flush. It reports whether the value changed.
func (n *Node) Set(dev, idx int, v Value, at time.Time) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.set(dev)
	if s.vals[idx] == v {
		return false
	}
	s.vals[idx], s.ts[idx] = v, at.UnixMilli()
	s.dirty[idx], s.any = true, true
	return true
}

// Flush queues one NDATA and one DDATA per device with every metric that
// changed since the last flush (report by exception). It returns the
// number of messages queued.
func (n *Node) Flush(now time.Time) int {
	n.mu.Lock()
	var msgs []mqtt.Message
	for dev := -1; dev < len(n.devs); dev++ {
		s := n.set(dev)
		if !s.any {
			continue
		}
		p := &Payload{Timestamp: ptr(uint64(now.UnixMilli()))}
		for i := range s.defs {
			if s.dirty[i] {
				p.Metrics = append(p.Metrics, n.dataMetric(s, i))
				s.dirty[i] = false
			}
		}
		s.any = false
		msgs = append(msgs, n.encode(s.topic, p))
	}
	n.mu.Unlock()
	return n.publish(msgs)
}

// Publish queues one DATA message with this one metric at once (events,
// command acknowledgements): values that must not be merged with later
// ones.
func (n *Node) Publish(dev, idx int, v Value, at time.Time) {
	n.mu.Lock()
	s := n.set(dev)
	s.vals[idx], s.ts[idx] = v, at.UnixMilli()
	s.dirty[idx] = false
	p := &Payload{Timestamp: ptr(uint64(at.UnixMilli())), Metrics: []*Payload_Metric{n.dataMetric(s, idx)}}
	msg := n.encode(s.topic, p)
	n.mu.Unlock()
	n.publish([]mqtt.Message{msg})
}

func (n *Node) publish(msgs []mqtt.Message) int {
	if n.client == nil {
		return 0
	}
	sent := 0
	for _, m := range msgs {
		if n.client.Publish(m) {
			sent++
		}
	}
	return sent
}

func (n *Node) dataMetric(s *metricSet, i int) *Payload_Metric {
	m := &Payload_Metric{Alias: ptr(s.alias[i]), Timestamp: ptr(uint64(s.ts[i]))}
	setValue(m, s.defs[i].Type, s.vals[i])
	return m
}

func (n *Node) birthMetric(s *metricSet, i int, now int64) *Payload_Metric {
	ts := s.ts[i]
	if ts == 0 {
		ts = now
	}
	m := &Payload_Metric{Name: ptr(s.defs[i].Name), Alias: ptr(s.alias[i]), Timestamp: ptr(uint64(ts)), Datatype: ptr(uint32(s.defs[i].Type))}
	setValue(m, s.defs[i].Type, s.vals[i])
	return m
}

func (n *Node) encode(topic string, p *Payload) mqtt.Message {
	b, err := proto.Marshal(p)
	if err != nil {
		// Only invalid UTF-8 in a string can do this: send it without
		// the offending text rather than not at all.
		n.log.Error("sparkplug payload not encodable", "topic", topic, "err", err)
		for _, m := range p.Metrics {
			if _, ok := m.Value.(*Payload_Metric_StringValue); ok {
				m.Value = &Payload_Metric_StringValue{StringValue: strings.ToValidUTF8(m.GetStringValue(), "?")}
			}
		}
		b, _ = proto.Marshal(p)
	}
	return mqtt.Message{Topic: topic, Payload: b, QoS: 0}
}

func (n *Node) bdSeqMetric(now int64) *Payload_Metric {
	return &Payload_Metric{Name: ptr(MetricBdSeq), Timestamp: ptr(uint64(now)), Datatype: ptr(uint32(DataType_Int64)),
		Value: &Payload_Metric_LongValue{LongValue: n.bdSeq}}
}

func (n *Node) death() mqtt.Message {
	now := time.Now().UnixMilli()
	p := &Payload{Timestamp: ptr(uint64(now)), Metrics: []*Payload_Metric{n.bdSeqMetric(now)}}
	b, _ := proto.Marshal(p)
	return mqtt.Message{Topic: n.Topic(NDEATH, ""), Payload: b, QoS: 1}
}

// Will is the NDEATH for the next connection attempt. The bdSeq moves on
// (wrapping at 255) only once a connection carried it (Connected): a
// broker that was not even reachable never saw the CONNECT packet.
func (n *Node) Will() mqtt.Message {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.bdSeq = n.nextBd
	return n.death()
}

// Connected is told by the client that the connection whose will carries
// the current bdSeq is established.
func (n *Node) Connected() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.nextBd = (n.bdSeq + 1) % 256
	if n.cfg.BdSeqFile != "" {
		if err := os.WriteFile(n.cfg.BdSeqFile, []byte(strconv.FormatUint(n.bdSeq, 10)+"\n"), 0o640); err != nil {
			n.log.Warn("sparkplug bdSeq not saved; after a restart it may repeat", "err", err)
		}
	}
}

// Farewell is the NDEATH published before a deliberate disconnect: the
// same bdSeq as the connection's will.
func (n *Node) Farewell() mqtt.Message {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.death()
}

// Births returns the NBIRTH and every DBIRTH with every metric's current
// value, and restarts the seq numbers at 0 (Prepare numbers them).
func (n *Node) Births(now time.Time) []mqtt.Message {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.seq = 0
	ms := now.UnixMilli()
	p := &Payload{Timestamp: ptr(uint64(ms))}
	p.Metrics = append(p.Metrics, n.bdSeqMetric(ms),
		&Payload_Metric{Name: ptr(MetricRebirth), Timestamp: ptr(uint64(ms)), Datatype: ptr(uint32(DataType_Boolean)), Value: &Payload_Metric_BooleanValue{BooleanValue: false}})
	for i := range n.node.defs {
		p.Metrics = append(p.Metrics, n.birthMetric(&n.node, i, ms))
		n.node.dirty[i] = false
	}
	n.node.any = false
	out := []mqtt.Message{n.encode(n.Topic(NBIRTH, ""), p)}
	for d, s := range n.devs {
		p := &Payload{Timestamp: ptr(uint64(ms))}
		for i := range s.defs {
			p.Metrics = append(p.Metrics, n.birthMetric(s, i, ms))
			s.dirty[i] = false
		}
		s.any = false
		out = append(out, n.encode(n.Topic(DBIRTH, n.devIDs[d]), p))
	}
	return out
}

// Prepare numbers every message of the session (0..255, wrapping) and
// marks each metric of a historical one is_historical. The seq field is
// appended to the encoded payload: protobuf takes the last occurrence of a
// field, so no re-encoding is needed for live messages.
func (n *Node) Prepare(m mqtt.Message, historical bool) mqtt.Message {
	verb := verbOf(m.Topic)
	switch verb {
	case NBIRTH, DBIRTH, NDATA, DDATA, DDEATH:
	default:
		return m
	}
	p := m.Payload
	if historical && (verb == NDATA || verb == DDATA) {
		var pl Payload
		if err := proto.Unmarshal(p, &pl); err == nil {
			pl.Seq = nil
			// Data queued before a restart may name metrics the site file
			// no longer has: hosts could not resolve them.
			kept := pl.Metrics[:0]
			for _, mt := range pl.Metrics {
				if mt.Alias != nil {
					if _, ok := n.byAlias[mt.GetAlias()]; !ok {
						continue
					}
				}
				mt.IsHistorical = ptr(true)
				kept = append(kept, mt)
			}
			pl.Metrics = kept
			if b, err := proto.Marshal(&pl); err == nil {
				p = b
			}
		}
	}
	n.mu.Lock()
	seq := n.seq
	n.seq = (n.seq + 1) % 256
	n.mu.Unlock()
	out := make([]byte, len(p), len(p)+3)
	copy(out, p)
	out = protowire.AppendTag(out, 3, protowire.VarintType)
	m.Payload = protowire.AppendVarint(out, seq)
	return m
}

func verbOf(topic string) string {
	parts := strings.SplitN(topic, "/", 4)
	if len(parts) < 4 || parts[0] != Namespace {
		return ""
	}
	return parts[2]
}

// handleState follows the primary host: online opens the gate (births
// follow), offline closes it (NDEATH, reconnect, wait), older STATE
// messages are ignored.
func (n *Node) handleState(topic string, payload []byte) {
	var st struct {
		Online    *bool  `json:"online"`
		Timestamp *int64 `json:"timestamp"`
	}
	if err := json.Unmarshal(payload, &st); err != nil || st.Online == nil || st.Timestamp == nil {
		n.log.Warn("sparkplug STATE message not understood; ignored", "topic", topic, "payload", string(payload))
		return
	}
	n.mu.Lock()
	if *st.Timestamp < n.stateTS {
		n.mu.Unlock()
		n.log.Info("sparkplug STATE older than the last one; ignored", "host", n.cfg.PrimaryHost)
		return
	}
	n.stateTS, n.online = *st.Timestamp, *st.Online
	n.mu.Unlock()
	n.log.Info("sparkplug primary host", "host", n.cfg.PrimaryHost, "online", *st.Online)
	if n.client != nil {
		n.client.SetGate(*st.Online)
	}
}

// PrimaryOnline reports what the primary host's last STATE said.
func (n *Node) PrimaryOnline() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.online
}

func (n *Node) handleCommand(topic string, payload []byte) {
	parts := strings.Split(topic, "/")
	device := ""
	if len(parts) == 5 {
		device = parts[4]
	}
	var p Payload
	if err := proto.Unmarshal(payload, &p); err != nil {
		n.log.Warn("sparkplug command not decodable; ignored", "topic", topic, "err", err)
		n.deliver(device, []CommandMetric{{Name: "", Value: Text("payload is not a Sparkplug B protobuf: " + err.Error())}})
		return
	}
	var cmds []CommandMetric
	for _, m := range p.Metrics {
		name, typ, err := n.resolve(device, m)
		if err != nil {
			cmds = append(cmds, CommandMetric{Name: "", Value: Text(err.Error())})
			continue
		}
		v, err := ValueOf(m, typ)
		if err != nil {
			cmds = append(cmds, CommandMetric{Name: name, Type: DataType_Unknown, Value: Text(err.Error())})
			continue
		}
		if (name == MetricRebirth && device == "") || (name == DeviceRebirth && device != "") {
			if v.Num != 0 && n.client != nil {
				n.log.Info("sparkplug rebirth requested", "topic", topic)
				n.client.Rebirth()
			}
			continue
		}
		cmds = append(cmds, CommandMetric{Name: name, Type: typ, Value: v})
	}
	if len(cmds) > 0 {
		n.deliver(device, cmds)
	}
}

func (n *Node) deliver(device string, cmds []CommandMetric) {
	if n.onCmd != nil {
		n.onCmd(device, cmds)
	}
}

// resolve names a command metric (by name or alias) and finds its type:
// the defined one, else what the metric says.
func (n *Node) resolve(device string, m *Payload_Metric) (string, DataType, error) {
	name := m.GetName()
	if name == "" && m.Alias != nil {
		r, ok := n.byAlias[m.GetAlias()]
		if !ok || (r.dev < 0) != (device == "") || (r.dev >= 0 && n.devIDs[r.dev] != device) {
			return "", 0, fmt.Errorf("alias %d names no metric of %q", m.GetAlias(), device)
		}
		name = n.set(r.dev).defs[r.idx].Name
	}
	if name == "" {
		return "", 0, errors.New("a command metric has neither name nor alias")
	}
	switch name {
	case MetricRebirth, DeviceRebirth:
		return name, DataType_Boolean, nil
	}
	if r, ok := n.byName[device+"/"+name]; ok {
		return name, n.set(r.dev).defs[r.idx].Type, nil
	}
	if m.Datatype != nil {
		return name, DataType(m.GetDatatype()), nil
	}
	switch m.Value.(type) {
	case *Payload_Metric_StringValue:
		return name, DataType_String, nil
	case *Payload_Metric_BooleanValue:
		return name, DataType_Boolean, nil
	case *Payload_Metric_LongValue:
		return name, DataType_Int64, nil
	case *Payload_Metric_IntValue:
		return name, DataType_Int32, nil
	case *Payload_Metric_FloatValue:
		return name, DataType_Float, nil
	}
	return name, DataType_Double, nil
}
