package agent

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/modbus"
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
	return names
}

// builtSources are the running sources, by kind where the agent needs the
// concrete type (Modbus actuators share their endpoint's connection).
type builtSources struct {
	all    []source
	modbus map[string]*modbus.Endpoint
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
	return b, nil
}
