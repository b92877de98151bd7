// Package gpufleet is the site side of GPU power control: a throttle
// group whose units are GPU servers, each running `siteagent node`.
//
// A Fleet is both the group's actuator and a source of points:
//   - as the actuator it splits the group's cap between the nodes' GPUs
//     (by demand, or evenly between floors and ceilings), deterministically,
//     and sends each node its grant — a lease — over the site's MQTT
//     connection, then waits for the nodes' acknowledgements;
//   - it renews every lease on its own timer while the control loop is
//     completing cycles: the dispatcher only sends changes, and a
//     controller that hangs or dies must stop renewing so that every node
//     falls to its safe cap when its lease runs out;
//   - as a source it turns node telemetry into points: the group's power
//     ("<group>.power_kw") counts a node whose telemetry is stale, or that
//     was never heard from, at its maximum power (the worst case), and
//     "<group>.stale_nodes" reports how many there are.
//
// Node ids are matched by list or glob; every message of every node comes
// through one Hub per MQTT client.
package gpufleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/actuator"
	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/node/wire"
)

// EvalPeriod is how often a fleet re-judges staleness and rewrites its
// points (and so the refresh period behind their stale_after).
const EvalPeriod = 250 * time.Millisecond

// ackWait bounds how long Apply waits for the nodes' acknowledgements when
// its context has no earlier deadline.
const ackWait = 1500 * time.Millisecond

// Client is what a fleet needs of the site's MQTT connection
// (*mqtt.Client).
type Client interface {
	Publish(m mqtt.Message) bool
	Subscribe(filter string, qos byte, handler func(topic string, payload []byte)) error
	Topics() mqtt.Topics
	Stats() mqtt.Stats
}

var _ Client = (*mqtt.Client)(nil)

// PointDef is a point a fleet defines.
type PointDef struct {
	Name string
	Unit string
}

// Points lists the points the fleet of group defines: the group's power
// and stale count, and per listed node its power and granted cap.
func Points(group string, c Config) []PointDef {
	out := []PointDef{{group + ".power_kw", "kW"}, {group + ".stale_nodes", "count"}}
	for _, n := range c.Nodes {
		out = append(out, PointDef{group + "." + n + ".power_kw", "kW"}, PointDef{group + "." + n + ".granted_kw", "kW"})
	}
	return out
}

// Options build a Fleet.
type Options struct {
	Group  string
	Config Config
	// Units and UnitKW: the group's node count and one node's rated GPU
	// power, the worst case of a node never heard from.
	Units  int
	UnitKW float64
	Store  *point.Store
	// Alive says when the control loop last completed a cycle; leases are
	// renewed only while that is recent.
	Alive func() time.Time
	Log   *slog.Logger
}

// Fleet is one GPU-fleet load group.
type Fleet struct {
	o     Options
	cfg   Config
	hub   *Hub
	log   *slog.Logger
	unitW float64
	epoch int64

	pPower, pStale point.ID
	pNode          map[string][2]point.ID // power, granted

	ready     chan struct{}
	readyOnce sync.Once
	wake      chan struct{} // a node came (back) to life: send it a grant
	acked     chan struct{} // an acknowledgement arrived

	mu         sync.Mutex
	nodes      map[string]*nodeState
	capW       float64
	hasCap     bool
	seq        uint64
	infeasible bool
	paused     bool
	offline    bool // the broker connection is down: grants are not queued
	started    time.Time
	shares     []Share
	caps       []float64
	batch      []point.Update
}

type nodeState struct {
	id    string
	heard time.Time // when its telemetry last arrived; zero: never
	tel   wire.Telemetry
	stale bool
	maxW  float64 // its GPUs' maximum power, from telemetry; 0: unknown
	// The last grant sent, and the last acknowledgement received.
	sent    wire.Grant
	sentW   float64
	ack     wire.Ack
	hasAck  bool
	lastBad string
}

// NodeStatus is one node as the fleet sees it.
type NodeStatus struct {
	ID       string
	Live     bool
	Heard    time.Time
	State    string  // the node's own state (granted, safe)
	PowerKW  float64 // measured, or the worst case when not live
	GrantKW  float64 // total of the last grant
	AckSeq   uint64
	AckState string
	Reason   string
}

