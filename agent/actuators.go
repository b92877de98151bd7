package agent

import (
	"fmt"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/drivers/actuator"
	"github.com/siteagent/siteagent/drivers/modbus"
)

// This file is where actuator drivers plug into the agent: a group names
// exactly one actuator table ([groups.modbus], ...), validated and built
// here.

// validateActuator checks that group g (at path) has exactly one actuator
// and that it is well formed.
func validateActuator(p *config.Problems, path string, g *GroupSection, kind control.Kind, sources map[string]bool) {
	key := func(k string) string { return config.Join(path, k) }
	n := 0
	if g.Modbus != nil {
		n++
		if !sources[g.Modbus.Endpoint] {
			p.Addf(key("modbus.endpoint"), "no [[modbus]] endpoint is named %q", g.Modbus.Endpoint)
		}
		g.Modbus.Validate(p, key("modbus"), actuator.Kind(kind), g.Units)
	}
	if g.GPUNodes != nil {
		n++
		validateGPUNodes(p, key("gpu_nodes"), g, kind)
	}
	if g.Miners != nil {
		n++
		validateMinerFleet(p, key("miners"), g, kind) // miners.go
	}
	switch {
	case n == 0:
		p.Addf(path, "group %q has no actuator: add a [groups.modbus] table that says which coils or register move it", g.Name)
	case n > 1:
		p.Addf(path, "group %q names %d actuators; keep exactly one", g.Name, n)
	}
}

// buildActuator makes the actuator of group g.
func buildActuator(g *GroupSection, kind control.Kind, src *builtSources) (actuator.Actuator, error) {
	switch {
	case g.Modbus != nil:
		ep, ok := src.modbus[g.Modbus.Endpoint]
		if !ok {
			return nil, fmt.Errorf("group %s: no modbus endpoint %q", g.Name, g.Modbus.Endpoint)
		}
		return modbus.NewActuator(*g.Modbus, ep, actuator.Kind(kind), g.Units)
	case g.GPUNodes != nil:
		f, ok := src.gpufleets[g.Name]
		if !ok {
			return nil, fmt.Errorf("group %s: no GPU fleet was built", g.Name)
		}
		return f, nil
	case g.Miners != nil:
		f, ok := src.miners[g.Name]
		if !ok {
			return nil, fmt.Errorf("group %s: no miner fleet was built", g.Name)
		}
		return f, nil
	}
	return nil, fmt.Errorf("group %s: no actuator", g.Name)
}
