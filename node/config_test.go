package node

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/configs"
)

// Every node example must load: the examples never rot.
func TestEveryNodeExampleIsValid(t *testing.T) {
	creds := t.TempDir()
	os.WriteFile(filepath.Join(creds, "mqtt-password"), []byte("secret\n"), 0o600)
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	files, err := fs.Glob(configs.Files, "node*.toml")
	if err != nil || len(files) < 2 {
		t.Fatalf("want the node examples, found %v (%v)", files, err)
	}
	for _, name := range files {
		data, _ := configs.Files.ReadFile(name)
		cfg, err := Load(name, data)
		if err != nil {
			t.Errorf("%s:\n%v", name, err)
			continue
		}
		var b strings.Builder
		if err := cfg.Summarize(&b); err != nil || !strings.Contains(b.String(), cfg.Node.ID) {
			t.Errorf("%s: summary: %v\n%s", name, err, b.String())
		}
		if cfg.GPU.Backend == BackendMock && !strings.Contains(b.String(), "SIMULATED") {
			t.Errorf("%s: the summary must say the GPUs are simulated:\n%s", name, b.String())
		}
	}
}

func TestNodeFileProblemsNameLineKeyAndFix(t *testing.T) {
	base, _ := configs.Files.ReadFile("node.mock.toml")
	doc := string(base)
	cases := []struct {
		name, old, new, key, msg string
	}{
		{"no safe cap", "safe_cap_w = 150", "", "lease", "exactly one of safe_cap_w"},
		{"both safe caps", "safe_cap_w = 150", "safe_cap_w = 150\nsafe_cap_pct = 40", "lease", "exactly one"},
		{"unknown backend", `backend = "mock"`, `backend = "cuda"`, "gpu.backend", `use "nvml"`},
		{"bad restore", `restore_on_exit = "keep"`, `restore_on_exit = "reset"`, "gpu.restore_on_exit", `"default"`},
		{"misspelled key", "telemetry_period", "telemetry_perod", "node.telemetry_perod", `did you mean "telemetry_period"`},
		{"bad node id", `id = "gpu-sim-01"`, `id = "gpu/01"`, "node.id", "not a usable node id"},
		{"mock latency", `latency = "15ms"`, `latency = "5s"`, "gpu.mock.latency", "outside 0..1s"},
		{"duration without unit", `telemetry_period = "1s"`, `telemetry_period = 1`, "node.telemetry_period", "write the unit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(doc, c.old) {
				t.Fatalf("node.mock.toml no longer contains %q", c.old)
			}
			d := strings.Replace(doc, c.old, c.new, 1)
			_, err := Load("node.toml", []byte(d))
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("want a *config.Error, got %v", err)
			}
			for _, p := range ce.Problems {
				if p.Key == c.key {
					if p.File != "node.toml" || p.Line == 0 || !strings.Contains(p.Msg, c.msg) {
						t.Fatalf("got %q; want node.toml:<line>: %s: ...%s...", p.String(), c.key, c.msg)
					}
					return
				}
			}
			t.Fatalf("no problem for key %s; got:\n%v", c.key, err)
		})
	}
}

func TestNodeMockSectionOnlyWithMockBackend(t *testing.T) {
	base, _ := configs.Files.ReadFile("node.mock.toml")
	d := strings.Replace(string(base), `backend = "mock"`, `backend = "nvml"`, 1)
	_, err := Load("node.toml", []byte(d))
	if err == nil || !strings.Contains(err.Error(), "gpu.mock") {
		t.Fatalf("want a problem on [gpu.mock] with the nvml backend, got %v", err)
	}
}

func TestSafeCapClampedToConstraints(t *testing.T) {
	w, pct := 50.0, 30.0
	l := LeaseSection{SafeCapW: &w}
	if got := l.SafeCapMW(100_000, 400_000); got != 100_000 {
		t.Fatalf("50 W on a 100..400 W board: %d mW", got)
	}
	l = LeaseSection{SafeCapPct: &pct}
	if got := l.SafeCapMW(200_000, 700_000); got != 210_000 {
		t.Fatalf("30 %% of 700 W: %d mW", got)
	}
}
