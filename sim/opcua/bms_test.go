package opcua

import (
	"context"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/sim"
)

func TestBMSFollowsTheSiteAndItsBatteryDrainsWhenIslanded(t *testing.T) {
	cfg := LowBattery(sim.DefaultConfig())
	site := sim.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := site.Start(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer site.Close()
	bms, err := StartBMS(site, cfg, Config{}, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer bms.Close()
	c, err := connect(t, bms.Server(), "Basic256Sha256", ua.MessageSecurityModeSignAndEncrypt, ua.UserTokenTypeAnonymous)
	if err != nil {
		t.Fatal(err)
	}
	read := func(path string) float64 {
		t.Helper()
		dv := readOne(t, c, ua.NewStringNodeID(1, dotted(path)))
		if dv.Status != ua.StatusOK {
			t.Fatalf("%s: %v", path, dv.Status)
		}
		switch v := dv.Value.Value().(type) {
		case float64:
			return v
		case float32:
			return float64(v)
		case bool:
			if v {
				return 1
			}
			return 0
		}
		t.Fatalf("%s holds %T", path, dv.Value.Value())
		return 0
	}
	if got := read(PathBatteryDischarge); got != cfg.BatteryMaxKW {
		t.Errorf("discharge available %g kW at 12 %% SoC, want the full %g", got, cfg.BatteryMaxKW)
	}
	if got := read(PathGeneratorKW); got != cfg.GenerationKW {
		t.Errorf("generator %g kW, want %g", got, cfg.GenerationKW)
	}
	chillers := read(ChillerPath(1)) + read(ChillerPath(2)) + read(ChillerPath(3))
	if aux := site.Snapshot().AuxKW; chillers < 0.5*aux || chillers > aux {
		t.Errorf("chillers draw %g kW of %g kW aux", chillers, aux)
	}

	site.OpenBreaker()
	soc0 := read(PathBatterySoC)
	deadline := time.Now().Add(60 * time.Second)
	for read(PathBatteryDischarge) >= cfg.BatteryMaxKW/2 {
		if time.Now().After(deadline) {
			t.Fatalf("the battery did not run low within 60s: SoC %g", read(PathBatterySoC))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if soc := read(PathBatterySoC); soc >= soc0 {
		t.Errorf("SoC %g did not fall from %g while islanded", soc, soc0)
	}

	bms.TripGenerator(true)
	deadline = time.Now().Add(20 * time.Second)
	for read(PathGeneratorKW) != 0 || read(PathGeneratorOK) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the tripped generator still reports itself available")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func dotted(path string) string {
	b := []byte(path)
	for i := range b {
		if b[i] == '/' {
			b[i] = '.'
		}
	}
	return string(b)
}
