package modbus

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/simonvetter/modbus"

	"github.com/siteagent/siteagent/agent/point"
)

func newEndpoint(t *testing.T, cfg EndpointConfig, log *slog.Logger) (*Endpoint, *point.Store) {
	t.Helper()
	if log == nil {
		log = discardLog()
	}
	store := point.NewStore()
	e, err := NewEndpoint(cfg, store, log)
	if err != nil {
		t.Fatal(err)
	}
	return e, store
}

// run starts e.Run; the test's end stops it and waits for it.
func run(t *testing.T, e *Endpoint) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
	})
}

func get(t *testing.T, s *point.Store, name string) point.Point {
	t.Helper()
	id, ok := s.Lookup(name)
	if !ok {
		t.Fatalf("point %s not registered", name)
	}
	return s.Get(id)
}

func isBad(s *point.Store, name string, why point.Reason) func() bool {
	return func() bool {
		id, _ := s.Lookup(name)
		p := s.Get(id)
		return p.Quality == point.Bad && p.Reason == why
	}
}

func isGood(s *point.Store, name string) func() bool {
	return func() bool {
		id, _ := s.Lookup(name)
		return s.Get(id).Good()
	}
}

func TestEveryTypeAndOrderOverTCP(t *testing.T) {
	dev := &device{}
	_, url := startServer(t, dev)
	unit := uint8(7)
	cfg := EndpointConfig{Name: "meter", URL: url, UnitID: &unit}
	want := map[string]float64{}
	// Lay every type x order out back to back in holding and input
	// registers, so the points also share reads at varied offsets.
	addr := map[table]uint16{holdingTable: 100, inputTable: 7}
	i := 0
	for _, s := range samples {
		for _, o := range orders {
			tbl := []table{holdingTable, inputTable}[i%2]
			i++
			name := s.typ.String() + "_" + o.String()
			regs := registers(wireOf(s.typ, o, s.v))
			a := addr[tbl]
			dev.set(func(d *device) {
				if tbl == holdingTable {
					copy(d.holding[a:], regs)
				} else {
					copy(d.input[a:], regs)
				}
			})
			cfg.Points = append(cfg.Points, PointConfig{Name: name, Table: tbl.String(), Address: u16(a), Type: s.typ.String(), Order: o.String()})
			addr[tbl] += uint16(len(regs))
			want[name] = s.v
		}
	}
	dev.set(func(d *device) { d.coils[3], d.discrete[9] = true, true })
	cfg.Points = append(cfg.Points,
		PointConfig{Name: "coil_on", Table: "coil", Address: u16(3)},
		PointConfig{Name: "coil_off", Table: "coil", Address: u16(4)},
		PointConfig{Name: "di_on", Table: "discrete", Address: u16(9)})
	want["coil_on"], want["coil_off"], want["di_on"] = 1, 0, 1

	e, store := newEndpoint(t, cfg, nil)
	if !strings.HasPrefix(e.Plan(), "meter: 4 requests: holding 100..") {
		t.Errorf("plan: %s", e.Plan())
	}
	if err := e.PollOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	for name, v := range want {
		p := get(t, store, "meter."+name)
		if !p.Good() || p.Value != v {
			t.Errorf("%s = %v (%s, %s), want %v", name, p.Value, p.Quality, p.Reason, v)
		}
		if p.Source == 0 || p.Source != p.Recv {
			t.Errorf("%s: source %d, recv %d; want both set and equal", name, p.Source, p.Recv)
		}
	}
	dev.set(func(d *device) {
		if d.units[7] != 1 || len(d.units) != 1 {
			t.Errorf("holding reads per unit id: %v, want one for unit 7", d.units)
		}
	})
	if got := len(e.PointNames()); got != len(want) {
		t.Errorf("PointNames has %d names, want %d", got, len(want))
	}
}

