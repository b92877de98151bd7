// Package modbus polls Modbus TCP devices into the point store and drives
// load groups through Modbus writes.
//
// An Endpoint owns one connection to one device (or gateway unit): it plans
// the reads, serialises every request on the connection (writes first),
// paces them as the device needs, and closes and reopens the connection
// after a timeout or a broken frame, which the client library does not do
// by itself.
package modbus

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/simonvetter/modbus"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/agent/point"
)

// Reconnect backoff: doubled after every failure, reset by a good answer.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// errDown is returned while the connection is down and its next attempt is
// not due yet.
var errDown = errors.New("connection down; waiting to reconnect")

// Stats counts an endpoint's traffic since it was made.
type Stats struct {
	Requests    uint64 // requests sent: reads and writes
	Errors      uint64 // failed requests and failed connection attempts
	Reconnects  uint64 // connections opened after the first
	Connected   bool
	LastError   string // "" until something fails
	LastErrorAt time.Time
}

// Endpoint polls one device into the store; see the package comment.
type Endpoint struct {
	cfg    EndpointConfig // defaults filled in
	store  *point.Store
	log    *slog.Logger
	client *modbus.ModbusClient
	libLog *log.Logger // the library's logger
	reqs   []request
	names  []string
	plan   string

	lane lane
	// The connection's state, guarded by lane.
	connected bool
	opened    bool // a connection was opened before: the next is a reconnect
	backoff   time.Duration
	retryAt   time.Time
	lastEnd   time.Time // when the last request finished, for request_pause
	linkErr   string    // the connection failure last logged
	pause     *time.Timer

	pollMu sync.Mutex // one poll cycle at a time: cycles reuse the request buffers

	statsMu sync.Mutex
	stats   Stats
	lastErr error

	ready     chan struct{}
	readyOnce sync.Once
}

// NewEndpoint checks cfg, registers every point in store as
// "<endpoint>.<point>" with its trigger, and plans the reads. It does not
// connect: Run and PollOnce do, and keep reconnecting.
func NewEndpoint(cfg EndpointConfig, store *point.Store, log *slog.Logger) (*Endpoint, error) {
	if store == nil {
		return nil, errors.New("modbus: NewEndpoint needs a point store")
	}
	if log == nil {
		log = slog.Default()
	}
	p := config.NewProblems("modbus endpoint "+strconv.Quote(cfg.Name), nil)
	cfg.Validate(p, "")
	if err := p.Err(); err != nil {
		return nil, err
	}
	d := cfg.WithDefaults()
	log = log.With("endpoint", d.Name)
	e := &Endpoint{cfg: d, store: store, log: log, ready: make(chan struct{})}
	e.libLog = slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	if !d.usesTLS() {
		// A plain TCP client is made once; a TLS one at every
		// connection (see connect), so no file is read here.
		client, err := e.newClient()
		if err != nil {
			return nil, fmt.Errorf("modbus endpoint %q: %w", d.Name, err)
		}
		e.client = client
	}
	pts := make([]plannedPoint, len(d.Points))
	for i, pc := range d.Points {
		full := d.Name + "." + pc.Name
		id := store.Register(full)
		store.SetTrigger(id, pc.Meta.Trigger())
		e.names = append(e.names, full)
		tbl, _ := parseTable(pc.Table)
		typ, _ := ParseType(pc.Type)
		ord, _ := ParseOrder(pc.Order)
		f := field{id: id, addr: *pc.Address, typ: typ, order: ord, scale: *pc.Scale, shift: pc.Offset}
		if pc.Invalid != nil {
			f.hasInvalid, f.invalidVal = true, *pc.Invalid
			f.invalidBits, _ = markerBits(*pc.Invalid, typ)
		}
		pts[i] = plannedPoint{table: tbl, field: f}
	}
	e.reqs = plan(pts, d.MaxRegisters, d.MaxBits)
	e.plan = describePlan(d.Name, e.reqs)
	e.pause = time.NewTimer(time.Hour)
	e.pause.Stop()
	return e, nil
}

// Name is the endpoint's name, the prefix of its points.
func (e *Endpoint) Name() string { return e.cfg.Name }

// PollPeriod is the time between the starts of two polls (the default for
// its points' stale_after is three of these).
func (e *Endpoint) PollPeriod() time.Duration { return e.cfg.PollPeriod }

