package mqtt

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)

func msgN(i int) Message {
	return Message{Topic: "s/points", Payload: []byte(fmt.Sprintf("m%06d", i)), QoS: byte(i % 2)}
}

func openQ(t *testing.T, dir string, count int, bytes int64) *Queue {
	t.Helper()
	q, err := OpenQueue(dir, count, bytes, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func push(t *testing.T, q *Queue, from, to int) (dropped int) {
	t.Helper()
	for i := from; i < to; i++ {
		d, err := q.Push(msgN(i), t0)
		if err != nil {
			t.Fatalf("push %d: %v", i, err)
		}
		dropped += d
	}
	return dropped
}

// drain takes and confirms everything (history allowed) and returns the
// payloads in the order the sender would see them, with their lane.
func drain(t *testing.T, q *Queue) (payloads []string, hist []bool) {
	t.Helper()
	var b batch
	for {
		l, h := q.Take(&b, 7, 5, 1<<20)
		if l+h == 0 {
			return
		}
		for i, r := range b.recs {
			payloads = append(payloads, string(r.msg.Payload))
			hist = append(hist, b.hist[i])
		}
		q.Confirm(&b)
	}
}

func wantRange(t *testing.T, got []string, from, to int) {
	t.Helper()
	if len(got) != to-from {
		t.Fatalf("got %d messages, want %d (%d..%d)", len(got), to-from, from, to-1)
	}
	for i, p := range got {
		if want := string(msgN(from + i).Payload); p != want {
			t.Fatalf("message %d is %s, want %s", i, p, want)
		}
	}
}

func forEachStore(t *testing.T, f func(t *testing.T, dir string)) {
	t.Run("memory", func(t *testing.T) { f(t, "") })
	t.Run("disk", func(t *testing.T) { f(t, t.TempDir()) })
}

func TestQueueKeepsOrderAndFields(t *testing.T) {
	forEachStore(t, func(t *testing.T, dir string) {
		q := openQ(t, dir, 1000, 1<<20)
		defer q.Close()
		m := Message{Topic: "a/b/c", Payload: []byte(`{"x":1}`), QoS: 1, Retain: true}
		if _, err := q.Push(m, t0); err != nil {
			t.Fatal(err)
		}
		push(t, q, 1, 300)
		var b batch
		q.Take(&b, 1, 0, 1<<20)
		if got := b.recs[0]; got.msg.Topic != m.Topic || string(got.msg.Payload) != string(m.Payload) || got.msg.QoS != 1 || !got.msg.Retain || got.queued != t0.UnixNano() {
			t.Fatalf("record %+v, want %+v queued at %v", got, m, t0)
		}
		q.Confirm(&b)
		got, hist := drain(t, q)
		wantRange(t, got, 1, 300)
		for _, h := range hist {
			if h {
				t.Fatal("live messages reported as history")
			}
		}
		if s := q.Stats(); s.Waiting != 0 || s.Confirmed != 300 || s.Enqueued != 300 || s.Dropped != 0 || s.Bytes != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
}

// Above the count or byte bound the oldest records go first, each counted.
func TestQueueDropsOldestExactly(t *testing.T) {
	forEachStore(t, func(t *testing.T, dir string) {
		q := openQ(t, dir, 100, 1<<20)
		defer q.Close()
		if d := push(t, q, 0, 130); d != 30 {
			t.Fatalf("dropped %d, want 30", d)
		}
		if s := q.Stats(); s.Waiting != 100 || s.Dropped != 30 || s.Enqueued != 130 {
			t.Fatalf("stats %+v", s)
		}
		got, _ := drain(t, q)
		wantRange(t, got, 30, 130)
	})
	forEachStore(t, func(t *testing.T, dir string) {
		size := int64(len(encodeRecord(nil, entry{msg: msgN(0)})))
		q := openQ(t, dir, 1_000_000, 50*size)
		defer q.Close()
		if d := push(t, q, 0, 80); d != 30 {
			t.Fatalf("dropped %d, want 30 (byte bound of 50 records)", d)
		}
		if s := q.Stats(); s.Bytes != 50*size {
			t.Fatalf("bytes %d, want %d", s.Bytes, 50*size)
		}
		got, _ := drain(t, q)
		wantRange(t, got, 30, 80)
	})
}

// After Rotate what was waiting is history: live records come first, and
// history only as far as the quota allows.
func TestQueueLanes(t *testing.T) {
	forEachStore(t, func(t *testing.T, dir string) {
		q := openQ(t, dir, 1000, 1<<20)
		defer q.Close()
		push(t, q, 0, 20)
		if err := q.Rotate(); err != nil {
			t.Fatal(err)
		}
		push(t, q, 20, 25)
		var b batch
		live, hist := q.Take(&b, 100, 3, 1<<20)
		if live != 5 || hist != 3 {
			t.Fatalf("took %d live, %d history; want 5, 3", live, hist)
		}
		for i, r := range b.recs {
			want := 20 + i
			if i >= 5 {
				want = i - 5
			}
			if p := string(r.msg.Payload); p != string(msgN(want).Payload) || b.hist[i] != (i >= 5) {
				t.Fatalf("record %d: %s hist=%v", i, p, b.hist[i])
			}
		}
		q.Confirm(&b)
		if s := q.Stats(); s.Waiting != 17 || s.History != 17 || s.Replayed != 3 {
			t.Fatalf("stats %+v", s)
		}
		// A failed batch is handed out again.
		q.Take(&b, 100, 2, 1<<20)
		q.Rewind()
		got, lanes := drain(t, q)
		wantRange(t, got, 3, 20)
		for _, h := range lanes {
			if !h {
				t.Fatal("history reported as live")
			}
		}
	})
}

func TestQueueSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, 1000, 1<<20)
	push(t, q, 0, 50)
	var b batch
	q.Take(&b, 10, 0, 1<<20)
	q.Confirm(&b)           // 0..9 delivered
	q.Take(&b, 5, 0, 1<<20) // 10..14 in flight when the agent stops
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = openQ(t, dir, 1000, 1<<20)
	defer q.Close()
	if s := q.Stats(); s.Waiting != 40 || s.Recovered != 40 || s.History != 40 {
		t.Fatalf("after reopen: %+v", s)
	}
	push(t, q, 50, 55)
	got, hist := drain(t, q)
	// Live first (the batch size lets 5 live records through at once),
	// then the history in order.
	wantRange(t, got[:5], 50, 55)
	wantRange(t, got[5:], 10, 50)
	if hist[0] || !hist[5] {
		t.Fatal("lanes wrong after reopen")
	}
}

// A crash leaves no head saved and maybe half a record: the reopened
// queue cuts the torn record off and resends from the last saved head.
func TestQueueAfterCrash(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, 1000, 1<<20)
	push(t, q, 0, 30)
	q.abandon()
	spools, _ := filepath.Glob(filepath.Join(dir, "*", "*.seg"))
	if len(spools) != 1 {
		t.Fatalf("segments %v", spools)
	}
	f, err := os.OpenFile(spools[0], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	torn := encodeRecord(nil, entry{seq: 30, msg: msgN(30)})
	f.Write(torn[:len(torn)-3])
	f.Close()
	q = openQ(t, dir, 1000, 1<<20)
	defer q.Close()
	got, _ := drain(t, q)
	wantRange(t, got, 0, 30)
	push(t, q, 30, 32)
	got, _ = drain(t, q)
	wantRange(t, got, 30, 32)
}

// Damage inside an older segment costs the rest of that segment, counted,
// and nothing else.
func TestQueueSkipsDamagedSegment(t *testing.T) {
	dir := t.TempDir()
	q, err := OpenQueue(dir, 1000, 1<<20, quiet)
	if err != nil {
		t.Fatal(err)
	}
	q.segSize = 200 // a few records per segment
	push(t, q, 0, 40)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*", "*.seg"))
	if len(segs) < 3 {
		t.Fatalf("want several segments, got %v", segs)
	}
	b, _ := os.ReadFile(segs[1])
	b[recHeader+2] ^= 0xff // inside the segment's first record
	os.WriteFile(segs[1], b, 0o640)
	second := strings.TrimSuffix(filepath.Base(segs[1]), ".seg")
	third := strings.TrimSuffix(filepath.Base(segs[2]), ".seg")
	from, _ := strconv.Atoi(second)
	to, _ := strconv.Atoi(third)

	q = openQ(t, dir, 1000, 1<<20)
	defer q.Close()
	got, _ := drain(t, q)
	want := []string{}
	for i := 0; i < 40; i++ {
		if i < from || i >= to {
			want = append(want, string(msgN(i).Payload))
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	if s := q.Stats(); s.Corrupt != uint64(to-from) || s.Dropped != uint64(to-from) {
		t.Fatalf("stats %+v: want %d corrupt records counted as dropped", s, to-from)
	}
}

func TestQueueDirectoryIsExclusive(t *testing.T) {
	dir := t.TempDir()
	q := openQ(t, dir, 10, 1<<20)
	defer q.Close()
	if _, err := OpenQueue(dir, 10, 1<<20, quiet); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second open: %v", err)
	}
}

// Segments and spools are deleted once consumed, so a long run leaves the
// directory small.
func TestQueueFreesSpace(t *testing.T) {
	dir := t.TempDir()
	q, err := OpenQueue(dir, 100000, 1<<30, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	q.segSize = 1000
	for round := range 5 {
		push(t, q, round*100, round*100+100)
		q.Rotate()
		drain(t, q)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*", "*.seg"))
	spools, _ := filepath.Glob(filepath.Join(dir, "0*"))
	if len(segs) > 1 || len(spools) > 1 {
		t.Fatalf("left behind: %v %v", segs, spools)
	}
}

func TestMarkHistorical(t *testing.T) {
	for in, want := range map[string]string{
		`{"a":1}`:   `{"historical":true,"a":1}`,
		` { }`:      `{"historical":true}`,
		`[1]`:       `[1]`,
		`x`:         `x`,
		"{\n\"a\"}": "{\"historical\":true,\"a\"}",
	} {
		if got := string(markHistorical([]byte(in))); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

// A message whose Expires has passed leaves with its batch unsent and is
// counted as expired, not as sent.
func TestQueueDiscardsExpired(t *testing.T) {
	forEachStore(t, func(t *testing.T, dir string) {
		q := openQ(t, dir, 100, 1<<20)
		defer q.Close()
		stale := msgN(0)
		stale.Expires = time.Now().Add(-time.Second)
		fresh := msgN(1)
		fresh.Expires = time.Now().Add(time.Hour)
		for _, m := range []Message{stale, fresh, msgN(2)} {
			if _, err := q.Push(m, t0); err != nil {
				t.Fatal(err)
			}
		}
		var b batch
		q.Take(&b, 10, 0, 1<<20)
		if len(b.recs) != 3 || !b.skip[0] || b.skip[1] || b.skip[2] || !b.recs[1].msg.Expires.Equal(fresh.Expires) {
			t.Fatalf("skip %v, expires %v", b.skip, b.recs[1].msg.Expires)
		}
		q.Confirm(&b)
		if s := q.Stats(); s.Expired != 1 || s.Confirmed != 2 || s.Waiting != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
}

// Records pushed out of a full queue while they are in flight are not
// counted as dropped until it is known: the broker's confirmation makes
// them delivered, a rewind (the connection died) makes them dropped.
func TestQueueDropsInFlightOnlyWhenNotConfirmed(t *testing.T) {
	for _, confirm := range []bool{true, false} {
		forEachStore(t, func(t *testing.T, dir string) {
			q := openQ(t, dir, 10, 1<<20)
			defer q.Close()
			push(t, q, 0, 10)
			var b batch
			if l, _ := q.Take(&b, 5, 0, 1<<20); l != 5 {
				t.Fatalf("took %d", l)
			}
			push(t, q, 10, 13) // pushes out records 0..2, in flight
			if s := q.Stats(); s.Dropped != 0 || s.Waiting != 10 {
				t.Fatalf("in flight, not yet dropped: %+v", s)
			}
			if confirm {
				q.Confirm(&b)
				if s := q.Stats(); s.Dropped != 0 || s.Confirmed != 5 || s.Waiting != 8 {
					t.Fatalf("confirmed: %+v", s)
				}
				got, _ := drain(t, q)
				wantRange(t, got, 5, 13)
			} else {
				q.Rewind()
				if s := q.Stats(); s.Dropped != 3 || s.Confirmed != 0 {
					t.Fatalf("rewound: %+v", s)
				}
				got, _ := drain(t, q)
				wantRange(t, got, 3, 13)
			}
		})
	}
}
