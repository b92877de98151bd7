package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/drivers/mqtt/sparkplug"
	"github.com/siteagent/siteagent/safety"
)

// The site as a Sparkplug B edge node (node id: the site id): the node's
// own metrics carry the controller's decisions, capacity, events and the
// command interface; each load group and each source is a device.

// Node metric names.
const (
	spMode        = "site/mode"
	spBinding     = "site/binding"
	spBudget      = "site/budget_kw"
	spMeasured    = "site/measured_kw"
	spPlanned     = "site/planned_kw"
	spHeadroom    = "site/headroom_kw"
	spIntegral    = "site/integral_kw"
	spInfeasible  = "site/infeasible"
	spUnknown     = "site/unknown_inputs"
	spSummary     = "site/summary"
	spFreq        = "inputs/frequency_hz"
	spIslanded    = "inputs/islanded"
	spImport      = "inputs/import_kw"
	spSiteLoad    = "inputs/site_load_kw"
	spIslandCap   = "inputs/island_capacity_kw"
	spCurtail     = "inputs/curtail_target_kw"
	spCapHeadroom = "capacity/headroom_kw"
	spCapBinding  = "capacity/constraint"
	spCapUntil    = "capacity/until"
	spCapWhy      = "capacity/why"
	spCapHold     = "capacity/hold_until"
	spCapNext     = "capacity/next"
	spEvent       = "events/last"
	spAck         = "commands/ack"
	spActive      = "commands/active"
	spQueued      = "mqtt/queued"
	spDropped     = "mqtt/dropped"

	// Command metrics a host writes with an NCMD (all of one command in
	// one NCMD); they are in the NBIRTH, null, so hosts can offer them.
	spCmdFrom          = "commands/from"
	spCmdIssued        = "commands/issued"
	spCmdExpires       = "commands/expires"
	spCurtailID        = "commands/curtail/id"
	spCurtailTarget    = "commands/curtail/target_kw"
	spCurtailReduction = "commands/curtail/reduction_kw"
	spCurtailStart     = "commands/curtail/start"
	spCurtailDuration  = "commands/curtail/duration_s"
	spCurtailReason    = "commands/curtail/reason"
	spCancelID         = "commands/cancel/id"
	spCancelCancels    = "commands/cancel/cancels"
	spModeID           = "commands/mode/id"
	spModeHold         = "commands/mode/hold_restores"
	spModeDuration     = "commands/mode/duration_s"
)

var (
	dbl  = sparkplug.DataType_Double
	str  = sparkplug.DataType_String
	boo  = sparkplug.DataType_Boolean
	i32  = sparkplug.DataType_Int32
	i64  = sparkplug.DataType_Int64
	date = sparkplug.DataType_DateTime
)

func nodeDefs(stages []control.Stage) []sparkplug.Def {
	d := []sparkplug.Def{
		{Name: spMode, Type: str}, {Name: spBinding, Type: str}, {Name: spBudget, Type: dbl}, {Name: spMeasured, Type: dbl},
		{Name: spPlanned, Type: dbl}, {Name: spHeadroom, Type: dbl}, {Name: spIntegral, Type: dbl}, {Name: spInfeasible, Type: boo},
		{Name: spUnknown, Type: str}, {Name: spSummary, Type: str},
		{Name: spFreq, Type: dbl}, {Name: spIslanded, Type: boo}, {Name: spImport, Type: dbl}, {Name: spSiteLoad, Type: dbl},
		{Name: spIslandCap, Type: dbl}, {Name: spCurtail, Type: dbl},
		{Name: spCapHeadroom, Type: dbl}, {Name: spCapBinding, Type: str}, {Name: spCapUntil, Type: date}, {Name: spCapWhy, Type: str},
		{Name: spCapHold, Type: date}, {Name: spCapNext, Type: str},
		{Name: spEvent, Type: str}, {Name: spAck, Type: str}, {Name: spActive, Type: str},
		{Name: spQueued, Type: i64}, {Name: spDropped, Type: i64},
		{Name: spCmdFrom, Type: str}, {Name: spCmdIssued, Type: date}, {Name: spCmdExpires, Type: date},
		{Name: spCurtailID, Type: str}, {Name: spCurtailTarget, Type: dbl}, {Name: spCurtailReduction, Type: dbl},
		{Name: spCurtailStart, Type: date}, {Name: spCurtailDuration, Type: i64}, {Name: spCurtailReason, Type: str},
		{Name: spCancelID, Type: str}, {Name: spCancelCancels, Type: str},
		{Name: spModeID, Type: str}, {Name: spModeHold, Type: boo}, {Name: spModeDuration, Type: i64},
	}
	for _, s := range stages {
		d = append(d, sparkplug.Def{Name: "stages/" + s.Name, Type: str})
	}
	return d
}

