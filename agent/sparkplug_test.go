package agent_test

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"google.golang.org/protobuf/proto"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/mqtt/mqtttest"
	"github.com/siteagent/siteagent/drivers/mqtt/sparkplug"
)

// A Sparkplug host on the broker, decoding and checking the site's stream.
func startSparkHost(t *testing.T, url string) (*sparkplug.Host, paho.Client) {
	t.Helper()
	host := sparkplug.NewHost()
	o := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("host-%d", time.Now().UnixNano())).SetOrderMatters(true).SetAutoReconnect(true)
	pc := paho.NewClient(o)
	if tok := pc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("host connect: %v", tok.Error())
	}
	t.Cleanup(func() { pc.Disconnect(0) })
	if tok := pc.Subscribe("spBv1.0/#", 1, func(_ paho.Client, m paho.Message) { host.Handle(m.Topic(), m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("host subscribe: %v", tok.Error())
	}
	return host, pc
}

func ncmd(t *testing.T, pc paho.Client, site string, metrics ...*sparkplug.Payload_Metric) {
	t.Helper()
	b, _ := proto.Marshal(&sparkplug.Payload{Timestamp: proto.Uint64(uint64(time.Now().UnixMilli())), Metrics: metrics})
	if tok := pc.Publish("spBv1.0/g1/NCMD/"+site, 0, false, b); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
}

func strMetric(name, v string) *sparkplug.Payload_Metric {
	return &sparkplug.Payload_Metric{Name: proto.String(name), Value: &sparkplug.Payload_Metric_StringValue{StringValue: v}}
}

func dblMetric(name string, v float64) *sparkplug.Payload_Metric {
	return &sparkplug.Payload_Metric{Name: proto.String(name), Value: &sparkplug.Payload_Metric_DoubleValue{DoubleValue: v}}
}

func longMetric(name string, v int64) *sparkplug.Payload_Metric {
	return &sparkplug.Payload_Metric{Name: proto.String(name), Value: &sparkplug.Payload_Metric_LongValue{LongValue: uint64(v)}}
}

// The agent as a Sparkplug edge node: births with every metric and
// datatype, seq continuity, a command by NCMD acknowledged as a metric,
// a broker outage (NDEATH with the birth's bdSeq, data stored and replayed
// is_historical after the next births), and a rebirth on request.
func TestSparkplugSite(t *testing.T) {
	m := mqtttest.Start(t, mqtttest.Options{})
	relay := mqtttest.NewRelay(t, m.URL())
	host, pc := startSparkHost(t, m.URL())
	h := startOpsSite(t, relay.URL(), m.URL(), nil, nil, func(c *agent.SiteConfig) {
		c.MQTT.Format = "sparkplug"
		c.MQTT.Sparkplug = &mqtt.SparkplugConfig{GroupID: "g1"}
		c.Commands.AllowWithoutTLS = true
	})
	site := h.cfg.Site.ID
	node := func() *sparkplug.HostNode {
		if n := host.Node("g1", site); n != nil {
			return n
		}
		return &sparkplug.HostNode{}
	}
	checkClean := func() {
		t.Helper()
		if p := host.Problems(); len(p) > 0 {
			t.Fatalf("the Sparkplug host found problems:\n%s", strings.Join(p, "\n"))
		}
	}
	h.eventually("births", 10*time.Second, func() bool { n := node(); return n.Online && len(n.Devices) == 7 })
	n := node()
	for _, name := range []string{"site/mode", "site/budget_kw", "capacity/headroom_kw", "capacity/until", "commands/curtail/target_kw", "stages/uf1", "inputs/islanded"} {
		if _, ok := n.Metrics[name]; !ok {
			t.Fatalf("NBIRTH lacks %s", name)
		}
	}
	if got := n.Metrics["site/budget_kw"].Type; got != sparkplug.DataType_Double {
		t.Fatalf("site/budget_kw is %s", got)
	}
	var devs []string
	for d := range n.Devices {
		devs = append(devs, d)
	}
	sort.Strings(devs)
	if strings.Join(devs, ",") != "asic,bess,inference,ops,pcc,plc,training" {
		t.Fatalf("devices %v: want every group and every source", devs)
	}
	if mt, ok := n.Devices["pcc"].Metrics["frequency_hz"]; !ok || mt.Type != sparkplug.DataType_Double {
		t.Fatalf("pcc frequency_hz %+v", mt)
	}
	if mt, ok := n.Devices["pcc"].Metrics["breaker_closed"]; !ok || mt.Type != sparkplug.DataType_Boolean {
		t.Fatalf("pcc breaker_closed %+v", mt)
	}
	h.eventually("live data", 10*time.Second, func() bool { return node().Live > 50 })

	// A curtailment by NCMD.
	now := time.Now().UnixMilli()
	ncmd(t, pc, site, strMetric("commands/curtail/id", "s-1"), dblMetric("commands/curtail/target_kw", 9000),
		longMetric("commands/curtail/duration_s", 600), &sparkplug.Payload_Metric{Name: proto.String("commands/issued"), Value: &sparkplug.Payload_Metric_LongValue{LongValue: uint64(now)}},
		strMetric("commands/from", "scada"))
	h.eventually("the ack and the curtailment", 10*time.Second, func() bool {
		n := node()
		var ack agent.Ack
		json.Unmarshal([]byte(n.Metrics["commands/ack"].Value.Str), &ack)
		return ack.ID == "s-1" && ack.Result == "accepted" && n.Metrics["site/mode"].Value.Str == "curtailment" && n.Metrics["site/budget_kw"].Value.Num == 9000
	})
	// A command written to a device is refused.
	b, _ := proto.Marshal(&sparkplug.Payload{Metrics: []*sparkplug.Payload_Metric{strMetric("commands/cancel/id", "s-2"), strMetric("commands/cancel/cancels", "s-1")}})
	pc.Publish("spBv1.0/g1/DCMD/"+site+"/asic", 0, false, b).WaitTimeout(10 * time.Second)
	h.eventually("the DCMD refused", 10*time.Second, func() bool {
		var ack agent.Ack
		json.Unmarshal([]byte(node().Metrics["commands/ack"].Value.Str), &ack)
		return ack.ID == "s-2" && ack.Result == "rejected" && strings.Contains(ack.Reason, "site-wide")
	})
	checkClean()

	// Broker unreachable: the will fires with the birth's bdSeq, data is
	// stored, and replayed marked historical after the new births.
	bd := node().BdSeq
	relay.Cut()
	h.eventually("NDEATH", 10*time.Second, func() bool { return !node().Online && node().Deaths == 1 })
	time.Sleep(3 * time.Second) // three telemetry periods stored
	relay.Mend()
	h.eventually("births and history", 20*time.Second, func() bool { n := node(); return n.Online && n.Births == 2 && n.Historical > 0 })
	if got := node().BdSeq; got != (bd+1)%256 {
		t.Fatalf("bdSeq %d after %d", got, bd)
	}
	// The stored data follows the births, oldest first, at the replay
	// rate: the measured values of the outage arrive historical.
	h.eventually("historical measurements of the outage", 20*time.Second, func() bool {
		n := 0
		for _, s := range node().Samples["pcc/import_kw"] {
			if s.Historical {
				n++
			}
		}
		return n >= 2
	})
	checkClean()

	// Rebirth on request.
	ncmd(t, pc, site, &sparkplug.Payload_Metric{Name: proto.String(sparkplug.MetricRebirth), Value: &sparkplug.Payload_Metric_BooleanValue{BooleanValue: true}})
	h.eventually("rebirth", 10*time.Second, func() bool { n := node(); return n.Births == 3 && n.Devices["asic"].Births == 3 })
	if got := node().BdSeq; got != (bd+1)%256 {
		t.Fatalf("bdSeq changed on rebirth: %d", got)
	}
	h.eventually("data after the rebirth", 10*time.Second, func() bool { return node().Live > 0 })
	checkClean()
	h.stop()
	h.eventually("NDEATH on stop", 10*time.Second, func() bool { return !node().Online && node().Deaths == 2 })
	checkClean()
}

// JSON over an outage: every point batch of the outage arrives, marked
// historical, so the historian's series has no hole.
func TestJSONOutageLeavesNoHole(t *testing.T) {
	m := mqtttest.Start(t, mqtttest.Options{})
	relay := mqtttest.NewRelay(t, m.URL())
	h := startOpsSite(t, relay.URL(), m.URL(), nil, nil, nil)
	type batch struct {
		TS         time.Time `json:"ts"`
		Historical bool      `json:"historical"`
	}
	var mu = &h.mu
	var batches []batch
	tok := h.pc.Subscribe(h.root+"/points", 1, func(_ paho.Client, msg paho.Message) {
		var b batch
		json.Unmarshal(msg.Payload(), &b)

		mu.Lock()
		batches = append(batches, b)
		mu.Unlock()
	})
	tok.WaitTimeout(10 * time.Second)
	h.eventually("points flowing", 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(batches) >= 2 })
	relay.Cut()
	time.Sleep(4 * time.Second)
	relay.Mend()
	h.eventually("historical batches", 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, b := range batches {
			if b.Historical {
				n++
			}
		}
		return n >= 3
	})
	time.Sleep(2 * time.Second)
	mu.Lock()
	got := append([]batch(nil), batches...)
	mu.Unlock()
	sort.Slice(got, func(i, j int) bool { return got[i].TS.Before(got[j].TS) })
	for i := 1; i < len(got); i++ {
		if gap := got[i].TS.Sub(got[i-1].TS); gap > 1500*time.Millisecond {
			t.Fatalf("a %s hole in the point series at %s", gap, got[i-1].TS)
		}
	}
}
