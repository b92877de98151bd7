package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/configs"
)

func minersExample(t *testing.T) string {
	t.Helper()
	b, err := configs.Files.ReadFile("miners.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A miners group takes its units, ratings, ceiling and meter from its
// inventory and its fleet.
func TestMinersGroupFromInventory(t *testing.T) {
	doc := minersExample(t)
	// Two kinds of miner in the asic group: the worst J/TH is shed first,
	// so it is the controller's last unit.
	doc = strings.Replace(doc, "[groups.miners.families.luxos]", `[[groups.miners.hosts]]
host = "10.40.20.1"
family = "luxos"
rated_w = 3500
efficiency_jth = 38.0

[groups.miners.families.luxos]`, 1)
	cfg, err := Load("site.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	g := cfg.Groups[0]
	if g.Units != 2401 || *g.CeilingKW != 2400*3.25+3.5 || g.PowerKW != "asic.power_kw" {
		t.Fatalf("group %+v, ceiling %v", g, *g.CeilingKW)
	}
	lim := cfg.ControlLimits()
	u := lim.Groups[0].UnitKW
	if len(u) != 2401 || u[len(u)-1] != 3.5 || u[0] != 3.25 {
		t.Fatalf("units: %d, first %v, last %v; want the 38 J/TH miner last", len(u), u[0], u[len(u)-1])
	}
	pts := cfg.points()
	for _, name := range []string{"asic.power_kw", "asic.power_measured_kw", "asic.miners_unreachable", "pods.power_kw"} {
		if _, ok := pts[name]; !ok {
			t.Errorf("point %s not defined", name)
		}
	}
	var b strings.Builder
	cfg.Summarize(&b)
	if !strings.Contains(b.String(), "moved by miners: 2401 luxos; least_efficient first") {
		t.Errorf("summary:\n%s", b.String())
	}
}

func TestMinersGroupMistakes(t *testing.T) {
	doc := minersExample(t)
	line := func(s string) string { return "site.toml:" + strconv.Itoa(lineOf(t, doc, s)) }
	cases := []struct {
		name, old, new string
		want           []string
	}{
		{"units that disagree", `wake_units_per_s = 100`, "wake_units_per_s = 100\nunits = 12",
			[]string{"groups[0].units: 12, but the inventory lists 2400 miners"}},
		{"unit_kw", `wake_units_per_s = 100`, "wake_units_per_s = 100\nunit_kw = 3.2",
			[]string{"groups[0].unit_kw: a miners group rates each miner"}},
		{"inline password", `take_over_session = true`, "take_over_session = true\n\n[groups.miners.credentials.braiins]\nuser = \"root\"\npassword = \"hunter2\"",
			[]string{"password: unknown key"}},
		{"plain cgminer cannot be shed", `family = "luxos"`, `family = "cgminer"`,
			[]string{"2400 miners of family cgminer"}},
		{"source clash", `name = "pcc"`, `name = "asic"`,
			[]string{`source "asic" is defined twice`}},
		{"range too wide", "cidr = \"10.40.0.0/20\"\ncount = 2400", `cidr = "10.0.0.0/8"`,
			[]string{line(`[[groups.miners.hosts]]`) + ": groups[0].miners.hosts[0]", "more than the 100000 a group may have"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			edited := strings.Replace(doc, c.old, c.new, 1)
			_, err := Load("site.toml", []byte(edited))
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("want problems, got %v", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("problems do not say %q:\n%v", w, err)
				}
			}
		})
	}
}

// An inventory file sits next to the site file; its mistakes name it and
// its line.
func TestMinersInventoryFileNextToTheSiteFile(t *testing.T) {
	dir := t.TempDir()
	doc := strings.Replace(minersExample(t), `[[groups.miners.hosts]]
# Every usable address of rows A-C: 10.40.0.1 .. 10.40.9.96.
cidr = "10.40.0.0/20"
count = 2400
family = "luxos"
rated_w = 3250
efficiency_jth = 31.0`, `inventory_file = "rows.csv"`, 1)
	doc = strings.Replace(doc, "# inventory_file = \"miners.csv\"\n", "", 1)
	site := filepath.Join(dir, "site.toml")
	os.WriteFile(site, []byte(doc), 0o644)
	os.WriteFile(filepath.Join(dir, "rows.csv"), []byte("host,family,rated_w\n10.40.0.0/24,luxos,3250\n10.40.1.5,luxos,3250\n"), 0o644)
	cfg, err := LoadFile(site)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Groups[0].Units != 255 {
		t.Fatalf("units %d, want 254 + 1", cfg.Groups[0].Units)
	}
	os.WriteFile(filepath.Join(dir, "rows.csv"), []byte("host,family,rated_w\n10.40.0.0/24,luxos,3250\n10.40.0.5,luxos,3250\n"), 0o644)
	_, err = LoadFile(site)
	if err == nil || !strings.Contains(err.Error(), "rows.csv:3: miner 10.40.0.5 is listed twice (first at rows.csv:2)") {
		t.Fatalf("duplicate: %v", err)
	}
}
