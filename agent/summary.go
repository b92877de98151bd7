package agent

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/modbus"
)

// Summarize writes the one-screen summary that check-config prints: what
// the agent will read, what it will move, and in which order.
func (c *SiteConfig) Summarize(w io.Writer) error {
	s := &c.Site
	fmt.Fprintf(w, "site %s", s.ID)
	if s.Description != "" {
		fmt.Fprintf(w, " (%s)", s.Description)
	}
	fmt.Fprintf(w, ", control cycle %s\n", s.CyclePeriod)
	l := &c.Limits
	fmt.Fprintf(w, "limits: import %.0f kW, island reserve %.0f kW, margin %.0f kW, restore margin %.0f kW, fail-safe load %.0f kW\n",
		l.ImportLimitKW, l.IslandReserveKW, l.MarginKW, l.RestoreMarginKW, l.FailsafeLoadKW)
	in := &s.Inputs
	fmt.Fprintf(w, "inputs: frequency %s, breaker %s, import %s, site load %s\n", in.FrequencyHz, in.BreakerClosed, in.ImportKW, in.SiteLoadKW)
	fmt.Fprintf(w, "        island capacity = %s - reserve", strings.Join(append(append([]string{}, in.GenerationAvailableKW...), in.BatteryDischargeKW...), " + "))
	if in.CurtailTargetKW != "" {
		fmt.Fprintf(w, ", curtailment target %s", in.CurtailTargetKW)
	}
	fmt.Fprintln(w)

	fmt.Fprintln(w, "sources:")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, ec := range c.Modbus {
		ep, err := modbus.NewEndpoint(ec, point.NewStore(), quiet)
		plan := "?"
		if err == nil {
			plan = strings.TrimPrefix(ep.Plan(), ec.Name+": ")
		}
		fmt.Fprintf(w, "  modbus %-10s %s unit %d, every %s: %s; %s\n", ec.Name, ec.URL, *ec.UnitID, ec.PollPeriod, plural(len(ec.Points), "point"), plan)
	}

	for _, oc := range c.OPCUA {
		fmt.Fprintf(w, "  opcua  %-10s %s\n", oc.Name, oc.Describe())
	}

	lim := c.ControlLimits()
	fmt.Fprintln(w, "load groups, cut first to protected last:")
	order := make([]int, len(lim.Groups))
	for i := range order {
		order[i] = i
	}
	for i := 1; i < len(order); i++ {
		for j := i; j > 0 && lim.Groups[order[j]].CutOrder < lim.Groups[order[j-1]].CutOrder; j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	for _, i := range order {
		g := &c.Groups[i]
		fmt.Fprintf(w, "  %d %-12s %-8s %d x %g kW, floor %.0f kW, ceiling %.0f kW", g.CutOrder, g.Name, g.Kind, g.Units, g.UnitKW, g.FloorKW, *g.CeilingKW)
		if g.Kind == "shed" && g.WakeUnitsPerS > 0 {
			fmt.Fprintf(w, ", wakes %g units/s", g.WakeUnitsPerS)
		}
		if g.Kind == "throttle" && g.RampUpKWPerS > 0 {
			fmt.Fprintf(w, ", ramps %g kW/s", g.RampUpKWPerS)
		}
		fmt.Fprintf(w, ", hold-off %s", g.RestoreHoldoff)
		if g.PowerKW != "" {
			fmt.Fprintf(w, ", metered by %s", g.PowerKW)
		}
		if g.Modbus != nil {
			fmt.Fprintf(w, ", moved by modbus %s %s %d", g.Modbus.Endpoint, g.Modbus.Table, *g.Modbus.Address)
		}
		if n := g.GPUNodes; n != nil {
			who := n.Pattern
			if who == "" {
				who = strings.Join(n.Nodes, " ")
			}
			fmt.Fprintf(w, ", moved by GPU nodes %s (split by %s, lease %s, stale after %s)", who, n.Split, n.Lease, n.StaleAfter)
		}
		if g.Miners != nil {
			fmt.Fprintf(w, ", moved by %s", minerSummary(g))
		}
		if d := g.Droop; d != nil {
			fmt.Fprintf(w, ", droop %g %% below %g Hz", d.DroopPct, d.NominalHz-d.DeadbandHz)
		}
		fmt.Fprintln(w)
	}
	if len(lim.Stages) > 0 {
		fmt.Fprintln(w, "under-frequency stages:")
	}
	for _, st := range lim.Stages {
		var acts []string
		for _, a := range st.Actions {
			acts = append(acts, fmt.Sprintf("%s to %.0f kW", lim.Groups[a.Group].Name, a.CapKW))
		}
		fmt.Fprintf(w, "  %-6s below %.2f Hz for %s: %s; clears above %.2f Hz for %s\n", st.Name, st.BelowHz, st.Delay, strings.Join(acts, ", "), st.ClearAboveHz, st.ClearAfter)
	}
	if c.MQTT != nil {
		broker := c.MQTT.Broker
		if broker == "" {
			broker = "(embedded, demo only)"
		}
		if c.MQTT.Format == "sparkplug" {
			fmt.Fprintf(w, "mqtt: %s, Sparkplug B, edge node %s, telemetry every %s\n", broker, s.ID, c.MQTT.TelemetryPeriod)
		} else {
			fmt.Fprintf(w, "mqtt: %s, JSON topics %s/%s/{status,plan,events,points,capacity,ack}, telemetry every %s\n", broker, c.MQTT.TopicRoot, s.ID, c.MQTT.TelemetryPeriod)
		}
		if cm := c.Commands; cm != nil {
			tls := "TLS only"
			if cm.AllowWithoutTLS {
				tls = "also without TLS (lab setting)"
			}
			fmt.Fprintf(w, "commands: curtailment down to %.0f kW import, at most %s each; %s\n", *cm.MinTargetKW, cm.MaxDuration, tls)
		} else {
			fmt.Fprintln(w, "commands: none taken (no [commands] table)")
		}
	} else {
		fmt.Fprintln(w, "mqtt: none (no telemetry upstream)")
	}
	if c.HTTP != nil {
		fmt.Fprintf(w, "http: %s (/status, /metrics, /healthz)\n", c.HTTP.Listen)
	}
	return nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
