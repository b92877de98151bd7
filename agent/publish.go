package agent

import (
	"context"
	"encoding/json"
	"time"

	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/mqtt/sparkplug"
)

// QoS and retain per topic (documented in docs/mqtt.md).
const (
	qosPoints   = 0 // superseded every period: the queue still confirms each with the broker
	qosPlan     = 1
	qosEvents   = 1
	qosCapacity = 1
	// planHeartbeat: a plan (and the capacity) is republished at least
	// this often even when nothing changed, so a dashboard that just
	// connected is current.
	planHeartbeat = 5 * time.Second
)

// publish runs off the control path: it drains cycle records, logs and
// publishes events, publishes plans and capacity when they change, point
// batches every telemetry period, and steps the commands' lifecycle.
// The payload format is the connection's: JSON topics or Sparkplug B.
func (a *Agent) publish(ctx context.Context) {
	period := time.Second
	if a.cfg.MQTT != nil && a.cfg.MQTT.TelemetryPeriod > 0 {
		period = a.cfg.MQTT.TelemetryPeriod
	}
	points := time.NewTicker(period)
	defer points.Stop()
	names := a.store.Names()
	var (
		last     control.Plan
		r        Record
		lastSent time.Time
		havePlan bool
		topics   mqtt.Topics
		snap     = a.store.Snapshot(nil)
		capT     = newCapacityTracker(a)
		lc       = lifecycle{begun: map[string]float64{}}
	)
	spark := a.ops.spark
	if a.mqtt != nil {
		topics = a.mqtt.Topics()
	}
	if c := a.ops.cmd; c != nil {
		c.events = func(kind, text string) { a.commandEvent(kind, text) }
		defer func() {
			if c.audit != nil {
				c.audit.Close()
			}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-points.C:
			a.ops.cmd.tick(&lc, now)
			if a.mqtt != nil {
				snap = a.store.Snapshot(snap)
				if spark != nil {
					spark.pointsAt(snap, now)
					st := a.mqtt.Stats()
					spark.set(spQueued, numInt(st.Queued), now)
					spark.set(spDropped, numInt(int(st.Dropped)), now)
					b, _ := json.Marshal(a.ops.gate.view(now))
					spark.set(spActive, sparkplug.Text(string(b)), now)
					spark.node.Flush(now)
					spark.urgent = false
				} else {
					a.send(topics.Points(), qosPoints, false, pointsReport(a.cfg.Site.ID, names, snap, now))
				}
			}
			a.metrics.observeSources()
		case <-a.ring.signal:
			for a.ring.take(&r) {
				a.ops.jitter.observe(r.Plan.At, r.Woken)
				a.metrics.observeCycle(&r)
				for _, e := range r.Plan.EventList() {
					ev := a.eventReport(&r, e)
					a.log.Info("event: "+ev.Text, "kind", ev.Kind, "mode", ev.Mode)
					a.emitEvent(topics, ev)
					if e.Kind == control.EventModeChanged && a.mqtt != nil {
						a.mqtt.SetStatus(a.statusJSON(e.To))
					}
				}
				if r.Plan.DroppedEvents > 0 {
					a.log.Warn("events dropped in one cycle", "dropped", r.Plan.DroppedEvents)
				}
				due := !havePlan || planChanged(&last, &r.Plan) || r.Plan.At.Sub(lastSent) >= planHeartbeat
				if due {
					rep := a.planReport(&r)
					a.lastMu.Lock()
					a.lastPlan = rep
					a.lastMu.Unlock()
					if spark == nil {
						a.send(topics.Plan(), qosPlan, true, rep)
					} else {
						spark.explain(a, &r)
					}
					last.CopyFrom(&r.Plan)
					lastSent, havePlan = r.Plan.At, true
				}
				if a.mqtt == nil {
					continue
				}
				cap := capT.build(&r)
				if spark != nil {
					spark.record(a, &r, &cap)
					if spark.urgent {
						spark.node.Flush(r.Plan.At)
						spark.urgent = false
					}
				} else if capT.due(&cap) {
					a.send(topics.Topic("capacity"), qosCapacity, true, cap)
				}
			}
		}
	}
}

func numInt(n int) sparkplug.Value { return num(float64(n), true) }

// emitEvent publishes one controller event in the connection's format.
func (a *Agent) emitEvent(topics mqtt.Topics, ev EventReport) {
	if a.ops.spark != nil {
		b, _ := json.Marshal(ev)
		a.ops.spark.publishNow(spEvent, string(b), ev.TS)
		return
	}
	a.send(topics.Events(), qosEvents, false, ev)
}

// commandEvent publishes a command's lifecycle step (began, ended) as an
// event.
func (a *Agent) commandEvent(kind, text string) {
	if a.mqtt == nil {
		return
	}
	ev := EventReport{Site: a.cfg.Site.ID, TS: time.Now().UTC(), Kind: kind, Text: text}
	a.lastMu.Lock()
	ev.Mode = a.lastPlan.Mode
	a.lastMu.Unlock()
	a.emitEvent(a.mqtt.Topics(), ev)
}

// send encodes v and queues it; a full queue is counted by the client.
func (a *Agent) send(topic string, qos byte, retain bool, v any) {
	if a.mqtt == nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		a.log.Error("cannot encode report", "topic", topic, "err", err)
		return
	}
	a.mqtt.Publish(mqtt.Message{Topic: topic, Payload: b, QoS: qos, Retain: retain})
}

func (a *Agent) statusJSON(mode control.Mode) []byte {
	b, _ := json.Marshal(StatusReport{Site: a.cfg.Site.ID, State: "online", Mode: mode.String(), Version: a.opt.Version, Started: a.started, TS: time.Now()})
	return b
}
