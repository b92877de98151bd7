package mqtt

import (
	"strings"
	"testing"
	"time"

	"github.com/siteagent/siteagent/agent/config"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg       Config
		key, want string // want "" = no problem
	}{
		{Config{}, "", ""}, // everything defaulted; the demo fills the broker
		{Config{Broker: "tcp://10.0.0.5:1883", TopicRoot: "acme/sites", Username: "u", PasswordFile: "pw",
			TelemetryPeriod: 100 * time.Millisecond, QueueSize: MaxQueueSize}, "", ""},
		{Config{Broker: "ssl://h:8883"}, "mqtt.tls", "asks for TLS: add a [mqtt.tls] table"},
		{Config{Broker: "mqtts://h:8883"}, "mqtt.tls", "asks for TLS"},
		{Config{Broker: "ssl://h:8883", TLS: &TLSConfig{CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "c.key", ServerName: "mqtt.example.net"}}, "", ""},
		{Config{Broker: "tls://h:8883", TLS: &TLSConfig{}}, "", ""}, // the system's roots
		{Config{Broker: "tcp://h:1883", TLS: &TLSConfig{CAFile: "ca.pem"}}, "mqtt.broker", "plain TCP; write ssl://"},
		{Config{Broker: "ssl://h:8883", TLS: &TLSConfig{CertFile: "c.pem"}}, "mqtt.tls", "both cert_file and key_file"},
		{Config{Broker: "ssl://h:8883", TLS: &TLSConfig{ServerName: "h:8883"}}, "mqtt.tls.server_name", "not a host name"},
		{Config{Broker: "ssl://h"}, "mqtt.broker", "ssl://h:8883"},
		{Config{Format: "xml"}, "mqtt.format", `"xml" is not a format`},
		{Config{Format: "sparkplug", Sparkplug: &SparkplugConfig{GroupID: "a/b"}}, "mqtt.sparkplug.group_id", "one topic level"},
		{Config{Format: "sparkplug", Sparkplug: &SparkplugConfig{PrimaryHost: "scada+1"}}, "mqtt.sparkplug.primary_host", "one topic level"},
		{Config{Sparkplug: &SparkplugConfig{}}, "mqtt.sparkplug", "format is json"},
		{Config{QueueMB: -1}, "mqtt.queue_mb", "out of range"},
		{Config{ReplayRate: MaxReplayRate + 1}, "mqtt.replay_rate", "out of range"},
		{Config{Broker: "ws://h:80"}, "mqtt.broker", `scheme "ws" is not supported`},
		{Config{Broker: "localhost:1883"}, "mqtt.broker", "is not a URL"},
		{Config{Broker: "tcp://h"}, "mqtt.broker", "no port"},
		{Config{Broker: "tcp://:1883"}, "mqtt.broker", "no host"},
		{Config{Broker: "tcp://h:99999"}, "mqtt.broker", "not 1..65535"},
		{Config{Broker: "tcp://u:p@h:1883"}, "mqtt.broker", "carries credentials"},
		{Config{Broker: "tcp://h:1883/x"}, "mqtt.broker", "unexpected path"},
		{Config{TopicRoot: "a/+/b"}, "mqtt.topic_root", "wildcard"},
		{Config{TopicRoot: "a/#"}, "mqtt.topic_root", "wildcard"},
		{Config{TopicRoot: "/a"}, "mqtt.topic_root", "starts or ends with '/'"},
		{Config{TopicRoot: "a/"}, "mqtt.topic_root", "starts or ends with '/'"},
		{Config{TopicRoot: "a//b"}, "mqtt.topic_root", "empty level"},
		{Config{TopicRoot: "$SYS"}, "mqtt.topic_root", "reserve"},
		{Config{PasswordFile: "/run/pw"}, "mqtt.username", "username is empty"},
		{Config{TelemetryPeriod: 99 * time.Millisecond}, "mqtt.telemetry_period", "below 100ms"},
		{Config{TelemetryPeriod: -time.Second}, "mqtt.telemetry_period", "below 100ms"},
		{Config{QueueSize: -1}, "mqtt.queue_size", "out of range"},
		{Config{QueueSize: MaxQueueSize + 1}, "mqtt.queue_size", "out of range"},
	} {
		p := config.NewProblems("site.toml", nil)
		tc.cfg.Validate(p, "mqtt")
		list := p.List()
		if tc.want == "" {
			if len(list) != 0 {
				t.Errorf("%+v: unexpected %v", tc.cfg, list)
			}
			continue
		}
		if len(list) != 1 || list[0].Key != tc.key || !strings.Contains(list[0].Msg, tc.want) {
			t.Errorf("%+v: got %v, want one problem at %s containing %q", tc.cfg, list, tc.key, tc.want)
		}
	}
}

func TestWithDefaults(t *testing.T) {
	got := Config{Broker: "tcp://h:1883"}.WithDefaults("tx1")
	want := Config{Broker: "tcp://h:1883", ClientID: "siteagent-tx1", TopicRoot: "siteagent",
		TelemetryPeriod: time.Second, Format: "json", QueueSize: 100000, QueueMB: 64, ReplayRate: 500}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	set := Config{ClientID: "c", TopicRoot: "r", TelemetryPeriod: time.Minute, Format: "json", QueueSize: 3, QueueMB: 1, ReplayRate: 9}
	if got := set.WithDefaults("tx1"); got != set {
		t.Fatalf("set keys changed: %+v", got)
	}
	sp := Config{Format: "sparkplug"}.WithDefaults("tx1")
	if sp.Sparkplug == nil || sp.Sparkplug.GroupID != "siteagent" {
		t.Fatalf("sparkplug defaults: %+v", sp.Sparkplug)
	}
}