// Plan describes the planned reads, for the start-up log.
func (e *Endpoint) Plan() string { return e.plan }

// PointNames lists the full names of the endpoint's points, in file order.
func (e *Endpoint) PointNames() []string { return append([]string(nil), e.names...) }

// Ready is closed once the first poll cycle has completed, good or not.
func (e *Endpoint) Ready() <-chan struct{} { return e.ready }

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() Stats {
	e.statsMu.Lock()
	defer e.statsMu.Unlock()
	s := e.stats
	if e.lastErr != nil {
		s.LastError = e.lastErr.Error()
	}
	return s
}

// Run polls every poll_period until ctx ends, then closes the connection
// and returns nil. Failures are logged once per change and show in the
// points' quality; Run keeps going.
func (e *Endpoint) Run(ctx context.Context) error {
	e.log.Info("modbus polling", "plan", e.plan, "period", e.cfg.PollPeriod)
	tick := time.NewTimer(time.Hour)
	defer tick.Stop()
	next := time.Now()
	for ctx.Err() == nil {
		_ = e.PollOnce(ctx)
		now := time.Now()
		// A cycle that overran skips the missed starts rather than bursting.
		if next = next.Add(e.cfg.PollPeriod); next.Before(now) {
			next = now
		}
		tick.Reset(next.Sub(now))
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	_ = e.lane.acquire(context.Background(), true)
	if e.connected {
		e.client.Close()
		e.connected = false
	}
	e.lane.release()
	return nil
}

// PollOnce reads every planned request once, now, and writes their points
// to the store. Points of a failed request are written bad. It returns the
// first failure, or ctx's error if ctx ended (then the points of the
// requests not yet read are left as they were).
func (e *Endpoint) PollOnce(ctx context.Context) error {
	e.pollMu.Lock()
	defer e.pollMu.Unlock()
	var first error
	for i := range e.reqs {
		r := &e.reqs[i]
		if err := e.poll(ctx, r); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if first == nil {
				first = fmt.Errorf("modbus %s: read %s: %w", e.cfg.Name, r, err)
			}
		}
	}
	e.readyOnce.Do(func() { close(e.ready) })
	return first
}

// poll runs one read and writes its points in one batch.
func (e *Endpoint) poll(ctx context.Context, r *request) error {
	var wire []byte
	var bits []bool
	err := e.begin(ctx, false)
	if err == nil {
		n := uint16(r.count)
		switch r.table {
		case coilTable:
			bits, err = e.client.ReadCoils(r.start, n)
		case discreteTable:
			bits, err = e.client.ReadDiscreteInputs(r.start, n)
		case holdingTable:
			wire, err = e.client.ReadRawBytes(r.start, 2*n, modbus.HOLDING_REGISTER)
		case inputTable:
			wire, err = e.client.ReadRawBytes(r.start, 2*n, modbus.INPUT_REGISTER)
		}
		if err == nil && (r.table.bits() && len(bits) < r.count || !r.table.bits() && len(wire) < 2*r.count) {
			err = modbus.ErrProtocolError // the library checks this; never index past a short answer
		}
		e.end(err)
	}
	now := time.Now().UnixNano()
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		reason := point.CommError
		if isException(err) {
			reason = point.DeviceError
			if msg := err.Error(); msg != r.refused {
				e.log.Warn("modbus device refused a read; its points are bad", "read", r.String(), "err", err)
				r.refused = msg
			}
		}
		for j := range r.batch {
			r.batch[j].Point = point.Point{Quality: point.Bad, Reason: reason, Source: now, Recv: now}
		}
		e.store.Write(r.batch)
		return err
	}
	if r.refused != "" {
		e.log.Info("modbus device answers a read again", "read", r.String())
		r.refused = ""
	}
	for j := range r.fields {
		f := &r.fields[j]
		var v float64
		var why point.Reason
		if r.table.bits() {
			v, why = f.fromBit(bits[f.off])
		} else {
			v, why = f.fromRegisters(wire)
		}
		if why == point.OK {
			r.batch[j].Point = point.Point{Value: v, Quality: point.Good, Source: now, Recv: now}
		} else {
			r.batch[j].Point = point.Point{Quality: point.Bad, Reason: why, Source: now, Recv: now}
		}
	}
	e.store.Write(r.batch)
	return nil
}

