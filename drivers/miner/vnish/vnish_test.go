package vnish_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/minertest"
	"github.com/siteagent/siteagent/drivers/miner/vnish"
	"github.com/siteagent/siteagent/sim/miners"
)

var fast = miners.Physics{RatedW: 3200, SleepW: 15, SleepFall: 40 * time.Millisecond,
	WakeDelay: 10 * time.Millisecond, WakeRamp: 80 * time.Millisecond, HashrateTHs: 102}

func startFleet(t *testing.T, cfg miners.VnishConfig) *miners.VnishFleet {
	t.Helper()
	if cfg.Miners == 0 {
		cfg.Miners = 1
	}
	if cfg.Physics.RatedW == 0 {
		cfg.Physics = fast
	}
	if cfg.ResumeRamp == 0 {
		cfg.ResumeRamp = 30 * time.Millisecond
	}
	f, err := miners.StartVnish(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// ctx and eventually: the families' shared test helpers.
var (
	ctx        = minertest.Ctx
	eventually = minertest.PollUntil
)

func TestStopStart(t *testing.T) {
	f := startFleet(t, miners.VnishConfig{})
	d := vnish.New(vnish.Options{Password: "admin"})
	m := miner.Miner{Host: f.Addrs()[0], Family: miner.Vnish}

	tm, err := d.Poll(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	if !tm.Mining || tm.Sleeping || !tm.PowerKnown || tm.PowerW != 3200 || tm.HashrateTHs != 102 || tm.MaxTempC != 75 {
		t.Fatalf("mining miner polled as %+v", tm)
	}
	if err := d.Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.LastCommand != "stop" {
		t.Fatalf("Sleep sent %q", s.LastCommand)
	}
	eventually(t, d, m, "stopped at 15 W", func(tm miner.Telemetry) bool { return tm.Sleeping && tm.PowerW == 15 && tm.HashrateTHs == 0 })
	if err := d.Wake(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.LastCommand != "start" {
		t.Fatalf("Wake sent %q", s.LastCommand)
	}
	eventually(t, d, m, "mining", func(tm miner.Telemetry) bool { return tm.Mining && tm.PowerW == 3200 })
	// Waking a miner that mines sends nothing.
	if err := d.Wake(ctx(t), m); err != nil || f.State(0).Commands != 2 {
		t.Fatalf("Wake of a mining miner: %v, %d commands", err, f.State(0).Commands)
	}
	if got := f.State(0).Unlocks; got != 1 {
		t.Errorf("%d unlocks for one miner, want 1 (the token is reused)", got)
	}
}

func TestPauseResume(t *testing.T) {
	f := startFleet(t, miners.VnishConfig{})
	d := vnish.New(vnish.Options{Password: "admin", Shed: vnish.ShedPause})
	m := miner.Miner{Host: f.Addrs()[0]}
	if err := d.Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	eventually(t, d, m, "paused at 150 W", func(tm miner.Telemetry) bool { return tm.Sleeping && tm.PowerW == 150 })
	if err := d.Wake(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.LastCommand != "resume" {
		t.Fatalf("Wake of a paused miner sent %q", s.LastCommand)
	}
	eventually(t, d, m, "mining", func(tm miner.Telemetry) bool { return tm.Mining && tm.PowerW == 3200 })

	// Pausing a stopped miner is refused, with Vnish's own message.
	if err := vnish.New(vnish.Options{Password: "admin"}).Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	eventually(t, d, m, "stopped", func(tm miner.Telemetry) bool { return tm.Sleeping && tm.PowerW == 15 })
	err := d.Sleep(ctx(t), m)
	if !errors.Is(err, miner.ErrRefused) || !strings.Contains(err.Error(), "failed-to-activate-pause-mode") {
		t.Fatalf("pause of a stopped miner: %v", err)
	}
}

func TestSetPowerTarget(t *testing.T) {
	f := startFleet(t, miners.VnishConfig{})
	d := vnish.New(vnish.Options{Password: "admin"})
	m := miner.Miner{Host: f.Addrs()[0]}
	if err := d.SetPowerTarget(ctx(t), m, 3000); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.Preset != "2950" {
		t.Fatalf("3000 W chose preset %q, want 2950 (the highest tuned one at or below)", s.Preset)
	}
	eventually(t, d, m, "at 2950 W", func(tm miner.Telemetry) bool { return tm.Mining && tm.PowerW == 2950 })

	err := d.SetPowerTarget(ctx(t), m, 1200)
	if err == nil || !strings.Contains(err.Error(), "no tuned preset") || !strings.Contains(err.Error(), m.Host) {
		t.Fatalf("1200 W with no tuned preset below: %v", err)
	}
	if err := vnish.New(vnish.Options{Password: "admin", AllowUntuned: true}).SetPowerTarget(ctx(t), m, 1200); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.Preset != "1100" {
		t.Fatalf("untuned allowed: preset %q", s.Preset)
	}
}

func TestPresetThatNeedsARestart(t *testing.T) {
	f := startFleet(t, miners.VnishConfig{PresetNeedsRestart: true})
	d := vnish.New(vnish.Options{Password: "admin"})
	m := miner.Miner{Host: f.Addrs()[0]}
	if err := d.SetPowerTarget(ctx(t), m, 2400); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.LastCommand != "restart" || s.Preset != "2350" {
		t.Fatalf("after a preset needing a restart: %+v", s)
	}
	eventually(t, d, m, "mining at 2350 W", func(tm miner.Telemetry) bool { return tm.Mining && tm.PowerW == 2350 })
}

// Settings answer the same whether they were taken or not: only the
// read-back tells.
func TestIgnoredPresetIsAnError(t *testing.T) {
	f := startFleet(t, miners.VnishConfig{})
	f.SetFault(0, miners.FaultIgnoring)
	err := vnish.New(vnish.Options{Password: "admin"}).SetPowerTarget(ctx(t), miner.Miner{Host: f.Addrs()[0]}, 3000)
	if !errors.Is(err, miner.ErrRefused) || !strings.Contains(err.Error(), `"2950"`) {
		t.Fatalf("ignored preset: %v", err)
	}
}

func TestWrongPassword(t *testing.T) {
	f := startFleet(t, miners.VnishConfig{Password: "s3cret"})
	d := vnish.New(vnish.Options{Password: "admin"})
	m := miner.Miner{Host: f.Addrs()[0]}
	for _, op := range []func() error{
		func() error { return d.Sleep(ctx(t), m) },
		func() error { _, err := d.Poll(ctx(t), m); return err },
	} {
		err := op()
		var me *miner.Error
		if !errors.As(err, &me) || me.Host != m.Host || !errors.Is(err, vnish.ErrAuth) || !strings.Contains(err.Error(), "password") {
			t.Fatalf("wrong password: %v", err)
		}
	}
	if s := f.State(0); s.Commands != 0 {
		t.Fatalf("simulator: %+v", s)
	}
}

func TestTokenExpiry(t *testing.T) {
	f := startFleet(t, miners.VnishConfig{})
	d := vnish.New(vnish.Options{Password: "admin"})
	m := miner.Miner{Host: f.Addrs()[0]}
	if err := d.Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	f.ExpireTokens(0)
	if err := d.Wake(ctx(t), m); err != nil {
		t.Fatalf("after the token expired: %v", err)
	}
	if s := f.State(0); s.Unlocks != 2 || s.LastCommand != "start" {
		t.Fatalf("simulator: %+v", s)
	}
}

func TestFaults(t *testing.T) {
	for _, c := range []struct {
		fault miners.Fault
		class error
	}{
		{miners.FaultGarbled, miner.ErrGarbled},
		{miners.FaultRefusing, miner.ErrUnreachable},
		{miners.FaultDropping, miner.ErrUnreachable},
	} {
		t.Run(c.fault.String(), func(t *testing.T) {
			f := startFleet(t, miners.VnishConfig{Miners: 2})
			f.SetFault(0, c.fault)
			d := vnish.New(vnish.Options{Password: "admin"})
			bad := miner.Miner{Host: f.Addrs()[0]}
			_, err := d.Poll(ctx(t), bad)
			if !errors.Is(err, c.class) || !strings.Contains(err.Error(), bad.Host) {
				t.Fatalf("poll: %v, want %v", err, c.class)
			}
			if _, err := d.Poll(ctx(t), miner.Miner{Host: f.Addrs()[1]}); err != nil {
				t.Fatalf("the healthy neighbour: %v", err)
			}
		})
	}
}

func TestSlowMinerRespectsContext(t *testing.T) {
	f := startFleet(t, miners.VnishConfig{})
	f.SetFault(0, miners.FaultSlow)
	f.SetSlowDelay(time.Minute)
	c, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := vnish.New(vnish.Options{Password: "admin"}).Poll(c, miner.Miner{Host: f.Addrs()[0]})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, miner.ErrUnreachable) {
		t.Fatalf("slow miner: %v", err)
	}
}

func TestConcurrentMiners(t *testing.T) {
	const n = 30
	f := startFleet(t, miners.VnishConfig{Miners: n})
	d := vnish.New(vnish.Options{Password: "admin"})
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for _, a := range f.Addrs() {
		wg.Add(1)
		go func(a string) {
			defer wg.Done()
			m := miner.Miner{Host: a}
			errs <- d.Sleep(ctx(t), m)
			_, err := d.Poll(ctx(t), m)
			errs <- err
		}(a)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		if s := f.State(i); s.LastCommand != "stop" || s.Unlocks != 1 {
			t.Fatalf("miner %d: %+v", i, s)
		}
	}
}

func BenchmarkPoll(b *testing.B) {
	f, err := miners.StartVnish(miners.VnishConfig{Miners: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	d := vnish.New(vnish.Options{Password: "admin"})
	m := miner.Miner{Host: f.Addrs()[0]}
	for i := 0; i < b.N; i++ {
		if _, err := d.Poll(context.Background(), m); err != nil {
			b.Fatal(err)
		}
	}
}
