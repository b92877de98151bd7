package agent

import (
	"context"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/drivers/actuator"
)

// Dispatcher turns plans into device commands. Each load group has its own
// worker with a one-slot mailbox: the cycle drops the newest target in and
// moves on, a slow device only ever delays its own group, and a target that
// was overtaken before it was sent is simply never sent. A semaphore bounds
// how many groups talk to their devices at once.
type Dispatcher struct {
	log     *slog.Logger
	timeout time.Duration
	retry   time.Duration
	sem     chan struct{}
	workers []*groupWorker
	seq     uint64
	// OnApplied, when set before Start, is called after every Apply (from
	// the worker goroutine): metrics, events, benchmarks.
	OnApplied func(group int, cmd actuator.Command, res actuator.Result, err error, took time.Duration)
	wg        sync.WaitGroup
}

// DispatchTarget is one group as the dispatcher sees it.
type DispatchTarget struct {
	Name     string
	Kind     control.Kind
	Actuator actuator.Actuator // nil: the group is observed only
}

// GroupDispatch is the dispatcher's view of one group, for status pages.
type GroupDispatch struct {
	Name      string
	Wanted    actuator.Command
	Applied   actuator.Command
	Result    actuator.Result
	LastError string
	ErrorAt   time.Time
	AppliedAt time.Time
	InFlight  bool
	Failures  uint64
}

type groupWorker struct {
	idx    int
	target DispatchTarget
	signal chan struct{}

	mu      sync.Mutex
	pending actuator.Command
	has     bool // pending holds a command not yet taken
	status  GroupDispatch
	sent    bool // a command was ever submitted
}

// NewDispatcher prepares a worker per group. timeout bounds each Apply;
// retry is the wait before a failed command is tried again.
func NewDispatcher(targets []DispatchTarget, concurrency int, timeout, retry time.Duration, log *slog.Logger) *Dispatcher {
	if concurrency < 1 {
		concurrency = 1
	}
	d := &Dispatcher{log: log, timeout: timeout, retry: retry, sem: make(chan struct{}, concurrency)}
	for i, t := range targets {
		w := &groupWorker{idx: i, target: t, signal: make(chan struct{}, 1)}
		w.status.Name = t.Name
		d.workers = append(d.workers, w)
	}
	return d
}

// Start runs the workers until ctx ends.
func (d *Dispatcher) Start(ctx context.Context) {
	for _, w := range d.workers {
		if w.target.Actuator == nil {
			continue
		}
		d.wg.Add(1)
		go func(w *groupWorker) {
			defer d.wg.Done()
			d.run(ctx, w)
		}(w)
	}
}

// Wait returns when every worker has stopped.
func (d *Dispatcher) Wait() { d.wg.Wait() }

// Submit hands the plan's targets to the workers. It never blocks and
// allocates nothing; groups whose target did not change are left alone.
func (d *Dispatcher) Submit(p *control.Plan) {
	for i, w := range d.workers {
		if w.target.Actuator == nil {
			continue
		}
		gp := &p.Groups[i]
		cmd := actuator.Command{Group: w.target.Name, Kind: w.target.Kind, UnitsOn: gp.UnitsOn, CapKW: gp.CapKW}
		w.mu.Lock()
		if w.sent && sameTarget(w.status.Wanted, cmd) {
			w.mu.Unlock()
			continue
		}
		d.seq++
		cmd.Seq = d.seq
		w.pending, w.has, w.sent = cmd, true, true
		w.status.Wanted = cmd
		w.mu.Unlock()
		select {
		case w.signal <- struct{}{}:
		default:
		}
	}
}

func sameTarget(a, b actuator.Command) bool {
	if a.Kind == actuator.Shed {
		return a.UnitsOn == b.UnitsOn
	}
	// Sub-watt differences are float noise, not a new target.
	return math.Abs(a.CapKW-b.CapKW) < 1e-3
}

func (d *Dispatcher) run(ctx context.Context, w *groupWorker) {
	var retry <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.signal:
		case <-retry:
			// Try the failed command again unless a newer one replaced it.
			w.mu.Lock()
			if !w.has {
				w.pending, w.has = w.status.Wanted, true
			}
			w.mu.Unlock()
		}
		retry = nil
		w.mu.Lock()
		if !w.has {
			w.mu.Unlock()
			continue
		}
		cmd := w.pending
		w.has = false
		w.status.InFlight = true
		w.mu.Unlock()

		select {
		case d.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		actx, cancel := context.WithTimeout(ctx, d.timeout)
		start := time.Now()
		res, err := w.target.Actuator.Apply(actx, cmd)
		took := time.Since(start)
		cancel()
		<-d.sem

		w.mu.Lock()
		w.status.InFlight = false
		if err != nil && ctx.Err() != nil {
			// Shutting down: the command was abandoned, not refused.
			w.mu.Unlock()
			return
		}
		if err != nil {
			w.status.Failures++
			first := w.status.LastError == ""
			w.status.LastError, w.status.ErrorAt = err.Error(), time.Now()
			if first {
				d.log.Warn("command failed; retrying", "group", w.target.Name, "seq", cmd.Seq, "err", err)
			}
		} else {
			if w.status.LastError != "" {
				d.log.Info("command applied after failures", "group", w.target.Name, "seq", cmd.Seq, "failures", w.status.Failures)
			}
			w.status.LastError = ""
			w.status.Applied, w.status.Result, w.status.AppliedAt = cmd, res, time.Now()
		}
		newer := w.has
		w.mu.Unlock()
		if d.OnApplied != nil {
			d.OnApplied(w.idx, cmd, res, err, took)
		}
		if err != nil && !newer && ctx.Err() == nil {
			retry = time.After(d.retry)
		}
	}
}

// Status returns a copy of every group's dispatch state.
func (d *Dispatcher) Status() []GroupDispatch {
	out := make([]GroupDispatch, len(d.workers))
	for i, w := range d.workers {
		w.mu.Lock()
		out[i] = w.status
		w.mu.Unlock()
	}
	return out
}