func TestScaleOffsetAndMarkers(t *testing.T) {
	dev := &device{}
	_, url := startServer(t, dev)
	put := func(a uint16, typ Type, o Order, v float64) {
		dev.set(func(d *device) { copy(d.input[a:], registers(wireOf(typ, o, v))) })
	}
	put(0, Uint16, ABCD, 1234)
	put(1, Int16, ABCD, -32768)
	put(2, Uint16, ABCD, 0xFFFF)
	put(3, Float32, CDAB, math.NaN())
	put(5, Float32, CDAB, -9999)
	put(7, Int32, BADC, -20)
	put(9, Float64, DCBA, math.Inf(-1))
	e, store := newEndpoint(t, EndpointConfig{Name: "m", URL: url, Points: []PointConfig{
		{Name: "scaled", Table: "input", Address: u16(0), Scale: f64(0.1), Offset: -5},
		{Name: "int16_marker", Table: "input", Address: u16(1), Type: "int16", Invalid: f64(0x8000)},
		{Name: "minus_one_marker", Table: "input", Address: u16(2), Invalid: f64(-1), Scale: f64(2)},
		{Name: "nan", Table: "input", Address: u16(3), Type: "float32", Order: "CDAB"},
		{Name: "float_marker", Table: "input", Address: u16(5), Type: "float32", Order: "CDAB", Invalid: f64(-9999)},
		{Name: "negative", Table: "input", Address: u16(7), Type: "int32", Order: "BADC", Scale: f64(-0.5), Offset: 1},
		{Name: "inf", Table: "input", Address: u16(9), Type: "float64", Order: "DCBA"},
	}}, nil)
	if err := e.PollOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p := get(t, store, "m.scaled"); !p.Good() || math.Abs(p.Value-118.4) > 1e-9 {
		t.Errorf("scaled = %v (%s), want 1234*0.1-5 = 118.4", p.Value, p.Quality)
	}
	if p := get(t, store, "m.negative"); !p.Good() || p.Value != 11 {
		t.Errorf("negative = %v (%s), want -20*-0.5+1 = 11", p.Value, p.Quality)
	}
	for name, why := range map[string]point.Reason{
		"int16_marker": point.InvalidMarker, "minus_one_marker": point.InvalidMarker,
		"float_marker": point.InvalidMarker, "nan": point.DecodeError, "inf": point.DecodeError,
	} {
		if p := get(t, store, "m."+name); p.Quality != point.Bad || p.Reason != why {
			t.Errorf("%s: %s (%s), want bad (%s)", name, p.Quality, p.Reason, why)
		}
	}
	// The marker compares the raw value: a different raw value is good.
	put(2, Uint16, ABCD, 0xFFFE)
	put(5, Float32, CDAB, 50)
	if err := e.PollOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p := get(t, store, "m.minus_one_marker"); !p.Good() || p.Value != 2*0xFFFE {
		t.Errorf("minus_one_marker = %v (%s), want %v", p.Value, p.Quality, 2*0xFFFE)
	}
	if p := get(t, store, "m.float_marker"); !p.Good() || p.Value != 50 {
		t.Errorf("float_marker = %v (%s), want 50", p.Value, p.Quality)
	}
}

func TestExceptionMarksOnlyThatReadBad(t *testing.T) {
	dev := &device{refuse: func(t table, _ bool, _, _ uint16) error {
		if t == inputTable {
			return modbus.ErrIllegalDataAddress
		}
		return nil
	}}
	dev.holding[0] = 42
	_, url := startServer(t, dev)
	logs := &syncBuffer{}
	e, store := newEndpoint(t, EndpointConfig{Name: "m", URL: url, Points: []PointConfig{
		{Name: "refused", Table: "input", Address: u16(0)},
		{Name: "fine", Table: "holding", Address: u16(0)},
	}}, slog.New(slog.NewTextHandler(logs, nil)))
	for range 3 {
		err := e.PollOnce(context.Background())
		if err == nil || !strings.Contains(err.Error(), "illegal data address") {
			t.Fatalf("PollOnce: %v, want the exception", err)
		}
	}
	if p := get(t, store, "m.refused"); p.Quality != point.Bad || p.Reason != point.DeviceError {
		t.Errorf("refused: %s (%s), want bad (device error)", p.Quality, p.Reason)
	}
	if p := get(t, store, "m.fine"); !p.Good() || p.Value != 42 {
		t.Errorf("fine: %v (%s), want 42 good", p.Value, p.Quality)
	}
	if s := e.Stats(); s.Reconnects != 0 || !s.Connected || s.Requests != 6 || s.Errors != 3 {
		t.Errorf("stats %+v: an exception must keep the connection open", s)
	}
	if n := logs.count("refused a read"); n != 1 {
		t.Errorf("the refusal was logged %d times in 3 polls, want once:\n%s", n, logs)
	}
	dev.set(func(d *device) { d.refuse = nil })
	if err := e.PollOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !isGood(store, "m.refused")() || logs.count("answers a read again") != 1 {
		t.Errorf("after the device answers again: %+v\n%s", get(t, store, "m.refused"), logs)
	}
}

