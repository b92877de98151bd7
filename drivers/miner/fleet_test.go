package miner_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/actuator"
	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/cgminer"
	"github.com/siteagent/siteagent/drivers/miner/luxos"
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

type rig struct {
	sim   *miners.LuxOSFleet
	clk   *clock
	fleet *miner.Fleet
	store *point.Store
	ctx   context.Context
}

// startRig runs n simulated LuxOS miners and a fleet over them. edit
// adjusts the group's configuration before it is resolved.
func startRig(t *testing.T, n int, kind actuator.Kind, edit func(*miner.GroupConfig)) *rig {
	t.Helper()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	sim, err := miners.StartLuxOS(miners.LuxOSConfig{Miners: n, Base: netip.MustParseAddr("127.11.0.1"), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	cfg := miner.GroupConfig{Hosts: []miner.HostEntry{{CIDR: "127.11.0.0/16", Count: n, Port: sim.Port(), Family: "luxos", RatedW: 3250}},
		PollPeriod: 10 * time.Minute, Timeout: 2 * time.Second, VerifyAfter: 50 * time.Millisecond, SettleTime: time.Second}
	if edit != nil {
		edit(&cfg)
	}
	cfg = cfg.WithDefaults("asic", 0)
	p := config.NewProblems("test.toml", nil)
	cfg.Validate(p, "groups[0].miners")
	cfg.Resolve(p, "groups[0].miners", "", "asic")
	if err := p.Err(); err != nil {
		t.Fatal(err)
	}
	store := point.NewStore()
	f, err := miner.New(miner.Options{Group: "asic", Kind: kind, Config: cfg, Store: store,
		Log:     slog.New(slog.DiscardHandler),
		Drivers: map[miner.Family]miner.Driver{miner.LuxOS: luxos.New(), miner.CGMiner: &cgminer.Driver{}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-f.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("no first sweep")
	}
	return &rig{sim: sim, clk: clk, fleet: f, store: store, ctx: ctx}
}

func (r *rig) apply(t *testing.T, on int) (actuator.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(r.ctx, 20*time.Second)
	defer cancel()
	return r.fleet.Apply(ctx, actuator.Command{Group: "asic", Kind: actuator.Shed, UnitsOn: on})
}

// eventually polls cond (with a generous deadline: the machine is shared).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func modes(sim *miners.LuxOSFleet, n int) (running, asleep []int) {
	for i := 0; i < n; i++ {
		switch sim.State(i).Mode {
		case miners.Mining, miners.Waking:
			running = append(running, i)
		default:
			asleep = append(asleep, i)
		}
	}
	return running, asleep
}

func TestShedAndReadBack(t *testing.T) {
	const n = 12
	r := startRig(t, n, actuator.Shed, nil)
	res, err := r.apply(t, 8)
	if err != nil {
		t.Fatal(err)
	}
	if res.UnitsOn != 8 {
		t.Fatalf("result %+v", res)
	}
	// The inventory order sheds the last listed first.
	_, asleep := modes(r.sim, n)
	if !slices.Equal(asleep, []int{8, 9, 10, 11}) {
		t.Fatalf("asleep %v, want the last four", asleep)
	}
	if r.sim.CommandCount("curtail") != 4 {
		t.Fatalf("%d curtail commands, want 4: only what changed is sent", r.sim.CommandCount("curtail"))
	}
	// Read back: the verify poll sees CurtailMode Sleep.
	eventually(t, "read-back verification", func() bool {
		res, _ := r.apply(t, 8)
		return res.Verified
	})
	if r.sim.CommandCount("curtail") != 4 {
		t.Fatal("an unchanged target sent commands again")
	}
	if got := r.fleet.ByState()[miner.Sleeping]; got != 4 {
		t.Fatalf("%d sleeping", got)
	}
}

func TestShedOrders(t *testing.T) {
	const n = 9
	cases := []struct {
		order string
		edit  func(c *miner.GroupConfig, port int)
		want  []int // the three shed first
	}{
		{miner.OrderLeastEfficient, func(c *miner.GroupConfig, port int) {
			c.Hosts = nil
			for i := 0; i < n; i++ {
				eff := []float64{21, 34, 21, 29.5, 38, 21, 34, 17, 25}[i]
				c.Hosts = append(c.Hosts, miner.HostEntry{Host: fmt.Sprintf("127.11.0.%d", i+1), Port: port, Family: "luxos", RatedW: 3250, EfficiencyJTH: eff})
			}
		}, []int{1, 4, 6}},
		{miner.OrderRack, func(c *miner.GroupConfig, port int) {
			c.Hosts = nil
			for i, rack := range []string{"A", "B", "B", "C", "C", "C", "A", "A", "A"} {
				c.Hosts = append(c.Hosts, miner.HostEntry{Host: fmt.Sprintf("127.11.0.%d", i+1), Port: port, Family: "luxos", RatedW: 3250, Rack: rack})
			}
		}, []int{3, 4, 5}}, // rack C, the last to appear, empties first
		{miner.OrderHottest, nil, nil}, // computed from the simulator's temperatures
	}
	for _, c := range cases {
		t.Run(c.order, func(t *testing.T) {
			var port int
			r := startRig(t, n, actuator.Shed, func(cfg *miner.GroupConfig) {
				cfg.ShedOrder = c.order
				port = cfg.Hosts[0].Port
				if c.edit != nil {
					c.edit(cfg, port)
				}
			})
			want := c.want
			if want == nil {
				// The hottest miners by the temperatures they report.
				ms := r.fleet.Miners()
				idx := make([]int, n)
				for i := range idx {
					idx[i] = i
				}
				sort.SliceStable(idx, func(a, b int) bool {
					ta, tb := ms[idx[a]].TempC, ms[idx[b]].TempC
					if ta != tb {
						return ta > tb
					}
					return idx[a] > idx[b]
				})
				want = idx[:3]
				sort.Ints(want)
			}
			if _, err := r.apply(t, n-3); err != nil {
				t.Fatal(err)
			}
			_, asleep := modes(r.sim, n)
			if !slices.Equal(asleep, want) {
				t.Fatalf("asleep %v, want %v", asleep, want)
			}
		})
	}
}

// Faults are isolated: every healthy miner takes the command, the broken
// ones are named in the error, marked, and retried.
func TestMisbehavingMinersAreMarkedNotWaitedFor(t *testing.T) {
	const n = 10
	r := startRig(t, n, actuator.Shed, func(c *miner.GroupConfig) {
		c.Timeout = 500 * time.Millisecond
		six := 6 // fast retries only: the test must not wait out a 30 s one
		c.Retries = &six
	})
	r.sim.SetSlowDelay(time.Minute)
	faults := map[int]miners.Fault{1: miners.FaultRefusing, 3: miners.FaultGarbled, 5: miners.FaultSlow, 7: miners.FaultDropping}
	for i, f := range faults {
		r.sim.SetFault(i, f)
	}
	r.sim.HoldSession(8, true) // another tool holds miner 8's only session
	res, err := r.apply(t, 0)
	if err == nil {
		t.Fatalf("no error for %d broken miners: %+v", len(faults), res)
	}
	for i := range faults {
		if !strings.Contains(err.Error(), r.sim.Addrs()[i]) && !strings.Contains(err.Error(), "more") {
			t.Errorf("error does not name miner %s: %v", r.sim.Addrs()[i], err)
		}
	}
	for i := 0; i < n; i++ {
		_, broken := faults[i]
		mode := r.sim.State(i).Mode
		if !broken && mode != miners.Stopping && mode != miners.Sleeping {
			t.Errorf("healthy miner %d is %v", i, mode)
		}
	}
	st := r.fleet.ByState()
	if st[miner.Unreachable] != 3 || st[miner.Failed] != 1 || st[miner.Sleeping] != 6 {
		t.Fatalf("states %v; want 3 unreachable (refusing, slow, dropping), 1 failed (garbled), 6 sleeping", st)
	}
	status := r.fleet.Status()
	if len(status.Problems) != 4 {
		t.Fatalf("problems %+v", status.Problems)
	}
	for _, p := range status.Problems {
		if p.LastError == "" || !strings.Contains(p.LastError, p.Host) {
			t.Errorf("problem without its address and error: %+v", p)
		}
	}
	// Retries with backoff: the garbled miner recovers and is shed.
	r.sim.SetFault(3, miners.NoFault)
	eventually(t, "the recovered miner to be shed on retry", func() bool { return r.sim.State(3).Mode == miners.Stopping })
}

// A miner that acknowledges and does nothing is caught by the read-back
// and commanded again.
func TestReadBackCatchesIgnoredCommands(t *testing.T) {
	// Enough fast retries that the test never waits out a 30 s one.
	r := startRig(t, 3, actuator.Shed, func(c *miner.GroupConfig) { six := 6; c.Retries = &six })
	r.sim.SetFault(2, miners.FaultIgnoring)
	if _, err := r.apply(t, 0); err != nil {
		t.Fatal(err)
	}
	// The read-back contradicts the acknowledgement past the settle time:
	// marked failed, with the reason and the address, and commanded again.
	eventually(t, "the read-back to fail the miner", func() bool {
		ms := r.fleet.Miners()
		return ms[2].State == miner.Failed && strings.Contains(ms[2].LastError, "still hashing") && strings.Contains(ms[2].LastError, ms[2].Host)
	})
	eventually(t, "the sleep to be sent again", func() bool { return r.sim.CommandCount("curtail") > 3 })
	if ms := r.fleet.Miners(); ms[0].State != miner.Sleeping || !ms[0].Verified {
		t.Fatalf("obedient miner: %+v", ms[0])
	}
	r.sim.SetFault(2, miners.NoFault)
	eventually(t, "the miner to sleep", func() bool { return r.sim.State(2).Mode == miners.Stopping })
	eventually(t, "the miner to be verified asleep", func() bool {
		ms := r.fleet.Miners()
		return ms[2].State == miner.Sleeping && ms[2].Verified
	})
}

// Wakes never exceed the group's rate, whatever the controller asks.
func TestWakeStagger(t *testing.T) {
	const n, rate = 30, 20.0
	r := startRig(t, n, actuator.Shed, func(c *miner.GroupConfig) { c.WakePerS = rate })
	if _, err := r.apply(t, 0); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var wakes []time.Time
	r.sim.OnCommand(func(_ int, cmd, param string, at time.Time) {
		if cmd == "curtail" && strings.HasSuffix(param, "wakeup") {
			mu.Lock()
			wakes = append(wakes, at)
			mu.Unlock()
		}
	})
	res, err := r.apply(t, n)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(res.Detail, "queued to wake") {
		t.Errorf("detail does not show the wake queue: %s", res.Detail)
	}
	eventually(t, "every wake", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(wakes) == n
	})
	// In any one-second window, at most rate wakes (+1 for the window's
	// closed ends).
	for i := range wakes {
		k := 0
		for j := i; j < len(wakes) && wakes[j].Sub(wakes[i]) < time.Second; j++ {
			k++
		}
		if float64(k) > rate+1 {
			t.Fatalf("%d wakes within one second, limit %g", k, rate)
		}
	}
}

// Group power: measured where the firmware reports a PSU reading,
// estimated from rating and state where not, and said which.
func TestGroupPowerMeasuredAndEstimated(t *testing.T) {
	r := startRig(t, 4, actuator.Shed, nil)
	p := r.fleet.Power()
	if p.Measured != 4 || p.TotalW != 4*3250 || p.Rated != 0 {
		t.Fatalf("all measured: %+v", p)
	}
	r.sim.SetFault(0, miners.FaultRefusing)
	if _, err := r.apply(t, 2); err != nil {
		t.Fatal(err)
	}
	// Right after the command nothing fresh is known of the two shed
	// miners: their power is estimated from their state.
	p = r.fleet.Power()
	if p.Rated != 2 || p.Measured != 2 || p.RatedW != 2*15 {
		t.Fatalf("after the shed: %+v", p)
	}
	r.clk.Add(10 * time.Second)
	r.fleet.Sweep(r.ctx)
	p = r.fleet.Power()
	// Miner 0 is unreachable: rated while believed running.
	if p.Measured != 3 || p.Rated != 1 || p.RatedW != 3250 || p.TotalW != 3250+3250+15+15 {
		t.Fatalf("after a sweep: %+v", p)
	}
	// The points the controller's group meter reads.
	eventually(t, "the power point", func() bool {
		id, ok := r.store.Lookup("asic.power_kw")
		return ok && r.store.Get(id).Good() && r.store.Get(id).Value == p.TotalW/1000
	})
	id, _ := r.store.Lookup("asic.power_rated_estimated_kw")
	if v := r.store.Get(id).Value; v != 3.25 {
		t.Fatalf("rated-estimated point %v", v)
	}
}

func TestThrottleSetsPowerTargets(t *testing.T) {
	r := startRig(t, 4, actuator.Throttle, nil)
	ctx, cancel := context.WithTimeout(r.ctx, 20*time.Second)
	defer cancel()
	res, err := r.fleet.Apply(ctx, actuator.Command{Group: "asic", Kind: actuator.Throttle, CapKW: 4 * 2.9})
	if err != nil {
		t.Fatal(err)
	}
	if res.CapKW != 4*2.9 {
		t.Fatalf("result %+v", res)
	}
	for i := 0; i < 4; i++ {
		if s := r.sim.State(i); s.TargetW > 2900 || s.TargetW < 2700 {
			t.Fatalf("miner %d target %v", i, s.TargetW)
		}
	}
	// Below the floor of 60 % of rating, targets stop there.
	if _, err := r.fleet.Apply(ctx, actuator.Command{Group: "asic", Kind: actuator.Throttle, CapKW: 1}); err != nil {
		t.Fatal(err)
	}
	if s := r.sim.State(0); s.TargetW < 0.55*3250 {
		t.Fatalf("target %v below the floor", s.TargetW)
	}
}

func TestApplyRefusesNonsense(t *testing.T) {
	r := startRig(t, 2, actuator.Shed, nil)
	for _, cmd := range []actuator.Command{{Kind: actuator.Shed, UnitsOn: 3}, {Kind: actuator.Shed, UnitsOn: -1}, {Kind: actuator.Throttle, CapKW: 1}} {
		if _, err := r.fleet.Apply(r.ctx, cmd); err == nil {
			t.Errorf("%+v accepted", cmd)
		}
	}
	if n := r.sim.CommandCount("curtail"); n != 0 {
		t.Fatalf("a refused command sent %d curtails", n)
	}
}