// NewFleet builds the fleet of one group and registers its points. It
// publishes nothing until Run and Apply.
func (h *Hub) NewFleet(o Options) (*Fleet, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Alive == nil {
		return nil, errors.New("gpufleet: Options.Alive is required")
	}
	cfg := o.Config.WithDefaults()
	f := &Fleet{o: o, cfg: cfg, hub: h, log: o.Log.With("group", o.Group), unitW: o.UnitKW * 1000, epoch: time.Now().UnixMilli(),
		ready: make(chan struct{}), wake: make(chan struct{}, 1), acked: make(chan struct{}, 1),
		nodes: map[string]*nodeState{}, pNode: map[string][2]point.ID{}}
	f.pPower = o.Store.Register(o.Group + ".power_kw")
	f.pStale = o.Store.Register(o.Group + ".stale_nodes")
	for _, id := range cfg.Nodes {
		f.nodes[id] = &nodeState{id: id, stale: true}
		f.pNode[id] = [2]point.ID{o.Store.Register(o.Group + "." + id + ".power_kw"), o.Store.Register(o.Group + "." + id + ".granted_kw")}
	}
	h.add(f)
	return f, nil
}

// Name is the group's name (the source's name, prefixing its points).
func (f *Fleet) Name() string { return f.o.Group }

// Ready is closed once every node has reported, or after stale_after
// (nodes not heard from by then count at their maximum).
func (f *Fleet) Ready() <-chan struct{} { return f.ready }

// Run judges staleness, writes the points, and renews leases while the
// control loop lives, until ctx ends.
func (f *Fleet) Run(ctx context.Context) error {
	f.mu.Lock()
	f.started = time.Now()
	f.mu.Unlock()
	eval := time.NewTicker(EvalPeriod)
	defer eval.Stop()
	renewEvery := f.cfg.Lease / 3
	renew := time.NewTicker(renewEvery)
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now := <-eval.C:
			f.evaluate(now)
			if f.reconnected() {
				f.renew(now, "broker connection back")
			}
		case now := <-renew.C:
			f.renew(now, "renewal")
		case <-f.wake:
			f.renew(time.Now(), "node came live")
		}
	}
}

// reconnected reports whether the broker connection just came back (then
// every node gets its grant at once rather than at the next renewal).
func (f *Fleet) reconnected() bool {
	up := f.hub.client.Stats().Connected
	f.mu.Lock()
	defer f.mu.Unlock()
	was := f.offline
	f.offline = !up
	return was && up
}

// renew re-sends every node its grant, re-split on the latest telemetry,
// if the control loop completed a cycle within the last renewal period.
func (f *Fleet) renew(now time.Time, why string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.hasCap {
		return
	}
	last := f.o.Alive()
	if last.IsZero() || now.Sub(last) > f.cfg.Lease/3 {
		if !f.paused {
			f.paused = true
			f.log.Error("control loop stalled: GPU lease renewals paused; nodes fall to their safe caps when their leases end", "last_cycle", last, "lease", f.cfg.Lease)
		}
		return
	}
	if f.paused {
		f.paused = false
		f.log.Info("control loop running again: GPU lease renewals resumed")
	}
	f.publish(f.plan(now), now)
	f.log.Debug("leases renewed", "why", why)
}

// Apply is the group's actuator: it splits cmd.CapKW between the nodes,
// sends the grants and waits for the live nodes' acknowledgements.
func (f *Fleet) Apply(ctx context.Context, cmd actuator.Command) (actuator.Result, error) {
	now := time.Now()
	f.mu.Lock()
	f.capW, f.hasCap = cmd.CapKW*1000, true
	grants := f.plan(now)
	f.publish(grants, now)
	want := map[string]uint64{}
	for _, g := range grants {
		if n := f.nodes[g.Node]; !n.stale {
			want[g.Node] = g.Seq
		}
	}
	f.mu.Unlock()

	wait := time.NewTimer(ackWait)
	defer wait.Stop()
	for {
		res, missing, err := f.result(want)
		if len(missing) == 0 {
			return res, err
		}
		select {
		case <-f.acked:
		case <-ctx.Done():
			return res, fmt.Errorf("no acknowledgement from %s: %w", strings.Join(missing, ", "), ctx.Err())
		case <-wait.C:
			return res, fmt.Errorf("no acknowledgement from %s within %s", strings.Join(missing, ", "), ackWait)
		}
	}
}

