// Package miner drives fleets of ASIC miners through their vendors' network
// APIs: one Driver per firmware family (in the subpackages), and a Fleet
// that sheds and restores thousands of them with bounded concurrency.
package miner

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Family names a firmware family.
type Family string

const (
	CGMiner    Family = "cgminer"    // telemetry only: the cgminer API on TCP 4028
	LuxOS      Family = "luxos"      // LuxOS
	Braiins    Family = "braiins"    // Braiins OS+ (gRPC 50051, legacy 4028 fallback)
	Whatsminer Family = "whatsminer" // MicroBT Whatsminer (API v3 4433, v2 4028)
	Antminer   Family = "antminer"   // Bitmain stock firmware (HTTP digest)
	Vnish      Family = "vnish"      // Vnish (HTTP API)
)

// Miner is one machine of the inventory.
type Miner struct {
	// Host is the miner's address, "10.1.2.3" (the family's default port)
	// or "10.1.2.3:4028".
	Host   string
	Family Family
	Group  string
	// RatedW is its nameplate power; used when firmware reports none.
	RatedW float64
	// Rack, for racks-first shed orders and reports.
	Rack string
	// EfficiencyJTH (joules per terahash) orders least-efficient-first.
	EfficiencyJTH float64
}

// Telemetry is what one poll of a miner read.
type Telemetry struct {
	At time.Time
	// Mining: hashing now. Sleeping: the firmware reports it is curtailed /
	// paused / in sleep mode. Both false: starting up or unknown.
	Mining   bool
	Sleeping bool
	// HashrateTHs in TH/s.
	HashrateTHs float64
	// PowerW as reported by the firmware; PowerKnown false when the family
	// or model reports none (the fleet then estimates from RatedW).
	PowerW     float64
	PowerKnown bool
	// PowerEstimated: the firmware reported a figure it estimated itself
	// (LuxOS without a PMBus PSU, Braiins' approximated consumption), not
	// a PSU measurement.
	PowerEstimated bool
	// MaxTempC over boards/chips, when reported.
	MaxTempC float64
	// PowerTargetW currently configured, when the family has one.
	PowerTargetW float64
	// Repaired lists what the parser had to fix in a malformed reply
	// ("trailing NUL", "missing comma between objects").
	Repaired []string
}

// Driver speaks one firmware family's protocol. A Driver is shared by every
// miner of its family and must be safe for concurrent use.
type Driver interface {
	Family() Family
	// Sleep sheds the miner with the family's fastest command that keeps
	// it reachable (curtail/pause/sleep mode), never with a reboot.
	Sleep(ctx context.Context, m Miner) error
	// Wake brings a sleeping miner back to mining.
	Wake(ctx context.Context, m Miner) error
	// SetPowerTarget sets a power limit in watts; ErrUnsupported where the
	// family cannot do it without a reboot or at all.
	SetPowerTarget(ctx context.Context, m Miner, watts float64) error
	// Poll reads the miner's telemetry.
	Poll(ctx context.Context, m Miner) (Telemetry, error)
}

// ErrUnsupported: the family cannot do this (safely).
var ErrUnsupported = errors.New("not supported by this firmware family")

// Drivers wrap one of these in their errors (fmt.Errorf("%w: ...")) so
// that the fleet can tell a miner that does not answer from one that
// answers wrongly. An error wrapping none of them counts as a failure.
var (
	// ErrUnreachable: no answer (connection refused or reset, timeout,
	// connection closed before a reply). The miner is marked unreachable.
	ErrUnreachable = errors.New("unreachable")
	// ErrGarbled: an answer that cannot be trusted (malformed beyond
	// repair, wrong shape, implausible values). The miner is marked failed.
	ErrGarbled = errors.New("garbled reply")
	// ErrRefused: the firmware understood and said no (authentication
	// refused, access denied, an error status, no session available). The
	// miner is marked failed.
	ErrRefused = errors.New("refused")
	// ErrInProgress: the firmware took the command and applies it in the
	// background (a stock Antminer's config write takes ~20 s). The
	// fleet counts the command acknowledged and lets the read-back (within
	// settle_time) decide whether it took effect.
	ErrInProgress = errors.New("accepted, still being applied")
)

// Error is a failure talking to one miner: the address, the operation and
// why. Replies that cannot be trusted are errors, never guessed values.
type Error struct {
	Host string
	Op   string // "sleep", "wake", "power", "poll", "login"
	Err  error
}

func (e *Error) Error() string { return fmt.Sprintf("miner %s: %s: %v", e.Host, e.Op, e.Err) }
func (e *Error) Unwrap() error { return e.Err }
