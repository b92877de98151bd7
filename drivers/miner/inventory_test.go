package miner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siteagent/siteagent/agent/config"
)

func resolve(t *testing.T, c GroupConfig, dir string) ([]Miner, string) {
	t.Helper()
	c = c.WithDefaults("asic", 0)
	p := config.NewProblems("site.toml", nil)
	c.Validate(p, "groups[0].miners")
	c.Resolve(p, "groups[0].miners", dir, "asic")
	if err := p.Err(); err != nil {
		return c.Inventory(), err.Error()
	}
	return c.Inventory(), ""
}

func TestCIDRExpansion(t *testing.T) {
	ms, errs := resolve(t, GroupConfig{Hosts: []HostEntry{
		{CIDR: "10.1.0.0/30", Family: "luxos", RatedW: 3250}, // .1 .2
		{CIDR: "10.2.0.0/24", Count: 3, Port: 4029, Family: "braiins", RatedW: 3010, Rack: "R2"},
		{CIDR: "10.3.0.10/29", Family: "luxos", RatedW: 3250}, // from .10 to .14 (.15 is broadcast)
		{Host: "miner-7.site:4028", Family: "antminer", RatedW: 3100},
		{CIDR: "10.4.0.6/31", Family: "luxos", RatedW: 3250}, // /31: both
	}}, "")
	if errs != "" {
		t.Fatal(errs)
	}
	var hosts []string
	for _, m := range ms {
		hosts = append(hosts, m.Host)
	}
	want := "10.1.0.1 10.1.0.2 10.2.0.1:4029 10.2.0.2:4029 10.2.0.3:4029 10.3.0.10 10.3.0.11 10.3.0.12 10.3.0.13 10.3.0.14 miner-7.site:4028 10.4.0.6 10.4.0.7"
	if got := strings.Join(hosts, " "); got != want {
		t.Fatalf("hosts\n got %s\nwant %s", got, want)
	}
	if ms[2].Family != Braiins || ms[2].Rack != "R2" || ms[2].RatedW != 3010 || ms[2].Group != "asic" {
		t.Fatalf("%+v", ms[2])
	}
}

func TestInventoryMistakesAreNamed(t *testing.T) {
	cases := []struct {
		entry HostEntry
		want  string
	}{
		{HostEntry{CIDR: "10.0.0.0/8", Family: "luxos", RatedW: 3000}, "more than the 100000"},
		{HostEntry{CIDR: "10.0.0.0/24", Count: 300, Family: "luxos", RatedW: 3000}, "count 300 is more than the 254 usable"},
		{HostEntry{Host: "10.0.0.1", Family: "luxor", RatedW: 3000}, `family "luxor" is not one of`},
		{HostEntry{Host: "10.0.0.1", Family: "luxos"}, "rated_w 0"},
		{HostEntry{Host: "10.0.0.1", Family: "luxos", RatedW: 3e6}, "rated_w 3e+06"},
		{HostEntry{Host: "10.0.0.1/24", Family: "luxos", RatedW: 3000}, "a range goes in cidr"},
		{HostEntry{Host: "10.0.0.1", CIDR: "10.0.0.0/30", Family: "luxos", RatedW: 3000}, "not both"},
		{HostEntry{Family: "luxos", RatedW: 3000}, "give host"},
		{HostEntry{CIDR: "fd00::/120", Family: "luxos", RatedW: 3000}, "only IPv4"},
		{HostEntry{Host: "10.0.0.1:99999", Family: "luxos", RatedW: 3000}, "invalid port"},
	}
	for _, c := range cases {
		_, errs := resolve(t, GroupConfig{Hosts: []HostEntry{c.entry}}, "")
		if !strings.Contains(errs, c.want) || !strings.Contains(errs, "site.toml") || !strings.Contains(errs, "groups[0].miners.hosts[0]") {
			t.Errorf("%+v: got %q, want it to name the key and say %q", c.entry, errs, c.want)
		}
	}
	_, errs := resolve(t, GroupConfig{Hosts: []HostEntry{
		{CIDR: "10.0.0.0/30", Family: "luxos", RatedW: 3000},
		{Host: "10.0.0.2", Family: "luxos", RatedW: 3000},
	}}, "")
	if !strings.Contains(errs, "10.0.0.2 is listed twice") {
		t.Errorf("duplicate not found: %s", errs)
	}
	_, errs = resolve(t, GroupConfig{}, "")
	if !strings.Contains(errs, "no miners") {
		t.Errorf("empty inventory: %s", errs)
	}
}

func TestInventoryFiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "fleet.csv"), []byte(`# rack A
host,family,rated_w,rack,efficiency_jth,port,count
10.5.0.0/29,luxos,3250,A,21.5,,3
10.5.1.7,braiins,3010,B,,50051,
`), 0o644)
	os.WriteFile(filepath.Join(dir, "fleet.json"), []byte(`{"miners": [
  {"cidr": "10.6.0.0/30", "family": "luxos", "rated_w": 3250},
  {"host": "10.6.1.1", "family": "whatsminer", "rated_w": 3400, "rack": "W"}
]}`), 0o644)
	ms, errs := resolve(t, GroupConfig{InventoryFile: "fleet.csv", Hosts: []HostEntry{{Host: "10.7.0.1", Family: "luxos", RatedW: 3250}}}, dir)
	if errs != "" {
		t.Fatal(errs)
	}
	if len(ms) != 5 || ms[0].Host != "10.5.0.1" || ms[0].EfficiencyJTH != 21.5 || ms[0].Rack != "A" || ms[3].Host != "10.5.1.7:50051" || ms[4].Host != "10.7.0.1" {
		t.Fatalf("csv: %+v", ms)
	}
	ms, errs = resolve(t, GroupConfig{InventoryFile: filepath.Join(dir, "fleet.json")}, "")
	if errs != "" {
		t.Fatal(errs)
	}
	if len(ms) != 3 || ms[2].Family != Whatsminer || ms[2].Rack != "W" {
		t.Fatalf("json: %+v", ms)
	}

	// Mistakes in a file name the file and its line.
	os.WriteFile(filepath.Join(dir, "bad.csv"), []byte("host,family,rated_w\n10.0.0.1,luxos,3250\n10.0.0.2,luxos,lots\n10.0.0.3,vnsh,3000\n"), 0o644)
	_, errs = resolve(t, GroupConfig{InventoryFile: "bad.csv"}, dir)
	for _, want := range []string{`bad.csv:3: rated_w "lots" is not a number`, `bad.csv:4: family "vnsh"`, "groups[0].miners.inventory_file"} {
		if !strings.Contains(errs, want) {
			t.Errorf("bad.csv: %q does not say %q", errs, want)
		}
	}
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte("[\n  {\"host\": \"10.0.0.1\", \"family\": \"luxos\", \"rated_w\": 3250},\n  {\"host\": \"10.0.0.2\", \"famly\": \"luxos\"}\n]"), 0o644)
	_, errs = resolve(t, GroupConfig{InventoryFile: "bad.json"}, dir)
	if !strings.Contains(errs, "bad.json:3") || !strings.Contains(errs, "famly") {
		t.Errorf("bad.json: %s", errs)
	}
	os.WriteFile(filepath.Join(dir, "cols.csv"), []byte("host,family,watts\n"), 0o644)
	if _, errs = resolve(t, GroupConfig{InventoryFile: "cols.csv"}, dir); !strings.Contains(errs, `unknown column "watts"`) {
		t.Errorf("cols.csv: %s", errs)
	}
	if _, errs = resolve(t, GroupConfig{InventoryFile: "absent.csv"}, dir); !strings.Contains(errs, "absent.csv") {
		t.Errorf("absent file: %s", errs)
	}
}

func TestConfigValidation(t *testing.T) {
	bad := GroupConfig{ShedOrder: "random", WakePerS: -1, Hosts: []HostEntry{{Host: "10.0.0.1", Family: "luxos", RatedW: 3000}},
		Credentials: CredentialsConfig{Braiins: &CredentialConfig{User: "root"}},
		Families:    FamiliesConfig{LuxOS: &FamilyConfig{LegacyPort: 4028}, Braiins: &FamilyConfig{TakeOverSession: new(bool)}}}
	_, errs := resolve(t, bad, "")
	for _, want := range []string{"shed_order", "wake_per_s", "credentials.braiins.password_file", "passwords are never written",
		"families.luxos: legacy_port and quick_ramp_* apply to braiins only", "families.braiins.take_over_session: applies to luxos only"} {
		if !strings.Contains(errs, want) {
			t.Errorf("%q does not mention %q", errs, want)
		}
	}
}

func TestCredentials(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bos-pw"), []byte("hunter2\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "empty"), []byte("\n"), 0o600)
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	c := GroupConfig{Credentials: CredentialsConfig{Braiins: &CredentialConfig{User: "root", PasswordFile: "bos-pw"}, Antminer: &CredentialConfig{PasswordFile: filepath.Join(dir, "empty")}}}
	got, err := c.LoadCredentials()
	if err != nil {
		t.Fatal(err)
	}
	if got[Braiins] != (Credentials{User: "root", Password: "hunter2"}) || got[Antminer].Password != "" || len(got) != 2 {
		t.Fatalf("%+v", got)
	}
	c.Credentials.Vnish = &CredentialConfig{PasswordFile: "missing"}
	if _, err := c.LoadCredentials(); err == nil || !strings.Contains(err.Error(), "vnish") {
		t.Fatalf("missing secret: %v", err)
	}
}

func TestUnitOrderPutsFirstShedLast(t *testing.T) {
	ms := []Miner{{EfficiencyJTH: 30}, {EfficiencyJTH: 20}, {EfficiencyJTH: 40}, {}}
	got := UnitOrder(OrderLeastEfficient, ms)
	// Woken first: unknown efficiency, then the best; the worst (40 J/TH)
	// is the last unit, so the first shed.
	want := []int{3, 1, 0, 2}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("order %v, want %v", got, want)
		}
	}
}