// Group device metrics.
var groupDefs = []sparkplug.Def{
	{Name: "control/kind", Type: str}, {Name: "control/cut_order", Type: i32}, {Name: "control/units", Type: i32},
	{Name: "control/ceiling_kw", Type: dbl}, {Name: "control/floor_kw", Type: dbl},
	{Name: "control/units_on", Type: i32}, {Name: "control/cap_kw", Type: dbl}, {Name: "control/max_kw", Type: dbl},
	{Name: "control/measured_kw", Type: dbl}, {Name: "control/reason", Type: str}, {Name: "control/why", Type: str},
	{Name: "capacity/draw_kw", Type: dbl}, {Name: "capacity/room_kw", Type: dbl}, {Name: "capacity/free_kw", Type: dbl},
	{Name: "capacity/available_kw", Type: dbl},
}

// sparkSite maps the agent's state onto a sparkplug.Node.
type sparkSite struct {
	node   *sparkplug.Node
	idx    map[string]int // node metric name -> index
	groups []int          // group -> device index
	points []sparkPoint   // by point id
	urgent bool           // a discrete metric changed: flush now
}

type sparkPoint struct {
	dev, idx int
	boolean  bool
	stale    time.Duration
}

// newSparkSite defines the node and its devices from the site file and the
// point store (every source's points are registered by now).
func newSparkSite(a *Agent, cfg sparkplug.NodeConfig, onCmd func(string, []sparkplug.CommandMetric)) (*sparkSite, error) {
	defined := a.cfg.points()
	type devDef struct {
		id   string
		defs []sparkplug.Def
	}
	var devs []*devDef
	byID := map[string]*devDef{}
	get := func(id string) *devDef {
		if d := byID[id]; d != nil {
			return d
		}
		d := &devDef{id: id}
		byID[id] = d
		devs = append(devs, d)
		return d
	}
	for _, g := range a.lim.Groups {
		d := get(g.Name)
		d.defs = append(d.defs, groupDefs...)
	}
	names := a.store.Names()
	type pointAt struct {
		dev, name string
		boolean   bool
	}
	var pts []pointAt
	for _, full := range names {
		src, name, ok := strings.Cut(full, ".")
		if !ok || name == "" {
			src, name = "points", full
		}
		info := defined[full]
		pts = append(pts, pointAt{src, name, info.meta.Unit == "bool"})
	}
	seen := map[string]bool{}
	for _, p := range pts {
		d := get(p.dev)
		key := p.dev + "/" + p.name
		if seen[key] || strings.HasPrefix(p.name, "control/") || strings.HasPrefix(p.name, "capacity/") {
			a.log.Warn("sparkplug: point name clashes with a group metric; left out of the device", "point", p.dev+"."+p.name)
			continue
		}
		seen[key] = true
		t := dbl
		if p.boolean {
			t = boo
		}
		d.defs = append(d.defs, sparkplug.Def{Name: p.name, Type: t})
	}
	var devices []sparkplug.Device
	for _, d := range devs {
		if strings.ContainsAny(d.id, "/+#") {
			return nil, fmt.Errorf("sparkplug: device %q cannot be one topic level", d.id)
		}
		devices = append(devices, sparkplug.Device{ID: d.id, Metrics: d.defs})
	}
	n, err := sparkplug.NewNode(cfg, nodeDefs(a.lim.Stages), devices, onCmd, a.log.With("part", "sparkplug"))
	if err != nil {
		return nil, err
	}
	s := &sparkSite{node: n, idx: map[string]int{}, groups: make([]int, len(a.lim.Groups)), points: make([]sparkPoint, len(names))}
	for _, d := range nodeDefs(a.lim.Stages) {
		s.idx[d.Name] = n.NodeMetric(d.Name)
	}
	for g, grp := range a.lim.Groups {
		s.groups[g] = n.Device(grp.Name)
	}
	for id, full := range names {
		p := pts[id]
		dev, idx := n.DeviceMetric(p.dev, p.name)
		info := defined[full]
		s.points[id] = sparkPoint{dev: dev, idx: idx, boolean: p.boolean, stale: staleAfter(info.meta, info.period)}
	}
	// Static group metrics.
	now := time.Now()
	for g, grp := range a.lim.Groups {
		s.setDev(g, "control/kind", sparkplug.Text(grp.Kind.String()), now)
		s.setDev(g, "control/cut_order", sparkplug.Number(float64(grp.CutOrder)), now)
		s.setDev(g, "control/units", sparkplug.Number(float64(len(grp.UnitKW))), now)
		s.setDev(g, "control/ceiling_kw", sparkplug.Number(grp.CeilingKW), now)
		s.setDev(g, "control/floor_kw", sparkplug.Number(grp.FloorKW), now)
	}
	s.urgent = false
	return s, nil
}

