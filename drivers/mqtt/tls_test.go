package mqtt

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/drivers/mqtt/mqtttest"
)

// logBuffer collects log lines for tests that look for a reason.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Mosquitto with TLS and client certificates generated here: the agent
// connects with its certificate and publishes; a wrong CA, a wrong server
// name or a missing client certificate each keep it out, with the reason
// in the log.
func TestTLSWithClientCertificates(t *testing.T) {
	pki := mqtttest.NewPKI(t)
	m := mqtttest.Start(t, mqtttest.Options{TLS: pki})
	cert, key := pki.Client("s1")

	c, err := New(Config{Broker: m.URL(), TLS: &TLSConfig{CAFile: pki.CAFile, CertFile: cert, KeyFile: key}}, "s1", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	if !c.Secure() {
		t.Fatal("Secure() is false for an ssl:// broker")
	}
	sub := recordWith(t, paho.NewClientOptions().SetClientID("ops").SetTLSConfig(pki.ClientTLS("ops")), m.URL(), c.Topics().Points())
	startClient(t, c)
	c.Publish(Message{Topic: c.Topics().Points(), Payload: []byte("over tls"), QoS: 1})
	if got := sub.waitFor(t, 1); got[0].payload != "over tls" {
		t.Fatalf("got %q", got[0].payload)
	}

	for _, tc := range []struct {
		name string
		tls  TLSConfig
		want string
	}{
		{"untrusted CA", TLSConfig{CAFile: mqtttest.Untrusted(t), CertFile: cert, KeyFile: key}, "unknown authority"},
		{"wrong server name", TLSConfig{CAFile: pki.CAFile, CertFile: cert, KeyFile: key, ServerName: "broker.example.net"}, "broker.example.net"},
		{"no client certificate", TLSConfig{CAFile: pki.CAFile}, "mqtt broker unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuffer
			cfg := Config{Broker: m.URL(), ClientID: "bad-" + strings.ReplaceAll(tc.name, " ", "-"), TLS: &tc.tls}
			bad, err := New(cfg, "s1", slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			defer bad.Stop()
			if err := bad.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			waitUntil(t, "the refusal in the log", func() bool { return strings.Contains(logs.String(), tc.want) })
			// Give a wrongly accepted connection time to show up.
			time.Sleep(500 * time.Millisecond)
			if bad.Stats().Connected || bad.Stats().Reconnects > 0 {
				t.Fatalf("connected despite %s", tc.name)
			}
		})
	}
}

// Messages replayed after an outage carry "historical":true and are never
// retained (they must not replace the current retained value).
func TestReplayIsMarkedHistorical(t *testing.T) {
	b := startEmbedded(t)
	r := newRelay(t, b.URL())
	c, err := New(Config{Broker: r.url()}, "s1", quiet, WithHistoricalFlag(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	sub := record(t, b.URL(), c.Topics().Plan())
	startClient(t, c)
	c.Publish(Message{Topic: c.Topics().Plan(), Payload: []byte(`{"plan":1}`), QoS: 1, Retain: true})
	sub.waitLast(t, "live plan", isPayload(`{"plan":1}`))
	r.cut()
	waitUntil(t, "client sees the outage", func() bool { return !c.Stats().Connected })
	c.Publish(Message{Topic: c.Topics().Plan(), Payload: []byte(`{"plan":2}`), QoS: 1, Retain: true})
	r.mend()
	got := sub.waitLast(t, "replayed plan", isPayload(`{"historical":true,"plan":2}`))
	if got.retained {
		t.Fatal("replayed message delivered as retained")
	}
	late := record(t, b.URL(), c.Topics().Plan())
	late.waitLast(t, "the retained plan is still the live one", isPayload(`{"plan":1}`))
}
