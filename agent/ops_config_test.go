package agent_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/configs"
)

// demoWith is the demo site file edited: site lines added to [site],
// mqtt lines to [mqtt], and tail appended.
func demoWith(site, mqtt, tail string) []byte {
	s := string(configs.Demo())
	if strings.Contains(mqtt, "broker =") {
		s = strings.Replace(s, "broker = \"\"\n", "", 1)
	}
	s = strings.Replace(s, "[site]\n", "[site]\n"+site+"\n", 1)
	s = strings.Replace(s, "[mqtt]\n", "[mqtt]\n"+mqtt+"\n", 1)
	return []byte(s + "\n" + tail + "\n")
}

// The MQTT side of the site file is checked like the rest: each problem
// names its key and line.
func TestOpsConfigProblems(t *testing.T) {
	for _, tc := range []struct {
		name             string
		site, mqtt, tail string
		key, want        string
	}{
		{"relative state dir", `state_dir = "state"`, "", "", "site.state_dir", "not an absolute path"},
		{"commands bounds", "", "", "[commands]\nmin_target_kw = 99999", "commands.min_target_kw", "0..17500"},
		{"commands need min_target_kw", "", "", "[commands]\nmax_hold = \"1h\"", "commands.min_target_kw", ""},
		{"tls without ssl", "", "broker = \"tcp://h:1883\"\n[mqtt.tls]\nca_file = \"/ca.pem\"", "", "mqtt.broker", "plain TCP"},
		{"unknown format", "", `format = "xml"`, "", "mqtt.format", "not a format"},
		{"unknown key", "", "", "[commands]\nmin_target_kw = 1\nallow_insecure = true", "commands.allow_insecure", "unknown key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := agent.Load("site.toml", demoWith(tc.site, tc.mqtt, tc.tail))
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want a config error", err)
			}
			for _, p := range ce.Problems {
				if p.Key == tc.key && strings.Contains(p.Msg, tc.want) && p.Line > 0 {
					return
				}
			}
			t.Fatalf("problems %v: want one at %s containing %q with a line", ce.Problems, tc.key, tc.want)
		})
	}
	// A good table loads.
	cfg, err := agent.Load("site.toml", demoWith(`state_dir = "/var/lib/siteagent"`, `format = "sparkplug"`, "[commands]\nmin_target_kw = 6000\nmax_duration = \"2h\"\n[mqtt.sparkplug]\nprimary_host = \"scada-1\""))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Commands == nil || *cfg.Commands.MinTargetKW != 6000 || cfg.MQTT.Sparkplug.PrimaryHost != "scada-1" || cfg.MQTT.Sparkplug.GroupID != "siteagent" {
		t.Fatalf("loaded %+v %+v", cfg.Commands, cfg.MQTT.Sparkplug)
	}
}