func (s *sparkSite) set(name string, v sparkplug.Value, at time.Time) {
	i, ok := s.idx[name]
	if !ok || i < 0 {
		return
	}
	if s.node.Set(-1, i, v, at) && (v.Null || v.Str != "" || !isDoubleMetric(name)) {
		s.urgent = true
	}
}

// groupIdx: every group device's metrics begin with groupDefs, in order.
var groupIdx = func() map[string]int {
	m := map[string]int{}
	for i, d := range groupDefs {
		m[d.Name] = i
	}
	return m
}()

func (s *sparkSite) setDev(g int, name string, v sparkplug.Value, at time.Time) {
	i, ok := groupIdx[name]
	if !ok {
		return
	}
	if s.node.Set(s.groups[g], i, v, at) && !strings.HasSuffix(name, "_kw") {
		s.urgent = true
	}
}

func isDoubleMetric(name string) bool {
	return strings.HasSuffix(name, "_kw") || strings.HasSuffix(name, "_hz")
}

func num(v float64, ok bool) sparkplug.Value {
	if !ok {
		return sparkplug.Null()
	}
	if p := kw(v); p != nil {
		return sparkplug.Number(*p)
	}
	return sparkplug.Null()
}

// record takes one cycle's decision.
func (s *sparkSite) record(a *Agent, r *Record, cap *CapacityReport) {
	p, in, at := &r.Plan, &r.Inputs, r.Plan.At
	bound := p.Binding != control.ConstraintNone
	s.set(spMode, sparkplug.Text(p.Mode.String()), at)
	s.set(spBinding, sparkplug.Text(p.Binding.String()), at)
	s.set(spBudget, num(p.BudgetKW, bound), at)
	s.set(spMeasured, num(p.MeasuredKW, bound), at)
	s.set(spPlanned, num(p.PlannedKW, bound), at)
	s.set(spHeadroom, num(p.HeadroomKW, bound), at)
	s.set(spIntegral, num(p.IntegralKW, true), at)
	s.set(spInfeasible, sparkplug.Bool(p.Infeasible), at)
	s.set(spUnknown, sparkplug.Text(strings.Join(p.Unknown.Names(), ",")), at)
	s.set(spFreq, num(in.FrequencyHz, in.FrequencyOK), at)
	s.set(spIslanded, sparkplug.Bool(in.Islanded), at)
	s.set(spImport, num(in.ImportKW, in.ImportOK), at)
	s.set(spSiteLoad, num(in.SiteLoadKW, in.SiteLoadOK), at)
	s.set(spIslandCap, num(in.IslandCapacityKW, true), at)
	s.set(spCurtail, num(p.CurtailKW, true), at)
	for i, ph := range p.Stages {
		s.set("stages/"+a.lim.Stages[i].Name, sparkplug.Text(ph.String()), at)
	}
	lim := a.ctrl.Limits()
	for g := range p.Groups {
		gp := &p.Groups[g]
		units := gp.UnitsOn
		if lim.Groups[g].Kind == control.Throttle {
			units = len(lim.Groups[g].UnitKW)
		}
		s.setDev(g, "control/units_on", sparkplug.Number(float64(units)), at)
		s.setDev(g, "control/cap_kw", num(gp.CapKW, true), at)
		s.setDev(g, "control/max_kw", num(gp.MaxKW, true), at)
		s.setDev(g, "control/measured_kw", num(in.Groups[g].MeasuredKW, in.Groups[g].MeasuredOK), at)
		s.setDev(g, "control/reason", sparkplug.Text(gp.Reason.String()), at)
		if cap != nil {
			c := &cap.Groups[g]
			s.setDev(g, "capacity/draw_kw", num(c.DrawKW, true), at)
			s.setDev(g, "capacity/room_kw", num(c.RoomKW, true), at)
			s.setDev(g, "capacity/free_kw", num(c.FreeKW, true), at)
			s.setDev(g, "capacity/available_kw", num(c.AvailableKW, true), at)
		}
	}
	if cap != nil {
		s.set(spCapHeadroom, numPtr(cap.HeadroomKW), at)
		s.set(spCapBinding, sparkplug.Text(cap.Constraint), at)
		s.set(spCapUntil, timePtr(cap.Until), at)
		s.set(spCapWhy, sparkplug.Text(cap.Why), at)
		s.set(spCapHold, timePtr(cap.HoldUntil), at)
		next := ""
		if cap.Next != nil {
			b, _ := json.Marshal(cap.Next)
			next = string(b)
		}
		s.set(spCapNext, sparkplug.Text(next), at)
	}
}

