package miner

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// State is what the fleet believes a miner is doing.
type State uint8

const (
	// Unknown: not polled or commanded yet.
	Unknown State = iota
	// Mining: hashing (read back, or a wake acknowledged and verified).
	Mining
	// Sleeping: asleep, or a sleep command acknowledged.
	Sleeping
	// Waking: a wake command acknowledged; not hashing yet.
	Waking
	// Unreachable: the last poll or command got no answer.
	Unreachable
	// Failed: the last poll or command was answered wrongly (garbled,
	// refused, or a read-back that contradicts the command); see the
	// miner's last error.
	Failed
)

var stateNames = [...]string{"unknown", "mining", "sleeping", "waking", "unreachable", "failed"}

func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// MarshalText writes the state's name (status JSON).
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// unit is the fleet's record of one miner. It is guarded by the fleet's
// mutex.
type unit struct {
	m   Miner
	idx int // inventory index

	state State
	// run is what the group wants: true = hashing.
	run bool
	// gen counts changes of run; a command carries the gen it was issued
	// for, and a stale result does not overwrite a newer wish.
	gen uint32
	// tried is the gen whose first command attempt has completed.
	tried uint32
	// acked: the command for the current gen was acknowledged;
	// verified: a read-back agreed with it.
	acked, verified bool
	busy            bool // a command or poll is in flight
	// failedCmd: the current wish's last command failed or was
	// contradicted by a read-back; the miner stays failed until a retry
	// is acknowledged or a poll finds it where it should be.
	failedCmd bool
	queued    bool // waiting in a command queue
	attempts  int  // failed attempts for the current gen
	nextTry   time.Time
	ackAt     time.Time // when the current gen's command was acknowledged
	verifyAt  time.Time // read-back due (zero: none)
	retryAt   time.Time // queued for a retry at this time (zero: not)

	// Throttle groups: the power target wanted and the one acknowledged.
	wantW, setW float64

	tele    Telemetry // the last good poll
	lastErr string
	errAt   time.Time
	// lastObserved is what the last good poll saw, for estimates.
	observed State
}

// classifyErr maps a driver error to the state it puts a miner in.
func classifyErr(err error) State {
	switch {
	case errors.Is(err, ErrUnreachable), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return Unreachable
	}
	return Failed
}

// wanted is the state the group's wish leads to once acknowledged.
func (u *unit) wanted() State {
	if u.run {
		return Mining
	}
	return Sleeping
}

// healthy: the miner answered its last request.
func (u *unit) healthy() bool { return u.state != Unreachable && u.state != Failed }

// settled: nothing left to do for the current wish.
func (u *unit) settled() bool { return u.acked && u.verified }

// running reports whether the miner counts as running (drawing full
// power).
func (u *unit) running() bool {
	switch u.state {
	case Mining, Waking:
		return true
	case Sleeping:
		return false
	}
	// Unknown, unreachable, failed: what it last did, else what it was
	// told.
	switch u.observed {
	case Mining, Waking:
		return true
	case Sleeping:
		return false
	}
	return u.run
}
