package agent

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/siteagent/siteagent/control"
	"github.com/siteagent/siteagent/drivers/opcua"
)

// metrics are updated by the publisher goroutine from cycle records, never
// from the control path.
type metrics struct {
	a        *Agent
	reg      *prometheus.Registry
	cycles   prometheus.Counter
	woken    prometheus.Counter
	cycleDur prometheus.Histogram
	mode     *prometheus.GaugeVec
	budget   prometheus.Gauge
	headroom prometheus.Gauge
	capKW    *prometheus.GaugeVec
	unitsOn  *prometheus.GaugeVec
	sources  *prometheus.GaugeVec
	queue    *prometheus.GaugeVec
	lastMode control.Mode
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{a: a, reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.cycles = prometheus.NewCounter(prometheus.CounterOpts{Name: "siteagent_cycles_total", Help: "Control cycles completed."})
	m.woken = prometheus.NewCounter(prometheus.CounterOpts{Name: "siteagent_cycles_woken_total", Help: "Cycles run early by a trigger point."})
	m.cycleDur = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "siteagent_cycle_seconds", Help: "Compute time of one control cycle.",
		Buckets: []float64{5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3}})
	m.mode = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siteagent_mode", Help: "1 for the controller's current mode."}, []string{"mode"})
	m.budget = prometheus.NewGauge(prometheus.GaugeOpts{Name: "siteagent_budget_kw", Help: "Budget of the binding constraint."})
	m.headroom = prometheus.NewGauge(prometheus.GaugeOpts{Name: "siteagent_headroom_kw", Help: "Headroom under the binding budget after the plan."})
	m.capKW = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siteagent_group_cap_kw", Help: "Planned cap of each load group."}, []string{"group"})
	m.unitsOn = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siteagent_group_units_on", Help: "Planned running units of each shed group."}, []string{"group"})
	m.sources = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siteagent_source", Help: "Source counters (Modbus: requests, errors, reconnects, connected; OPC UA: sessions, errors, missed_updates, connected)."}, []string{"source", "what"})
	m.queue = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "siteagent_mqtt", Help: "MQTT queue counters (queued, sent, dropped, connected) and cycle records dropped."}, []string{"what"})
	for _, c := range []prometheus.Collector{m.cycles, m.woken, m.cycleDur, m.mode, m.budget, m.headroom, m.capKW, m.unitsOn, m.sources, m.queue} {
		f(c)
	}
	for md := control.ModeNormal; md <= control.ModeFailSafe; md++ {
		m.mode.WithLabelValues(md.String()).Set(0)
	}
	m.mode.WithLabelValues(control.ModeNormal.String()).Set(1)
	return m
}

func (m *metrics) observeCycle(r *Record) {
	m.cycles.Inc()
	if r.Woken {
		m.woken.Inc()
	}
	m.cycleDur.Observe(r.Took.Seconds())
	if r.Plan.Mode != m.lastMode {
		m.mode.WithLabelValues(m.lastMode.String()).Set(0)
		m.mode.WithLabelValues(r.Plan.Mode.String()).Set(1)
		m.lastMode = r.Plan.Mode
	}
	if r.Plan.Binding != control.ConstraintNone {
		m.budget.Set(r.Plan.BudgetKW)
		m.headroom.Set(r.Plan.HeadroomKW)
	}
	lim := m.a.ctrl.Limits()
	for g := range r.Plan.Groups {
		name := lim.Groups[g].Name
		m.capKW.WithLabelValues(name).Set(r.Plan.Groups[g].CapKW)
		if lim.Groups[g].Kind == control.Shed {
			m.unitsOn.WithLabelValues(name).Set(float64(r.Plan.Groups[g].UnitsOn))
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (m *metrics) observeSources() {
	for _, ep := range m.a.endpoints {
		s := ep.Stats()
		m.sources.WithLabelValues(ep.Name(), "requests").Set(float64(s.Requests))
		m.sources.WithLabelValues(ep.Name(), "errors").Set(float64(s.Errors))
		m.sources.WithLabelValues(ep.Name(), "reconnects").Set(float64(s.Reconnects))
		m.sources.WithLabelValues(ep.Name(), "connected").Set(b2f(s.Connected))
	}
	for _, src := range m.a.sources {
		if u, ok := src.(*opcua.Source); ok {
			s := u.Stats()
			m.sources.WithLabelValues(u.Name(), "sessions").Set(float64(s.Sessions))
			m.sources.WithLabelValues(u.Name(), "errors").Set(float64(s.Errors))
			m.sources.WithLabelValues(u.Name(), "missed_updates").Set(float64(s.MissedUpdates))
			m.sources.WithLabelValues(u.Name(), "connected").Set(b2f(s.Connected))
		}
	}
	if c := m.a.mqtt; c != nil {
		s := c.Stats()
		m.queue.WithLabelValues("queued").Set(float64(s.Queued))
		m.queue.WithLabelValues("sent").Set(float64(s.Sent))
		m.queue.WithLabelValues("dropped").Set(float64(s.Dropped))
		m.queue.WithLabelValues("connected").Set(b2f(s.Connected))
	}
	m.queue.WithLabelValues("records_dropped").Set(float64(m.a.ring.droppedCount()))
}

// Status is the document served on /status.
type Status struct {
	Site      string          `json:"site"`
	Version   string          `json:"version"`
	Ready     bool            `json:"ready"`
	Started   time.Time       `json:"started"`
	Cycles    uint64          `json:"cycles"`
	LastCycle time.Time       `json:"last_cycle"`
	Plan      PlanReport      `json:"plan"`
	Dispatch  []GroupDispatch `json:"dispatch"`
	Sources   map[string]any  `json:"sources"`
	MQTT      any             `json:"mqtt,omitempty"`
}

// StatusNow assembles the status document.
func (a *Agent) StatusNow() Status {
	a.lastMu.Lock()
	plan := a.lastPlan
	a.lastMu.Unlock()
	s := Status{Site: a.cfg.Site.ID, Version: a.opt.Version, Ready: a.ready.Load(), Started: a.started,
		Cycles: a.cycles.Load(), LastCycle: time.Unix(0, a.lastCycle.Load()), Plan: plan, Dispatch: a.disp.Status(), Sources: map[string]any{}}
	for _, src := range a.sources {
		s.Sources[src.Name()] = sourceStatus(src)
	}
	if a.mqtt != nil {
		s.MQTT = a.mqtt.Stats()
	}
	return s
}

// serveHTTP serves /healthz, /status and /metrics.
func (a *Agent) serveHTTP(addr string) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.StatusNow())
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		last := time.Unix(0, a.lastCycle.Load())
		if !a.ready.Load() || time.Since(last) > 10*a.cfg.Site.CyclePeriod+time.Second {
			http.Error(w, "control cycles are not completing", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server stopped", "err", err)
		}
	}()
	a.log.Info("serving status and metrics", "addr", ln.Addr().String())
	return srv, nil
}
