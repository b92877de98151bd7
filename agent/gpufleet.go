package agent

import (
	"fmt"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/drivers/gpufleet"
)

// This file wires GPU fleets (drivers/gpufleet) into the agent. A throttle
// group with a [groups.gpu_nodes] table is both a source (its nodes'
// telemetry becomes "<group>.power_kw" and friends, a stale node counted at
// its maximum) and the group's actuator (its cap split between the nodes
// and sent to them as leases over the site's MQTT connection).

var _ source = (*gpufleet.Fleet)(nil)

// validateGPUNodes checks group g's [groups.gpu_nodes] table at path.
func validateGPUNodes(p *config.Problems, path string, g *GroupSection, kind control.Kind) {
	if kind != control.Throttle {
		p.Addf(config.Join(config.Parent(path), "kind"), "a gpu_nodes group takes a continuous power cap: set kind = \"throttle\"")
	}
	g.GPUNodes.Validate(p, path, g.Units)
}

// validateGPUFleets checks what spans groups: a node belongs to one group,
// and fleets need the broker.
func (c *SiteConfig) validateGPUFleets(p *config.Problems) {
	owner := map[string]string{}
	fleets := false
	for i := range c.Groups {
		g := &c.Groups[i]
		if g.GPUNodes == nil {
			continue
		}
		fleets = true
		for j, id := range g.GPUNodes.Nodes {
			if o, ok := owner[id]; ok && o != g.Name {
				p.Addf(config.Index(config.Join(config.Index("groups", i), "gpu_nodes.nodes"), j), "node %q is already in group %q; a node belongs to one group", id, o)
			}
			owner[id] = g.Name
		}
	}
	if fleets && c.MQTT == nil {
		p.Addf("mqtt", "gpu_nodes groups send their nodes grants over MQTT: add an [mqtt] table with the site's broker")
	}
}

// gpuFleetPoints adds the points every fleet defines.
func (c *SiteConfig) gpuFleetPoints(out map[string]pointInfo) {
	for i := range c.Groups {
		g := &c.Groups[i]
		if g.GPUNodes == nil {
			continue
		}
		for _, d := range gpufleet.Points(g.Name, *g.GPUNodes) {
			out[d.Name] = pointInfo{meta: point.Meta{Unit: d.Unit}, period: gpufleet.EvalPeriod}
		}
	}
}

// buildGPUFleets makes every group's fleet, sharing one hub on the site's
// MQTT client, and adds them to the sources.
func (a *Agent) buildGPUFleets(b *builtSources) error {
	b.gpufleets = map[string]*gpufleet.Fleet{}
	var hub *gpufleet.Hub
	for i := range a.cfg.Groups {
		g := &a.cfg.Groups[i]
		if g.GPUNodes == nil {
			continue
		}
		if a.mqtt == nil {
			return fmt.Errorf("group %s: gpu_nodes needs [mqtt]", g.Name)
		}
		log := a.log.With("part", "gpufleet")
		if hub == nil {
			h, err := gpufleet.NewHub(a.mqtt, log)
			if err != nil {
				return err
			}
			hub = h
		}
		f, err := hub.NewFleet(gpufleet.Options{Group: g.Name, Config: *g.GPUNodes, Units: g.Units, UnitKW: g.UnitKW,
			Store: a.store, Alive: a.lastCycleAt, Log: log})
		if err != nil {
			return fmt.Errorf("group %s: %w", g.Name, err)
		}
		b.all = append(b.all, f)
		b.gpufleets[g.Name] = f
	}
	return nil
}

// lastCycleAt is when the control loop last completed a cycle (zero:
// never). Fleets renew their nodes' leases only while it is recent, so a
// loop that hangs or dies lets every node fall to its safe cap.
func (a *Agent) lastCycleAt() time.Time {
	ns := a.lastCycle.Load()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
