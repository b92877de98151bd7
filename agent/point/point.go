// Package point is the agent's process image: every value a source reads
// becomes a Point with a quality and its timestamps, kept in a Store that the
// control cycle snapshots once per cycle.
//
// Sources (Modbus, OPC UA, actuator read-backs) write; the cycle reads a
// frozen copy. Points are addressed by a small integer ID handed out when the
// agent is wired, so the hot path never hashes a name.
package point

import (
	"fmt"
	"math"
	"sync"
	"time"
)

// Quality says how far a value can be trusted.
type Quality uint8

const (
	// Bad: no usable value (read failed, device exception, invalid marker,
	// never read). The Value field must be ignored.
	Bad Quality = iota
	// Uncertain: a value exists but its source flagged it (e.g. an OPC UA
	// Uncertain status code).
	Uncertain
	// Good: read successfully and decoded.
	Good
)

func (q Quality) String() string {
	switch q {
	case Good:
		return "good"
	case Uncertain:
		return "uncertain"
	default:
		return "bad"
	}
}

// Reason says why a point is not Good. It is a code, not a string, so that
// writing a bad point allocates nothing; drivers log the details.
type Reason uint8

const (
	OK            Reason = iota
	NeverRead            // no read has completed yet
	CommError            // connection refused, timeout, broken frame
	DeviceError          // the device answered with an exception or Bad status
	InvalidMarker        // the raw value equals the configured "invalid" marker
	DecodeError          // the raw value could not be decoded (NaN, wrong type)
	SourceFlagged        // the source marked the value Uncertain
)

var reasonNames = [...]string{"ok", "never read", "communication error", "device error", "invalid marker", "decode error", "flagged by source"}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Point is one value with its quality and times. Booleans are stored as 0
// and 1. Times are Unix nanoseconds so that a Point is small and copying a
// snapshot never touches the heap.
type Point struct {
	Value   float64
	Quality Quality
	Reason  Reason
	// Source is when the value was valid at the device (a device timestamp
	// where the protocol has one, else the receive time).
	Source int64
	// Recv is when the agent received it.
	Recv int64
}

// Good reports whether the point holds a trustworthy value.
func (p Point) Good() bool { return p.Quality == Good }

// Age is how old the value is at now, measured from its source time. A point
// never read is infinitely old.
func (p Point) Age(now time.Time) time.Duration {
	if p.Source == 0 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(now.UnixNano() - p.Source)
}

// Bool reads the value as a boolean (non-zero is true).
func (p Point) Bool() bool { return p.Value != 0 }

// ID addresses a point in a Store.
type ID int32

// None is the ID of a point that is not configured.
const None ID = -1

// Update is one write to the store.
type Update struct {
	ID    ID
	Point Point
}

// TriggerKind selects when an update wakes the control cycle at once.
type TriggerKind uint8

const (
	NoTrigger TriggerKind = iota
	// OnChange fires whenever the value or the quality changes (breaker
	// state, a curtailment flag).
	OnChange
	// Below fires while the value is below the threshold and changing, and
	// when it first crosses below it (frequency dips).
	Below
	// Above is the mirror of Below (import power rising past a limit).
	Above
)

// Trigger is a fast-path condition on one point.
type Trigger struct {
	Kind      TriggerKind
	Threshold float64
}

// fires is evaluated on every write of a triggered point, under the store
// lock; it must stay tiny.
func (t Trigger) fires(prev, cur Point) bool {
	if t.Kind == NoTrigger {
		return false
	}
	if prev.Quality != cur.Quality {
		return true
	}
	if cur.Quality == Bad || prev.Value == cur.Value {
		return false
	}
	switch t.Kind {
	case OnChange:
		return true
	case Below:
		return cur.Value < t.Threshold || prev.Value < t.Threshold
	case Above:
		return cur.Value > t.Threshold || prev.Value > t.Threshold
	}
	return false
}

// Store keeps the latest Point per ID. Writers take one lock per batch; the
// cycle copies everything out with Snapshot.
type Store struct {
	mu       sync.Mutex
	names    []string
	index    map[string]ID
	points   []Point
	triggers []Trigger
	writes   uint64
	wake     chan struct{}
}

// NewStore makes an empty store. Its Wake channel receives (without
// blocking the writer) whenever a triggered point fires.
func NewStore() *Store {
	return &Store{index: map[string]ID{}, wake: make(chan struct{}, 1)}
}

// Register adds a point by its full name ("source.point") and returns its
// ID; registering the same name twice returns the same ID. Register all
// points before sources start writing.
func (s *Store) Register(name string) ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := s.index[name]; ok {
		return id
	}
	id := ID(len(s.names))
	s.names = append(s.names, name)
	s.index[name] = id
	s.points = append(s.points, Point{Reason: NeverRead})
	s.triggers = append(s.triggers, Trigger{})
	return id
}

// SetTrigger arms the fast path for one point.
func (s *Store) SetTrigger(id ID, t Trigger) {
	s.mu.Lock()
	s.triggers[id] = t
	s.mu.Unlock()
}

// Lookup finds a point's ID by name.
func (s *Store) Lookup(name string) (ID, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.index[name]
	return id, ok
}

// Name returns the full name of a point.
func (s *Store) Name(id ID) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.names[id]
}

// Names returns every registered name, indexed by ID.
func (s *Store) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.names...)
}

// Len is the number of registered points.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.points)
}

// Wake receives a value when a triggered point fires. The channel holds at
// most one pending wake, so a burst of triggers costs one extra cycle.
func (s *Store) Wake() <-chan struct{} { return s.wake }

// Write applies a batch of updates under one lock and signals Wake if any
// triggered point fired.
func (s *Store) Write(batch []Update) {
	fired := false
	s.mu.Lock()
	for i := range batch {
		u := &batch[i]
		if t := s.triggers[u.ID]; t.Kind != NoTrigger && !fired {
			fired = t.fires(s.points[u.ID], u.Point)
		}
		s.points[u.ID] = u.Point
	}
	s.writes += uint64(len(batch))
	s.mu.Unlock()
	if fired {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Get returns the latest value of one point.
func (s *Store) Get(id ID) Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.points[id]
}

// Snapshot copies every point into dst (grown only if too small) and
// returns it: the cycle's frozen process image.
func (s *Store) Snapshot(dst []Point) []Point {
	s.mu.Lock()
	if cap(dst) < len(s.points) {
		dst = make([]Point, len(s.points))
	}
	dst = dst[:len(s.points)]
	copy(dst, s.points)
	s.mu.Unlock()
	return dst
}

// Writes counts point updates since start (for metrics).
func (s *Store) Writes() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes
}