func TestReconnectsAfterServerRestart(t *testing.T) {
	dev := &device{}
	dev.input[5] = 7
	srv, url := startServer(t, dev)
	logs := &syncBuffer{}
	e, store := newEndpoint(t, EndpointConfig{Name: "m", URL: url, PollPeriod: 10 * time.Millisecond, Points: []PointConfig{
		{Name: "v", Table: "input", Address: u16(5)},
	}}, slog.New(slog.NewTextHandler(logs, nil)))
	run(t, e)
	waitFor(t, "the first good read", isGood(store, "m.v"))

	srv.Stop()
	waitFor(t, "the point to go bad", isBad(store, "m.v", point.CommError))
	waitFor(t, "several failed attempts", func() bool { return e.Stats().Errors >= 4 })
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	dev.set(func(d *device) { d.input[5] = 8 })
	waitFor(t, "the new value", func() bool { p := get(t, store, "m.v"); return p.Good() && p.Value == 8 })

	s := e.Stats()
	if s.Reconnects < 1 || !s.Connected || s.LastError == "" {
		t.Errorf("stats after the restart: %+v", s)
	}
	// One line per change of failure (closed connection, then refused
	// dials), not one per attempt.
	if n := logs.count("connection failed"); n < 1 || uint64(n) >= s.Errors {
		t.Errorf("%d failure lines for %d errors: want one per change\n%s", n, s.Errors, logs)
	}
	if logs.count("connection works again") != 1 {
		t.Errorf("recovery not logged once:\n%s", logs)
	}
}

func TestBrokenFrameReconnects(t *testing.T) {
	// Answers every request with half a frame, then hangs up.
	l, url := listenRaw(t, func(c net.Conn) {
		defer c.Close()
		req := make([]byte, 12)
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		frame := []byte{req[0], req[1], 0, 0, 0, 5, req[6], 4, 2, 0x12, 0x34}
		c.Write(frame[:len(frame)/2])
	})
	e, store := newEndpoint(t, EndpointConfig{Name: "m", URL: url, PollPeriod: 10 * time.Millisecond, Points: []PointConfig{
		{Name: "v", Table: "input", Address: u16(0)},
	}}, nil)
	run(t, e)
	waitFor(t, "three connections", func() bool { return l.accepts.Load() >= 3 })
	waitFor(t, "the point bad", isBad(store, "m.v", point.CommError))
	if s := e.Stats(); s.Reconnects < 2 || s.Errors < 3 {
		t.Errorf("stats %+v: want a reconnect after every broken frame", s)
	}
}

func TestSilentDeviceTimesOutAndReconnects(t *testing.T) {
	l, url := listenRaw(t, func(c net.Conn) {
		defer c.Close()
		io.Copy(io.Discard, c) // read requests, never answer
	})
	e, store := newEndpoint(t, EndpointConfig{Name: "m", URL: url, Timeout: 50 * time.Millisecond, PollPeriod: 10 * time.Millisecond, Points: []PointConfig{
		{Name: "v", Table: "holding", Address: u16(0)},
	}}, nil)
	run(t, e)
	waitFor(t, "a second connection after the timeout", func() bool { return l.accepts.Load() >= 2 })
	waitFor(t, "the point bad", isBad(store, "m.v", point.CommError))
	if s := e.Stats(); !strings.Contains(s.LastError, "timed out") {
		t.Errorf("last error %q, want a timeout", s.LastError)
	}
}

