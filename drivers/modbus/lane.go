package modbus

import (
	"context"
	"sync"
)

// lane lets one request at a time onto an endpoint's connection. Writes
// waiting for it go ahead of waiting polls, so that a shed command never
// queues behind the rest of a poll cycle. The uncontended path allocates
// nothing.
type lane struct {
	mu     sync.Mutex
	held   bool
	writes []chan struct{}
	polls  []chan struct{}
}

// acquire waits for the lane or for ctx to end.
func (l *lane) acquire(ctx context.Context, write bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	if !l.held {
		l.held = true
		l.mu.Unlock()
		return nil
	}
	turn := make(chan struct{})
	if write {
		l.writes = append(l.writes, turn)
	} else {
		l.polls = append(l.polls, turn)
	}
	l.mu.Unlock()

	select {
	case <-turn:
		return nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	if dequeue(&l.writes, turn) || dequeue(&l.polls, turn) {
		l.mu.Unlock()
		return ctx.Err()
	}
	// The lane was handed to us as ctx ended: pass it on.
	l.mu.Unlock()
	l.release()
	return ctx.Err()
}

// release hands the lane to the first waiting write, else the first
// waiting poll, else frees it.
func (l *lane) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := &l.writes
	if len(*q) == 0 {
		q = &l.polls
	}
	if len(*q) == 0 {
		l.held = false
		return
	}
	turn := (*q)[0]
	n := copy(*q, (*q)[1:])
	*q = (*q)[:n]
	close(turn)
}

func dequeue(q *[]chan struct{}, turn chan struct{}) bool {
	for i, c := range *q {
		if c == turn {
			*q = append((*q)[:i], (*q)[i+1:]...)
			return true
		}
	}
	return false
}
