// Package actuator is the contract between the dispatcher and the drivers
// that move load: a Modbus contactor or setpoint, a fleet of miners, the GPU
// nodes. The dispatcher hands each load group's target to its Actuator; the
// driver decides how to reach the devices and reports what took effect.
package actuator

import (
	"context"
	"fmt"
)

// Kind is how a load group moves.
type Kind uint8

const (
	// Shed groups switch whole units on and off (ASIC miners, container
	// feeders). The command says how many units run; which ones is the
	// driver's choice, made deterministically: a Modbus group runs units
	// 0..UnitsOn-1 (the last is the first shed), a miner fleet follows its
	// configured shed order.
	Shed Kind = iota + 1
	// Throttle groups take a continuous power cap (GPU power limits, miner
	// power targets).
	Throttle
)

func (k Kind) String() string {
	switch k {
	case Shed:
		return "shed"
	case Throttle:
		return "throttle"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Command is what one load group should do now.
type Command struct {
	Group string
	Kind  Kind
	// UnitsOn (shed groups): how many units should run.
	UnitsOn int
	// CapKW (throttle groups): the group's total power cap.
	CapKW float64
	// Seq increases with every command the dispatcher issues, for logs and
	// acknowledgements.
	Seq uint64
}

// Result is what the driver read back after applying a command.
type Result struct {
	// UnitsOn and CapKW as read back from the devices.
	UnitsOn int
	CapKW   float64
	// Verified is true when the read-back matches the command.
	Verified bool
	// Detail explains a partial result ("3 of 400 units did not answer").
	Detail string
}

// Actuator applies a group's command. Apply must honour ctx's deadline,
// must be safe to call again with the same command (the dispatcher retries),
// and never needs to be called concurrently for the same group.
type Actuator interface {
	Apply(ctx context.Context, cmd Command) (Result, error)
}

// Func adapts a function to the Actuator interface (simulators, tests).
type Func func(ctx context.Context, cmd Command) (Result, error)

// Apply calls f.
func (f Func) Apply(ctx context.Context, cmd Command) (Result, error) { return f(ctx, cmd) }

var _ Actuator = Func(nil)
