package whatsminer_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/minertest"
	"github.com/siteagent/siteagent/drivers/miner/whatsminer"
	"github.com/siteagent/siteagent/sim/miners"
)

// fast is simulator physics compressed into milliseconds, so a test sees
// whole transitions without waiting minutes.
var fast = miners.Physics{RatedW: 3276, SleepW: 20, SleepDelay: 0, SleepFall: 40 * time.Millisecond,
	WakeDelay: 10 * time.Millisecond, WakeRamp: 80 * time.Millisecond, HashrateTHs: 126}

func startFleet(t *testing.T, cfg miners.WhatsminerConfig) *miners.WhatsminerFleet {
	t.Helper()
	if cfg.Miners == 0 {
		cfg.Miners = 1
	}
	if cfg.Physics.RatedW == 0 {
		cfg.Physics = fast
	}
	if cfg.LimitRestart == 0 {
		cfg.LimitRestart = 30 * time.Millisecond
	}
	f, err := miners.StartWhatsminer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

func driverFor(f *miners.WhatsminerFleet, api whatsminer.API, password string) *whatsminer.Driver {
	port3 := f.PortV3()
	if port3 == 0 {
		port3 = closedPort()
	}
	return whatsminer.New(whatsminer.Options{API: api, Password: password, PortV3: port3, PortV2: f.PortV2(),
		IOTimeout: 5 * time.Second})
}

// closedPort is a loopback port nothing listens on.
func closedPort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return p
}

// ctx and eventually: the families' shared test helpers.
var (
	ctx        = minertest.Ctx
	eventually = minertest.PollUntil
)

