package miner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/actuator"
)

// Fleet drives one load group of miners: it is the group's actuator (Apply
// turns "run N units" or "cap at X kW" into per-miner commands) and a
// source (telemetry sweeps, and the group's power written to the point
// store). Commands go out with bounded concurrency, a timeout per miner,
// jittered retries, read-back verification and a wake rate limit; a miner
// that misbehaves is marked and reported and holds up nothing but its own
// worker.
type Fleet struct {
	name    string
	kind    actuator.Kind
	cfg     GroupConfig
	drivers map[Family]Driver
	log     *slog.Logger
	racks   map[string]int
	now     func() time.Time

	mu       sync.Mutex
	units    []unit
	shedQ    queue    // sleeps and power targets: no rate limit
	wakeQ    queue    // wakes: at most WakePerS a second
	retry    timeHeap // units waiting for their next attempt
	verify   timeHeap // units with a read-back due
	inflight int
	nextWake time.Time
	running  bool
	progress chan struct{} // closed and replaced on every completion
	kick     chan struct{}
	jobs     chan job
	commands bool // Apply has been called: before, polls only observe

	stats Stats

	store  *point.Store
	ids    pointIDs
	ready  chan struct{}
	readyO sync.Once
}

// Stats counts what the fleet did.
type Stats struct {
	Commands, CommandErrors, Polls, PollErrors, Sweeps uint64
	LastSweep                                          time.Duration
}

// Options build a Fleet.
type Options struct {
	// Group is the load group's name; Kind whether it sheds or throttles.
	Group string
	Kind  actuator.Kind
	// Config has its defaults applied and its inventory resolved.
	Config GroupConfig
	// Drivers by family; every family of the inventory needs one.
	Drivers map[Family]Driver
	// Store receives the fleet's points (nil: none).
	Store *point.Store
	Log   *slog.Logger
}

type jobKind uint8

const (
	jobSleep jobKind = iota
	jobWake
	jobPower
	jobPoll
)

func (k jobKind) String() string { return [...]string{"sleep", "wake", "power", "poll"}[k] }

type job struct {
	idx   int
	gen   uint32
	kind  jobKind
	watts float64
}

// queue is a FIFO of unit indices.
type queue struct {
	items []int
	head  int
}

func (q *queue) push(i int) { q.items = append(q.items, i) }
func (q *queue) len() int   { return len(q.items) - q.head }
func (q *queue) peek() int  { return q.items[q.head] }
func (q *queue) pop() int {
	i := q.items[q.head]
	q.head++
	if q.head > 1024 && q.head*2 > len(q.items) {
		q.items = append(q.items[:0], q.items[q.head:]...)
		q.head = 0
	}
	return i
}

// Retry timing: fast retries back off from retryBase, doubling, with
// ±50 % jitter so that a fleet of failures does not retry in lockstep;
// after Retries of them, every retryMax.
const (
	retryBase = 200 * time.Millisecond
	retryMax  = 30 * time.Second
)

// New builds a fleet. It opens no connection: Run does the work.
func New(o Options) (*Fleet, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Kind != actuator.Shed && o.Kind != actuator.Throttle {
		return nil, fmt.Errorf("miner group %s: unknown kind %v", o.Group, o.Kind)
	}
	inv := o.Config.Inventory()
	if len(inv) == 0 {
		return nil, fmt.Errorf("miner group %s: the inventory is empty", o.Group)
	}
	for _, m := range inv {
		if o.Drivers[m.Family] == nil {
			return nil, fmt.Errorf("miner group %s: no driver for family %s (miner %s)", o.Group, m.Family, m.Host)
		}
	}
	f := &Fleet{name: o.Group, kind: o.Kind, cfg: o.Config, drivers: o.Drivers, log: o.Log, now: time.Now,
		racks: rackRanks(inv), progress: make(chan struct{}), kick: make(chan struct{}, 1),
		store: o.Store, ready: make(chan struct{})}
	f.units = make([]unit, len(inv))
	for i, m := range inv {
		f.units[i] = unit{m: m, idx: i, run: true, wantW: m.RatedW, setW: m.RatedW}
	}
	if o.Store != nil {
		f.ids = registerPoints(o.Store, o.Config.Source)
	}
	return f, nil
}

// Name is the fleet's source name (it prefixes its points).
func (f *Fleet) Name() string { return f.cfg.Source }

