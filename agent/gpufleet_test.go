package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/drivers/gpufleet"
)

// gpuDemo is the demo site with its training cluster as two GPU servers
// running `siteagent node` instead of a PLC setpoint, with a droop
// response.
func gpuDemo(t *testing.T) string {
	t.Helper()
	doc := string(configs.Demo())
	old := `units = 600
unit_kw = 10.0
# 30 % of rating: below this the training jobs stall.
floor_kw = 1800
ramp_up_kw_per_s = 1000
restore_holdoff = "5s"
power_kw = "plc.training_kw"

[groups.modbus]
# The cluster cap in kW, float32 in holding registers 0-1; the PLC splits
# it evenly over the servers.
endpoint = "plc"
table = "holding"
address = 0
type = "float32"
order = "ABCD"
`
	if !strings.Contains(doc, old) {
		t.Fatal("demo.toml's training group changed; update this test")
	}
	return strings.Replace(doc, old, `units = 2
unit_kw = 3.2
floor_kw = 1.6
ramp_up_kw_per_s = 1

[groups.gpu_nodes]
nodes = ["gpu-t1", "gpu-t2"]
split = "even"
lease = "6s"

[groups.droop]
nominal_hz = 60.0
deadband_hz = 0.036
droop_pct = 1.0
min_kw = 3.2
`, 1)
}

func TestGPUNodesGroupLoads(t *testing.T) {
	doc := gpuDemo(t)
	cfg, err := Load("site.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	g := cfg.Groups[1]
	if g.PowerKW != "training.power_kw" || g.GPUNodes.Split != gpufleet.SplitEven || g.GPUNodes.StaleAfter != gpufleet.DefaultStaleAfter {
		t.Fatalf("defaults: %+v %+v", g, g.GPUNodes)
	}
	lim := cfg.ControlLimits()
	if d := lim.Groups[1].Droop; d != (control.Droop{NominalHz: 60, DeadbandHz: 0.036, Pct: 1, MinKW: 3.2}) {
		t.Fatalf("droop: %+v", d)
	}
	var b strings.Builder
	cfg.Summarize(&b)
	if !strings.Contains(b.String(), "moved by GPU nodes gpu-t1 gpu-t2") || !strings.Contains(b.String(), "droop 1 %") {
		t.Fatalf("summary:\n%s", b.String())
	}
	cfg.MQTT.Broker = "tcp://127.0.0.1:1883"
	a, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"training.power_kw", "training.stale_nodes", "training.gpu-t1.power_kw", "training.gpu-t2.granted_kw"} {
		if _, ok := a.Store().Lookup(name); !ok {
			t.Errorf("point %s not registered", name)
		}
	}
}

func TestGPUNodesProblems(t *testing.T) {
	doc := gpuDemo(t)
	cases := []struct {
		name, old, new, key, msg string
	}{
		{"units must count the nodes", "units = 2\nunit_kw = 3.2", "units = 3\nunit_kw = 3.2", "groups[1].units", "set units = 2"},
		{"shed group", "name = \"training\"\nkind = \"throttle\"", "name = \"training\"\nkind = \"shed\"", "groups[1].kind", `kind = "throttle"`},
		{"unknown split", `split = "even"`, `split = "fair"`, "groups[1].gpu_nodes.split", `"demand"`},
		{"nodes and pattern", `nodes = ["gpu-t1", "gpu-t2"]`, `nodes = ["gpu-t1", "gpu-t2"]` + "\npattern = \"gpu-*\"", "groups[1].gpu_nodes", "not both"},
		{"droop nominal", "nominal_hz = 60.0", "nominal_hz = 59.0", "groups[1].droop.nominal_hz", "50 or 60"},
		{"droop pct", "droop_pct = 1.0", "droop_pct = 0.0", "groups[1].droop.droop_pct", "outside (0, 20]"},
		{"droop min", "min_kw = 3.2", "min_kw = 1.0", "groups[1].droop.min_kw", "between floor_kw"},
		{"two actuators", "[groups.gpu_nodes]", "[groups.modbus]\nendpoint = \"plc\"\ntable = \"holding\"\naddress = 0\n\n[groups.gpu_nodes]", "groups[1]", "names 2 actuators"},
		{"no mqtt", "[mqtt]\n", "[unused]\n", "mqtt", "add an [mqtt] table"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(doc, c.old) {
				t.Fatalf("the test document lacks %q", c.old)
			}
			d := strings.Replace(doc, c.old, c.new, 1)
			_, err := Load("site.toml", []byte(d))
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("want a *config.Error, got %v", err)
			}
			for _, p := range ce.Problems {
				if p.Key == c.key && strings.Contains(p.Msg, c.msg) {
					if p.File != "site.toml" {
						t.Fatalf("%s", p.String())
					}
					return
				}
			}
			t.Fatalf("no problem for key %s with %q; got:\n%v", c.key, c.msg, err)
		})
	}
}

func TestGPUNodeInTwoGroupsRefused(t *testing.T) {
	doc := gpuDemo(t)
	doc = strings.Replace(doc, `power_kw = "plc.inference_kw"

[groups.modbus]
endpoint = "plc"
table = "holding"
address = 2
type = "float32"
order = "ABCD"`, `
[groups.gpu_nodes]
nodes = ["gpu-t2"]`, 1)
	doc = strings.Replace(doc, "units = 300\nunit_kw = 10.0", "units = 1\nunit_kw = 3.2", 1)
	doc = strings.Replace(doc, "floor_kw = 2400", "floor_kw = 1", 1)
	_, err := Load("site.toml", []byte(doc))
	if err == nil || !strings.Contains(err.Error(), `node "gpu-t2" is already in group "training"`) {
		t.Fatalf("%v", err)
	}
}
