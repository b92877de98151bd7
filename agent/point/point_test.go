package point

import (
	"testing"
	"time"
)

func good(v float64) Point { return Point{Value: v, Quality: Good, Source: 1, Recv: 1} }

func woke(s *Store) bool {
	select {
	case <-s.Wake():
		return true
	default:
		return false
	}
}

func TestRegisterIsIdempotentAndSnapshotCopies(t *testing.T) {
	s := NewStore()
	a, b := s.Register("pcc.a"), s.Register("pcc.b")
	if s.Register("pcc.a") != a || a == b {
		t.Fatal("register must give one ID per name")
	}
	if p := s.Get(a); p.Quality != Bad || p.Reason != NeverRead {
		t.Fatalf("a point never read must be bad/never read, got %+v", p)
	}
	s.Write([]Update{{a, good(1)}, {b, good(2)}})
	snap := s.Snapshot(nil)
	s.Write([]Update{{a, good(9)}})
	if snap[a].Value != 1 || s.Get(a).Value != 9 {
		t.Fatal("a snapshot must be a frozen copy")
	}
	buf := make([]Point, 0, 8)
	if got := s.Snapshot(buf); &got[0] != &buf[:1][0] {
		t.Fatal("a snapshot must reuse a large enough buffer")
	}
}

func TestTriggers(t *testing.T) {
	s := NewStore()
	f, br, other := s.Register("f"), s.Register("br"), s.Register("x")
	s.SetTrigger(f, Trigger{Kind: Below, Threshold: 59.9})
	s.SetTrigger(br, Trigger{Kind: OnChange})
	s.Write([]Update{{f, good(60)}, {br, good(1)}})
	woke(s) // first good values are a quality change

	steps := []struct {
		id   ID
		v    float64
		want bool
	}{
		{f, 60.01, false}, // above the threshold
		{f, 59.85, true},  // crossed below
		{f, 59.80, true},  // still falling below it
		{f, 59.80, false}, // unchanged
		{f, 60.0, true},   // crossed back up: the controller must see recoveries too
		{br, 1, false},
		{br, 0, true}, // breaker opened
		{other, 5, false},
	}
	for i, st := range steps {
		s.Write([]Update{{st.id, good(st.v)}})
		if got := woke(s); got != st.want {
			t.Fatalf("step %d (%v): woke=%v, want %v", i, st.v, got, st.want)
		}
	}
	s.Write([]Update{{f, Point{Quality: Bad, Reason: CommError}}})
	if !woke(s) {
		t.Fatal("a triggered point going bad must wake the cycle")
	}
}

func TestAge(t *testing.T) {
	now := time.Unix(100, 0)
	p := Point{Source: now.Add(-250 * time.Millisecond).UnixNano()}
	if p.Age(now) != 250*time.Millisecond {
		t.Fatalf("age %v", p.Age(now))
	}
	if (Point{}).Age(now) < time.Hour {
		t.Fatal("a point never read is infinitely old")
	}
}

func TestMeta(t *testing.T) {
	lo, hi := 45.0, 65.0
	m := Meta{Min: &lo, Max: &hi, TriggerBelow: &lo}
	if !m.Plausible(60) || m.Plausible(0) || m.Plausible(70) {
		t.Fatal("plausible range")
	}
	if tr := m.Trigger(); tr.Kind != Below || tr.Threshold != 45 {
		t.Fatalf("trigger %+v", tr)
	}
}