// result reads back what the nodes acknowledged of the grants in want
// (node -> seq): the total they hold, and the nodes still to answer.
func (f *Fleet) result(want map[string]uint64) (actuator.Result, []string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var res actuator.Result
	var missing, bad []string
	var heldW float64
	stale := 0
	for _, n := range f.sortedNodes() {
		if n.stale {
			stale++
			continue
		}
		seq, ok := want[n.id]
		if !ok {
			continue
		}
		if !n.hasAck || n.ack.Epoch != f.epoch || n.ack.Seq < seq {
			missing = append(missing, n.id)
			continue
		}
		switch n.ack.Result {
		case wire.Applied, wire.DryRun:
		default:
			bad = append(bad, fmt.Sprintf("%s %s: %s", n.id, n.ack.Result, n.ack.Reason))
		}
		for _, g := range n.ack.GPUs {
			heldW += math.Min(g.GrantedW, g.EnforcedW)
		}
	}
	res.CapKW = heldW / 1000
	res.Verified = len(missing) == 0 && len(bad) == 0 && len(want) > 0
	res.Detail = fmt.Sprintf("%d node(s) acknowledged, %d stale", len(want)-len(missing), stale)
	if len(want) == 0 {
		res.Detail = fmt.Sprintf("no live node to grant to; %d stale", stale)
	}
	var err error
	if len(bad) > 0 {
		err = errors.New(strings.Join(bad, "; "))
	}
	return res, missing, err
}

// plan splits the group's cap over the GPUs of the live nodes and returns
// one grant per node that can take one (under f.mu). A stale node is
// counted at its maximum and granted its floors: if it is alive it helps,
// and the budget never depends on it.
func (f *Fleet) plan(now time.Time) []wire.Grant {
	nodes := f.sortedNodes()
	reserved := f.unseenW()
	f.shares = f.shares[:0]
	for _, n := range nodes {
		if n.stale {
			reserved += f.worstW(n)
			continue
		}
		for _, g := range n.tel.GPUs {
			if !g.Throttleable {
				reserved += g.MaxW // it cannot be capped: count it whole
				continue
			}
			// Demand is what the GPU draws; one whose cap bites may want
			// more, so it asks for a tenth of its range above its draw, and
			// its share grows step by step until its cap stops biting.
			d := g.MaxW
			if g.PowerW != nil {
				d = *g.PowerW
				if g.PowerCapped {
					d += (g.MaxW - g.MinW) / 10
				}
			}
			f.shares = append(f.shares, Share{FloorW: g.MinW, CeilW: g.MaxW, DemandW: d})
		}
	}
	avail := f.capW - reserved
	var floors float64
	for _, s := range f.shares {
		floors += s.FloorW
	}
	if infeasible := avail < floors-1e-6; infeasible != f.infeasible {
		f.infeasible = infeasible
		if infeasible {
			f.log.Warn("group cap below the live GPUs' floors (stale nodes counted at their maximum): every GPU at its floor", "cap_kw", f.capW/1000, "reserved_kw", reserved/1000, "floors_kw", floors/1000)
		}
	}
	f.caps = Split(f.shares, avail, f.cfg.Split, f.caps)

	var out []wire.Grant
	k := 0
	for _, n := range nodes {
		if len(n.tel.GPUs) == 0 {
			continue // never heard: its GPUs are unknown; it holds its own safe cap
		}
		g := wire.Grant{Site: f.hub.site, Node: n.id, Group: f.o.Group, Epoch: f.epoch, Issued: now, LeaseMS: f.cfg.Lease.Milliseconds()}
		for _, gpu := range n.tel.GPUs {
			if !gpu.Throttleable {
				continue
			}
			w := gpu.MinW
			if !n.stale {
				w = f.caps[k]
				k++
			}
			g.Caps = append(g.Caps, wire.GPUCap{UUID: gpu.UUID, W: w})
		}
		if len(g.Caps) > 0 {
			out = append(out, g)
		}
	}
	return out
}

