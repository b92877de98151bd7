package agent

import (
	"context"
	"encoding/json"
	"time"

	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/drivers/mqtt"
)

// QoS and retain per topic (documented in README.md).
const (
	qosPoints = 0 // superseded every period: losing one costs nothing
	qosPlan   = 1
	qosEvents = 1
	// planHeartbeat: a plan is republished at least this often even when
	// nothing changed, so a dashboard that just connected is current.
	planHeartbeat = 5 * time.Second
)

// publish runs off the control path: it drains cycle records, logs and
// publishes events, publishes plans when they change, and point batches
// every telemetry period.
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
	)
	if a.mqtt != nil {
		topics = a.mqtt.Topics()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-points.C:
			if a.mqtt != nil {
				snap := a.store.Snapshot(nil)
				a.send(topics.Points(), qosPoints, false, pointsReport(a.cfg.Site.ID, names, snap, now))
			}
			a.metrics.observeSources()
		case <-a.ring.signal:
			for a.ring.take(&r) {
				a.metrics.observeCycle(&r)
				for _, e := range r.Plan.EventList() {
					ev := a.eventReport(&r, e)
					a.log.Info("event: "+ev.Text, "kind", ev.Kind, "mode", ev.Mode)
					a.send(topics.Events(), qosEvents, false, ev)
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
					a.send(topics.Plan(), qosPlan, true, rep)
					last.CopyFrom(&r.Plan)
					lastSent, havePlan = r.Plan.At, true
				}
			}
		}
	}
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
