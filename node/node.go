// Package node is the node role of siteagent (`siteagent node`): one per
// GPU server. It takes power grants from the site controller over MQTT,
// holds its GPUs at the granted caps through NVML, acknowledges what took
// effect, and reports its GPUs' telemetry.
//
// A grant is a lease. When it runs out unrenewed (site controller down,
// broker down, network cut) the node moves its GPUs to its configured safe
// cap on its own: the fail-safe lives here, on the node, not only in the
// controller. On start the node re-applies its last grant (if its lease
// still runs) or the safe cap before it reports ready.
//
// Everything that changes the GPUs happens on one goroutine (the loop):
// grants, lease expiry, drift re-application. The GPUs are read on another,
// so a slow read (NVML calls take 10-20 ms each) never delays a grant.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/node/wire"
)

// GPUs is what the node needs of the NVML driver (*nvml.Host).
type GPUs interface {
	GPUs() []nvml.GPU
	Read(dst []nvml.Reading) []nvml.Reading
	SetCaps(want []uint32) []nvml.SetResult
	Close(restoreDefault bool) error
	DriverVersion() string
}

var _ GPUs = (*nvml.Host)(nil)

// Options are the parts of a run that do not come from the node file.
type Options struct {
	Log     *slog.Logger
	Version string
	// Notify sends a systemd notification; nil sends nothing.
	Notify func(state string)
	// WatchdogInterval: WATCHDOG=1 this often while the loop runs; 0: off.
	WatchdogInterval time.Duration
	// OnGrant is called after each grant is handled (tests, benchmarks).
	OnGrant func(GrantTiming)
}

// GrantTiming is how long one grant took.
type GrantTiming struct {
	Received time.Time // the grant reached the node
	CapsSet  time.Time // the last set call returned; zero when nothing changed
	Acked    time.Time // the acknowledgement was queued
	Result   string
	Ack      wire.Ack
}

// Node is one running node role.
type Node struct {
	cfg    *Config
	opt    Options
	log    *slog.Logger
	gpus   GPUs
	info   []nvml.GPU
	byUUID map[string]int
	safe   []uint32 // safe cap per GPU (mW; 0: not throttleable)
	client *mqtt.Client
	topic  func(kind string) string
	// send publishes and stats reads the connection's counters: the MQTT
	// client's unless a test replaces them.
	send  func(m mqtt.Message) bool
	stats func() mqtt.Stats

	inbox    chan inbound
	readings chan []nvml.Reading
	saves    chan savedGrant

	// Owned by the loop.
	desired    []uint32
	state      string
	reason     string
	leaseUntil time.Time
	epoch      int64
	seq        uint64
	held       []bool // another limiter holds the GPU below its cap (reported once)
	drifted    []bool
	lease      *time.Timer
	applied    time.Time // when the last apply returned
	reconnects uint64

	mu   sync.Mutex // guards view
	view View
}

type inbound struct {
	payload  []byte
	received time.Time
}

// View is a copy of the node's state, for status pages and tests.
type View struct {
	State      string
	Reason     string
	LeaseUntil time.Time
	Epoch      int64
	Seq        uint64
	DesiredMW  []uint32
}

// New prepares a node on an opened set of GPUs. It connects nothing.
func New(cfg *Config, gpus GPUs, opt Options) (*Node, error) {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	n := &Node{cfg: cfg, opt: opt, log: opt.Log, gpus: gpus, info: gpus.GPUs(), byUUID: map[string]int{},
		inbox: make(chan inbound, 64), readings: make(chan []nvml.Reading, 1), saves: make(chan savedGrant, 1), state: wire.StateStarting}
	if len(n.info) == 0 {
		return nil, errors.New("no GPU found on this host: nothing to control")
	}
	for i, g := range n.info {
		if g.UUID != "" {
			n.byUUID[g.UUID] = i
		}
		s := uint32(0)
		if g.Throttleable {
			s = cfg.Lease.SafeCapMW(g.MinMW, g.MaxMW)
		}
		n.safe = append(n.safe, s)
	}
	n.desired = make([]uint32, len(n.info))
	n.held = make([]bool, len(n.info))
	n.drifted = make([]bool, len(n.info))
	mc := cfg.MQTT
	// The node's topics live under <root>/<site>/nodes/<node>/, so its
	// status and Last Will never touch the site controller's.
	mc.TopicRoot = wire.NodesRoot(cfg.MQTT.TopicRoot, cfg.Node.Site)
	c, err := mqtt.New(mc, cfg.Node.ID, n.log.With("part", "mqtt"))
	if err != nil {
		return nil, err
	}
	n.client = c
	n.send, n.stats = c.Publish, c.Stats
	n.topic = func(kind string) string { return wire.Topic(cfg.MQTT.TopicRoot, cfg.Node.Site, cfg.Node.ID, kind) }
	n.lease = time.NewTimer(time.Hour)
	n.lease.Stop()
	return n, nil
}

