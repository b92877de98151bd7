// Package minertest holds what the firmware families' driver tests share:
// a bounded context and polling a simulated miner until it reaches a state.
package minertest

import (
	"context"
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
)

// Ctx is a context that ends with the test, or after 20 s.
func Ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

// PollUntil polls m through d until cond holds, and fails the test with
// the last poll if it does not within 20 s.
func PollUntil(t testing.TB, d miner.Driver, m miner.Miner, what string, cond func(miner.Telemetry) bool) miner.Telemetry {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last miner.Telemetry
	var err error
	for time.Now().Before(deadline) {
		last, err = d.Poll(Ctx(t), m)
		if err == nil && cond(last) {
			return last
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: never happened; last poll %+v, %v", what, last, err)
	return last
}
