package cgminer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
)

// Driver is the telemetry-only family miner.CGMiner: any firmware that
// answers the cgminer API. It cannot shed: plain cgminer has no sleep
// command (only "quit", which kills the process and needs someone to
// restart it), so Sleep, Wake and SetPowerTarget return
// miner.ErrUnsupported. Such miners are shed with a feeder contactor.
type Driver struct {
	Client Client
	// single remembers hosts that refused the multi-command request
	// "summary+devs+stats+pools" (stock S19 firmware): they are polled
	// with one connection per command.
	single sync.Map
}

var _ miner.Driver = (*Driver)(nil)

// Family implements miner.Driver.
func (d *Driver) Family() miner.Family { return miner.CGMiner }

// Sleep implements miner.Driver: unsupported.
func (d *Driver) Sleep(context.Context, miner.Miner) error {
	return fmt.Errorf("plain cgminer cannot sleep a miner: %w", miner.ErrUnsupported)
}

// Wake implements miner.Driver: unsupported.
func (d *Driver) Wake(context.Context, miner.Miner) error {
	return fmt.Errorf("plain cgminer cannot wake a miner: %w", miner.ErrUnsupported)
}

// SetPowerTarget implements miner.Driver: unsupported.
func (d *Driver) SetPowerTarget(context.Context, miner.Miner, float64) error {
	return fmt.Errorf("plain cgminer has no power target: %w", miner.ErrUnsupported)
}

var pollCommands = []string{"summary", "devs", "stats", "pools"}

// Poll implements miner.Driver: summary for the hashrate, devs and stats
// for temperatures, pools for whether it has work.
func (d *Driver) Poll(ctx context.Context, m miner.Miner) (miner.Telemetry, error) {
	parts, repaired, err := d.Query(ctx, m.Host, pollCommands...)
	if err != nil {
		return miner.Telemetry{}, &miner.Error{Host: m.Host, Op: "poll", Err: err}
	}
	t, err := TelemetryFrom(parts)
	if err != nil {
		return miner.Telemetry{}, &miner.Error{Host: m.Host, Op: "poll", Err: fmt.Errorf("%w: %v", miner.ErrGarbled, err)}
	}
	t.Repaired = repaired
	return t, nil
}

// Query asks for several report commands, in one multi-command request
// where the firmware supports it, and returns each command's reply with
// its STATUS checked.
func (d *Driver) Query(ctx context.Context, addr string, commands ...string) (map[string]*Reply, []string, error) {
	out := make(map[string]*Reply, len(commands))
	var repaired []string
	if _, single := d.single.Load(addr); !single && len(commands) > 1 {
		joined := commands[0]
		for _, c := range commands[1:] {
			joined += "+" + c
		}
		r, err := d.Client.Call(ctx, addr, joined)
		if err != nil {
			return nil, nil, err
		}
		if r.Value.Has(commands[0]) {
			for _, c := range commands {
				p, err := r.Part(c)
				if err != nil {
					return nil, nil, fmt.Errorf("%w: %v", miner.ErrGarbled, err)
				}
				if _, err := p.Check(); err != nil {
					return nil, nil, statusErr(c, err)
				}
				out[c] = p
			}
			return out, r.Repaired, nil
		}
		if _, err := r.Check(); err == nil {
			return nil, nil, fmt.Errorf("%w: reply to %q has none of its parts", miner.ErrGarbled, joined)
		}
		// An error status: this firmware takes one command at a time.
		d.single.Store(addr, true)
	}
	for _, c := range commands {
		r, err := d.Client.Call(ctx, addr, c)
		if err != nil {
			return nil, nil, err
		}
		if _, err := r.Check(); err != nil {
			return nil, nil, statusErr(c, err)
		}
		out[c] = r
		repaired = append(repaired, r.Repaired...)
	}
	return out, repaired, nil
}

func statusErr(command string, err error) error {
	var se *StatusError
	if errors.As(err, &se) {
		return fmt.Errorf("%w: %s: %v", miner.ErrRefused, command, err)
	}
	return fmt.Errorf("%w: %s: %v", miner.ErrGarbled, command, err)
}

// TelemetryFrom builds telemetry from the replies to summary (required),
// devs, stats and pools (each optional).
func TelemetryFrom(parts map[string]*Reply) (miner.Telemetry, error) {
	t := miner.Telemetry{At: time.Now()}
	sr, ok := parts["summary"]
	if !ok {
		return t, errors.New("no summary reply")
	}
	sum, err := sr.First("SUMMARY")
	if err != nil {
		return t, fmt.Errorf("summary: %w", err)
	}
	if t.HashrateTHs, err = SummaryHashrate(sum); err != nil {
		return t, fmt.Errorf("summary: %w", err)
	}
	t.Mining = t.HashrateTHs > 0
	if sum.Has("Power") {
		// btminer-style firmware reports input power in the summary.
		if t.PowerW, err = sum.Float("Power"); err != nil {
			return t, fmt.Errorf("summary: %w", err)
		}
		if t.PowerW < 0 || t.PowerW > 50_000 {
			return t, fmt.Errorf("summary: implausible Power %g W", t.PowerW)
		}
		t.PowerKnown = true
	}
	var temps []Value
	for _, part := range []struct{ cmd, sec string }{{"devs", "DEVS"}, {"stats", "STATS"}} {
		r, ok := parts[part.cmd]
		if !ok {
			continue
		}
		entries, err := r.Section(part.sec)
		if err != nil && !IsMissing(err) {
			return t, fmt.Errorf("%s: %w", part.cmd, err)
		}
		temps = append(temps, entries...)
	}
	if maxC, ok, err := MaxTemp(temps); err != nil {
		return t, err
	} else if ok {
		t.MaxTempC = maxC
	}
	if r, ok := parts["pools"]; ok {
		// Read for its shape only: a miner hashing with no live pool still
		// draws its full power, which is what the fleet cares about.
		if _, err := r.Section("POOLS"); err != nil && !IsMissing(err) {
			return t, fmt.Errorf("pools: %w", err)
		}
	}
	return t, nil
}