// View returns a copy of the node's state.
func (n *Node) View() View {
	n.mu.Lock()
	defer n.mu.Unlock()
	v := n.view
	v.DesiredMW = append([]uint32(nil), v.DesiredMW...)
	return v
}

func (n *Node) publishView() {
	n.mu.Lock()
	n.view = View{State: n.state, Reason: n.reason, LeaseUntil: n.leaseUntil, Epoch: n.epoch, Seq: n.seq, DesiredMW: append([]uint32(nil), n.desired...)}
	n.mu.Unlock()
}

// Run applies the starting caps, reports ready, and serves grants until
// ctx ends; then it applies the restore policy and disconnects.
func (n *Node) Run(ctx context.Context) error {
	if err := n.start(time.Now()); err != nil {
		return err
	}
	if err := n.client.Subscribe(n.topic(wire.KindGrant), 1, n.receive); err != nil {
		return err
	}
	// The client outlives ctx: the node's last words (the stopped event,
	// the offline status) go out in stop().
	if err := n.client.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	n.setStatus()
	n.publishInventory()
	n.event(wire.EventStarted, fmt.Sprintf("node started in state %s: %s", n.state, n.reason), -1)
	n.notify("READY=1")
	n.log.Info("node ready", "site", n.cfg.Node.Site, "node", n.cfg.Node.ID, "gpus", len(n.info), "state", n.state, "reason", n.reason)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); n.readLoop(ctx) }()
	go func() { defer wg.Done(); n.saveLoop(ctx) }()
	n.loop(ctx)
	wg.Wait()
	n.notify("STOPPING=1")
	n.stop()
	return nil
}

// start puts the GPUs where they must be before the node reports ready:
// its last grant while that lease still runs, else the safe cap.
func (n *Node) start(now time.Time) error {
	want := n.safeCaps(nil)
	n.state, n.reason = wire.StateSafe, "no grant yet: holding the safe cap"
	if sg, err := n.loadGrant(); err != nil {
		n.log.Warn("last grant not re-applied", "file", n.cfg.Node.StateFile, "err", err)
		n.reason = "no usable saved grant (" + err.Error() + "): holding the safe cap"
	} else if sg != nil {
		if d, err := n.restoreGrant(sg, now); err != nil {
			n.reason = "saved grant not re-applied (" + err.Error() + "): holding the safe cap"
		} else {
			want = d.want
			n.state, n.reason = wire.StateGranted, "re-applied the saved grant (seq "+fmt.Sprint(sg.Seq)+") on start"
			n.leaseUntil, n.epoch, n.seq = d.leaseUntil, sg.Epoch, sg.Seq
			n.lease.Reset(d.leaseUntil.Sub(now))
		}
	}
	res, _ := n.apply(want)
	denied, tried := 0, 0
	for _, r := range res {
		if r.WantMW == 0 {
			continue
		}
		tried++
		if errors.Is(r.Err, nvml.ErrNoPermission) {
			denied++
		}
	}
	if tried > 0 && denied == tried {
		return fmt.Errorf("cannot set any GPU power limit: %w", nvml.ErrNoPermission)
	}
	n.publishView()
	return nil
}

// safeCaps is every GPU's safe cap, never above cur (nil: the safe caps).
func (n *Node) safeCaps(cur []uint32) []uint32 {
	want := make([]uint32, len(n.info))
	for i := range want {
		if n.safe[i] != 0 {
			want[i] = n.safeFrom(i, cur)
		}
	}
	return want
}

