package sparkplug

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
)

// Host reads a Sparkplug B stream the way a host application does, and
// checks it: births before data, every metric of a birth named and typed,
// aliases unique and resolvable, seq numbers continuous (0..255, wrapping)
// within a session, death certificates matched to their birth by bdSeq.
// Tests feed it every message of a node's namespace; tools may too. What
// breaks a rule is listed in Problems.
type Host struct {
	mu       sync.Mutex
	nodes    map[string]*HostNode
	problems []string
}

// HostNode is what the host knows of one edge node.
type HostNode struct {
	Online   bool
	BdSeq    int64 // of the current session's NBIRTH
	Births   int   // NBIRTHs received
	Deaths   int   // NDEATHs that ended a session (matching bdSeq)
	Stale    int   // NDEATHs of an earlier session, ignored
	Messages int   // messages with a seq, since the first NBIRTH
	Wraps    int   // times seq went from 255 to 0
	// Historical counts metric values received marked is_historical,
	// Live those that were not (births excluded).
	Historical, Live int
	Metrics          map[string]HostMetric // node metrics by name: latest live value
	Devices          map[string]*HostDevice
	// Samples lists every DATA value received, historical ones included,
	// by "device/metric" ("/metric" for the node), in arrival order.
	Samples map[string][]HostSample

	seq     int // last seq; -1 before the first NBIRTH
	aliases map[uint64]string
	types   map[string]DataType
}

// HostDevice is what the host knows of one device.
type HostDevice struct {
	Online  bool
	Births  int
	Metrics map[string]HostMetric
}

// HostMetric is a metric's latest value as the host has it.
type HostMetric struct {
	Type      DataType
	Value     Value
	Timestamp uint64
}

// HostSample is one received value.
type HostSample struct {
	Value      Value
	Timestamp  uint64
	Historical bool
}

// NewHost returns an empty host.
func NewHost() *Host { return &Host{nodes: map[string]*HostNode{}} }

// Node returns a copy of what the host knows of group/node (nil: nothing).
func (h *Host) Node(group, node string) *HostNode {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.nodes[group+"/"+node]
	if n == nil {
		return nil
	}
	c := *n
	c.Metrics = clone(n.Metrics)
	c.Devices = map[string]*HostDevice{}
	for k, d := range n.Devices {
		dc := *d
		dc.Metrics = clone(d.Metrics)
		c.Devices[k] = &dc
	}
	c.Samples = map[string][]HostSample{}
	for k, v := range n.Samples {
		c.Samples[k] = append([]HostSample(nil), v...)
	}
	return &c
}

func clone[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Problems lists every rule the stream broke so far.
func (h *Host) Problems() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.problems...)
}

func (h *Host) fail(format string, args ...any) {
	h.problems = append(h.problems, fmt.Sprintf(format, args...))
}

// Handle takes one message of the spBv1.0 namespace.
func (h *Host) Handle(topic string, payload []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	parts := strings.Split(topic, "/")
	if len(parts) < 3 || parts[0] != Namespace {
		h.fail("%s: not a Sparkplug B topic", topic)
		return
	}
	if parts[1] == STATE {
		return
	}
	if len(parts) < 4 || len(parts) > 5 {
		h.fail("%s: a Sparkplug topic has 4 or 5 levels", topic)
		return
	}
	verb, key, device := parts[2], parts[1]+"/"+parts[3], ""
	if len(parts) == 5 {
		device = parts[4]
	}
	var p Payload
	if err := proto.Unmarshal(payload, &p); err != nil {
		h.fail("%s: payload not decodable: %v", topic, err)
		return
	}
	n := h.nodes[key]
	if n == nil {
		n = &HostNode{seq: -1, Devices: map[string]*HostDevice{}, Metrics: map[string]HostMetric{}, Samples: map[string][]HostSample{}}
		h.nodes[key] = n
	}
	switch verb {
	case NCMD, DCMD:
		return // written by hosts, not by the node
	case NDEATH:
		h.death(topic, n, &p)
		return
	}
	if p.Seq == nil || p.GetSeq() > 255 {
		h.fail("%s: seq missing or above 255 (%v)", topic, p.Seq)
		return
	}
	seq := int(p.GetSeq())
	if verb == NBIRTH {
		h.birth(topic, n, &p)
		n.seq = seq
		n.Messages++
		return
	}
	if n.seq < 0 || !n.Online {
		h.fail("%s: %s before the node's NBIRTH", topic, verb)
		return
	}
	if want := (n.seq + 1) % 256; seq != want {
		h.fail("%s: seq %d, want %d", topic, seq, want)
	}
	if seq == 0 && n.seq == 255 {
		n.Wraps++
	}
	n.seq = seq
	n.Messages++
	switch verb {
	case DBIRTH:
		d := &HostDevice{Online: true, Metrics: map[string]HostMetric{}}
		if old := n.Devices[device]; old != nil {
			d.Births = old.Births
		}
		d.Births++
		n.Devices[device] = d
		for _, m := range p.Metrics {
			h.define(topic, n, device, m, d.Metrics)
		}
	case DDEATH:
		if d := n.Devices[device]; d != nil {
			d.Online = false
		}
	case NDATA:
		h.data(topic, n, "", &p, n.Metrics)
	case DDATA:
		d := n.Devices[device]
		if d == nil || !d.Online {
			h.fail("%s: DDATA before the device's DBIRTH", topic)
			return
		}
		h.data(topic, n, device, &p, d.Metrics)
	default:
		h.fail("%s: unknown message type %s", topic, verb)
	}
}

