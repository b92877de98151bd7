package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/gpufleet"
	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/modbus"
	"github.com/siteagent/siteagent/drivers/opcua"
)

// This file is where source drivers plug into the agent: each kind of
// source adds its validation, its points and its constructor here.

// source fills the point store: a Modbus endpoint, an OPC UA session.
type source interface {
	Name() string
	// Run reads until ctx ends.
	Run(ctx context.Context) error
	// Ready is closed after the first complete read, good or not.
	Ready() <-chan struct{}
}

var _ source = (*modbus.Endpoint)(nil)
var _ source = (*opcua.Source)(nil)

// pointInfo is what validation knows of a point defined by some source.
type pointInfo struct {
	meta point.Meta
	// period is how often the source refreshes it: stale_after defaults
	// to a few of these.
	period time.Duration
}

// points lists every point any source defines, by full name.
func (c *SiteConfig) points() map[string]pointInfo {
	out := map[string]pointInfo{}
	for _, ep := range c.Modbus {
		for _, pt := range ep.Points {
			out[ep.Name+"."+pt.Name] = pointInfo{meta: pt.Meta, period: ep.PollPeriod}
		}
	}
	for _, sc := range c.OPCUA {
		for _, pt := range sc.Points {
			// A subscription's values refresh at least every keep-alive
			// period while all is well; stale_after defaults to a few.
			out[sc.Name+"."+pt.Name] = pointInfo{meta: pt.Meta, period: sc.RefreshPeriod()}
		}
	}
	c.gpuFleetPoints(out)
	c.minerPoints(out)
	return out
}

// validateSources checks every source table and returns the set of source
// names (unique across all kinds: they prefix point names).
func (c *SiteConfig) validateSources(p *config.Problems) map[string]bool {
	names := map[string]bool{}
	claim := func(path, name string) {
		if names[name] {
			p.Addf(config.Join(path, "name"), "source %q is defined twice; give each source its own name (it prefixes its points)", name)
		}
		names[name] = true
	}
	for i := range c.Modbus {
		path := config.Index("modbus", i)
		c.Modbus[i].Validate(p, path)
		claim(path, c.Modbus[i].Name)
	}
	for i := range c.OPCUA {
		path := config.Index("opcua", i)
		c.OPCUA[i].Validate(p, path)
		claim(path, c.OPCUA[i].Name)
	}
	for i := range c.Groups {
		if c.Groups[i].GPUNodes != nil { // a GPU fleet is a source named after its group
			claim(config.Index("groups", i), c.Groups[i].Name)
		}
		if m := c.Groups[i].Miners; m != nil { // so is a miner fleet, unless miners.source says otherwise
			claim(config.Index("groups", i), m.Source)
		}
	}
	return names
}

// builtSources are the running sources, by kind where the agent needs the
// concrete type (Modbus actuators share their endpoint's connection).
type builtSources struct {
	all       []source
	modbus    map[string]*modbus.Endpoint
	gpufleets map[string]*gpufleet.Fleet // by group name
	miners    map[string]*miner.Fleet    // by group name
}

func (c *SiteConfig) buildSources(store *point.Store, log *slog.Logger) (*builtSources, error) {
	b := &builtSources{modbus: map[string]*modbus.Endpoint{}}
	for _, ec := range c.Modbus {
		ep, err := modbus.NewEndpoint(ec, store, log.With("source", ec.Name))
		if err != nil {
			return nil, fmt.Errorf("modbus source %s: %w", ec.Name, err)
		}
		b.all = append(b.all, ep)
		b.modbus[ec.Name] = ep
	}
	for _, sc := range c.OPCUA {
		src, err := opcua.NewSource(sc, store, log)
		if err != nil {
			return nil, fmt.Errorf("opcua source %s: %w", sc.Name, err)
		}
		b.all = append(b.all, src)
	}
	if err := c.buildMinerFleets(b, store, log); err != nil {
		return nil, err
	}
	return b, nil
}

// sourceStatus is what /status shows of a source: its counters, or for a
// fleet the state of every member.
func sourceStatus(src source) any {
	switch s := src.(type) {
	case *modbus.Endpoint:
		return s.Stats()
	case *opcua.Source:
		return s.Stats()
	case *miner.Fleet:
		return s.Status() // states, power measured vs estimated, problem miners
	case *gpufleet.Fleet:
		return s.Status()
	}
	return nil
}