// apply sets the caps and remembers them as the node's desired state.
func (n *Node) apply(want []uint32) ([]nvml.SetResult, time.Time) {
	res := n.gpus.SetCaps(want)
	defer func() { n.applied = time.Now() }()
	var last time.Time
	for i, r := range res {
		if r.SetAt.After(last) {
			last = r.SetAt
		}
		if i < len(want) && want[i] != 0 {
			n.desired[i] = want[i]
		}
		if r.Err != nil {
			n.log.Error("GPU power cap not set", "gpu", i, "uuid", n.info[i].UUID, "cap_w", float64(r.WantMW)/1000, "err", r.Err)
		}
		n.noteHeld(i, r.HeldElsewhere, r.EnforcedMW)
	}
	return res, last
}

// noteHeld reports once when another limiter starts or stops holding GPU i
// below its cap: the node does not fight it.
func (n *Node) noteHeld(i int, held bool, enforced uint32) {
	if held == n.held[i] {
		return
	}
	n.held[i] = held
	if held {
		text := fmt.Sprintf("GPU %d is held at %.0f W by another limiter, below its %.0f W cap; not fighting it", i, float64(enforced)/1000, float64(n.desired[i])/1000)
		n.log.Warn(text, "uuid", n.info[i].UUID)
		n.event(wire.EventHeldElsewhere, text, i)
	}
}

func (n *Node) loop(ctx context.Context) {
	var dog <-chan time.Time
	if n.opt.WatchdogInterval > 0 {
		t := time.NewTicker(n.opt.WatchdogInterval)
		defer t.Stop()
		dog = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-n.inbox:
			n.handle(in)
		case <-n.lease.C:
			n.expire(time.Now())
		case r := <-n.readings:
			n.observe(r)
		case <-dog:
			n.notify("WATCHDOG=1")
		}
	}
}

// receive runs on the MQTT client's goroutine: it only queues.
func (n *Node) receive(_ string, payload []byte) {
	in := inbound{payload: append([]byte(nil), payload...), received: time.Now()}
	select {
	case n.inbox <- in:
	default:
		n.log.Warn("grant dropped: too many waiting; the site renews it")
	}
}

// handle checks one grant and applies it, or refuses it and changes
// nothing.
func (n *Node) handle(in inbound) {
	g, err := decodeGrant(in.payload)
	var d *decided
	if err == nil {
		d, err = n.check(&g, in.received, n.desired)
	}
	t := GrantTiming{Received: in.received}
	if err != nil {
		ack := wire.Ack{Site: n.cfg.Node.Site, Node: n.cfg.Node.ID, Epoch: g.Epoch, Seq: g.Seq, TS: time.Now().UTC(), Result: wire.Rejected, Reason: err.Error()}
		n.log.Warn("grant rejected; GPUs keep their current caps", "seq", g.Seq, "reason", err.Error())
		n.publishJSON(wire.KindAck, 1, false, ack)
		n.event(wire.EventGrantRejected, "grant rejected: "+err.Error(), -1)
		t.Acked, t.Result, t.Ack = time.Now(), ack.Result, ack
		n.done(t)
		return
	}
	res, setAt := n.apply(d.want)
	t.CapsSet = setAt
	n.epoch, n.seq, n.leaseUntil = g.Epoch, g.Seq, d.leaseUntil
	n.lease.Reset(time.Until(d.leaseUntil))
	wasSafe := n.state != wire.StateGranted
	n.state, n.reason = wire.StateGranted, fmt.Sprintf("holding grant seq %d until %s", g.Seq, d.leaseUntil.UTC().Format(time.RFC3339Nano))
	ack := n.ackFor(d, res, time.Now())
	n.publishJSON(wire.KindAck, 1, false, ack)
	t.Acked, t.Result, t.Ack = time.Now(), ack.Result, ack
	if wasSafe {
		n.log.Info("grant taken", "seq", g.Seq, "lease_until", d.leaseUntil, "result", ack.Result)
		n.setStatus()
	}
	if d.note != "" {
		n.log.Warn(d.note, "seq", g.Seq)
	}
	n.publishView()
	n.queueSave(d)
	n.done(t)
}

