package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/drivers/opcua/uacert"
	"github.com/siteagent/siteagent/sim"
	"github.com/siteagent/siteagent/sim/broker"
	opcuasim "github.com/siteagent/siteagent/sim/opcua"
)

// These tests run the real agent on the OPC UA example site file against
// the simulated site and its BMS: Modbus TCP for the meter and the rack
// PLC, OPC UA (Basic256Sha256, SignAndEncrypt, a password login, the
// server pinned by fingerprint) for the battery and the generator.

// startBMS runs a site built from siteCfg, its BMS and the agent.
func startBMS(t *testing.T, siteCfg sim.Config) (*harness, *opcuasim.BMS) {
	t.Helper()
	doc, err := configs.Files.ReadFile("bms-opcua.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := agent.Load("bms-opcua.example.toml", doc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	site := sim.New(siteCfg)
	if err := site.Start(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	// The agent's certificate and the password, as systemd would hand
	// them over.
	creds := t.TempDir()
	der, key, err := uacert.Generate(uacert.Options{ApplicationURI: "urn:siteagent:bms-site"})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(creds, "agent.pem"), uacert.CertificatePEM(der), 0o600)
	os.WriteFile(filepath.Join(creds, "agent.key"), uacert.KeyPEM(key), 0o600)
	os.WriteFile(filepath.Join(creds, "opcua-bms-password"), []byte("s3cret\n"), 0o600)
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	bms, err := opcuasim.StartBMS(site, siteCfg, opcuasim.Config{NoAnonymous: true, Users: map[string]string{"siteagent": "s3cret"}}, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Modbus {
		cfg.Modbus[i].URL = site.URL()
	}
	bmsCfg := &cfg.OPCUA[0]
	bmsCfg.Endpoint = bms.URL()
	bmsCfg.CertificateFile, bmsCfg.PrivateKeyFile = "agent.pem", "agent.key"
	bmsCfg.ServerFingerprint = uacert.Fingerprint(bms.Server().Certificate())
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	cfg.MQTT.Broker = b.URL()
	cfg.Site.StateDir = t.TempDir()

	h := &harness{t: t, site: site, cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	h.subscribe(b.URL())
	ready := make(chan struct{})
	var once sync.Once
	a, err := agent.New(cfg, agent.Options{Log: quietLog(), Notify: func(s string) {
		if s == "READY=1" {
			once.Do(func() { close(ready) })
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	h.agent = a
	go func() { h.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		h.stop()
		bms.Close()
	})
	select {
	case <-ready:
	case err := <-h.done:
		t.Fatalf("agent stopped before READY: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent not ready after 20s")
	}
	return h, bms
}

// controllable is the load the plan lets the groups draw.
func controllable(p agent.PlanReport) float64 {
	kw := 0.0
	for _, g := range p.Groups {
		if g.Kind == "shed" {
			kw += float64(g.UnitsOn) * g.CeilingKW / float64(max(g.Units, 1))
		} else {
			kw += g.CapKW
		}
	}
	return kw
}

func TestOPCUABatteryRunningLowWhileIslandedShedsMore(t *testing.T) {
	siteCfg := opcuasim.LowBattery(sim.DefaultConfig())
	h, _ := startBMS(t, siteCfg)
	full := siteCfg.GenerationKW + siteCfg.BatteryMaxKW
	h.eventually("a normal plan with island capacity read over OPC UA", 10*time.Second, func() bool {
		p := h.lastPlan()
		return p.Mode == "normal" && p.Inputs.IslandCapacityKW == full
	})

	h.site.OpenBreaker()
	var first float64
	h.eventually("islanded, the battery still full", 5*time.Second, func() bool {
		p := h.lastPlan()
		if p.Mode != "islanded" || p.BudgetKW == nil {
			return false
		}
		first = controllable(p)
		return p.Binding == "island_capacity"
	})
	t.Logf("islanded: controllable load %.0f kW under %.0f kW of capacity", first, full)

	// The battery drains: the BMS reports less discharge available, the
	// island capacity shrinks and the controller cuts deeper. (The drain
	// slows as the load falls to what the generator carries alone, so
	// the battery never quite empties.)
	var last agent.PlanReport
	h.eventually("capacity shrinks and the controller sheds more", 90*time.Second, func() bool {
		last = h.lastPlan()
		return last.Inputs.IslandCapacityKW <= siteCfg.GenerationKW+siteCfg.BatteryMaxKW/3 && controllable(last) < first-2000
	})
	t.Logf("battery low: controllable load %.0f kW under %.0f kW of capacity", controllable(last), last.Inputs.IslandCapacityKW)
	if g := group(last, "asic"); g.UnitsOn != 0 {
		t.Errorf("miners still running with the battery low: %+v", g)
	}
	h.eventually("the site's load held under the shrunken capacity", 20*time.Second, func() bool {
		s := h.site.Snapshot()
		return s.SiteLoadKW <= s.IslandCapacity-h.cfg.Limits.IslandReserveKW+h.cfg.Limits.MarginKW
	})
}

func TestOPCUAFrozenBMSIsTreatedAsUnknown(t *testing.T) {
	h, bms := startBMS(t, sim.DefaultConfig())
	h.eventually("normal", 10*time.Second, func() bool { return h.lastPlan().Mode == "normal" })
	// The BMS keeps its session and its keep-alives but its values stop:
	// they grow old, and an old value is never taken as good.
	bms.FreezeValues(true)
	h.eventually("island capacity unknown once the BMS's values are stale", 10*time.Second, func() bool {
		return strings.Contains(strings.Join(h.lastPlan().Unknown, ","), "island_capacity")
	})
	if !h.sawEvent("input_lost", "") {
		t.Error("no input_lost event for the stale BMS values")
	}
	bms.FreezeValues(false)
	h.eventually("known again once values flow", 10*time.Second, func() bool {
		return !strings.Contains(strings.Join(h.lastPlan().Unknown, ","), "island_capacity")
	})
}
