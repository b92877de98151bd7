package sparkplug

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/mqtt/mqtttest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const patience = 30 * time.Second

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hostApp is a Sparkplug host on the broker: it feeds a Host decoder with
// everything in the namespace and keeps the topics in arrival order.
type hostApp struct {
	*Host
	pc     paho.Client
	mu     sync.Mutex
	topics []string
}

func startHost(t *testing.T, url string) *hostApp {
	t.Helper()
	h := &hostApp{Host: NewHost()}
	o := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("host-%d", time.Now().UnixNano())).
		SetAutoReconnect(true).SetMaxReconnectInterval(500 * time.Millisecond).SetOrderMatters(true)
	h.pc = paho.NewClient(o)
	if tok := h.pc.Connect(); !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatalf("host connect: %v", tok.Error())
	}
	t.Cleanup(func() { h.pc.Disconnect(0) })
	tok := h.pc.Subscribe(Namespace+"/#", 1, func(_ paho.Client, m paho.Message) {
		h.mu.Lock()
		h.topics = append(h.topics, m.Topic())
		h.mu.Unlock()
		h.Handle(m.Topic(), m.Payload())
	})
	if !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatalf("host subscribe: %v", tok.Error())
	}
	return h
}

func (h *hostApp) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.topics...)
}

func (h *hostApp) node() *HostNode {
	if n := h.Node("g1", "site1"); n != nil {
		return n
	}
	return &HostNode{}
}

func (h *hostApp) checkClean(t *testing.T) {
	t.Helper()
	if p := h.Problems(); len(p) > 0 {
		t.Fatalf("the host found %d problem(s):\n%s", len(p), strings.Join(p, "\n"))
	}
}

