// Package opcua reads OPC UA servers (battery systems, chillers, building
// management) into the point store, so that any OPC UA value feeds the
// controller exactly as a Modbus register does.
//
// A Source owns one server: it connects with the configured security
// policy, refuses a server whose certificate is not the pinned one, logs
// in, resolves node ids and browse paths, subscribes to every point
// (polling by Read where it cannot), and reconnects with backoff when the
// channel or the session breaks, recreating its subscription. Every value
// carries the server's source timestamp, so a subscription that stays
// connected but delivers nothing shows as values that grow old, which the
// agent's safety layer treats as stale, never as good.
package opcua

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/agent/point"
)

// Reconnect backoff: doubled after every failed session, back to the
// minimum after a session that lasted.
const (
	minBackoff = 250 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// Stats counts a source's traffic since it was made.
type Stats struct {
	Connected     bool
	Mode          string // "subscribe" or "poll" (the session's actual mode)
	Sessions      uint64 // sessions opened
	Errors        uint64 // failed connection attempts and broken sessions
	Notifications uint64 // values delivered by the subscription
	KeepAlives    uint64
	Reads         uint64 // values read by polls and checks
	MissedUpdates uint64 // values the subscription failed to deliver
	Resubscribes  uint64 // subscriptions recreated after delivering nothing
	LastError     string
	LastErrorAt   time.Time
}

// item is one point of the source.
type item struct {
	idx         int
	name        string // full point name
	cfg         PointConfig
	id          point.ID
	ref         nodeRef
	path        []pathElem
	where       string // node or path as written, for messages
	staleAfter  time.Duration
	verifyAfter time.Duration

	// Per session, guarded by Source.mu.
	node      *ua.NodeID
	monitored bool
	polled    bool
	subID     uint32 // subscription whose sequence numbers lastSeq counts
	lastSeq   uint32
	lastRecv  time.Time // the last value, notified or read
	lastCheck time.Time
	last      sample
	has       bool
	problem   string // the last problem logged
	// What the subscription last delivered, to tell a value it missed
	// from one it had no reason to report.
	notif     sample
	hasNotif  bool
	notifAt   time.Time
	suspectAt time.Time // when a check read a change not delivered yet
}

// Source reads one OPC UA server into the store; see the package comment.
type Source struct {
	cfg    SourceConfig // defaults filled in
	store  *point.Store
	log    *slog.Logger
	items  []*item
	accept []ua.StatusCode

	mu      sync.Mutex
	stats   Stats
	linkErr string // the connection failure last logged

	skewAt atomic.Int64 // unix ns when a server clock ahead was last logged

	ready     chan struct{}
	readyOnce sync.Once
}

// NewSource checks cfg, registers every point in store as
// "<source>.<point>" with its trigger, and parses node ids and paths. It
// neither connects nor reads a file: Run does, and keeps reconnecting.
func NewSource(cfg SourceConfig, store *point.Store, log *slog.Logger) (*Source, error) {
	if store == nil {
		return nil, errors.New("opcua: NewSource needs a point store")
	}
	if log == nil {
		log = slog.Default()
	}
	p := config.NewProblems("opcua source "+strconv.Quote(cfg.Name), nil)
	cfg.Validate(p, "")
	if err := p.Err(); err != nil {
		return nil, err
	}
	d := cfg.WithDefaults()
	s := &Source{cfg: d, store: store, log: log.With("source", d.Name), ready: make(chan struct{})}
	for _, a := range d.AcceptStatus {
		code, _ := ParseStatus(a)
		s.accept = append(s.accept, code)
	}
	refresh := d.RefreshPeriod()
	for i, pc := range d.Points {
		it := &item{idx: i, name: d.Name + "." + pc.Name, cfg: pc}
		if pc.Node != "" {
			it.ref, _ = parseNode(pc.Node)
			it.where = "node " + pc.Node
		} else {
			it.path, _ = parsePath(pc.Path)
			it.where = "path " + pc.Path
		}
		it.staleAfter = pc.StaleAfter
		if it.staleAfter == 0 {
			it.staleAfter = staleFactor * refresh
		}
		it.verifyAfter = d.VerifyAfter
		if it.verifyAfter == 0 {
			it.verifyAfter = it.staleAfter / 2
		}
		it.id = store.Register(it.name)
		store.SetTrigger(it.id, pc.Meta.Trigger())
		s.items = append(s.items, it)
	}
	return s, nil
}

// Name is the source's name, the prefix of its points.
func (s *Source) Name() string { return s.cfg.Name }

// Config is the source's configuration with defaults filled in.
func (s *Source) Config() SourceConfig { return s.cfg }

// PointNames lists the full names of the source's points, in file order.
func (s *Source) PointNames() []string {
	out := make([]string, len(s.items))
	for i, it := range s.items {
		out[i] = it.name
	}
	return out
}

// Ready is closed once the first session has read every point, or the
// first attempt to open one has failed.
func (s *Source) Ready() <-chan struct{} { return s.ready }

// Stats returns the source's counters.
func (s *Source) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Run keeps a session open until ctx ends, reconnecting with backoff
// after every failure. Failures are logged once per change and show in
// the points' quality; Run returns nil when ctx ends.
func (s *Source) Run(ctx context.Context) error {
	s.warnInsecure()
	backoff := minBackoff
	for ctx.Err() == nil {
		started := time.Now()
		err := s.session(ctx, false)
		s.readyOnce.Do(func() { close(s.ready) })
		if ctx.Err() != nil {
			break
		}
		s.linkDown(err)
		if time.Since(started) > 30*time.Second {
			backoff = minBackoff
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
	return nil
}

// ReadOnce connects, reads every point once into the store and
// disconnects: `siteagent points`. It returns the connection's failure,
// if any; problems with single points show in their quality and the log.
func (s *Source) ReadOnce(ctx context.Context) error {
	err := s.session(ctx, true)
	if err != nil {
		s.markAll(point.CommError)
	}
	return err
}

// warnInsecure says at every start that the connection is not protected.
func (s *Source) warnInsecure() {
	switch {
	case s.cfg.SecurityPolicy == "None":
		s.log.Warn("opcua source uses security policy None: anyone on the network can read and alter its values (allow_insecure = true)", "endpoint", s.cfg.Endpoint)
	case Insecure(s.cfg.SecurityPolicy):
		s.log.Warn("opcua source uses a SHA-1 security policy that no longer protects the connection (allow_insecure = true)", "endpoint", s.cfg.Endpoint, "policy", s.cfg.SecurityPolicy)
	}
}

// linkDown marks every point bad and logs the failure when it differs
// from the last one logged.
func (s *Source) linkDown(err error) {
	if err == nil {
		err = errors.New("session ended")
	}
	s.markAll(point.CommError)
	s.mu.Lock()
	s.stats.Connected = false
	s.stats.Errors++
	s.stats.LastError = err.Error()
	s.stats.LastErrorAt = time.Now()
	changed := err.Error() != s.linkErr
	s.linkErr = err.Error()
	s.mu.Unlock()
	if changed {
		s.log.Warn("opcua source down; its points are bad until it reconnects", "endpoint", s.cfg.Endpoint, "err", err)
	}
}

// linkUp counts a session just opened.
func (s *Source) linkUp(mode string) {
	s.mu.Lock()
	s.stats.Connected = true
	s.stats.Sessions++
	s.stats.Mode = mode
	s.mu.Unlock()
}

// flowing logs a session that has read its points: the first one, or the
// first after a failure.
func (s *Source) flowing(mode string) {
	s.mu.Lock()
	was := s.linkErr
	first := s.stats.Sessions == 1
	s.linkErr = ""
	s.mu.Unlock()
	switch {
	case was != "":
		s.log.Info("opcua source connected again", "endpoint", s.cfg.Endpoint, "mode", mode)
	case first:
		s.log.Info("opcua source connected", "endpoint", s.cfg.Endpoint, "policy", s.cfg.SecurityPolicy, "security_mode", s.cfg.SecurityMode, "mode", mode, "points", len(s.items))
	}
}

// markAll writes every point bad.
func (s *Source) markAll(why point.Reason) {
	now := time.Now().UnixNano()
	batch := make([]point.Update, len(s.items))
	for i, it := range s.items {
		batch[i] = point.Update{ID: it.id, Point: point.Point{Quality: point.Bad, Reason: why, Source: now, Recv: now}}
	}
	s.mu.Lock()
	for _, it := range s.items {
		it.has = false
	}
	s.mu.Unlock()
	s.store.Write(batch)
}

// problem logs a point's problem once, until it changes or clears
// (msg == ""). The caller holds s.mu.
func (s *Source) problem(it *item, msg string) {
	if msg == it.problem {
		return
	}
	if msg == "" {
		s.log.Info("opcua point good again", "point", it.name, "at", it.where)
	} else {
		s.log.Warn("opcua point unusable: "+msg, "point", it.name, "at", it.where)
	}
	it.problem = msg
}

// clockAhead logs, at most once a minute, a server stamping values in the
// future.
func (s *Source) clockAhead(by time.Duration) {
	if by < time.Second {
		return // ordinary jitter between two clocks
	}
	// The caller may hold s.mu: this takes no lock.
	now := time.Now().UnixNano()
	last := s.skewAt.Load()
	if now-last > int64(time.Minute) && s.skewAt.CompareAndSwap(last, now) {
		s.log.Warn("opcua server stamps values in the future; its clock runs ahead, values are aged from their receipt instead", "by", by.Round(time.Millisecond))
	}
}

func (s *Source) count(f func(st *Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}
