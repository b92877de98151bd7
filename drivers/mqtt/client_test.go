package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newClient(t *testing.T, url string, queue int) *Client {
	t.Helper()
	c, err := New(Config{Broker: url, QueueSize: queue}, "s1", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

func startClient(t *testing.T, c *Client) {
	t.Helper()
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Connected and the session begun (its status published): what is
	// published from now on is live, and arrives in order.
	waitUntil(t, "client connected", func() bool { s := c.Stats(); return s.Connected && s.Session })
}

func seq(i int) []byte { return []byte(fmt.Sprintf("m%04d", i)) }

// checkSeq fails unless got holds payloads seq(from), seq(from+1), ... in order.
func checkSeq(t *testing.T, got []received, from int) {
	t.Helper()
	for i, m := range got {
		if want := string(seq(from + i)); m.payload != want {
			t.Fatalf("message %d is %q, want %q (order or content broken)", i, m.payload, want)
		}
	}
}

func TestMessagesArriveInOrder(t *testing.T) {
	forEachBroker(t, func(t *testing.T, url string) {
		c := newClient(t, url, 0)
		sub := record(t, url, c.Topics().Points())
		startClient(t, c)
		const n = 1000
		for i := range n {
			if !c.Publish(Message{Topic: c.Topics().Points(), Payload: seq(i), QoS: 1}) {
				t.Fatalf("publish %d refused", i)
			}
		}
		got := sub.waitFor(t, n)
		if len(got) != n {
			t.Fatalf("got %d messages, want %d; stats %+v", len(got), n, c.Stats())
		}
		checkSeq(t, got, 0)
		waitUntil(t, "all sent", func() bool { return c.Stats().Sent == n })
		if s := c.Stats(); s.Queued != 0 || s.Dropped != 0 {
			t.Fatalf("stats %+v: want nothing queued or dropped", s)
		}
	})
}

type statusDoc struct {
	State, Site, TS, Reason string
}

// status parses a status message; an offline one must name the site and
// carry an RFC3339 time.
func status(m received) (statusDoc, bool) {
	var d statusDoc
	if err := json.Unmarshal([]byte(m.payload), &d); err != nil {
		return d, false
	}
	if d.State == "offline" {
		if _, err := time.Parse(time.RFC3339, d.TS); err != nil || d.Site != "s1" {
			return d, false
		}
	}
	return d, true
}

func isOffline(reason string, retained bool) func(received) bool {
	return func(m received) bool {
		d, ok := status(m)
		return ok && d.State == "offline" && d.Reason == reason && (m.retained || !retained)
	}
}

func isPayload(p string) func(received) bool {
	return func(m received) bool { return m.payload == p }
}

// The will fires when the connection dies without a DISCONNECT, stays
// retained while the site is away, and the online status comes back on
// reconnect; Stop leaves a retained "stopped".
func TestStatusWillAndRepublish(t *testing.T) {
	forEachBroker(t, func(t *testing.T, url string) {
		r := newRelay(t, url)
		c := newClient(t, r.url(), 0)
		topic := c.Topics().Status()
		online := `{"state":"online","site":"s1","version":"test"}`
		c.SetStatus([]byte(online))
		sub := record(t, url, topic)
		startClient(t, c)
		sub.waitLast(t, "online status", isPayload(online))

		r.cut()
		sub.waitLast(t, "the will", isOffline("connection lost", false))
		late := record(t, url, topic) // a newcomer sees the retained will
		late.waitLast(t, "the retained will", isOffline("connection lost", true))

		r.mend()
		sub.waitLast(t, "online status again after reconnect", isPayload(online))
		if s := c.Stats(); s.Reconnects < 1 {
			t.Fatalf("stats %+v: want a reconnect counted", s)
		}

		c.Stop()
		sub.waitLast(t, "offline status from Stop", isOffline("stopped", false))
		after := record(t, url, topic)
		after.waitLast(t, "retained offline status from Stop", isOffline("stopped", true))
	})
}

// publishDuringOutage fills the queue while the client is cut off and
// checks the exact bound: every publish accepted, the oldest extra ones
// dropped and counted, queue messages waiting.
func publishDuringOutage(t *testing.T, c *Client, queue, extra int, qos byte) {
	t.Helper()
	waitUntil(t, "client sees the outage", func() bool { return !c.Stats().Connected })
	before := c.Stats()
	for i := range queue + extra {
		if !c.Publish(Message{Topic: c.Topics().Points(), Payload: seq(i), QoS: qos}) {
			t.Fatalf("publish %d refused", i)
		}
	}
	s := c.Stats()
	if s.Queued != queue || s.Dropped-before.Dropped != uint64(extra) {
		t.Fatalf("stats %+v (dropped before %d): want %d queued, the oldest %d dropped", s, before.Dropped, queue, extra)
	}
}

// While the broker is unreachable the queue holds queue_size messages,
// drops the oldest beyond that (counted), and delivers the rest in order
// once the broker is back. QoS 0 on purpose: paho alone would lose them.
func TestQueueBoundDuringOutage(t *testing.T) {
	forEachBroker(t, func(t *testing.T, url string) {
		const queue, extra = 20, 7
		r := newRelay(t, url)
		c := newClient(t, r.url(), queue)
		sub := record(t, url, c.Topics().Points())
		startClient(t, c)

		r.cut()
		publishDuringOutage(t, c, queue, extra, 0)
		r.mend()
		got := sub.waitFor(t, queue)
		if len(got) != queue {
			t.Fatalf("got %d messages, want %d", len(got), queue)
		}
		checkSeq(t, got, extra)
		waitUntil(t, "queue empty", func() bool { s := c.Stats(); return s.Queued == 0 && s.Sent == queue && s.Replayed == queue })
	})
}

// Same with the real thing: Mosquitto stopped and started again on the same
// port. The subscriber keeps a persistent session (QoS 1), so the broker
// holds what arrives before it is back.
func TestQueueSurvivesMosquittoRestart(t *testing.T) {
	const queue, extra = 20, 7
	m := startMosquitto(t)
	c := newClient(t, m.url(), queue)
	o := paho.NewClientOptions().SetClientID("rec-persistent").SetCleanSession(false)
	sub := recordWith(t, o, m.url(), c.Topics().Points())
	startClient(t, c)
	c.Publish(Message{Topic: c.Topics().Points(), Payload: []byte("before"), QoS: 1})
	if got := sub.waitFor(t, 1); got[0].payload != "before" {
		t.Fatalf("got %q", got[0].payload)
	}
	waitUntil(t, "first message confirmed", func() bool { return c.Stats().Queued == 0 })

	m.stop()
	publishDuringOutage(t, c, queue, extra, 1)
	m.start()
	got := sub.waitFor(t, 1+queue)
	if len(got) != 1+queue {
		t.Fatalf("got %d messages, want %d", len(got), 1+queue)
	}
	checkSeq(t, got[1:], extra)
	waitUntil(t, "queue empty", func() bool { s := c.Stats(); return s.Queued == 0 && s.Sent == 1+queue })
}

// A subscription made once is renewed after every reconnect (clean session:
// the broker forgets it). The message is retained so that it reaches the
// client whether it is published before or after the re-subscription.
func TestResubscribeAfterReconnect(t *testing.T) {
	forEachBroker(t, func(t *testing.T, url string) {
		r := newRelay(t, url)
		c := newClient(t, r.url(), 0)
		cmd := c.Topics().Topic("cmd")
		var mu sync.Mutex
		var got []string
		if err := c.Subscribe(cmd, 1, func(_ string, p []byte) {
			mu.Lock()
			got = append(got, string(p))
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
		has := func(s string) func() bool {
			return func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got) > 0 && got[len(got)-1] == s
			}
		}
		pub := record(t, url, "unused/topic").pc
		send := func(s string) {
			if tok := pub.Publish(cmd, 1, true, s); !tok.WaitTimeout(patience) || tok.Error() != nil {
				t.Fatalf("publish %s: %v", s, tok.Error())
			}
		}
		startClient(t, c)
		send("before")
		waitUntil(t, "command before the outage", has("before"))

		r.cut()
		waitUntil(t, "client sees the outage", func() bool { return !c.Stats().Connected })
		send("after")
		r.mend()
		waitUntil(t, "command after the reconnect", has("after"))
	})
}

// With no broker at all Publish takes everything, the queue keeps the
// newest queue_size messages and counts the older ones as dropped; after
// Stop a memory queue's content is dropped (counted) and every publish is
// refused. Stop returns although nothing ever connected.
func TestPublishWithoutBroker(t *testing.T) {
	url := fmt.Sprintf("tcp://127.0.0.1:%d", freePort(t)) // nothing listens there
	const queue = 10
	c := newClient(t, url, queue)
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range queue + 3 {
		if !c.Publish(Message{Topic: "x/y", Payload: seq(i)}) {
			t.Fatalf("publish %d refused", i)
		}
	}
	if s := c.Stats(); s.Connected || s.Queued != queue || s.Dropped != 3 || s.Sent != 0 || s.Enqueued != queue+3 {
		t.Fatalf("stats %+v", s)
	}
	c.Stop()
	if c.Publish(Message{Topic: "x/y"}) {
		t.Fatal("publish after Stop accepted")
	}
	if s := c.Stats(); s.Queued != 0 || s.Dropped != 3+queue+1 {
		t.Fatalf("after Stop: %+v, want the queued ones and the late one counted as dropped", s)
	}
	if err := c.Start(context.Background()); err == nil {
		t.Fatal("Start after Stop accepted")
	}
}

func TestPublishRefusesInvalid(t *testing.T) {
	c := newClient(t, "tcp://127.0.0.1:1", 0)
	for _, m := range []Message{{Topic: ""}, {Topic: "a/+"}, {Topic: "a/#"}, {Topic: "a", QoS: 3}} {
		if c.Publish(m) {
			t.Fatalf("accepted %+v", m)
		}
	}
	if s := c.Stats(); s.Dropped != 4 || s.Queued != 0 {
		t.Fatalf("stats %+v", s)
	}
	if err := c.Subscribe("", 0, func(string, []byte) {}); err == nil {
		t.Fatal("empty filter accepted")
	}
	if err := c.Subscribe("a", 0, nil); err == nil {
		t.Fatal("nil handler accepted")
	}
}

func TestContextEndStops(t *testing.T) {
	b := startEmbedded(t)
	c := newClient(t, b.URL(), 0)
	sub := record(t, b.URL(), c.Topics().Status())
	ctx, cancel := context.WithCancel(context.Background())
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sub.waitLast(t, "the plain online status", func(m received) bool {
		d, ok := status(m)
		return ok && d.State == "online" && d.Site == "s1"
	})
	cancel()
	sub.waitLast(t, "offline status after cancel", isOffline("stopped", false))
	if c.Publish(Message{Topic: "a"}) {
		t.Fatal("publish accepted after the context ended")
	}
}

func TestNewRefuses(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		site string
		want string
	}{
		{Config{Broker: "tcp://h:1883"}, "", "site id is empty"},
		{Config{Broker: "tcp://h:1883"}, "a/b", "site id a/b"},
		{Config{}, "s1", "no broker"},
		{Config{Broker: "ssl://h:8883"}, "s1", "asks for TLS"},
		{Config{Broker: "ssl://h:8883", TLS: &TLSConfig{CAFile: "/nonexistent/ca.pem"}}, "s1", "tls.ca_file"},
		{Config{Broker: "tcp://h:1883", Username: "u", PasswordFile: "/nonexistent/pw"}, "s1", "cannot read the password"},
	} {
		_, err := New(tc.cfg, tc.site, quiet)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v, %q) = %v, want an error containing %q", tc.cfg, tc.site, err, tc.want)
		}
	}
}

