package mqtt

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/drivers/mqtt/mqtttest"
)

// docACL reads the Mosquitto ACL example from docs/mqtt.md, so that the
// documented file is the one tested.
func docACL(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../docs/mqtt.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	const mark = "# siteagent.acl:"
	i := strings.Index(doc, mark)
	if i < 0 {
		t.Fatal("docs/mqtt.md has no ACL example starting with " + mark)
	}
	end := strings.Index(doc[i:], "```")
	if end < 0 {
		t.Fatal("ACL example not closed")
	}
	return doc[i : i+end]
}

// aclClient is a test client with its own certificate.
type aclClient struct {
	pc   paho.Client
	mu   sync.Mutex
	got  map[string]int
	name string
}

func aclConnect(t *testing.T, pki *mqtttest.PKI, url, cn string, subs ...string) *aclClient {
	t.Helper()
	c := &aclClient{got: map[string]int{}, name: cn}
	o := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("%s-%d", cn, time.Now().UnixNano())).SetTLSConfig(pki.ClientTLS(cn))
	c.pc = paho.NewClient(o)
	if tok := c.pc.Connect(); !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatalf("%s connect: %v", cn, tok.Error())
	}
	t.Cleanup(func() { c.pc.Disconnect(0) })
	for _, s := range subs {
		// Mosquitto grants a denied subscription (QoS 0x80 in SUBACK for
		// 3.1.1 clients in newer versions) or grants and never delivers:
		// either way nothing arrives, which is what is checked.
		tok := c.pc.Subscribe(s, 1, func(_ paho.Client, m paho.Message) {
			c.mu.Lock()
			c.got[m.Topic()+" "+string(m.Payload())]++
			c.mu.Unlock()
		})
		tok.WaitTimeout(patience)
	}
	return c
}

func (c *aclClient) pub(t *testing.T, topic, payload string) {
	t.Helper()
	tok := c.pc.Publish(topic, 1, false, payload)
	tok.WaitTimeout(patience) // a denied publish is acknowledged and dropped
}

func (c *aclClient) has(topic, payload string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[topic+" "+payload] > 0
}

// The documented ACL lets each site write only its own topics and read
// only its own commands, and lets only ops send commands.
func TestMosquittoACLExample(t *testing.T) {
	pki := mqtttest.NewPKI(t)
	m := mqtttest.Start(t, mqtttest.Options{TLS: pki, ACL: docACL(t)})
	ops := aclConnect(t, pki, m.URL(), "ops", "siteagent/#", "spBv1.0/#")
	tx1 := aclConnect(t, pki, m.URL(), "tx1", "siteagent/tx1/cmd", "siteagent/tx2/cmd", "spBv1.0/siteagent/NCMD/tx1", "spBv1.0/siteagent/NCMD/tx2")
	tx2 := aclConnect(t, pki, m.URL(), "tx2", "siteagent/tx2/cmd")

	// Allowed: a site's own reports, ops' commands to it.
	tx1.pub(t, "siteagent/tx1/points", "own")
	tx1.pub(t, "spBv1.0/siteagent/NDATA/tx1", "own-spb")
	ops.pub(t, "siteagent/tx1/cmd", "cmd-1")
	ops.pub(t, "spBv1.0/siteagent/NCMD/tx1", "ncmd-1")
	waitUntil(t, "allowed traffic", func() bool {
		return ops.has("siteagent/tx1/points", "own") && ops.has("spBv1.0/siteagent/NDATA/tx1", "own-spb") &&
			tx1.has("siteagent/tx1/cmd", "cmd-1") && tx1.has("spBv1.0/siteagent/NCMD/tx1", "ncmd-1")
	})

	// Denied: writing as another site, sending commands as a site,
	// reading another site's commands. Mosquitto 2 drops a client that
	// publishes where it may not, so each attempt gets its own connection.
	for _, try := range []struct{ who, topic, what string }{
		{"tx1", "siteagent/tx2/points", "forged"},
		{"tx1", "siteagent/tx2/status", "forged"},
		{"tx1", "spBv1.0/siteagent/NDATA/tx2", "forged"},
		{"tx1", "siteagent/tx1/cmd", "self-command"},
		{"tx2", "siteagent/tx1/cmd", "cross-command"},
	} {
		aclConnect(t, pki, m.URL(), try.who).pub(t, try.topic, try.what)
	}
	ops.pub(t, "siteagent/tx2/cmd", "cmd-2")
	ops.pub(t, "spBv1.0/siteagent/NCMD/tx2", "ncmd-2")
	// A marker published last: once it is through, the denied ones would
	// have been too.
	ops.pub(t, "siteagent/tx1/cmd", "marker")
	waitUntil(t, "marker", func() bool { return tx1.has("siteagent/tx1/cmd", "marker") && tx2.has("siteagent/tx2/cmd", "cmd-2") })
	time.Sleep(200 * time.Millisecond)
	for _, c := range []struct {
		who           *aclClient
		topic, what   string
		whyNotAllowed string
	}{
		{ops, "siteagent/tx2/points", "forged", "tx1 wrote tx2's points"},
		{ops, "siteagent/tx2/status", "forged", "tx1 wrote tx2's status"},
		{ops, "spBv1.0/siteagent/NDATA/tx2", "forged", "tx1 wrote tx2's Sparkplug data"},
		{tx1, "siteagent/tx1/cmd", "self-command", "a site sent itself a command"},
		{tx1, "siteagent/tx1/cmd", "cross-command", "tx2 sent tx1 a command"},
		{tx1, "siteagent/tx2/cmd", "cmd-2", "tx1 read tx2's commands"},
		{tx1, "spBv1.0/siteagent/NCMD/tx2", "ncmd-2", "tx1 read tx2's NCMD"},
	} {
		if c.who.has(c.topic, c.what) {
			t.Errorf("the ACL let through: %s", c.whyNotAllowed)
		}
	}
}

