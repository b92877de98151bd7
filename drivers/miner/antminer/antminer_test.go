package antminer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/antminer"
	"github.com/siteagent/siteagent/drivers/miner/minertest"
	"github.com/siteagent/siteagent/sim/miners"
)

var fast = miners.Physics{RatedW: 3250, SleepW: 15, SleepFall: 40 * time.Millisecond,
	WakeDelay: 10 * time.Millisecond, WakeRamp: 80 * time.Millisecond, HashrateTHs: 104}

func startFleet(t *testing.T, cfg miners.AntminerConfig) *miners.AntminerFleet {
	t.Helper()
	if cfg.Miners == 0 {
		cfg.Miners = 1
	}
	if cfg.Physics.RatedW == 0 {
		cfg.Physics = fast
	}
	if cfg.WriteDelay == 0 {
		cfg.WriteDelay = 30 * time.Millisecond
	}
	f, err := miners.StartAntminer(cfg)
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

func TestSleepWake(t *testing.T) {
	f := startFleet(t, miners.AntminerConfig{})
	d := antminer.New(antminer.Options{Password: "root"})
	m := miner.Miner{Host: f.Addrs()[0], Family: miner.Antminer}

	tm, err := d.Poll(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	if !tm.Mining || tm.Sleeping || tm.PowerKnown || tm.HashrateTHs != 104 || tm.MaxTempC != 77 {
		t.Fatalf("hashing miner polled as %+v", tm)
	}
	if err := d.Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.WorkMode != 1 || s.Posts != 1 || s.Ignored != 0 || s.Pools != 3 {
		t.Fatalf("after Sleep the simulator is %+v", s)
	}
	eventually(t, d, m, "asleep", func(tm miner.Telemetry) bool { return tm.Sleeping && tm.HashrateTHs == 0 })
	if s := f.State(0); s.PowerW != 15 {
		t.Errorf("asleep the simulator draws %g W", s.PowerW)
	}

	// Already asleep: no second bmminer restart.
	if err := d.Sleep(ctx(t), m); err != nil || f.State(0).Posts != 1 {
		t.Fatalf("second Sleep: %v, posts %d", err, f.State(0).Posts)
	}
	if err := d.Wake(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	eventually(t, d, m, "hashing", func(tm miner.Telemetry) bool { return tm.Mining && tm.HashrateTHs == 104 })

	if err := d.Dispatch(m, antminer.ModeLowPower).Wait(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.WorkMode != 3 || s.PowerW != 0.75*3250 {
		t.Fatalf("low power: %+v", s)
	}
}

// The slow config write: the caller's context bounds Sleep, the write goes
// on, and Poll sees it take effect.
func TestSlowWriteDoesNotHoldTheCaller(t *testing.T) {
	f := startFleet(t, miners.AntminerConfig{WriteDelay: 2 * time.Second})
	d := antminer.New(antminer.Options{})
	m := miner.Miner{Host: f.Addrs()[0]}

	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := d.Sleep(short, m)
	if !errors.Is(err, antminer.ErrPending) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), m.Host) {
		t.Fatalf("Sleep past its context: %v", err)
	}
	w := d.Pending(m.Host)
	if w == nil || w.Mode != antminer.ModeSleep {
		t.Fatalf("no pending write after ErrPending: %+v", w)
	}
	// A retry joins the write under way instead of starting another.
	short2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if err := d.Sleep(short2, m); !errors.Is(err, antminer.ErrPending) || d.Pending(m.Host) != w {
		t.Fatalf("retry: %v, pending %p want %p", err, d.Pending(m.Host), w)
	}
	eventually(t, d, m, "asleep", func(tm miner.Telemetry) bool { return tm.Sleeping })
	select {
	case <-w.Done():
	case <-ctx(t).Done():
		t.Fatal("the background write never finished")
	}
	if w.Err() != nil || d.LastWrite(m.Host) != w || d.Pending(m.Host) != nil {
		t.Fatalf("finished write: err %v, last %p, pending %p", w.Err(), d.LastWrite(m.Host), d.Pending(m.Host))
	}
	if s := f.State(0); s.Posts != 1 || s.WorkMode != 1 {
		t.Fatalf("two Sleeps made %d config writes", s.Posts)
	}
}

// Changes queue per miner and the latest target wins.
func TestLatestTargetWins(t *testing.T) {
	f := startFleet(t, miners.AntminerConfig{WriteDelay: 300 * time.Millisecond})
	d := antminer.New(antminer.Options{})
	m := miner.Miner{Host: f.Addrs()[0]}
	sleep := d.Dispatch(m, antminer.ModeSleep)
	wake := d.Dispatch(m, antminer.ModeNormal)
	if wake == sleep || d.Pending(m.Host) != wake {
		t.Fatal("the wake was not queued behind the sleep")
	}
	again := d.Dispatch(m, antminer.ModeSleep)
	if again != sleep {
		t.Fatal("a sleep while a sleep runs did not join it")
	}
	if err := wake.Wait(ctx(t)); !errors.Is(err, antminer.ErrSuperseded) {
		t.Fatalf("the replaced wake: %v", err)
	}
	if err := sleep.Wait(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.Posts != 1 || s.WorkMode != 1 {
		t.Fatalf("simulator: %+v", s)
	}
}

func TestWrongPassword(t *testing.T) {
	f := startFleet(t, miners.AntminerConfig{Password: "s3cret"})
	d := antminer.New(antminer.Options{Password: "root"})
	m := miner.Miner{Host: f.Addrs()[0]}
	_, err := d.Poll(ctx(t), m)
	if !errors.Is(err, antminer.ErrAuth) || !errors.Is(err, miner.ErrRefused) || !strings.Contains(err.Error(), m.Host) ||
		!strings.Contains(err.Error(), "password") {
		t.Fatalf("poll with the wrong password: %v", err)
	}
	err = d.Sleep(ctx(t), m)
	var me *miner.Error
	if !errors.As(err, &me) || me.Op != "sleep" || !errors.Is(err, antminer.ErrAuth) {
		t.Fatalf("sleep with the wrong password: %v", err)
	}
	if s := f.State(0); s.Posts != 0 || s.WorkMode != 0 {
		t.Fatalf("simulator: %+v", s)
	}
	if err := antminer.New(antminer.Options{Password: "s3cret"}).Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
}

// A miner that answers M000 and ignores the write fails the read-back.
func TestAcknowledgedButIgnoredWriteIsAnError(t *testing.T) {
	f := startFleet(t, miners.AntminerConfig{})
	f.SetFault(0, miners.FaultIgnoring)
	d := antminer.New(antminer.Options{})
	err := d.Sleep(ctx(t), miner.Miner{Host: f.Addrs()[0]})
	if !errors.Is(err, miner.ErrRefused) || !strings.Contains(err.Error(), "did not apply") {
		t.Fatalf("ignored write: %v", err)
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
			f := startFleet(t, miners.AntminerConfig{Miners: 2})
			f.SetFault(0, c.fault)
			d := antminer.New(antminer.Options{})
			bad := miner.Miner{Host: f.Addrs()[0]}
			_, err := d.Poll(ctx(t), bad)
			if !errors.Is(err, c.class) || !strings.Contains(err.Error(), bad.Host) {
				t.Fatalf("poll: %v, want %v", err, c.class)
			}
			if err := d.Sleep(ctx(t), bad); !errors.Is(err, c.class) {
				t.Fatalf("sleep: %v, want %v", err, c.class)
			}
			if _, err := d.Poll(ctx(t), miner.Miner{Host: f.Addrs()[1]}); err != nil {
				t.Fatalf("the healthy neighbour: %v", err)
			}
		})
	}
}

func TestOlderFirmwareWithoutModeInStats(t *testing.T) {
	f := startFleet(t, miners.AntminerConfig{NoModeInStats: true})
	d := antminer.New(antminer.Options{})
	m := miner.Miner{Host: f.Addrs()[0]}
	if err := d.Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if tm, err := d.Poll(ctx(t), m); err != nil || !tm.Sleeping {
		t.Fatalf("mode from get_miner_conf: %+v, %v", tm, err)
	}
}

// A nonce the miner no longer honours (stale=true) costs one retry.
func TestStaleNonce(t *testing.T) {
	var offset atomic.Int64
	f := startFleet(t, miners.AntminerConfig{NonceTTL: time.Hour,
		Now: func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }})
	d := antminer.New(antminer.Options{})
	m := miner.Miner{Host: f.Addrs()[0]}
	for i := 0; i < 2; i++ {
		if _, err := d.Poll(ctx(t), m); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.Counters().Requests.Load(); n != 3 {
		t.Fatalf("two polls took %d requests, want 3 (one challenge, then the cached nonce)", n)
	}
	offset.Store(int64(2 * time.Hour))
	if _, err := d.Poll(ctx(t), m); err != nil {
		t.Fatalf("after the nonce went stale: %v", err)
	}
	if n := f.Counters().Requests.Load(); n != 5 {
		t.Fatalf("the stale nonce took %d requests in all, want 5", n)
	}
}

func TestNoPowerTarget(t *testing.T) {
	err := antminer.New(antminer.Options{}).SetPowerTarget(ctx(t), miner.Miner{Host: "10.0.0.9"}, 3000)
	if !errors.Is(err, miner.ErrUnsupported) || !strings.Contains(err.Error(), "10.0.0.9") {
		t.Fatalf("SetPowerTarget: %v", err)
	}
}

func TestConcurrentMiners(t *testing.T) {
	const n = 30
	f := startFleet(t, miners.AntminerConfig{Miners: n})
	d := antminer.New(antminer.Options{MaxWrites: 8})
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for _, a := range f.Addrs() {
		wg.Add(1)
		go func(a string) {
			defer wg.Done()
			m := miner.Miner{Host: a}
			errs <- d.Sleep(ctx(t), m)
			if _, err := d.Poll(ctx(t), m); err != nil {
				errs <- fmt.Errorf("poll %s: %w", a, err)
			}
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
		if s := f.State(i); s.WorkMode != 1 || s.Posts != 1 {
			t.Fatalf("miner %d: %+v", i, s)
		}
	}
}

func BenchmarkPoll(b *testing.B) {
	f, err := miners.StartAntminer(miners.AntminerConfig{Miners: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	d := antminer.New(antminer.Options{})
	m := miner.Miner{Host: f.Addrs()[0]}
	for i := 0; i < b.N; i++ {
		if _, err := d.Poll(context.Background(), m); err != nil {
			b.Fatal(err)
		}
	}
}
