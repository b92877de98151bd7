package luxos_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/luxos"
	"github.com/siteagent/siteagent/sim/miners"
)

// clock is the simulator's time, moved by the test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func start(t *testing.T, cfg miners.LuxOSConfig) (*miners.LuxOSFleet, *clock) {
	t.Helper()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	if cfg.Now == nil {
		cfg.Now = clk.Now
	}
	f, err := miners.StartLuxOS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f, clk
}

func TestSleepAndWakeFollowTheProtocol(t *testing.T) {
	f, clk := start(t, miners.LuxOSConfig{Miners: 1})
	d := luxos.New()
	m := miner.Miner{Host: f.Addrs()[0], Family: miner.LuxOS}
	ctx := context.Background()

	tm, err := d.Poll(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if !tm.Mining || tm.Sleeping || !tm.PowerKnown || tm.PowerEstimated || tm.PowerW != 3250 || tm.HashrateTHs < 100 || tm.PowerTargetW != 3250 {
		t.Fatalf("mining telemetry %+v", tm)
	}
	if err := d.Sleep(ctx, m); err != nil {
		t.Fatal(err)
	}
	if f.CommandCount("logon") != 1 || f.CommandCount("curtail") != 1 {
		t.Fatalf("logon %d curtail %d, want one each", f.CommandCount("logon"), f.CommandCount("curtail"))
	}
	// The command is acknowledged at once; the miner powers down over
	// seconds and reports CurtailMode Sleep meanwhile.
	if s := f.State(0); s.Mode != miners.Stopping || s.PowerW != 3250 {
		t.Fatalf("right after sleep: %+v", s)
	}
	if tm, err = d.Poll(ctx, m); err != nil || !tm.Sleeping || tm.Mining {
		t.Fatalf("after sleep: %+v %v", tm, err)
	}
	clk.Add(10 * time.Second)
	if tm, _ = d.Poll(ctx, m); tm.PowerW != 15 || tm.HashrateTHs != 0 {
		t.Fatalf("asleep: %+v", tm)
	}
	// Wake reuses the session (used 10 s ago on the driver's clock).
	if err := d.Wake(ctx, m); err != nil {
		t.Fatal(err)
	}
	if f.CommandCount("logon") != 1 {
		t.Fatalf("a live session was not reused: %d logons", f.CommandCount("logon"))
	}
	clk.Add(30 * time.Second)
	tm, _ = d.Poll(ctx, m)
	if tm.Sleeping || !tm.Mining || tm.PowerW <= 15 || tm.PowerW >= 3250 {
		t.Fatalf("halfway through the wake ramp: %+v", tm)
	}
	clk.Add(time.Minute)
	if tm, _ = d.Poll(ctx, m); tm.PowerW != 3250 {
		t.Fatalf("awake: %+v", tm)
	}
}

// A session that expired on the miner is noticed from the error status
// and replaced once.
func TestExpiredSessionIsRenewed(t *testing.T) {
	f, clk := start(t, miners.LuxOSConfig{Miners: 1})
	d := luxos.New()
	m := miner.Miner{Host: f.Addrs()[0]}
	ctx := context.Background()
	if err := d.Sleep(ctx, m); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Minute) // the miner's clock: the session is gone
	if err := d.Wake(ctx, m); err != nil {
		t.Fatal(err)
	}
	if n := f.CommandCount("logon"); n != 2 {
		t.Fatalf("%d logons, want 2 (one renewal)", n)
	}
	if s := f.State(0); s.Mode != miners.Waking {
		t.Fatalf("wake did not reach the miner: %+v", s)
	}
}

// LuxOS allows one session: without TakeOverSession a held session is a
// refusal; with it the driver uses the active session.
func TestSingleSession(t *testing.T) {
	f, _ := start(t, miners.LuxOSConfig{Miners: 1})
	f.HoldSession(0, true)
	m := miner.Miner{Host: f.Addrs()[0]}
	ctx := context.Background()

	polite := luxos.New()
	polite.TakeOverSession = false
	err := polite.Sleep(ctx, m)
	var me *miner.Error
	if !errors.Is(err, miner.ErrRefused) || !errors.As(err, &me) || me.Host != m.Host || me.Op != "sleep" {
		t.Fatalf("got %v, want a refusal naming the miner", err)
	}
	if s := f.State(0); s.Mode != miners.Mining {
		t.Fatalf("refused command acted: %+v", s)
	}
	if err := luxos.New().Sleep(ctx, m); err != nil {
		t.Fatalf("take-over: %v", err)
	}
	if s := f.State(0); s.Mode != miners.Stopping {
		t.Fatalf("take-over did not shed: %+v", s)
	}
}

func TestPowerTargetPicksAProfile(t *testing.T) {
	f, clk := start(t, miners.LuxOSConfig{Miners: 1})
	d := luxos.New()
	m := miner.Miner{Host: f.Addrs()[0]}
	ctx := context.Background()
	if err := d.SetPowerTarget(ctx, m, 2900); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Minute)
	tm, err := d.Poll(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if tm.PowerTargetW > 2900 || tm.PowerTargetW < 2700 || tm.PowerW != tm.PowerTargetW {
		t.Fatalf("after a 2900 W target: %+v", tm)
	}
	if err := d.SetPowerTarget(ctx, m, 5); err == nil {
		t.Fatal("an absurd target was sent")
	}
}

func TestFaultsNameTheMiner(t *testing.T) {
	f, _ := start(t, miners.LuxOSConfig{Miners: 3})
	f.SetFault(0, miners.FaultGarbled)
	f.SetFault(1, miners.FaultRefusing)
	f.SetFault(2, miners.FaultDropping)
	d := luxos.New()
	for i, want := range []error{miner.ErrGarbled, miner.ErrUnreachable, miner.ErrUnreachable} {
		m := miner.Miner{Host: f.Addrs()[i]}
		_, err := d.Poll(context.Background(), m)
		var me *miner.Error
		if !errors.Is(err, want) || !errors.As(err, &me) || me.Host != m.Host {
			t.Errorf("miner %d poll: %v, want %v naming %s", i, err, want, m.Host)
		}
		if err := d.Sleep(context.Background(), m); !errors.Is(err, want) {
			t.Errorf("miner %d sleep: %v, want %v", i, err, want)
		}
	}
}

func TestEstimatedPowerIsFlagged(t *testing.T) {
	f, _ := start(t, miners.LuxOSConfig{Miners: 1, NoPSUPower: true, Quirks: true})
	tm, err := luxos.New().Poll(context.Background(), miner.Miner{Host: f.Addrs()[0]})
	if err != nil {
		t.Fatal(err)
	}
	if !tm.PowerKnown || !tm.PowerEstimated || len(tm.Repaired) == 0 {
		t.Fatalf("%+v", tm)
	}
}
