package agent

import (
	"sync"
	"time"

	"github.com/siteagent/siteagent/control"
)

// Record is one control cycle as the publishers see it: what the
// controller was given and what it decided.
type Record struct {
	Seq    uint64
	Inputs control.Inputs
	Plan   control.Plan
	// Took is the cycle's own compute time (snapshot to dispatch handoff).
	Took time.Duration
	// Woken: the cycle ran early because a trigger point fired.
	Woken bool
}

func (r *Record) set(seq uint64, in *control.Inputs, p *control.Plan, took time.Duration, woken bool) {
	groups := r.Inputs.Groups
	r.Seq, r.Took, r.Woken = seq, took, woken
	r.Inputs = *in
	r.Inputs.Groups = append(groups[:0], in.Groups...)
	r.Plan.CopyFrom(p)
}

func (r *Record) copyFrom(src *Record) { r.set(src.Seq, &src.Inputs, &src.Plan, src.Took, src.Woken) }

// recordRing hands cycle records from the control loop to the publisher
// without blocking the loop or allocating: a fixed ring of preallocated
// records. When the publisher falls behind, the oldest unread record is
// overwritten and counted as dropped.
type recordRing struct {
	mu      sync.Mutex
	buf     []Record
	first   int
	n       int
	dropped uint64
	signal  chan struct{}
}

func newRecordRing(size int) *recordRing {
	return &recordRing{buf: make([]Record, size), signal: make(chan struct{}, 1)}
}

// put copies one cycle into the ring.
func (q *recordRing) put(seq uint64, in *control.Inputs, p *control.Plan, took time.Duration, woken bool) {
	q.mu.Lock()
	if q.n == len(q.buf) {
		q.first = (q.first + 1) % len(q.buf)
		q.n--
		q.dropped++
	}
	q.buf[(q.first+q.n)%len(q.buf)].set(seq, in, p, took, woken)
	q.n++
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// take copies the oldest record into dst; false when the ring is empty.
func (q *recordRing) take(dst *Record) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n == 0 {
		return false
	}
	dst.copyFrom(&q.buf[q.first])
	q.first = (q.first + 1) % len(q.buf)
	q.n--
	return true
}

func (q *recordRing) droppedCount() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dropped
}