func (h *hostApp) command(t *testing.T, topic string, metrics ...*Payload_Metric) {
	t.Helper()
	b, err := proto.Marshal(&Payload{Timestamp: ptr(uint64(time.Now().UnixMilli())), Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	if tok := h.pc.Publish(topic, 0, false, b); !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
}

type site struct {
	node   *Node
	client *mqtt.Client
	cmdMu  sync.Mutex
	cmds   [][]CommandMetric
	devs   []string
}

var (
	nodeDefs = []Def{{"mode", DataType_String}, {"budget_kw", DataType_Double}, {"infeasible", DataType_Boolean}, {"since", DataType_DateTime},
		{"commands/curtail/target_kw", DataType_Double}}
	deviceDefs = []Device{
		{ID: "asic", Metrics: []Def{{"cap_kw", DataType_Double}, {"units_on", DataType_Int32}}},
		{ID: "pcc", Metrics: []Def{{"frequency_hz", DataType_Double}, {"breaker_closed", DataType_Boolean}}},
	}
)

func startSite(t *testing.T, url, primary, dir string) *site {
	t.Helper()
	s := &site{}
	cfg := NodeConfig{GroupID: "g1", NodeID: "site1", PrimaryHost: primary}
	if dir != "" {
		cfg.BdSeqFile = filepath.Join(dir, "bdseq")
	}
	n, err := NewNode(cfg, nodeDefs, deviceDefs, func(dev string, m []CommandMetric) {
		s.cmdMu.Lock()
		s.cmds = append(s.cmds, m)
		s.devs = append(s.devs, dev)
		s.cmdMu.Unlock()
	}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	opts := append(n.Options(), mqtt.WithQueueDir(dir))
	c, err := mqtt.New(mqtt.Config{Broker: url, Format: "sparkplug"}, "site1", quiet, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Attach(c); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	s.node, s.client = n, c
	return s
}

// setAll gives every metric a value derived from k and flushes.
func (s *site) setAll(k int, now time.Time) {
	n := s.node
	n.Set(-1, n.NodeMetric("mode"), Text(fmt.Sprintf("mode-%d", k)), now)
	n.Set(-1, n.NodeMetric("budget_kw"), Number(float64(1000+k)), now)
	n.Set(-1, n.NodeMetric("infeasible"), Bool(k%2 == 1), now)
	n.Set(-1, n.NodeMetric("since"), Time(now), now)
	d, i := n.DeviceMetric("asic", "cap_kw")
	n.Set(d, i, Number(float64(k)), now)
	d, i = n.DeviceMetric("asic", "units_on")
	n.Set(d, i, Number(float64(k%100)), now)
	d, i = n.DeviceMetric("pcc", "frequency_hz")
	n.Set(d, i, Value{Num: 60, Quality: QualityStale}, now)
	n.Flush(now)
}

// Births carry every metric with its datatype and current value, in the
// order NBIRTH then DBIRTHs; changes go out as NDATA/DDATA, unchanged
// metrics do not; seq runs on through 255 to 0.
func TestBirthsDataAndSeq(t *testing.T) {
	m := mqtttest.Start(t, mqtttest.Options{})
	host := startHost(t, m.URL())
	s := startSite(t, m.URL(), "", t.TempDir())
	waitUntil(t, "births", func() bool { d := host.node().Devices; return len(d) == 2 && d["pcc"].Online })
	got := host.seen()
	if !strings.HasSuffix(got[0], "/NBIRTH/site1") || !strings.Contains(got[1], "/DBIRTH/site1/") || !strings.Contains(got[2], "/DBIRTH/site1/") {
		t.Fatalf("births out of order: %v", got)
	}
	n := host.node()
	for _, d := range nodeDefs {
		if hm, ok := n.Metrics[d.Name]; !ok || hm.Type != d.Type || !hm.Value.Null {
			t.Fatalf("NBIRTH metric %s: %+v (want type %s, null before any value)", d.Name, hm, d.Type)
		}
	}
	for _, dev := range deviceDefs {
		for _, d := range dev.Metrics {
			if hm, ok := n.Devices[dev.ID].Metrics[d.Name]; !ok || hm.Type != d.Type {
				t.Fatalf("DBIRTH %s metric %s: %+v", dev.ID, d.Name, hm)
			}
		}
	}

	now := time.Now()
	for k := range 300 { // more than 256 messages: seq wraps
		s.setAll(k, now.Add(time.Duration(k)*time.Millisecond))
	}
	if q := s.node.Flush(time.Now()); q != 0 {
		t.Fatalf("a flush with nothing changed queued %d messages", q)
	}
	waitUntil(t, "the last values", func() bool {
		hm := host.node().Devices["asic"].Metrics["cap_kw"]
		return hm.Value.Num == 299
	})
	host.checkClean(t)
	n = host.node()
	if n.Wraps < 1 || n.Messages < 600 {
		t.Fatalf("host saw %d messages, %d wraps: want seq to wrap", n.Messages, n.Wraps)
	}
	if v := n.Metrics["mode"].Value.Str; v != "mode-299" {
		t.Fatalf("mode %q", v)
	}
	if v := n.Devices["pcc"].Metrics["frequency_hz"].Value; v.Num != 60 || v.Quality != QualityStale {
		t.Fatalf("frequency %+v: want 60 with quality stale", v)
	}
	// frequency_hz never changed after the first flush: one sample only.
	if got := len(n.Samples["pcc/frequency_hz"]); got != 1 {
		t.Fatalf("unchanged metric published %d times", got)
	}
}

// The NDEATH will carries the session's bdSeq; the next connection's
// births carry the next bdSeq; what was flushed while the broker was
// unreachable arrives marked historical, in order.
func TestDeathBdSeqAndHistory(t *testing.T) {
	m := mqtttest.Start(t, mqtttest.Options{})
	host := startHost(t, m.URL())
	relay := mqtttest.NewRelay(t, m.URL())
	dir := t.TempDir()
	s := startSite(t, relay.URL(), "", dir)
	waitUntil(t, "births", func() bool { return host.node().Births == 1 })
	first := host.node().BdSeq

	relay.Cut()
	waitUntil(t, "the will", func() bool { return host.node().Deaths == 1 && !host.node().Online })
	waitUntil(t, "client sees the outage", func() bool { return !s.client.Stats().Connected })
	base := time.Now()
	for k := range 20 {
		s.setAll(1000+k, base.Add(time.Duration(k)*time.Millisecond))
	}
	relay.Mend()
	waitUntil(t, "rebirth and history", func() bool { n := host.node(); return n.Online && n.Births == 2 && n.Historical >= 20*6 })
	host.checkClean(t)
	n := host.node()
	if n.BdSeq != (first+1)%256 {
		t.Fatalf("bdSeq %d after %d: want +1", n.BdSeq, first)
	}
	samples := n.Samples["asic/cap_kw"]
	var hist []float64
	for _, x := range samples {
		if x.Historical {
			hist = append(hist, x.Value.Num)
		}
	}
	if len(hist) != 20 || hist[0] != 1000 || hist[19] != 1019 {
		t.Fatalf("historical cap_kw %v: want 1000..1019 in order", hist)
	}
	// The births carry the latest values as current ones.
	if v := n.Devices["asic"].Metrics["cap_kw"].Value.Num; v != 1019 {
		t.Fatalf("current cap_kw %v after rebirth", v)
	}
	s.client.Stop()
	waitUntil(t, "NDEATH on stop", func() bool { return host.node().Deaths == 2 })

	// bdSeq survives a restart of the node.
	s2 := startSite(t, m.URL(), "", dir)
	_ = s2
	waitUntil(t, "births after restart", func() bool { return host.node().Online })
	if got := host.node().BdSeq; got != (first+2)%256 {
		t.Fatalf("bdSeq %d after restart, want %d", got, (first+2)%256)
	}
	host.checkClean(t)
}

// A Rebirth request in an NCMD gets a new NBIRTH (same bdSeq, seq from 0)
// and the DBIRTHs; other command metrics reach the node's handler,
// resolved by name or alias and typed from the birth.
func TestRebirthAndCommands(t *testing.T) {
	m := mqtttest.Start(t, mqtttest.Options{})
	host := startHost(t, m.URL())
	s := startSite(t, m.URL(), "", t.TempDir())
	waitUntil(t, "births", func() bool { return host.node().Births == 1 })
	s.setAll(1, time.Now())
	bd := host.node().BdSeq
	host.command(t, s.node.Topic(NCMD, ""), &Payload_Metric{Name: ptr(MetricRebirth), Value: &Payload_Metric_BooleanValue{BooleanValue: true}})
	waitUntil(t, "rebirth", func() bool { n := host.node(); return n.Births == 2 && n.Devices["asic"].Births == 2 })
	if got := host.node().BdSeq; got != bd {
		t.Fatalf("bdSeq changed on rebirth: %d -> %d", bd, got)
	}
	host.checkClean(t)

	tgt := s.node.NodeMetric("commands/curtail/target_kw")
	a := s.node.node.alias[tgt]
	host.command(t, s.node.Topic(NCMD, ""), &Payload_Metric{Alias: ptr(a), Value: &Payload_Metric_DoubleValue{DoubleValue: 4200}},
		&Payload_Metric{Name: ptr("commands/curtail/id"), Value: &Payload_Metric_StringValue{StringValue: "c-1"}})
	host.command(t, s.node.Topic(DCMD, "asic"), &Payload_Metric{Name: ptr("cap_kw"), Value: &Payload_Metric_DoubleValue{DoubleValue: 7}})
	waitUntil(t, "commands", func() bool { s.cmdMu.Lock(); defer s.cmdMu.Unlock(); return len(s.cmds) == 2 })
	c := s.cmds[0]
	if s.devs[0] != "" || len(c) != 2 || c[0].Name != "commands/curtail/target_kw" || c[0].Type != DataType_Double || c[0].Value.Num != 4200 ||
		c[1].Name != "commands/curtail/id" || c[1].Value.Str != "c-1" {
		t.Fatalf("NCMD delivered as %+v", c)
	}
	if s.devs[1] != "asic" || s.cmds[1][0].Name != "cap_kw" || s.cmds[1][0].Value.Num != 7 {
		t.Fatalf("DCMD delivered as %s %+v", s.devs[1], s.cmds[1])
	}
}

// With a primary host configured, births wait for its STATE online; data
// is stored meanwhile; STATE offline ends the session (NDEATH) and the
// next one waits again; a stale STATE (older timestamp) changes nothing.
func TestPrimaryHostState(t *testing.T) {
	m := mqtttest.Start(t, mqtttest.Options{})
	host := startHost(t, m.URL())
	state := func(online bool, ts int64) {
		t.Helper()
		if tok := host.pc.Publish(StateTopic("scada"), 1, true, StatePayload(online, ts)); !tok.WaitTimeout(patience) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	state(false, 100)
	s := startSite(t, m.URL(), "scada", t.TempDir())
	waitUntil(t, "connected", func() bool { return s.client.Stats().Connected })
	s.setAll(1, time.Now())
	time.Sleep(500 * time.Millisecond) // a birth would have come by now
	if n := host.node(); n.Births != 0 {
		t.Fatalf("NBIRTH before the primary host was online: %+v", n)
	}
	if st := s.client.Stats(); st.Queued == 0 || st.Session {
		t.Fatalf("stats %+v: want data stored, no session", st)
	}
	state(true, 200)
	waitUntil(t, "births after STATE online", func() bool { return host.node().Births == 1 && host.node().Historical > 0 })

	state(false, 150) // older than the online one: ignored
	time.Sleep(300 * time.Millisecond)
	if n := host.node(); !n.Online || n.Deaths != 0 {
		t.Fatalf("a stale offline STATE ended the session: %+v", n)
	}
	state(false, 300)
	waitUntil(t, "NDEATH after STATE offline", func() bool { return host.node().Deaths == 1 })
	s.setAll(2, time.Now())
	time.Sleep(500 * time.Millisecond)
	if n := host.node(); n.Online || n.Births != 1 {
		t.Fatalf("reborn while the primary host is offline: %+v", n)
	}
	state(true, 400)
	waitUntil(t, "births after STATE online again", func() bool { n := host.node(); return n.Online && n.Births == 2 })
	waitUntil(t, "stored data", func() bool {
		for _, x := range host.node().Samples["asic/cap_kw"] {
			if x.Historical && x.Value.Num == 2 {
				return true
			}
		}
		return false
	})
	host.checkClean(t)
}

func TestNewNodeRefuses(t *testing.T) {
	for _, tc := range []struct {
		cfg  NodeConfig
		defs []Def
		devs []Device
		want string
	}{
		{NodeConfig{GroupID: "a/b", NodeID: "n"}, nil, nil, "single"},
		{NodeConfig{GroupID: "g", NodeID: ""}, nil, nil, "single"},
		{NodeConfig{GroupID: "g", NodeID: "n"}, []Def{{"x", DataType_Double}, {"x", DataType_Double}}, nil, "twice"},
		{NodeConfig{GroupID: "g", NodeID: "n"}, []Def{{"bdSeq", DataType_Int64}}, nil, "reserved"},
		{NodeConfig{GroupID: "g", NodeID: "n"}, []Def{{"x", DataType_DataSet}}, nil, "does not publish"},
		{NodeConfig{GroupID: "g", NodeID: "n"}, nil, []Device{{ID: "d"}, {ID: "d"}}, "used twice"},
		{NodeConfig{GroupID: "g", NodeID: "n"}, nil, []Device{{ID: "a+b"}}, "not one topic level"},
	} {
		if _, err := NewNode(tc.cfg, tc.defs, tc.devs, nil, quiet); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc, err, tc.want)
		}
	}
}

// The host decoder itself catches what a broken node would do.
func TestHostFindsProblems(t *testing.T) {
	enc := func(p *Payload) []byte { b, _ := proto.Marshal(p); return b }
	birth := &Payload{Seq: ptr(uint64(0)), Metrics: []*Payload_Metric{
		{Name: ptr(MetricBdSeq), Datatype: ptr(uint32(DataType_Int64)), Timestamp: ptr(uint64(1)), Value: &Payload_Metric_LongValue{LongValue: 3}},
		{Name: ptr(MetricRebirth), Datatype: ptr(uint32(DataType_Boolean)), Timestamp: ptr(uint64(1)), Value: &Payload_Metric_BooleanValue{}},
		{Name: ptr("x"), Alias: ptr(uint64(9)), Datatype: ptr(uint32(DataType_Double)), Timestamp: ptr(uint64(1)), Value: &Payload_Metric_DoubleValue{DoubleValue: 1}},
	}}
	data := func(seq uint64) []byte {
		return enc(&Payload{Seq: ptr(seq), Metrics: []*Payload_Metric{{Alias: ptr(uint64(9)), Timestamp: ptr(uint64(2)), Value: &Payload_Metric_DoubleValue{DoubleValue: 2}}}})
	}
	for _, tc := range []struct {
		name string
		msgs [][2]string
		want string
	}{
		{"data before birth", [][2]string{{"spBv1.0/g/NDATA/n", string(data(0))}}, "before the node's NBIRTH"},
		{"seq gap", [][2]string{{"spBv1.0/g/NBIRTH/n", string(enc(birth))}, {"spBv1.0/g/NDATA/n", string(data(2))}}, "seq 2, want 1"},
		{"unknown alias", [][2]string{{"spBv1.0/g/NBIRTH/n", string(enc(birth))}, {"spBv1.0/g/NDATA/n", string(enc(&Payload{Seq: ptr(uint64(1)), Metrics: []*Payload_Metric{{Alias: ptr(uint64(7)), Timestamp: ptr(uint64(2))}}}))}}, "alias 7"},
		{"birth without bdSeq", [][2]string{{"spBv1.0/g/NBIRTH/n", string(enc(&Payload{Seq: ptr(uint64(0))}))}}, "without bdSeq"},
	} {
		h := NewHost()
		for _, m := range tc.msgs {
			h.Handle(m[0], []byte(m[1]))
		}
		if p := strings.Join(h.Problems(), "\n"); !strings.Contains(p, tc.want) {
			t.Errorf("%s: problems %q, want %q", tc.name, p, tc.want)
		}
	}
	// A death with another bdSeq is an old will: ignored.
	h := NewHost()
	h.Handle("spBv1.0/g/NBIRTH/n", enc(birth))
	h.Handle("spBv1.0/g/NDEATH/n", enc(&Payload{Metrics: []*Payload_Metric{{Name: ptr(MetricBdSeq), Value: &Payload_Metric_LongValue{LongValue: 2}}}}))
	if n := h.Node("g", "n"); !n.Online || n.Stale != 1 {
		t.Fatalf("old will ended the session: %+v", n)
	}
}