func (n *Node) done(t GrantTiming) {
	if n.opt.OnGrant != nil {
		n.opt.OnGrant(t)
	}
}

// expire moves every GPU to its safe cap when the lease ran out.
func (n *Node) expire(now time.Time) {
	if n.state != wire.StateGranted || now.Before(n.leaseUntil) {
		if n.state == wire.StateGranted {
			n.lease.Reset(n.leaseUntil.Sub(now))
		}
		return
	}
	text := fmt.Sprintf("lease of grant seq %d ended at %s without renewal: GPUs fall to the safe cap", n.seq, n.leaseUntil.UTC().Format(time.RFC3339Nano))
	n.log.Warn(text)
	n.apply(n.safeCaps(n.desired))
	n.state, n.reason = wire.StateSafe, text
	n.event(wire.EventLeaseExpired, text, -1)
	n.setStatus()
	n.publishView()
}

// observe checks a fresh reading for drift, then publishes telemetry.
func (n *Node) observe(rs []nvml.Reading) {
	tol := uint32(1000)
	var drift []int
	for i, r := range rs {
		want := n.desired[i]
		// A reading begun before the last apply returned may show the
		// limits from before it: that is not drift.
		if want == 0 || r.SetDuring || r.At.Before(n.applied) {
			continue
		}
		if r.Has&nvml.HasLimit != 0 && !within(r.LimitMW, want, tol) {
			drift = append(drift, i)
			continue
		}
		n.drifted[i] = false
		if r.Has&nvml.HasEnforced != 0 {
			n.noteHeld(i, r.EnforcedMW+tol <= want, r.EnforcedMW)
		}
	}
	if len(drift) > 0 && !n.cfg.GPU.DryRun {
		for _, i := range drift {
			text := fmt.Sprintf("GPU %d power limit drifted to %.0f W from its %.0f W cap (driver reload, reboot or another tool); re-applied", i, float64(rs[i].LimitMW)/1000, float64(n.desired[i])/1000)
			n.log.Warn(text, "uuid", n.info[i].UUID)
			if !n.drifted[i] {
				n.event(wire.EventDrift, text, i)
			}
			n.drifted[i] = true
		}
		n.apply(n.desired)
	}
	s := n.stats()
	if s.Reconnects != n.reconnects {
		// A broker that restarted without persistence lost the retained
		// inventory: send it again.
		n.reconnects = s.Reconnects
		n.publishInventory()
	}
	// Telemetry is only worth sending now: none is queued while the
	// broker is away (the site would take a late report for a live node).
	if s.Connected {
		n.publishJSON(wire.KindTelemetry, 0, false, n.telemetry(rs))
	}
}

func within(a, b, tol uint32) bool {
	if a > b {
		return a-b < tol
	}
	return b-a < tol
}