// publish numbers and sends the grants (under f.mu). While the broker
// connection is down nothing is queued: a grant is a lease, worthless once
// it has waited out its lease in a queue; the first renewal after the
// reconnection sends fresh ones.
func (f *Fleet) publish(grants []wire.Grant, now time.Time) {
	if !f.hub.client.Stats().Connected {
		if !f.offline {
			f.log.Warn("broker connection down: grants are not sent; nodes fall to their safe caps when their leases end")
		}
		f.offline = true
		return
	}
	for i := range grants {
		f.seq++
		g := &grants[i]
		g.Seq = f.seq
		b, err := json.Marshal(g)
		if err != nil {
			f.log.Error("cannot encode grant", "node", g.Node, "err", err)
			continue
		}
		if !f.hub.client.Publish(mqtt.Message{Topic: wire.Topic(f.hub.root, f.hub.site, g.Node, wire.KindGrant), Payload: b, QoS: 1}) {
			f.log.Warn("grant not queued (MQTT queue full or stopped)", "node", g.Node, "seq", g.Seq)
		}
		n := f.nodes[g.Node]
		n.sent = *g
		n.sentW = 0
		for _, c := range g.Caps {
			n.sentW += c.W
		}
	}
}

// worstW is what a node counts for while it is not live: its GPUs'
// maximum if it ever reported them, else the group's unit rating.
func (f *Fleet) worstW(n *nodeState) float64 {
	if n.maxW > 0 {
		return n.maxW
	}
	return f.unitW
}

// unseenW is the worst case of the nodes a pattern group expects but has
// not heard from yet (listed nodes are in f.nodes from the start).
func (f *Fleet) unseenW() float64 {
	if f.cfg.Pattern == "" {
		return 0
	}
	return float64(max(0, f.o.Units-len(f.nodes))) * f.unitW
}