// A message the broker refuses by closing the connection (Mosquitto 2 does
// that for an ACL denial) does not block the messages behind it: a QoS 0
// one, never acknowledged, is dropped after a few tries and counted; a
// QoS 1 one is acknowledged by Mosquitto before it hangs up, so it leaves
// the queue as sent.
func TestPoisonMessageIsDropped(t *testing.T) {
	pki := mqtttest.NewPKI(t)
	m := mqtttest.Start(t, mqtttest.Options{TLS: pki, ACL: docACL(t)})
	ops := aclConnect(t, pki, m.URL(), "ops", "siteagent/#")
	cert, key := pki.Client("tx1")
	for _, qos := range []byte{0, 1} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			c, err := New(Config{Broker: m.URL(), ClientID: fmt.Sprintf("tx1-%d", qos), TLS: &TLSConfig{CAFile: pki.CAFile, CertFile: cert, KeyFile: key}}, "tx1", quiet)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Stop()
			startClient(t, c)
			c.Publish(Message{Topic: "siteagent/tx2/points", Payload: []byte("forged"), QoS: qos})
			for i := range 5 {
				c.Publish(Message{Topic: c.Topics().Points(), Payload: []byte(fmt.Sprintf("q%d-%d", qos, i)), QoS: 1})
			}
			waitUntil(t, "the messages behind the refused one", func() bool {
				for i := range 5 {
					if !ops.has(c.Topics().Points(), fmt.Sprintf("q%d-%d", qos, i)) {
						return false
					}
				}
				return c.Stats().Queued == 0
			})
			s := c.Stats()
			if qos == 0 && (s.Dropped != 1 || s.Sent != 5) {
				t.Fatalf("stats %+v: want the refused message dropped and counted, the rest sent", s)
			}
			if ops.has("siteagent/tx2/points", "forged") {
				t.Fatal("the forged message went through")
			}
		})
	}
}

// Under the documented ACL the QoS 0 confirmation (an UNSUBSCRIBE of the
// barrier topic, which the ACL does not mention) works and costs no
// reconnection.
func TestBarrierUnderACL(t *testing.T) {
	pki := mqtttest.NewPKI(t)
	m := mqtttest.Start(t, mqtttest.Options{TLS: pki, ACL: docACL(t)})
	ops := aclConnect(t, pki, m.URL(), "ops", "siteagent/#")
	cert, key := pki.Client("tx1")
	c, err := New(Config{Broker: m.URL(), TLS: &TLSConfig{CAFile: pki.CAFile, CertFile: cert, KeyFile: key}}, "tx1", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	startClient(t, c)
	for i := range 20 {
		c.Publish(Message{Topic: c.Topics().Points(), Payload: seq(i)})
	}
	waitUntil(t, "QoS 0 messages confirmed", func() bool { s := c.Stats(); return s.Sent == 20 && s.Queued == 0 })
	for i := range 20 {
		if !ops.has(c.Topics().Points(), string(seq(i))) {
			waitUntil(t, "delivery", func() bool { return ops.has(c.Topics().Points(), string(seq(i))) })
		}
	}
	if s := c.Stats(); s.Reconnects != 0 || s.Dropped != 0 {
		t.Fatalf("stats %+v: the barrier must not cost a reconnection", s)
	}
}