func (h *Host) birth(topic string, n *HostNode, p *Payload) {
	n.Online = true
	n.Births++
	n.aliases = map[uint64]string{}
	n.types = map[string]DataType{}
	n.Metrics = map[string]HostMetric{}
	for _, d := range n.Devices {
		d.Online = false // they are born again after the node
	}
	haveBd, haveRebirth := false, false
	for _, m := range p.Metrics {
		switch m.GetName() {
		case MetricBdSeq:
			haveBd = true
			n.BdSeq = int64(m.GetLongValue())
			if m.Alias != nil {
				h.fail("%s: bdSeq carries an alias", topic)
			}
			continue
		case MetricRebirth:
			haveRebirth = true
			if m.Alias != nil || m.GetDatatype() != uint32(DataType_Boolean) || m.GetBooleanValue() {
				h.fail("%s: Node Control/Rebirth must be a Boolean false without alias", topic)
			}
			continue
		}
		h.define(topic, n, "", m, n.Metrics)
	}
	if !haveBd || !haveRebirth {
		h.fail("%s: NBIRTH without bdSeq (%v) or Node Control/Rebirth (%v)", topic, haveBd, haveRebirth)
	}
}

func (h *Host) define(topic string, n *HostNode, device string, m *Payload_Metric, into map[string]HostMetric) {
	name := m.GetName()
	if name == "" || m.Datatype == nil || m.Timestamp == nil {
		h.fail("%s: birth metric without name, datatype or timestamp: %v", topic, m)
		return
	}
	key := device + "/" + name
	t := DataType(m.GetDatatype())
	if m.Alias != nil {
		if other, dup := n.aliases[m.GetAlias()]; dup && other != key {
			h.fail("%s: alias %d used by %s and %s", topic, m.GetAlias(), other, key)
		}
		n.aliases[m.GetAlias()] = key
	}
	n.types[key] = t
	v, err := ValueOf(m, t)
	if err != nil {
		h.fail("%s: %v", topic, err)
	}
	into[name] = HostMetric{Type: t, Value: v, Timestamp: m.GetTimestamp()}
}

func (h *Host) data(topic string, n *HostNode, device string, p *Payload, into map[string]HostMetric) {
	for _, m := range p.Metrics {
		key := device + "/" + m.GetName()
		if m.Alias != nil {
			k, ok := n.aliases[m.GetAlias()]
			if !ok {
				h.fail("%s: alias %d was not in a birth", topic, m.GetAlias())
				continue
			}
			key = k
			if m.Name != nil {
				h.fail("%s: DATA metric carries both name and alias", topic)
			}
		}
		t, ok := n.types[key]
		if !ok || !strings.HasPrefix(key, device+"/") {
			h.fail("%s: metric %s was not in this device's birth", topic, key)
			continue
		}
		if m.Timestamp == nil {
			h.fail("%s: DATA metric %s without timestamp", topic, key)
		}
		v, err := ValueOf(m, t)
		if err != nil {
			h.fail("%s: %v", topic, err)
			continue
		}
		n.Samples[key] = append(n.Samples[key], HostSample{Value: v, Timestamp: m.GetTimestamp(), Historical: m.GetIsHistorical()})
		if m.GetIsHistorical() {
			n.Historical++
			continue
		}
		n.Live++
		into[key[len(device)+1:]] = HostMetric{Type: t, Value: v, Timestamp: m.GetTimestamp()}
	}
}

func (h *Host) death(topic string, n *HostNode, p *Payload) {
	if p.Seq != nil {
		h.fail("%s: NDEATH carries a seq", topic)
	}
	var bd *int64
	for _, m := range p.Metrics {
		if m.GetName() == MetricBdSeq {
			v := int64(m.GetLongValue())
			bd = &v
		}
	}
	if bd == nil {
		h.fail("%s: NDEATH without bdSeq", topic)
		return
	}
	if !n.Online || *bd != n.BdSeq {
		n.Stale++ // the will of an earlier connection: ignore it
		return
	}
	n.Online = false
	n.Deaths++
	for _, d := range n.Devices {
		d.Online = false
	}
}

// StatePayload is a host's STATE message body (Sparkplug 3.0).
func StatePayload(online bool, timestamp int64) []byte {
	b, _ := json.Marshal(struct {
		Online    bool  `json:"online"`
		Timestamp int64 `json:"timestamp"`
	}{online, timestamp})
	return b
}
