package mqtt

import (
	"fmt"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/drivers/mqtt/mqtttest"
	"github.com/siteagent/siteagent/sim/broker"
)

// Helpers shared by the tests: real brokers (embedded mochi, Mosquitto), a
// TCP relay that can cut the client off, and a recording subscriber.

const patience = 30 * time.Second // how long to wait for something that should happen

// forEachBroker runs f against a fresh embedded broker and a fresh Mosquitto.
func forEachBroker(t *testing.T, f func(t *testing.T, url string)) {
	t.Run("mochi", func(t *testing.T) { f(t, startEmbedded(t).URL()) })
	t.Run("mosquitto", func(t *testing.T) { f(t, startMosquitto(t).url()) })
}

func startEmbedded(t testing.TB) *broker.Broker {
	t.Helper()
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// mochi v2.7.9 can deadlock in Close when a client is being
		// removed at the same moment (Clients.GetByListener takes its read
		// lock twice): give up on it rather than hang the test binary.
		done := make(chan struct{})
		go func() { _ = b.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Log("embedded broker did not close (known mochi deadlock); abandoned")
		}
	})
	return b
}

// mosquitto wraps mqtttest.Mosquitto with the names these tests use.
type mosquitto struct{ *mqtttest.Mosquitto }

func startMosquitto(t *testing.T) mosquitto {
	t.Helper()
	return mosquitto{mqtttest.Start(t, mqtttest.Options{})}
}

func (m mosquitto) url() string { return m.URL() }
func (m mosquitto) start()      { m.Start() }
func (m mosquitto) stop()       { m.Stop() }

func freePort(t testing.TB) int { return mqtttest.FreePort(t) }

// relay wraps mqtttest.Relay with the names these tests use.
type relay struct{ *mqtttest.Relay }

func newRelay(t *testing.T, brokerURL string) relay {
	return relay{mqtttest.NewRelay(t, brokerURL)}
}

func (r relay) url() string { return r.URL() }
func (r relay) cut()        { r.Cut() }
func (r relay) mend()       { r.Mend() }

// received is one message seen by a recorder.
type received struct {
	topic    string
	payload  string
	retained bool
}

// recorder is a separate paho client that records what it receives.
type recorder struct {
	mu   sync.Mutex
	msgs []received
	pc   paho.Client
}

func record(t *testing.T, url, filter string) *recorder {
	return recordWith(t, paho.NewClientOptions().SetClientID(fmt.Sprintf("rec-%d", time.Now().UnixNano())), url, filter)
}

func recordWith(t *testing.T, o *paho.ClientOptions, url, filter string) *recorder {
	t.Helper()
	r := &recorder{}
	o.AddBroker(url).SetAutoReconnect(true).SetMaxReconnectInterval(time.Second)
	r.pc = paho.NewClient(o)
	if tok := r.pc.Connect(); !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatalf("recorder connect: %v", tok.Error())
	}
	t.Cleanup(func() { r.pc.Disconnect(0) })
	tok := r.pc.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		r.mu.Lock()
		r.msgs = append(r.msgs, received{m.Topic(), string(m.Payload()), m.Retained()})
		r.mu.Unlock()
	})
	if !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatalf("recorder subscribe: %v", tok.Error())
	}
	return r
}

func (r *recorder) all() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.msgs...)
}

// waitFor waits until the recorder holds n messages and returns them.
func (r *recorder) waitFor(t *testing.T, n int) []received {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d messages", n), func() bool { return len(r.all()) >= n })
	return r.all()
}

// waitLast waits until the latest message satisfies ok and returns it.
// (Brokers may deliver a retained message twice to a subscription made
// just before it was published, so the tests look at the latest one.)
func (r *recorder) waitLast(t *testing.T, what string, ok func(received) bool) received {
	t.Helper()
	var last received
	waitUntil(t, what, func() bool {
		all := r.all()
		if len(all) == 0 {
			return false
		}
		last = all[len(all)-1]
		return ok(last)
	})
	return last
}

// waitUntil polls cond until it holds; it fails the test after patience.
// It asserts that something happens, never how fast.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
