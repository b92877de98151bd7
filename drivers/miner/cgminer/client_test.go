package cgminer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/cgminer"
	"github.com/siteagent/siteagent/sim/miners"
)

func startFleet(t *testing.T, cfg miners.CGMinerConfig) *miners.CGMinerFleet {
	t.Helper()
	f, err := miners.StartCGMiner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

func TestPollOverTheWire(t *testing.T) {
	f := startFleet(t, miners.CGMinerConfig{Miners: 2})
	d := &cgminer.Driver{}
	tm, err := d.Poll(context.Background(), miner.Miner{Host: f.Addrs()[1], Family: miner.CGMiner})
	if err != nil {
		t.Fatal(err)
	}
	if !tm.Mining || tm.HashrateTHs < 100 || tm.PowerKnown || tm.MaxTempC < 60 || len(tm.Repaired) != 0 {
		t.Fatalf("telemetry %+v", tm)
	}
	// One connection for the four commands.
	if n := f.Counters().Connections.Load(); n != 1 {
		t.Fatalf("%d connections for one poll, want 1 (multi-command)", n)
	}
}

// Firmware that bends JSON is read, and the telemetry says what was
// repaired.
func TestPollRepairsQuirkyFirmware(t *testing.T) {
	f := startFleet(t, miners.CGMinerConfig{Miners: 1, Quirks: true})
	d := &cgminer.Driver{}
	tm, err := d.Poll(context.Background(), miner.Miner{Host: f.Addrs()[0]})
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(tm.Repaired, "; ")
	for _, want := range []string{"missing comma", "trailing comma", "nan", "duplicate key"} {
		if !strings.Contains(joined, want) {
			t.Errorf("repairs %q do not mention %q", joined, want)
		}
	}
	if tm.HashrateTHs < 100 {
		t.Fatalf("hashrate %v", tm.HashrateTHs)
	}
}

func TestFaultsAreClassified(t *testing.T) {
	f := startFleet(t, miners.CGMinerConfig{Miners: 4})
	f.SetSlowDelay(2 * time.Second)
	f.SetFault(0, miners.FaultRefusing)
	f.SetFault(1, miners.FaultDropping)
	f.SetFault(2, miners.FaultGarbled)
	f.SetFault(3, miners.FaultSlow)
	c := &cgminer.Client{Timeout: 300 * time.Millisecond}
	want := []error{miner.ErrUnreachable, miner.ErrUnreachable, miner.ErrGarbled, miner.ErrUnreachable}
	for i, w := range want {
		_, err := c.Call(context.Background(), f.Addrs()[i], "summary")
		if !errors.Is(err, w) {
			t.Errorf("miner %d: %v, want %v", i, err, w)
		}
	}
	// Nothing listens here.
	if _, err := c.Call(context.Background(), "127.0.0.1:1", "summary"); !errors.Is(err, miner.ErrUnreachable) {
		t.Errorf("closed port: %v", err)
	}
}

func TestErrorStatusIsRefused(t *testing.T) {
	f := startFleet(t, miners.CGMinerConfig{Miners: 1})
	c := &cgminer.Client{}
	_, err := c.CallOK(context.Background(), f.Addrs()[0], "quit")
	if !errors.Is(err, miner.ErrRefused) || !strings.Contains(err.Error(), "Invalid command") {
		t.Fatalf("got %v", err)
	}
	d := &cgminer.Driver{}
	if err := d.Sleep(context.Background(), miner.Miner{Host: f.Addrs()[0]}); !errors.Is(err, miner.ErrUnsupported) {
		t.Fatalf("plain cgminer must not claim it can sleep: %v", err)
	}
}

func TestContextCancelEndsACall(t *testing.T) {
	f := startFleet(t, miners.CGMinerConfig{Miners: 1})
	f.SetSlowDelay(time.Minute)
	f.SetFault(0, miners.FaultSlow)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := (&cgminer.Client{Timeout: time.Minute}).Call(ctx, f.Addrs()[0], "summary")
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, miner.ErrUnreachable) {
			t.Fatalf("got %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a cancelled call did not return")
	}
}