func TestSleepWakePowerTargetV3(t *testing.T) {
	f := startFleet(t, miners.WhatsminerConfig{})
	d := driverFor(f, whatsminer.APIv3, "super")
	m := miner.Miner{Host: f.Hosts()[0], Family: miner.Whatsminer}

	tm, err := d.Poll(ctx(t), m)
	if err != nil {
		t.Fatal(err)
	}
	if !tm.Mining || tm.Sleeping || !tm.PowerKnown || tm.PowerW != 3276 || tm.HashrateTHs != 126 || tm.PowerTargetW != 3276 {
		t.Fatalf("hashing miner polled as %+v", tm)
	}

	if err := d.Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.Working || s.LastWrite != "set.miner.service stop" {
		t.Fatalf("after Sleep the simulator is %+v", s)
	}
	tm = eventually(t, d, m, "asleep at 20 W", func(tm miner.Telemetry) bool { return tm.Sleeping && tm.PowerW == 20 })
	if tm.Mining || tm.HashrateTHs != 0 {
		t.Fatalf("sleeping miner polled as %+v", tm)
	}

	if err := d.Wake(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	eventually(t, d, m, "hashing at full power", func(tm miner.Telemetry) bool { return tm.Mining && tm.PowerW == 3276 })

	if err := d.SetPowerTarget(ctx(t), m, 2500.4); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.LimitW != 2500 || s.LastWrite != "set.miner.power_limit 2500" {
		t.Fatalf("after SetPowerTarget the simulator is %+v", s)
	}
	eventually(t, d, m, "hashing at the new limit", func(tm miner.Telemetry) bool {
		return tm.Mining && tm.PowerW == 2500 && tm.PowerTargetW == 2500
	})
	if got := f.State(0).SaltReads; got != 1 {
		t.Errorf("three writes fetched the salt %d times, want once", got)
	}
}

func TestSleepWakeV2AndNoPowerTarget(t *testing.T) {
	f := startFleet(t, miners.WhatsminerConfig{NoV3: true})
	d := driverFor(f, whatsminer.APIv2, "super")
	m := miner.Miner{Host: f.Hosts()[0]}

	if err := d.Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.Working || s.LastWrite != "power_off" {
		t.Fatalf("after Sleep the simulator is %+v", s)
	}
	eventually(t, d, m, "asleep", func(tm miner.Telemetry) bool { return tm.Sleeping && tm.PowerKnown && tm.PowerW == 20 })
	if err := d.Wake(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	tm := eventually(t, d, m, "hashing", func(tm miner.Telemetry) bool { return tm.Mining && tm.PowerW == 3276 })
	if tm.HashrateTHs != 126 || tm.MaxTempC != 75 || tm.PowerTargetW != 3276 {
		t.Errorf("v2 telemetry %+v", tm)
	}
	if got := f.State(0).Logins; got != 1 {
		t.Errorf("two commands took %d tokens, want 1 (the token is reused)", got)
	}

	err := d.SetPowerTarget(ctx(t), m, 3000)
	if !errors.Is(err, miner.ErrUnsupported) || !strings.Contains(err.Error(), "reboot") {
		t.Fatalf("SetPowerTarget on v2: %v, want ErrUnsupported explaining the reboot", err)
	}
	if s := f.State(0); s.LimitW != 3276 || s.Writes != 2 {
		t.Fatalf("SetPowerTarget on v2 touched the miner: %+v", s)
	}
}

func TestAutoFallsBackToV2(t *testing.T) {
	f := startFleet(t, miners.WhatsminerConfig{NoV3: true})
	d := driverFor(f, whatsminer.APIAuto, "super")
	m := miner.Miner{Host: f.Hosts()[0]}
	if err := d.Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if s := f.State(0); s.LastWrite != "power_off" {
		t.Fatalf("auto mode on a v2-only miner: %+v", s)
	}
	if err := d.SetPowerTarget(ctx(t), m, 3000); !errors.Is(err, miner.ErrUnsupported) {
		t.Fatalf("auto mode remembered v2, so no power target: %v", err)
	}

	g := startFleet(t, miners.WhatsminerConfig{})
	d = driverFor(g, whatsminer.APIAuto, "super")
	m = miner.Miner{Host: g.Hosts()[0]}
	if err := d.Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	if s := g.State(0); s.LastWrite != "set.miner.service stop" {
		t.Fatalf("auto mode on a v3 miner: %+v", s)
	}
}

// A wrong password is a clear error naming the host, wrapping ErrAuth and
// miner.ErrRefused, and changes nothing.
func TestWrongPassword(t *testing.T) {
	for _, api := range []whatsminer.API{whatsminer.APIv3, whatsminer.APIv2} {
		t.Run(api.String(), func(t *testing.T) {
			f := startFleet(t, miners.WhatsminerConfig{NoV3: api == whatsminer.APIv2})
			d := driverFor(f, api, "not-the-password")
			m := miner.Miner{Host: f.Hosts()[0]}
			err := d.Sleep(ctx(t), m)
			var me *miner.Error
			if !errors.As(err, &me) || me.Host != m.Host || me.Op != "sleep" {
				t.Fatalf("error %v does not name the host and operation", err)
			}
			if !errors.Is(err, whatsminer.ErrAuth) || !errors.Is(err, miner.ErrRefused) || !strings.Contains(err.Error(), "password") {
				t.Fatalf("wrong password gave %v", err)
			}
			if s := f.State(0); !s.Working || s.Writes != 0 {
				t.Fatalf("a refused command acted: %+v", s)
			}
		})
	}
}

func TestWriteAccessDisabled(t *testing.T) {
	for _, api := range []whatsminer.API{whatsminer.APIv3, whatsminer.APIv2} {
		t.Run(api.String(), func(t *testing.T) {
			f := startFleet(t, miners.WhatsminerConfig{NoV3: api == whatsminer.APIv2, WriteDisabled: true})
			err := driverFor(f, api, "super").Wake(ctx(t), miner.Miner{Host: f.Hosts()[0]})
			if !errors.Is(err, whatsminer.ErrAuth) || !strings.Contains(err.Error(), "WhatsMinerTool") {
				t.Fatalf("write access off gave %v", err)
			}
		})
	}
}

// Token expiry: btminer restarting changes the v3 salt and forgets v2
// tokens; the driver logs in again once and the command goes through.
func TestTokenExpiryIsHandledByLoggingInAgain(t *testing.T) {
	t.Run("v3", func(t *testing.T) {
		f := startFleet(t, miners.WhatsminerConfig{})
		d := driverFor(f, whatsminer.APIv3, "super")
		m := miner.Miner{Host: f.Hosts()[0]}
		if err := d.Sleep(ctx(t), m); err != nil {
			t.Fatal(err)
		}
		f.RotateSalt(0)
		if err := d.Wake(ctx(t), m); err != nil {
			t.Fatalf("after a salt change: %v", err)
		}
		if s := f.State(0); s.SaltReads != 2 || s.Writes != 2 || s.LastWrite != "set.miner.service start" {
			t.Fatalf("simulator after re-login: %+v", s)
		}
	})
	t.Run("v2", func(t *testing.T) {
		f := startFleet(t, miners.WhatsminerConfig{NoV3: true})
		d := driverFor(f, whatsminer.APIv2, "super")
		m := miner.Miner{Host: f.Hosts()[0]}
		if err := d.Sleep(ctx(t), m); err != nil {
			t.Fatal(err)
		}
		f.ExpireTokens(0)
		if err := d.Wake(ctx(t), m); err != nil {
			t.Fatalf("after the token expired: %v", err)
		}
		f.RotateSalt(0) // btminer restarted: tokens forgotten
		if err := d.Sleep(ctx(t), m); err != nil {
			t.Fatalf("after btminer forgot the token: %v", err)
		}
		if s := f.State(0); s.Logins != 3 || s.Writes != 3 || s.LastWrite != "power_off" {
			t.Fatalf("simulator after re-logins: %+v", s)
		}
	})
}

// Faults: each is an error naming the host, classed for the fleet, and a
// fault on one miner leaves the next one alone.
func TestFaults(t *testing.T) {
	for _, api := range []whatsminer.API{whatsminer.APIv3, whatsminer.APIv2} {
		for _, c := range []struct {
			fault miners.Fault
			class error
		}{
			{miners.FaultGarbled, miner.ErrGarbled},
			{miners.FaultRefusing, miner.ErrUnreachable},
			{miners.FaultDropping, miner.ErrUnreachable},
		} {
			t.Run(fmt.Sprintf("%s/%s", api, c.fault), func(t *testing.T) {
				f := startFleet(t, miners.WhatsminerConfig{Miners: 2, NoV3: api == whatsminer.APIv2})
				d := driverFor(f, api, "super")
				f.SetFault(0, c.fault)
				bad := miner.Miner{Host: f.Hosts()[0]}
				for _, op := range []func() error{
					func() error { _, err := d.Poll(ctx(t), bad); return err },
					func() error { return d.Sleep(ctx(t), bad) },
				} {
					err := op()
					if !errors.Is(err, c.class) || !strings.Contains(err.Error(), bad.Host) {
						t.Fatalf("%s: got %v, want %v naming %s", c.fault, err, c.class, bad.Host)
					}
				}
				if _, err := d.Poll(ctx(t), miner.Miner{Host: f.Hosts()[1]}); err != nil {
					t.Fatalf("the healthy neighbour: %v", err)
				}
			})
		}
	}
}

// A slow miner does not hold the caller past its context.
func TestSlowMinerRespectsContext(t *testing.T) {
	f := startFleet(t, miners.WhatsminerConfig{})
	f.SetFault(0, miners.FaultSlow)
	f.SetSlowDelay(time.Minute)
	d := driverFor(f, whatsminer.APIv3, "super")
	c, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := d.Poll(c, miner.Miner{Host: f.Hosts()[0]})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, miner.ErrUnreachable) {
		t.Fatalf("slow miner: %v", err)
	}
}

// The driver reports what the miner says, not what it was told: a miner
// that acknowledges and ignores a sleep still polls as mining.
func TestIgnoredCommandShowsInPoll(t *testing.T) {
	f := startFleet(t, miners.WhatsminerConfig{})
	f.SetFault(0, miners.FaultIgnoring)
	d := driverFor(f, whatsminer.APIv3, "super")
	m := miner.Miner{Host: f.Hosts()[0]}
	if err := d.Sleep(ctx(t), m); err != nil {
		t.Fatal(err)
	}
	tm, err := d.Poll(ctx(t), m)
	if err != nil || !tm.Mining || tm.Sleeping {
		t.Fatalf("ignored sleep polled as %+v, %v", tm, err)
	}
}

func TestBadPowerTarget(t *testing.T) {
	d := whatsminer.New(whatsminer.Options{Password: "x"})
	for _, w := range []float64{0, -5, 1e6} {
		if err := d.SetPowerTarget(context.Background(), miner.Miner{Host: "127.0.0.1"}, w); err == nil || !strings.Contains(err.Error(), "127.0.0.1") {
			t.Errorf("SetPowerTarget(%g) = %v", w, err)
		}
	}
}

// Many miners at once, shared driver: the race detector's test.
func TestConcurrentMiners(t *testing.T) {
	const n = 40
	f := startFleet(t, miners.WhatsminerConfig{Miners: n})
	d := driverFor(f, whatsminer.APIAuto, "super")
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for _, h := range f.Hosts() {
		wg.Add(1)
		go func(h string) {
			defer wg.Done()
			m := miner.Miner{Host: h}
			errs <- d.Sleep(ctx(t), m)
			_, err := d.Poll(ctx(t), m)
			errs <- err
		}(h)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, modes := f.Totals(); modes[miners.Mining]+modes[miners.Waking] != 0 {
		t.Fatalf("after sleeping all %d: modes %v", n, modes)
	}
}

func BenchmarkPollV3(b *testing.B) {
	f, err := miners.StartWhatsminer(miners.WhatsminerConfig{Miners: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	d := whatsminer.New(whatsminer.Options{API: whatsminer.APIv3, PortV3: f.PortV3(), Password: "super"})
	m := miner.Miner{Host: f.Hosts()[0]}
	for i := 0; i < b.N; i++ {
		if _, err := d.Poll(context.Background(), m); err != nil {
			b.Fatal(err)
		}
	}
}
