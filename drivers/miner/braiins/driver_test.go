package braiins_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/braiins"
	"github.com/siteagent/siteagent/drivers/miner/cgminer"
	"github.com/siteagent/siteagent/sim/miners"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func start(t *testing.T, cfg miners.BraiinsConfig) (*miners.BraiinsFleet, *clock, *braiins.Driver) {
	t.Helper()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	cfg.Now = clk.Now
	if cfg.Password == "" {
		cfg.Password = "s3cret"
	}
	f, err := miners.StartBraiins(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	d := braiins.New("root", cfg.Password)
	d.LegacyPort = strconv.Itoa(f.LegacyPort())
	d.Legacy = cgminer.Client{Timeout: 2 * time.Second}
	t.Cleanup(d.Close)
	return f, clk, d
}

func TestPauseResumeOverGRPC(t *testing.T) {
	f, clk, d := start(t, miners.BraiinsConfig{Miners: 1})
	d.QuickRamping = &braiins.Ramping{UpS: 20, DownS: 2}
	m := miner.Miner{Host: f.Addrs()[0], Family: miner.Braiins}
	ctx := context.Background()

	tm, err := d.Poll(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if !tm.Mining || tm.Sleeping || !tm.PowerKnown || !tm.PowerEstimated || tm.PowerW != 3010 || tm.MaxTempC < 70 || tm.PowerTargetW != 3010 {
		t.Fatalf("mining: %+v", tm)
	}
	if up, down := f.Ramping(0); up != 20*time.Second || down != 2*time.Second {
		t.Fatalf("quick ramping not applied at the first poll: up %v down %v", up, down)
	}
	if err := d.Sleep(ctx, m); err != nil {
		t.Fatal(err)
	}
	if f.Logins() != 1 || f.Calls("PauseMining") != 1 || f.Calls("pause") != 0 {
		t.Fatalf("logins %d PauseMining %d legacy pause %d", f.Logins(), f.Calls("PauseMining"), f.Calls("pause"))
	}
	if tm, _ = d.Poll(ctx, m); !tm.Sleeping || tm.Mining {
		t.Fatalf("paused: %+v", tm)
	}
	clk.Add(5 * time.Second)
	if tm, _ = d.Poll(ctx, m); tm.PowerW != 25 {
		t.Fatalf("after the 2 s ramp down: %+v", tm)
	}
	if err := d.Wake(ctx, m); err != nil {
		t.Fatal(err)
	}
	clk.Add(15 * time.Second) // 5 s start + half of the 20 s ramp
	if tm, _ = d.Poll(ctx, m); tm.Sleeping || tm.PowerW < 1000 || tm.PowerW > 2000 {
		t.Fatalf("halfway up: %+v", tm)
	}
	if err := d.SetPowerTarget(ctx, m, 2500); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	if tm, _ = d.Poll(ctx, m); tm.PowerTargetW != 2500 || tm.PowerW != 2500 {
		t.Fatalf("after a 2500 W target: %+v", tm)
	}
	if f.Logins() != 1 {
		t.Fatalf("%d logins; the token should be reused", f.Logins())
	}
}

func TestExpiredTokenLogsInAgain(t *testing.T) {
	f, _, d := start(t, miners.BraiinsConfig{Miners: 1})
	m := miner.Miner{Host: f.Addrs()[0]}
	ctx := context.Background()
	if err := d.Sleep(ctx, m); err != nil {
		t.Fatal(err)
	}
	f.ExpireTokens()
	if err := d.Wake(ctx, m); err != nil {
		t.Fatal(err)
	}
	if f.Logins() != 2 {
		t.Fatalf("%d logins, want 2", f.Logins())
	}
}

func TestWrongPasswordIsRefused(t *testing.T) {
	f, _, _ := start(t, miners.BraiinsConfig{Miners: 1})
	d := braiins.New("root", "wrong")
	defer d.Close()
	m := miner.Miner{Host: f.Addrs()[0]}
	err := d.Sleep(context.Background(), m)
	var me *miner.Error
	if !errors.Is(err, miner.ErrRefused) || !errors.As(err, &me) || me.Host != m.Host {
		t.Fatalf("got %v", err)
	}
	if s := f.State(0); s.Mode != miners.Mining {
		t.Fatalf("refused: %+v", s)
	}
	if f.Calls("pause") != 0 {
		t.Fatal("a refused login must not fall back to the legacy API")
	}
}

// Firmware without the gRPC API is shed through the legacy API on 4028.
func TestLegacyFallback(t *testing.T) {
	f, _, d := start(t, miners.BraiinsConfig{Miners: 1, NoGRPC: true})
	m := miner.Miner{Host: f.Addrs()[0]}
	ctx := context.Background()
	if err := d.Sleep(ctx, m); err != nil {
		t.Fatal(err)
	}
	if f.Calls("pause") != 1 {
		t.Fatalf("legacy pause calls %d", f.Calls("pause"))
	}
	if s := f.State(0); s.Mode != miners.Stopping {
		t.Fatalf("%+v", s)
	}
	if err := d.Wake(ctx, m); err != nil || f.Calls("resume") != 1 {
		t.Fatalf("resume: %v, %d calls", err, f.Calls("resume"))
	}
	tm, err := d.Poll(ctx, m)
	if err != nil || tm.HashrateTHs <= 0 && tm.Mining {
		t.Fatalf("legacy poll: %+v %v", tm, err)
	}
}

func TestFaults(t *testing.T) {
	f, _, d := start(t, miners.BraiinsConfig{Miners: 3})
	f.SetFault(0, miners.FaultGarbled)
	f.SetFault(1, miners.FaultDropping)
	f.SetFault(2, miners.FaultSlow)
	f.SetSlowDelay(time.Minute)
	ctx := context.Background()
	if _, err := d.Poll(ctx, miner.Miner{Host: f.Addrs()[0]}); !errors.Is(err, miner.ErrGarbled) {
		t.Errorf("garbled: %v", err)
	}
	if err := d.Sleep(ctx, miner.Miner{Host: f.Addrs()[1]}); !errors.Is(err, miner.ErrUnreachable) {
		t.Errorf("dropping: %v", err)
	}
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := d.Sleep(tctx, miner.Miner{Host: f.Addrs()[2]}); !errors.Is(err, miner.ErrUnreachable) {
		t.Errorf("slow: %v", err)
	}
}