// Ready is closed after the first telemetry sweep.
func (f *Fleet) Ready() <-chan struct{} { return f.ready }

// Len is the number of miners.
func (f *Fleet) Len() int { return len(f.units) }

// UnitKW lists the miners' ratings in kW in the controller's unit order
// (see UnitOrder): the controller's model of the group.
func (f *Fleet) UnitKW() []float64 { return f.cfg.UnitKW() }

// Run sends commands, polls and writes points until ctx ends.
func (f *Fleet) Run(ctx context.Context) error {
	f.mu.Lock()
	if f.running {
		f.mu.Unlock()
		return errors.New("fleet already running")
	}
	f.running = true
	f.jobs = make(chan job, f.cfg.Concurrency)
	f.mu.Unlock()
	var wg sync.WaitGroup
	for range f.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.worker(ctx)
		}()
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		f.pollLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		f.pointsLoop(ctx)
	}()
	f.engine(ctx)
	wg.Wait()
	f.mu.Lock()
	f.running = false
	f.mu.Unlock()
	return ctx.Err()
}

// broadcast wakes Apply waiters and the engine. Call with f.mu held.
func (f *Fleet) broadcast() {
	close(f.progress)
	f.progress = make(chan struct{})
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// engine dispatches queued commands and due read-backs.
func (f *Fleet) engine(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		f.mu.Lock()
		wait := f.dispatch(f.now())
		f.mu.Unlock()
		if wait > 0 {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// dispatch starts what is due and returns how long until the next thing
// falls due (0: nothing scheduled). Call with f.mu held.
func (f *Fleet) dispatch(now time.Time) time.Duration {
	var next time.Time
	due := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	// Retries whose time has come go back to their queue.
	for f.retry.Len() > 0 {
		e := f.retry.peek()
		u := &f.units[e.idx]
		if !u.retryAt.Equal(e.at) {
			f.retry.pop() // superseded
			continue
		}
		if now.Before(e.at) {
			due(e.at)
			break
		}
		f.retry.pop()
		u.retryAt, u.queued = time.Time{}, false
		if _, ok := f.commandFor(u); ok {
			f.enqueue(e.idx)
		}
	}
	limit := f.cfg.Concurrency
	for f.shedQ.len() > 0 && f.inflight < limit {
		i := f.shedQ.pop()
		u := &f.units[i]
		u.queued = false
		j, ok := f.commandFor(u)
		switch {
		case !ok: // nothing to do any more, or busy: requeued when done
		case j.kind == jobWake:
			f.enqueue(i) // the wish turned around: it belongs in wakeQ
		default:
			f.start(u, j)
		}
	}
	spacing := time.Duration(float64(time.Second) / f.cfg.WakePerS)
	for f.wakeQ.len() > 0 && f.inflight < limit {
		i := f.wakeQ.peek()
		u := &f.units[i]
		j, ok := f.commandFor(u)
		if !ok || !u.run || j.kind != jobWake {
			f.wakeQ.pop()
			u.queued = false
			if ok {
				f.enqueue(i)
			}
			continue
		}
		if now.Before(f.nextWake) {
			due(f.nextWake)
			break
		}
		f.wakeQ.pop()
		u.queued = false
		// Never burst: after a quiet spell the next wake still waits its
		// turn behind the last one.
		f.nextWake = maxTime(f.nextWake, now).Add(spacing)
		f.start(u, j)
	}
	for f.verify.Len() > 0 {
		e := f.verify.peek()
		u := &f.units[e.idx]
		if !u.verifyAt.Equal(e.at) {
			f.verify.pop() // superseded or done
			continue
		}
		if now.Before(e.at) {
			due(e.at)
			break
		}
		if f.inflight >= limit {
			due(now.Add(10 * time.Millisecond))
			break
		}
		f.verify.pop()
		if u.busy {
			// A command is on the wire: read back after it.
			f.scheduleVerify(u, now.Add(f.cfg.VerifyAfter))
			continue
		}
		u.verifyAt = time.Time{}
		f.start(u, job{idx: e.idx, gen: u.gen, kind: jobPoll})
	}
	if next.IsZero() {
		return 0
	}
	return max(next.Sub(now), time.Millisecond)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// commandFor says which command u needs now, if any.
func (f *Fleet) commandFor(u *unit) (job, bool) {
	if u.busy || u.acked && (f.kind == actuator.Shed || u.setW == u.wantW) {
		return job{}, false
	}
	if f.kind == actuator.Throttle {
		if u.run {
			return job{idx: u.idx, gen: u.gen, kind: jobPower, watts: u.wantW}, true
		}
	}
	if u.run {
		return job{idx: u.idx, gen: u.gen, kind: jobWake}, true
	}
	return job{idx: u.idx, gen: u.gen, kind: jobSleep}, true
}

// enqueue puts unit i in the queue its wish needs. Call with f.mu held.
func (f *Fleet) enqueue(i int) {
	u := &f.units[i]
	if u.queued {
		return
	}
	u.queued = true
	if u.run && f.kind == actuator.Shed {
		f.wakeQ.push(i)
	} else {
		f.shedQ.push(i)
	}
}

func (f *Fleet) start(u *unit, j job) {
	u.busy = true
	f.inflight++
	f.jobs <- j // never blocks: inflight < cap(f.jobs)
}

func (f *Fleet) worker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-f.jobs:
			f.do(ctx, j)
		}
	}
}

func (f *Fleet) do(ctx context.Context, j job) {
	f.mu.Lock()
	m := f.units[j.idx].m
	f.mu.Unlock()
	d := f.drivers[m.Family]
	cctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	var err error
	var t Telemetry
	switch j.kind {
	case jobSleep:
		err = d.Sleep(cctx, m)
	case jobWake:
		err = d.Wake(cctx, m)
	case jobPower:
		err = d.SetPowerTarget(cctx, m, j.watts)
	case jobPoll:
		t, err = d.Poll(cctx, m)
	}
	cancel()
	if err != nil && ctx.Err() != nil {
		// Shutting down: the command was abandoned, not refused.
		f.mu.Lock()
		f.units[j.idx].busy = false
		f.inflight--
		f.mu.Unlock()
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	u := &f.units[j.idx]
	u.busy = false
	f.inflight--
	if j.kind == jobPoll {
		f.stats.Polls++
		f.observe(u, t, err)
		// A wish that arrived while the read-back was on the wire.
		f.requeue(u)
	} else {
		f.stats.Commands++
		f.commanded(u, j, err)
	}
	f.broadcast()
}

// commanded records a command's outcome. Call with f.mu held.
func (f *Fleet) commanded(u *unit, j job, err error) {
	now := f.now()
	current := j.gen == u.gen
	if errors.Is(err, ErrInProgress) {
		err = nil // acknowledged; the read-back will tell
	}
	if err != nil {
		f.stats.CommandErrors++
		f.fail(u, classifyErr(err), err, now)
		if !current {
			f.requeue(u)
			return
		}
		u.tried = j.gen
		u.attempts++
		u.failedCmd = true
		if errors.Is(err, ErrUnsupported) {
			u.nextTry = now.Add(time.Hour)
		} else {
			u.nextTry = now.Add(backoff(u.attempts, *f.cfg.Retries))
		}
		f.requeue(u)
		return
	}
	f.recovered(u)
	switch j.kind {
	case jobSleep:
		u.state = Sleeping
	case jobWake:
		u.state = Waking
	case jobPower:
		u.setW = j.watts
	}
	if !current {
		f.requeue(u)
		return
	}
	u.tried, u.acked, u.verified, u.attempts, u.failedCmd = j.gen, true, false, 0, false
	u.ackAt = now
	f.scheduleVerify(u, now.Add(f.cfg.VerifyAfter))
}

// requeue puts u back for a retry or a newer wish. Call with f.mu held.
func (f *Fleet) requeue(u *unit) {
	if _, ok := f.commandFor(u); !ok || u.queued {
		return
	}
	u.queued = true
	u.retryAt = maxTime(u.nextTry, f.now())
	f.retry.push(u.retryAt, u.idx)
}

func (f *Fleet) scheduleVerify(u *unit, at time.Time) {
	u.verifyAt = at
	f.verify.push(at, u.idx)
}

// backoff is the wait before attempt n+1: jittered exponential for the
// first retries, then retryMax.
func backoff(n, fast int) time.Duration {
	if n > fast {
		return time.Duration(float64(retryMax) * (0.75 + rand.Float64()/2))
	}
	d := retryBase << (n - 1)
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

// fail marks u unreachable or failed, logging the transition once.
func (f *Fleet) fail(u *unit, st State, err error, now time.Time) {
	msg := err.Error()
	if u.state != st {
		f.log.Warn("miner "+st.String(), "group", f.name, "miner", u.m.Host, "family", u.m.Family, "err", msg)
	}
	u.state, u.lastErr, u.errAt = st, msg, now
}

func (f *Fleet) recovered(u *unit) {
	if u.state == Unreachable || u.state == Failed {
		f.log.Info("miner answers again", "group", f.name, "miner", u.m.Host, "was", u.state.String())
	}
}

// settleTime: a read-back that contradicts an acknowledged command is
// re-checked for this long before the miner is marked failed.
func (f *Fleet) settleTime() time.Duration { return f.cfg.SettleTime }

// observe records a poll. Call with f.mu held.
func (f *Fleet) observe(u *unit, t Telemetry, err error) {
	now := f.now()
	if err != nil {
		f.stats.PollErrors++
		f.fail(u, classifyErr(err), err, now)
		if !u.acked || !u.verified {
			f.scheduleVerify(u, now.Add(2*f.cfg.VerifyAfter+time.Second))
		}
		return
	}
	f.recovered(u)
	if t.At.IsZero() {
		t.At = now
	}
	u.tele = t
	switch {
	case t.Sleeping:
		u.observed = Sleeping
	case t.Mining:
		u.observed = Mining
	default:
		u.observed = Waking // neither hashing nor asleep: starting
	}
	if !f.commands {
		// Before the first command the fleet only watches.
		u.state = u.observed
		return
	}
	since := now.Sub(u.ackAt)
	recheck := func() { f.scheduleVerify(u, now.Add(2*f.cfg.VerifyAfter)) }
	contradicted := func(what string) {
		f.fail(u, Failed, fmt.Errorf("miner %s: read-back: %s %s after the command was acknowledged", u.m.Host, what, since.Round(time.Millisecond)), now)
		u.acked, u.verified, u.failedCmd = false, false, true
		u.attempts++
		u.nextTry = now.Add(backoff(u.attempts, *f.cfg.Retries))
		f.requeue(u)
	}
	if f.kind == actuator.Throttle {
		u.state = u.observed
		if u.acked && t.PowerTargetW > 0 {
			if math.Abs(t.PowerTargetW-u.setW) <= math.Max(50, 0.05*u.setW) {
				u.verified = true
			} else if since > f.settleTime() {
				contradicted(fmt.Sprintf("power target %.0f W, not %.0f W,", t.PowerTargetW, u.setW))
			} else {
				recheck()
			}
		} else if u.acked {
			u.verified = true // the family reports no target: trust the acknowledgement
		}
		if u.failedCmd {
			u.state = Failed
		}
		return
	}
	settle := func(st State) {
		u.state, u.acked, u.verified, u.tried, u.failedCmd = st, true, true, u.gen, false
	}
	switch {
	case !u.run && (u.observed == Sleeping || u.observed == Waking && u.acked):
		settle(Sleeping) // asleep, or powering down
	case u.run && u.observed == Mining:
		settle(Mining)
	case u.failedCmd:
		// Answers polls but has not taken its command: stays failed,
		// with the command's error, until a retry succeeds.
		u.state = Failed
	case !u.run: // hashing though it should sleep
		switch {
		case !u.acked:
			u.state = u.observed
		case since < f.settleTime():
			recheck()
		default:
			contradicted("still hashing")
		}
	case u.observed == Sleeping: // asleep though it should run
		switch {
		case !u.acked:
			u.state = Sleeping
		case since < f.settleTime():
			u.state = Waking
			recheck()
		default:
			contradicted("still asleep")
		}
	default: // starting up
		u.state = Waking
		switch {
		case !u.acked:
		case since > f.cfg.WakeTimeout:
			contradicted("not hashing")
		default:
			recheck()
		}
	}
}

// pollLoop sweeps every miner each PollPeriod.
func (f *Fleet) pollLoop(ctx context.Context) {
	for {
		start := time.Now()
		f.sweep(ctx)
		took := time.Since(start)
		f.mu.Lock()
		f.stats.Sweeps++
		f.stats.LastSweep = took
		f.mu.Unlock()
		f.readyO.Do(func() { close(f.ready) })
		f.writePoints()
		t := time.NewTimer(max(f.cfg.PollPeriod-took, f.cfg.PollPeriod/10))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Sweep polls every miner once, PollConcurrency at a time, and returns
// when all have answered or timed out.
func (f *Fleet) sweep(ctx context.Context) {
	sem := make(chan struct{}, f.cfg.PollConcurrency)
	var wg sync.WaitGroup
	for i := range f.units {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			m := f.units[i].m // immutable after New
			pctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
			t, err := f.drivers[m.Family].Poll(pctx, m)
			cancel()
			if ctx.Err() != nil {
				return
			}
			f.mu.Lock()
			f.stats.Polls++
			f.observe(&f.units[i], t, err)
			f.mu.Unlock()
		}(i)
	}
	wg.Wait()
	f.mu.Lock()
	f.broadcast()
	f.mu.Unlock()
}

// Sweep runs one telemetry sweep now (tests, the demo, benchmarks).
func (f *Fleet) Sweep(ctx context.Context) { f.sweep(ctx) }

// Apply implements actuator.Actuator. It decides which miners run,
// queues the commands that changes need, and waits until each shed (or
// power) command has had its first attempt, or ctx ends. Wakes wait their
// turn behind the wake rate limit and are not waited for. Retries and
// read-backs carry on after Apply returns.
func (f *Fleet) Apply(ctx context.Context, cmd actuator.Command) (actuator.Result, error) {
	if cmd.Kind != f.kind {
		return actuator.Result{}, fmt.Errorf("miner group %s: got a %s command but is a %s group", f.name, cmd.Kind, f.kind)
	}
	f.mu.Lock()
	if !f.running {
		f.mu.Unlock()
		return actuator.Result{}, fmt.Errorf("miner group %s: the fleet is not running", f.name)
	}
	var changed []job
	if f.kind == actuator.Shed {
		if cmd.UnitsOn < 0 || cmd.UnitsOn > len(f.units) {
			f.mu.Unlock()
			return actuator.Result{}, fmt.Errorf("miner group %s: UnitsOn %d is outside 0..%d", f.name, cmd.UnitsOn, len(f.units))
		}
		changed = f.planShed(cmd.UnitsOn)
	} else {
		if !(cmd.CapKW >= 0) || math.IsInf(cmd.CapKW, 0) {
			f.mu.Unlock()
			return actuator.Result{}, fmt.Errorf("miner group %s: cap %g kW is not a power", f.name, cmd.CapKW)
		}
		changed = f.planCap(cmd.CapKW)
	}
	f.commands = true
	f.broadcast()
	for {
		waiting := 0
		for _, c := range changed {
			u := &f.units[c.idx]
			if u.gen != c.gen || u.tried >= c.gen || u.acked && !u.busy {
				continue
			}
			if c.kind == jobWake && !u.busy {
				continue // behind the wake limit
			}
			waiting++
		}
		if waiting == 0 {
			break
		}
		ch := f.progress
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		f.mu.Lock()
		if ctx.Err() != nil {
			break
		}
	}
	res, err := f.result(cmd, changed)
	f.mu.Unlock()
	return res, err
}

// planShed sets which miners should run so that on of them do, changing
// as few as possible. Call with f.mu held.
func (f *Fleet) planShed(on int) []job {
	var runs, sleeps []*unit
	for i := range f.units {
		u := &f.units[i]
		if u.run {
			runs = append(runs, u)
		} else {
			sleeps = append(sleeps, u)
		}
	}
	var flip []*unit
	switch {
	case len(runs) > on:
		sortForShed(f.cfg.ShedOrder, f.racks, runs)
		flip = runs[:len(runs)-on]
	case len(runs) < on:
		sortForWake(f.cfg.ShedOrder, f.racks, sleeps)
		flip = sleeps[:on-len(runs)]
	}
	var changed []job
	for _, u := range flip {
		u.run = !u.run
		changed = append(changed, f.rewish(u))
	}
	if !f.commands {
		// The first command also claims the miners whose wish did not
		// change: those found in the other state get a command too.
		for i := range f.units {
			u := &f.units[i]
			if u.gen == 0 {
				changed = append(changed, f.rewish(u))
			}
		}
	}
	return changed
}

// rewish starts a new generation of u's wish and queues a command unless
// the miner is already there. Call with f.mu held.
func (f *Fleet) rewish(u *unit) job {
	u.gen++
	u.attempts, u.nextTry, u.failedCmd = 0, time.Time{}, false
	already := u.run && (u.state == Mining || u.state == Waking) || !u.run && u.state == Sleeping
	u.acked, u.verified = already, already && u.state != Waking
	kind := jobSleep
	if u.run {
		kind = jobWake
	}
	if already {
		u.tried = u.gen
	} else {
		f.enqueue(u.idx)
	}
	return job{idx: u.idx, gen: u.gen, kind: kind}
}

// planCap spreads a group cap over the running miners in proportion to
// their ratings, none below MinPowerPct of its rating. Call with f.mu
// held.
func (f *Fleet) planCap(capKW float64) []job {
	var rated float64
	for i := range f.units {
		rated += f.units[i].m.RatedW
	}
	share := math.Min(1, capKW*1000/rated)
	var changed []job
	for i := range f.units {
		u := &f.units[i]
		w := math.Round(math.Max(share, f.cfg.MinPowerPct/100) * u.m.RatedW)
		if math.Abs(w-u.wantW) < 1 && u.gen > 0 {
			continue
		}
		u.wantW = w
		u.gen++
		u.attempts, u.nextTry, u.failedCmd = 0, time.Time{}, false
		u.acked, u.verified = u.setW == w && u.gen > 1, false
		if !u.acked {
			f.enqueue(i)
		}
		changed = append(changed, job{idx: i, gen: u.gen, kind: jobPower, watts: w})
	}
	return changed
}

// result reads back the group. Call with f.mu held.
func (f *Fleet) result(cmd actuator.Command, changed []job) (actuator.Result, error) {
	var res actuator.Result
	var failed []string
	for _, c := range changed {
		u := &f.units[c.idx]
		if u.gen == c.gen && u.tried >= c.gen && !u.acked && u.lastErr != "" {
			failed = append(failed, u.lastErr)
		}
	}
	counts, settled := [6]int{}, 0
	var setW float64
	for i := range f.units {
		u := &f.units[i]
		counts[u.state]++
		if u.running() {
			res.UnitsOn++
		}
		if u.settled() {
			settled++
		}
		if u.run {
			setW += u.setW
		}
	}
	res.CapKW = setW / 1000
	if f.kind == actuator.Shed {
		res.Verified = settled == len(f.units) && res.UnitsOn == cmd.UnitsOn
	} else {
		res.Verified = settled == len(f.units)
	}
	pw := f.powerLocked()
	var b strings.Builder
	fmt.Fprintf(&b, "%d mining, %d waking, %d sleeping", counts[Mining], counts[Waking], counts[Sleeping])
	if n := counts[Unreachable]; n > 0 {
		fmt.Fprintf(&b, ", %d unreachable", n)
	}
	if n := counts[Failed]; n > 0 {
		fmt.Fprintf(&b, ", %d failed", n)
	}
	if n := counts[Unknown]; n > 0 {
		fmt.Fprintf(&b, ", %d unknown", n)
	}
	if n := f.wakeQ.len(); n > 0 {
		fmt.Fprintf(&b, "; %d queued to wake at %g/s", n, f.cfg.WakePerS)
	}
	fmt.Fprintf(&b, "; %s", pw.describe())
	res.Detail = b.String()
	if len(failed) == 0 {
		return res, nil
	}
	sort.Strings(failed)
	shown := failed
	if len(shown) > 5 {
		shown = shown[:5]
	}
	more := ""
	if len(failed) > len(shown) {
		more = fmt.Sprintf("; and %d more", len(failed)-len(shown))
	}
	return res, fmt.Errorf("%d of %d miners did not take the command (retrying): %s%s", len(failed), len(changed), strings.Join(shown, "; "), more)
}

// timeHeap is a min-heap of (time, unit). Entries are not removed when a
// unit's time changes: a popped entry whose time no longer matches the
// unit's is skipped.
type timeHeap []timed

type timed struct {
	at  time.Time
	idx int
}

func (h timeHeap) Len() int { return len(h) }

func (h timeHeap) peek() timed { return h[0] }

func (h *timeHeap) push(at time.Time, idx int) {
	*h = append(*h, timed{at, idx})
	a := *h
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if !a[i].at.Before(a[p].at) {
			break
		}
		a[i], a[p] = a[p], a[i]
		i = p
	}
}

func (h *timeHeap) pop() timed {
	a := *h
	top := a[0]
	last := len(a) - 1
	a[0] = a[last]
	a = a[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(a) && a[l].at.Before(a[m].at) {
			m = l
		}
		if r < len(a) && a[r].at.Before(a[m].at) {
			m = r
		}
		if m == i {
			break
		}
		a[i], a[m] = a[m], a[i]
		i = m
	}
	*h = a
	return top
}