// explain sets the sentences (summary, why) that only change when a
// decision does: they cost a string build each.
func (s *sparkSite) explain(a *Agent, r *Record) {
	at := r.Plan.At
	s.set(spSummary, sparkplug.Text(a.ctrl.Summary(&r.Plan)), at)
	for g := range r.Plan.Groups {
		s.setDev(g, "control/why", sparkplug.Text(a.ctrl.Why(&r.Plan, g)), at)
	}
}

func numPtr(v *float64) sparkplug.Value {
	if v == nil {
		return sparkplug.Null()
	}
	return sparkplug.Number(*v)
}

func timePtr(t *time.Time) sparkplug.Value {
	if t == nil {
		return sparkplug.Null()
	}
	return sparkplug.Time(*t)
}

// points takes a snapshot of every point.
func (s *sparkSite) pointsAt(snap []point.Point, now time.Time) {
	for id, p := range snap {
		sp := s.points[id]
		if sp.idx < 0 {
			continue
		}
		var v sparkplug.Value
		switch {
		case p.Source == 0 || p.Quality == point.Bad:
			v = sparkplug.Value{Null: true, Quality: sparkplug.QualityBad}
		case sp.boolean:
			v = sparkplug.Bool(p.Value != 0)
		default:
			v = num(p.Value, true)
		}
		if !v.Null && (p.Quality != point.Good || (sp.stale > 0 && p.Age(now) > sp.stale)) {
			v.Quality = sparkplug.QualityStale
		}
		at := now
		if p.Source != 0 {
			at = time.Unix(0, p.Source)
		}
		s.node.Set(sp.dev, sp.idx, v, at)
	}
}

// publishNow sends one string metric at once (events, acks).
func (s *sparkSite) publishNow(name, text string, at time.Time) {
	if i, ok := s.idx[name]; ok && i >= 0 {
		s.node.Publish(-1, i, sparkplug.Text(text), at)
	}
}

// commandFromMetrics reads the command metrics of one NCMD into a command,
// and renders them as JSON for the audit log.
func commandFromMetrics(ms []sparkplug.CommandMetric) (safety.Command, json.RawMessage, error) {
	var c safety.Command
	raw := map[string]any{}
	var errs []string
	types := map[string]bool{}
	for _, m := range ms {
		if m.Name == "" {
			errs = append(errs, m.Value.Str)
			continue
		}
		if m.Value.Null {
			raw[m.Name] = nil
		} else if m.Value.Str != "" || m.Type == str {
			raw[m.Name] = m.Value.Str
		} else {
			raw[m.Name] = m.Value.Num
		}
		if m.Type == sparkplug.DataType_Unknown {
			errs = append(errs, m.Name+": "+m.Value.Str)
			continue
		}
		v := m.Value
		ms := func() time.Time { return time.UnixMilli(int64(v.Num)).UTC() }
		dur := func() safety.Duration { return safety.Duration(time.Duration(v.Num * float64(time.Second))) }
		f := v.Num
		switch m.Name {
		case spCmdFrom:
			c.From = v.Str
		case spCmdIssued:
			c.Issued = ms()
		case spCmdExpires:
			t := ms()
			c.Expires = &t
		case spCurtailID:
			c.ID, types[safety.CommandCurtail] = v.Str, true
		case spCurtailTarget:
			c.TargetKW = &f
		case spCurtailReduction:
			c.ReductionKW = &f
		case spCurtailStart:
			t := ms()
			c.Start = &t
		case spCurtailDuration:
			c.Duration = dur()
		case spCurtailReason:
			c.Reason = v.Str
		case spCancelID:
			c.ID, types[safety.CommandCancel] = v.Str, true
		case spCancelCancels:
			c.Cancels = v.Str
		case spModeID:
			c.ID, types[safety.CommandMode] = v.Str, true
		case spModeHold:
			b := v.Num != 0
			c.HoldRestores = &b
		case spModeDuration:
			c.Duration = dur()
		default:
			errs = append(errs, "unknown command metric "+m.Name)
		}
	}
	rawJSON, _ := json.Marshal(raw)
	if len(errs) > 0 {
		sort.Strings(errs)
		return c, rawJSON, errors.New("schema: " + strings.Join(errs, "; "))
	}
	switch len(types) {
	case 0:
		return c, rawJSON, errors.New("schema: no command id (commands/curtail/id, commands/cancel/id or commands/mode/id)")
	case 1:
		for t := range types {
			c.Type = t
		}
	default:
		return c, rawJSON, errors.New("schema: one command per NCMD: give only one of the curtail, cancel and mode ids")
	}
	return c, rawJSON, nil
}