func (f *Fleet) sortedNodes() []*nodeState {
	out := make([]*nodeState, 0, len(f.nodes))
	for _, n := range f.nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// evaluate re-judges staleness and writes the points.
func (f *Fleet) evaluate(now time.Time) {
	f.mu.Lock()
	came := false
	heard := 0
	for _, n := range f.sortedNodes() {
		if !n.heard.IsZero() {
			heard++
		}
		stale := n.heard.IsZero() || now.Sub(n.heard) > f.cfg.StaleAfter
		if stale == n.stale {
			continue
		}
		n.stale = stale
		if stale {
			f.log.Warn("GPU node stale: counted at its maximum power until it reports again", "node", n.id, "last_heard", n.heard, "worst_kw", f.worstW(n)/1000)
		} else {
			f.log.Info("GPU node live", "node", n.id, "power_kw", n.tel.PowerW/1000)
			came = true
		}
	}
	expected := len(f.cfg.Nodes)
	if f.cfg.Pattern != "" {
		expected = f.o.Units
	}
	ready := heard >= expected || (!f.started.IsZero() && now.Sub(f.started) >= f.cfg.StaleAfter)
	// Written under f.mu: the batch is reused, and two evaluations (the
	// tick, a telemetry message) must not interleave their writes.
	f.o.Store.Write(f.points(now))
	f.mu.Unlock()
	if ready {
		f.readyOnce.Do(func() { close(f.ready) })
	}
	if came {
		poke(f.wake)
	}
}

// points builds this instant's point updates (under f.mu).
func (f *Fleet) points(now time.Time) []point.Update {
	ts := now.UnixNano()
	good := func(id point.ID, v float64) point.Update {
		return point.Update{ID: id, Point: point.Point{Value: v, Quality: point.Good, Source: ts, Recv: ts}}
	}
	total := f.unseenW()
	stale := 0
	if f.cfg.Pattern != "" {
		stale = max(0, f.o.Units-len(f.nodes))
	}
	f.batch = f.batch[:0]
	for _, n := range f.sortedNodes() {
		ids, listed := f.pNode[n.id]
		if n.stale {
			total += f.worstW(n)
			stale++
			if listed {
				f.batch = append(f.batch, point.Update{ID: ids[0], Point: point.Point{Quality: point.Bad, Reason: point.CommError, Source: n.heard.UnixNano(), Recv: ts}})
			}
		} else {
			w := n.tel.PowerW
			for _, g := range n.tel.GPUs {
				if g.PowerW == nil {
					w += g.MaxW // an unread GPU counts at its maximum
				}
			}
			total += w
			if listed {
				f.batch = append(f.batch, good(ids[0], w/1000))
			}
		}
		if listed {
			f.batch = append(f.batch, good(ids[1], n.sentW/1000))
		}
	}
	f.batch = append(f.batch, good(f.pPower, total/1000), good(f.pStale, float64(stale)))
	return f.batch
}

// onTelemetry takes one node report.
func (f *Fleet) onTelemetry(id string, payload []byte) {
	var t wire.Telemetry
	if err := json.Unmarshal(payload, &t); err != nil {
		f.bad(id, "telemetry is not valid JSON: "+err.Error())
		return
	}
	if t.Node != id || t.Site != f.hub.site {
		f.bad(id, fmt.Sprintf("telemetry names node %q of site %q on node %q's topic; ignored", t.Node, t.Site, id))
		return
	}
	now := time.Now()
	if !t.TS.IsZero() && now.Sub(t.TS) > f.cfg.StaleAfter {
		// Already stale when it arrived: queued during an outage, or the
		// node's clock is behind. It proves nothing about now.
		f.bad(id, fmt.Sprintf("telemetry from %s arrived %s late (replayed after an outage, or the node's clock is behind); ignored", t.TS.Format(time.RFC3339Nano), now.Sub(t.TS).Round(time.Millisecond)))
		return
	}
	f.mu.Lock()
	n, ok := f.nodes[id]
	if !ok {
		n = &nodeState{id: id, stale: true}
		f.nodes[id] = n
		f.log.Info("GPU node joined the group", "node", id, "pattern", f.cfg.Pattern)
		if f.o.Units > 0 && len(f.nodes) > f.o.Units {
			f.log.Warn("more nodes match the group's pattern than its units count; its ceiling does not cover them", "nodes", len(f.nodes), "units", f.o.Units)
		}
	}
	n.heard, n.tel = now, t
	n.maxW = 0
	for _, g := range t.GPUs {
		n.maxW += g.MaxW
	}
	f.mu.Unlock()
	f.evaluate(now)
}

// onAck takes one acknowledgement.
func (f *Fleet) onAck(id string, payload []byte) {
	var a wire.Ack
	if err := json.Unmarshal(payload, &a); err != nil {
		f.bad(id, "acknowledgement is not valid JSON: "+err.Error())
		return
	}
	f.mu.Lock()
	n, ok := f.nodes[id]
	if ok && (a.Epoch == f.epoch || a.Result == wire.Rejected) {
		if a.Result != wire.Applied && a.Result != wire.DryRun {
			if a.Reason != n.lastBad {
				f.log.Warn("GPU node did not fully apply its grant", "node", id, "seq", a.Seq, "result", a.Result, "reason", a.Reason)
			}
			n.lastBad = a.Reason
		} else {
			n.lastBad = ""
		}
		if a.Epoch == f.epoch && a.Seq >= n.ack.Seq {
			n.ack, n.hasAck = a, true
		}
	}
	f.mu.Unlock()
	poke(f.acked)
}

func (f *Fleet) bad(id, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n, ok := f.nodes[id]; ok {
		if n.lastBad == msg {
			return
		}
		n.lastBad = msg
	}
	f.log.Warn("bad message from GPU node", "node", id, "problem", msg)
}

// Status returns every node's state, sorted by id.
func (f *Fleet) Status() []NodeStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []NodeStatus
	for _, n := range f.sortedNodes() {
		s := NodeStatus{ID: n.id, Live: !n.stale, Heard: n.heard, State: n.tel.State, GrantKW: n.sentW / 1000, AckSeq: n.ack.Seq, AckState: n.ack.Result, Reason: n.lastBad}
		if n.stale {
			s.PowerKW = f.worstW(n) / 1000
		} else {
			s.PowerKW = n.tel.PowerW / 1000
		}
		out = append(out, s)
	}
	return out
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

var _ actuator.Actuator = (*Fleet)(nil)