// begin takes the lane (writes ahead of polls), opens the connection if
// needed and waits out the pauses. On success the caller may use e.client
// until it calls end.
func (e *Endpoint) begin(ctx context.Context, write bool) error {
	if err := e.lane.acquire(ctx, write); err != nil {
		return err
	}
	err := e.connect(ctx, write)
	if err == nil && e.cfg.RequestPause > 0 && !e.lastEnd.IsZero() {
		err = e.sleep(ctx, time.Until(e.lastEnd.Add(e.cfg.RequestPause)))
	}
	if err != nil {
		e.lane.release()
	}
	return err
}

// end records the outcome of the request started by begin and releases
// the lane. Anything but a Modbus exception leaves the connection in an
// unknown state (a late answer, half a frame), so it is closed.
func (e *Endpoint) end(err error) {
	e.lastEnd = time.Now()
	e.count(err, true)
	if err != nil && !isException(err) {
		e.linkDown(err)
	} else {
		e.backoff = 0
		if e.linkErr != "" {
			e.log.Info("modbus connection works again")
			e.linkErr = ""
		}
	}
	e.lane.release()
}

// connect opens the connection unless it is open or (for polls) its next
// attempt is not due yet. Writes always try at once: a shed command must
// not wait out a backoff.
func (e *Endpoint) connect(ctx context.Context, now bool) error {
	if e.connected {
		return nil
	}
	if !now && time.Now().Before(e.retryAt) {
		return errDown
	}
	if e.cfg.usesTLS() {
		client, err := e.newClient()
		if err != nil {
			err = fmt.Errorf("modbus over TLS: %w", err)
			e.count(err, false)
			e.linkDown(err)
			return err
		}
		e.client = client
	}
	if err := e.client.Open(); err != nil {
		e.count(err, false)
		e.linkDown(err)
		return err
	}
	e.connected = true
	e.statsMu.Lock()
	if e.opened {
		e.stats.Reconnects++
	}
	e.stats.Connected = true
	e.statsMu.Unlock()
	e.opened = true
	return e.sleep(ctx, e.cfg.ConnectPause)
}

// linkDown closes the connection and schedules the next attempt, logging
// the failure only when it differs from the last one logged.
func (e *Endpoint) linkDown(err error) {
	if e.connected {
		e.client.Close()
		e.connected = false
		e.statsMu.Lock()
		e.stats.Connected = false
		e.statsMu.Unlock()
	}
	e.backoff = min(max(2*e.backoff, minBackoff), maxBackoff)
	e.retryAt = time.Now().Add(e.backoff)
	if msg := err.Error(); msg != e.linkErr {
		e.log.Warn("modbus connection failed; its points are bad until it reconnects", "url", e.cfg.URL, "err", err, "retry_in", e.backoff)
		e.linkErr = msg
	}
}

func (e *Endpoint) count(err error, request bool) {
	e.statsMu.Lock()
	if request {
		e.stats.Requests++
	}
	if err != nil {
		e.stats.Errors++
		e.lastErr = err
		e.stats.LastErrorAt = time.Now()
	}
	e.statsMu.Unlock()
}

// sleep waits d or until ctx ends; only the lane holder calls it.
func (e *Endpoint) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	e.pause.Reset(d)
	select {
	case <-e.pause.C:
		return nil
	case <-ctx.Done():
		e.pause.Stop()
		return ctx.Err()
	}
}

// exceptions are the answers of a device that works but refuses a request.
var exceptions = [...]error{
	modbus.ErrIllegalFunction, modbus.ErrIllegalDataAddress, modbus.ErrIllegalDataValue,
	modbus.ErrServerDeviceFailure, modbus.ErrAcknowledge, modbus.ErrServerDeviceBusy,
	modbus.ErrMemoryParityError, modbus.ErrGWPathUnavailable, modbus.ErrGWTargetFailedToRespond,
}

// isException reports whether err is a Modbus exception answer.
func isException(err error) bool {
	if err == nil {
		return false
	}
	for _, x := range exceptions {
		if errors.Is(err, x) {
			return true
		}
	}
	// The library reports codes it does not know with fmt.Errorf.
	return strings.HasPrefix(err.Error(), "unknown exception code")
}
