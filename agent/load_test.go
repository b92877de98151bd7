package agent

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/drivers/mqtt/mqtttest"
)

// Every example site file must load: the examples never rot.
func TestEveryExampleIsValid(t *testing.T) {
	// Examples name their secrets as systemd credentials.
	creds := t.TempDir()
	os.WriteFile(filepath.Join(creds, "mqtt-password"), []byte("secret\n"), 0o600)
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	files, err := fs.Glob(configs.Files, "*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	for _, name := range files {
		if strings.HasPrefix(name, "node") {
			continue // node role files: checked by package node's tests
		}
		data, _ := configs.Files.ReadFile(name)
		cfg, err := Load(name, data)
		if err != nil {
			t.Errorf("%s:\n%v", name, err)
			continue
		}
		var b strings.Builder
		if err := cfg.Summarize(&b); err != nil || !strings.Contains(b.String(), cfg.Site.ID) {
			t.Errorf("%s: summary: %v\n%s", name, err, b.String())
		}
		if cfg.MQTT != nil && cfg.MQTT.Broker == "" {
			cfg.MQTT.Broker = "tcp://127.0.0.1:1883" // the demo fills in its embedded broker
		}
		if cfg.MQTT != nil && cfg.MQTT.TLS != nil {
			// The example names the site's own certificate files; stand
			// in test ones so the agent can be built.
			pki := mqtttest.NewPKI(t)
			cert, key := pki.Client(cfg.Site.ID)
			cfg.MQTT.TLS.CAFile, cfg.MQTT.TLS.CertFile, cfg.MQTT.TLS.KeyFile = pki.CAFile, cert, key
		}
		cfg.Site.StateDir = t.TempDir()
		if _, err := New(cfg, Options{}); err != nil {
			t.Errorf("%s: builds a config that the agent cannot start: %v", name, err)
		}
	}
}

// lineOf is the 1-based line of the first occurrence of s in doc.
func lineOf(t *testing.T, doc, s string) int {
	i := strings.Index(doc, s)
	if i < 0 {
		t.Fatalf("%q not in the document", s)
	}
	return strings.Count(doc[:i], "\n") + 1
}

func TestProblemsNameFileLineKeyAndFix(t *testing.T) {
	demo := string(configs.Demo())
	cases := []struct {
		name     string
		old, new string // edit applied to the demo file
		key      string
		msg      string
	}{
		{"floor above ceiling", "floor_kw = 1800", "floor_kw = 7000", "groups[1].floor_kw", "lower floor_kw or raise ceiling_kw"},
		{"stage thresholds inverted", "clear_above_hz = 59.90", "clear_above_hz = 59.70", "stages[0].clear_above_hz", "must be above below_hz"},
		{"stages out of order", "below_hz = 59.50", "below_hz = 59.85", "stages[1].below_hz", "from the highest threshold down"},
		{"unknown point", `import_kw = "pcc.import_kw"`, `import_kw = "pcc.import_kW"`, "site.inputs.import_kw", `did you mean "pcc.import_kw"`},
		{"misspelled key", "restore_margin_kw = 300", "restore_margn_kw = 300", "limits.restore_margn_kw", `did you mean "restore_margin_kw"`},
		{"wrong type", "import_limit_kw = 17500", `import_limit_kw = "17500"`, "limits.import_limit_kw", "expected a number"},
		{"duration without unit", `cycle_period = "100ms"`, `cycle_period = 100`, "site.cycle_period", "write the unit"},
		{"stage names a missing group", "group = \"training\"\ncap_pct = 50.0", "group = \"trainin\"\ncap_pct = 50.0", "stages[1].actions[0].group", `no group is named "trainin"`},
		{"unknown kind", `kind = "throttle"`, `kind = "cap"`, "groups[1].kind", `use "shed"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(demo, tc.old) {
				t.Fatalf("demo.toml no longer contains %q", tc.old)
			}
			doc := strings.Replace(demo, tc.old, tc.new, 1)
			_, err := Load("site.toml", []byte(doc))
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("want a *config.Error, got %v", err)
			}
			line := lineOf(t, doc, tc.new)
			for _, p := range ce.Problems {
				if p.Key == tc.key {
					if p.File != "site.toml" || p.Line != line || !strings.Contains(p.Msg, tc.msg) {
						t.Fatalf("got %q; want site.toml:%d: %s: ...%s...", p.String(), line, tc.key, tc.msg)
					}
					return
				}
			}
			t.Fatalf("no problem for key %s; got:\n%v", tc.key, err)
		})
	}
}

func TestAllProblemsReportedInOneRun(t *testing.T) {
	doc := string(configs.Demo())
	doc = strings.Replace(doc, "floor_kw = 1800", "floor_kw = 7000", 1)
	doc = strings.Replace(doc, "clear_above_hz = 59.90", "clear_above_hz = 59.70", 1)
	doc = strings.Replace(doc, "restore_margin_kw = 300", "restore_margn_kw = 300", 1)
	_, err := Load("site.toml", []byte(doc))
	var ce *config.Error
	if !errors.As(err, &ce) || len(ce.Problems) < 3 {
		t.Fatalf("want at least three problems at once, got %v", err)
	}
}