// readLoop reads the GPUs every telemetry period and hands the readings to
// the loop (the newest wins if the loop is busy).
func (n *Node) readLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.Node.TelemetryPeriod)
	defer t.Stop()
	for {
		rs := n.gpus.Read(nil)
		select {
		case n.readings <- rs:
		default:
			select {
			case <-n.readings:
			default:
			}
			n.readings <- rs
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// stop applies the restore policy and disconnects.
func (n *Node) stop() {
	restoreDefault := false
	switch n.cfg.GPU.RestoreOnExit {
	case RestoreSafe:
		n.apply(n.safeCaps(n.desired))
	case RestoreDefault:
		restoreDefault = true
	}
	n.event(wire.EventStopped, "node stopped; on exit: "+n.cfg.GPU.RestoreOnExit, -1)
	n.client.Stop()
	if err := n.gpus.Close(restoreDefault); err != nil {
		n.log.Error("restoring GPUs on exit", "err", err)
	}
	n.log.Info("node stopped", "restore_on_exit", n.cfg.GPU.RestoreOnExit)
}

func (n *Node) notify(s string) {
	if n.opt.Notify != nil {
		n.opt.Notify(s)
	}
}

func (n *Node) publishJSON(kind string, qos byte, retain bool, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		n.log.Error("cannot encode", "kind", kind, "err", err)
		return
	}
	n.send(mqtt.Message{Topic: n.topic(kind), Payload: b, QoS: qos, Retain: retain})
}

func (n *Node) event(kind, text string, gpu int) {
	e := wire.Event{Site: n.cfg.Node.Site, Node: n.cfg.Node.ID, TS: time.Now().UTC(), Kind: kind, Text: text}
	if gpu >= 0 {
		e.GPU = &gpu
	}
	n.publishJSON(wire.KindEvents, 1, false, e)
}

func (n *Node) setStatus() {
	b, _ := json.Marshal(struct {
		State     string    `json:"state"`
		Site      string    `json:"site"`
		Node      string    `json:"node"`
		NodeState string    `json:"node_state"`
		Version   string    `json:"version"`
		TS        time.Time `json:"ts"`
	}{"online", n.cfg.Node.Site, n.cfg.Node.ID, n.state, n.opt.Version, time.Now().UTC()})
	n.client.SetStatus(b)
}

func (n *Node) publishInventory() {
	inv := wire.Inventory{Site: n.cfg.Node.Site, Node: n.cfg.Node.ID, TS: time.Now().UTC(), Version: n.opt.Version,
		Driver: n.gpus.DriverVersion(), Backend: n.cfg.GPU.Backend, DryRun: n.cfg.GPU.DryRun}
	for i, g := range n.gpus.GPUs() {
		inv.SafeCapW = append(inv.SafeCapW, float64(n.safe[i])/1000)
		inv.GPUs = append(inv.GPUs, wire.InventoryGPU{Index: g.Index, UUID: g.UUID, Name: g.Name, MinW: float64(g.MinMW) / 1000, MaxW: float64(g.MaxMW) / 1000,
			DefaultW: float64(g.DefaultMW) / 1000, Throttleable: g.Throttleable, Why: g.Why, InstantPower: g.InstantPower})
	}
	n.publishJSON(wire.KindInventory, 1, true, inv)
}

// telemetry builds a report from readings and the node's state.
func (n *Node) telemetry(rs []nvml.Reading) wire.Telemetry {
	t := wire.Telemetry{Site: n.cfg.Node.Site, Node: n.cfg.Node.ID, TS: time.Now().UTC(), State: n.state, Reason: n.reason,
		GrantEpoch: n.epoch, GrantSeq: n.seq, DryRun: n.cfg.GPU.DryRun}
	if n.state == wire.StateGranted {
		lu := n.leaseUntil.UTC()
		t.LeaseUntil = &lu
	}
	info := n.gpus.GPUs() // throttleable can change at run time
	w := func(mw uint32) *float64 { v := float64(mw) / 1000; return &v }
	for i, g := range info {
		gt := wire.GPUTelemetry{Index: i, UUID: g.UUID, Throttleable: g.Throttleable, MinW: float64(g.MinMW) / 1000, MaxW: float64(g.MaxMW) / 1000,
			GrantedW: float64(n.desired[i]) / 1000, HeldElsewhere: n.held[i]}
		if i < len(rs) {
			r := &rs[i]
			if r.Has&nvml.HasPower != 0 {
				gt.PowerW = w(r.PowerMW)
				t.PowerW += *gt.PowerW
			} else {
				t.PowerUnknown++
			}
			if r.Has&nvml.HasEnergy != 0 {
				v := float64(r.EnergyMJ) / 1000
				gt.EnergyJ = &v
			}
			if r.Has&nvml.HasEnforced != 0 {
				gt.EnforcedW = w(r.EnforcedMW)
			}
			if r.Has&nvml.HasLimit != 0 {
				gt.LimitW = w(r.LimitMW)
			}
			if r.Has&nvml.HasTemperature != 0 {
				v := float64(r.TempC)
				gt.TempC = &v
			}
			if r.Has&nvml.HasUtilization != 0 {
				u, m := float64(r.UtilPct), float64(r.MemUtilPct)
				gt.UtilPct, gt.MemUtilPct = &u, &m
			}
			if r.Has&nvml.HasClockEvents != 0 {
				ev := r.ClockEvents
				gt.ClockEvents = &ev
				gt.PowerCapped = r.PowerCapped()
			}
			if r.Err != nil {
				gt.Error = r.Err.Error()
			}
		} else {
			t.PowerUnknown++
		}
		t.GPUs = append(t.GPUs, gt)
	}
	return t
}