func TestReadPassword(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	for _, tc := range []struct{ name, want, err string }{
		{write("plain", "s3cret\n"), "s3cret", ""},
		{write("crlf", "s3 cret\r\n"), "s3 cret", ""},
		{"mqtt-password", "fromsystemd", ""}, // bare name: $CREDENTIALS_DIRECTORY
		{write("empty", "\n"), "", "is empty"},
		{"missing", "", "cannot read"},
	} {
		if tc.name == "mqtt-password" {
			write("mqtt-password", "fromsystemd\n")
		}
		got, err := readPassword(tc.name)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestTopics(t *testing.T) {
	tp := Topics{Root: "acme/sites", Site: "tx1"}
	for got, want := range map[string]string{
		tp.Status(): "acme/sites/tx1/status", tp.Points(): "acme/sites/tx1/points",
		tp.Plan(): "acme/sites/tx1/plan", tp.Events(): "acme/sites/tx1/events",
		tp.Topic("gpu/n1"): "acme/sites/tx1/gpu/n1", tp.Topic(""): "acme/sites/tx1",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	c := newClient(t, "tcp://127.0.0.1:1", 0)
	if got := c.Topics().Status(); got != "siteagent/s1/status" {
		t.Errorf("default root: %q", got)
	}
}

// A broker that is down when the client starts is retried; what was
// published meanwhile arrives once it is up.
func TestBrokerDownAtStart(t *testing.T) {
	b := startEmbedded(t)
	r := newRelay(t, b.URL())
	r.cut()
	c := newClient(t, r.url(), 0)
	sub := record(t, b.URL(), c.Topics().Points())
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		c.Publish(Message{Topic: c.Topics().Points(), Payload: seq(i)})
	}
	if s := c.Stats(); s.Connected || s.Queued != 5 {
		t.Fatalf("stats %+v: want 5 queued, not connected", s)
	}
	r.mend()
	checkSeq(t, sub.waitFor(t, 5), 0)
	if s := c.Stats(); s.Reconnects != 0 {
		t.Fatalf("stats %+v: the first connection is not a reconnect", s)
	}
}

// Direct messages skip the queue: they go out while a gated session waits
// (a Sparkplug node whose primary host is offline still grants GPU
// leases), are never replayed as history, and are dropped unsent once
// expired.
func TestDirectLane(t *testing.T) {
	b := startEmbedded(t)
	c, err := New(Config{Broker: b.URL()}, "s1", quiet, WithGate(), WithHistoricalFlag(nil),
		WithDirect(func(topic string) bool { return strings.HasPrefix(topic, "siteagent/s1/nodes/") }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	sub := record(t, b.URL(), "siteagent/s1/#")
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "connected (the session waits for the gate)", func() bool { return c.Stats().Connected })
	c.Publish(Message{Topic: c.Topics().Points(), Payload: []byte(`{"p":1}`)})
	c.Publish(Message{Topic: "siteagent/s1/nodes/n1/grant", Payload: []byte(`{"g":1}`), QoS: 1})
	c.Publish(Message{Topic: "siteagent/s1/nodes/n1/grant", Payload: []byte(`{"g":0}`), QoS: 1, Expires: time.Now().Add(-time.Second)})
	sub.waitLast(t, "the grant while the gate is closed", isPayload(`{"g":1}`))
	time.Sleep(200 * time.Millisecond)
	for _, m := range sub.all() {
		if m.topic == c.Topics().Points() || m.payload == `{"g":0}` {
			t.Fatalf("%s went out: the gate is closed / it had expired", m.payload)
		}
	}
	c.SetGate(true)
	sub.waitLast(t, "queued point batch once the gate opens, as history", isPayload(`{"historical":true,"p":1}`))
	if s := c.Stats(); s.Expired != 1 || s.Sent != 2 || s.Queued != 0 {
		t.Fatalf("stats %+v", s)
	}
}