func TestReadyAfterFirstCycleEvenWhenDown(t *testing.T) {
	url := "tcp://" + freeAddr(t) // nothing listens there
	e, store := newEndpoint(t, EndpointConfig{Name: "m", URL: url, Points: []PointConfig{
		{Name: "v", Table: "coil", Address: u16(0)},
	}}, nil)
	if p := get(t, store, "m.v"); p.Reason != point.NeverRead {
		t.Fatalf("before any poll: %s", p.Reason)
	}
	run(t, e)
	select {
	case <-e.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("Ready not closed after the first cycle")
	}
	if p := get(t, store, "m.v"); p.Quality != point.Bad || p.Reason != point.CommError {
		t.Errorf("after a failed cycle: %s (%s), want bad (communication error)", p.Quality, p.Reason)
	}
}

func TestTriggersWakeTheStore(t *testing.T) {
	dev := &device{}
	putFreq := func(hz float64) {
		dev.set(func(d *device) { copy(d.input[0:], registers(wireOf(Float32, ABCD, hz))) })
	}
	putFreq(60)
	_, url := startServer(t, dev)
	e, store := newEndpoint(t, EndpointConfig{Name: "pcc", URL: url, Points: []PointConfig{
		{Name: "hz", Table: "input", Address: u16(0), Type: "float32", Meta: point.Meta{TriggerBelow: f64(59.5)}},
		{Name: "load", Table: "input", Address: u16(2)},
		{Name: "breaker", Table: "discrete", Address: u16(0), Meta: point.Meta{TriggerOnChange: true}},
	}}, nil)
	woke := func() bool {
		select {
		case <-store.Wake():
			return true
		default:
			return false
		}
	}
	poll := func() {
		t.Helper()
		if err := e.PollOnce(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	poll()
	woke() // the first read turns the triggered points good: drain that
	dev.set(func(d *device) { d.input[2] = 500 })
	poll()
	if woke() {
		t.Error("an untriggered point woke the cycle")
	}
	putFreq(59.2)
	poll()
	if !woke() {
		t.Error("frequency below the threshold did not wake the cycle")
	}
	dev.set(func(d *device) { d.discrete[0] = true })
	poll()
	if !woke() {
		t.Error("breaker change did not wake the cycle")
	}
}

func TestPollOnceReturnsWhenCancelled(t *testing.T) {
	dev := &device{}
	_, url := startServer(t, dev)
	e, store := newEndpoint(t, EndpointConfig{Name: "m", URL: url, Points: []PointConfig{
		{Name: "v", Table: "holding", Address: u16(0)},
	}}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.PollOnce(ctx); err != context.Canceled {
		t.Fatalf("PollOnce on a cancelled ctx: %v", err)
	}
	if p := get(t, store, "m.v"); p.Reason != point.NeverRead {
		t.Errorf("a cancelled poll wrote the point: %+v", p)
	}
	select {
	case <-e.Ready():
		t.Error("a cancelled cycle counted as complete")
	default:
	}
}

func TestLaneLetsWritesGoFirst(t *testing.T) {
	var l lane
	ctx := context.Background()
	if err := l.acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 2)
	queued := func(q *[]chan struct{}) func() bool {
		return func() bool { l.mu.Lock(); defer l.mu.Unlock(); return len(*q) == 1 }
	}
	go func() { l.acquire(ctx, false); order <- "poll"; l.release() }()
	waitFor(t, "the poll to queue", queued(&l.polls))
	go func() { l.acquire(ctx, true); order <- "write"; l.release() }()
	waitFor(t, "the write to queue", queued(&l.writes))
	l.release()
	if first, second := <-order, <-order; first != "write" || second != "poll" {
		t.Fatalf("order %s, %s; want write, poll", first, second)
	}

	// A waiter whose ctx ends leaves the queue and the lane stays usable.
	if err := l.acquire(ctx, false); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error)
	go func() { errc <- l.acquire(cctx, true) }()
	waitFor(t, "the write to queue", queued(&l.writes))
	cancel()
	if err := <-errc; err != context.Canceled {
		t.Fatalf("cancelled acquire: %v", err)
	}
	l.release()
	if err := l.acquire(ctx, true); err != nil || len(l.writes) != 0 || !l.held {
		t.Fatalf("lane after a cancelled waiter: %v, %d queued", err, len(l.writes))
	}
}

func TestShortAnswerNeverPanics(t *testing.T) {
	// A device that answers a read of 3 registers with 1: the library
	// rejects the frame; the point goes bad and the connection is renewed.
	l, url := listenRaw(t, func(c net.Conn) {
		defer c.Close()
		for {
			req := make([]byte, 12)
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			res := []byte{req[0], req[1], 0, 0, 0, 5, req[6], req[7], 2, 0x12, 0x34}
			binary.BigEndian.PutUint16(res[4:], uint16(len(res)-6))
			c.Write(res)
		}
	})
	e, store := newEndpoint(t, EndpointConfig{Name: "m", URL: url, Points: []PointConfig{
		{Name: "v", Table: "input", Address: u16(0), Type: "float64"},
	}}, nil)
	if err := e.PollOnce(context.Background()); err == nil {
		t.Fatal("a short answer was accepted")
	}
	if !isBad(store, "m.v", point.CommError)() || l.accepts.Load() != 1 || e.Stats().Connected {
		t.Errorf("after a short answer: %+v, stats %+v", get(t, store, "m.v"), e.Stats())
	}
}

func TestPausesAreKept(t *testing.T) {
	// Lower bounds only: a slow machine can only make the poll longer.
	dev := &device{}
	_, url := startServer(t, dev)
	e, store := newEndpoint(t, EndpointConfig{Name: "m", URL: url,
		ConnectPause: 60 * time.Millisecond, RequestPause: 30 * time.Millisecond, Points: []PointConfig{
			{Name: "a", Table: "holding", Address: u16(0)},
			{Name: "b", Table: "holding", Address: u16(5)},
			{Name: "c", Table: "holding", Address: u16(10)},
		}}, nil)
	start := time.Now()
	if err := e.PollOnce(context.Background()); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 60*time.Millisecond+2*30*time.Millisecond {
		t.Errorf("first poll took %v; the connect pause and two request pauses need 120ms", took)
	}
	if !isGood(store, "m.c")() {
		t.Error("point c not read")
	}
}

func TestBackoffDoublesAndWritesSkipIt(t *testing.T) {
	l, url := listenRaw(t, func(c net.Conn) { io.Copy(io.Discard, c); c.Close() })
	e, store := newEndpoint(t, EndpointConfig{Name: "m", URL: url, Points: []PointConfig{
		{Name: "v", Table: "holding", Address: u16(0)},
	}}, nil)
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i, w := range want {
		e.linkDown(io.ErrUnexpectedEOF)
		if e.backoff != w*time.Millisecond || !e.retryAt.After(time.Now()) {
			t.Fatalf("after %d failures: backoff %v, want %v", i+1, e.backoff, w*time.Millisecond)
		}
	}
	// A poll inside the backoff does not dial; its points go bad.
	if err := e.PollOnce(context.Background()); !errors.Is(err, errDown) || l.accepts.Load() != 0 {
		t.Fatalf("poll during backoff: %v, %d dials", err, l.accepts.Load())
	}
	if !isBad(store, "m.v", point.CommError)() {
		t.Error("point not bad during backoff")
	}
	// A write dials at once, and a good answer resets the backoff.
	if err := e.begin(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	e.end(nil)
	waitFor(t, "the write's dial", func() bool { return l.accepts.Load() == 1 })
	if e.backoff != 0 {
		t.Errorf("backoff after success: %v", e.backoff)
	}
}
