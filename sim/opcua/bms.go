package opcua

import (
	"errors"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/siteagent/siteagent/sim"
)

// Browse paths of the BMS's variables (node ids are ns=1;s=<path with
// dots>, e.g. ns=1;s=BMS.Battery.SoCPct).
const (
	PathBatterySoC       = "BMS/Battery/SoCPct"
	PathBatteryDischarge = "BMS/Battery/DischargeAvailableKW"
	PathBatteryPower     = "BMS/Battery/PowerKW"
	PathGeneratorKW      = "BMS/Generator/AvailableKW"
	PathGeneratorOK      = "BMS/Generator/Available"
)

// Chillers is the number of chillers the BMS reports.
const Chillers = 3

// chillerShare is the part of the site's aux power the chillers draw.
const chillerShare = 0.7

// BMS serves the simulated site's building management and battery
// system over OPC UA: it samples the site every period and stamps every
// value, as a BMS gateway polling its devices does.
type BMS struct {
	srv     *Server
	site    *sim.Site
	genKW   float64
	vars    struct{ soc, discharge, power, genKW, genOK *Variable }
	chiller [Chillers]*Variable

	mu       sync.Mutex
	genDown  bool
	frozen   bool
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// StartBMS serves site (built from siteCfg) on a new server made from
// cfg, refreshing every period (250ms unless set).
func StartBMS(site *sim.Site, siteCfg sim.Config, cfg Config, period time.Duration) (*BMS, error) {
	if site == nil {
		return nil, errors.New("sim opcua: StartBMS needs a site")
	}
	if period <= 0 {
		period = 250 * time.Millisecond
	}
	srv, err := Start(cfg)
	if err != nil {
		return nil, err
	}
	b := &BMS{srv: srv, site: site, genKW: siteCfg.GenerationKW, stop: make(chan struct{}), done: make(chan struct{})}
	st := site.Snapshot()
	b.vars.soc = srv.MustAdd(PathBatterySoC, st.BatterySoCPct)
	b.vars.discharge = srv.MustAdd(PathBatteryDischarge, st.IslandCapacity-b.genKW)
	b.vars.power = srv.MustAdd(PathBatteryPower, st.BatteryKW)
	b.vars.genKW = srv.MustAdd(PathGeneratorKW, b.genKW)
	b.vars.genOK = srv.MustAdd(PathGeneratorOK, true)
	for i := range b.chiller {
		b.chiller[i] = srv.MustAdd(ChillerPath(i+1), float32(st.AuxKW*chillerShare/Chillers))
	}
	go b.run(period)
	return b, nil
}

// ChillerPath is the browse path of chiller n's power (1-based).
func ChillerPath(n int) string {
	return "BMS/Chillers/Chiller" + strconv.Itoa(n) + "/PowerKW"
}

// Server is the OPC UA server the BMS runs on.
func (b *BMS) Server() *Server { return b.srv }

// URL is where clients connect.
func (b *BMS) URL() string { return b.srv.URL() }

// Close stops the sampling and the server.
func (b *BMS) Close() {
	b.stopOnce.Do(func() { close(b.stop) })
	<-b.done
	b.srv.Close()
}

// FreezeSubscriptions makes the server's subscriptions go silent while
// the values keep changing (see Server.FreezeSubscriptions): the
// "frozen subscription" scenario.
func (b *BMS) FreezeSubscriptions(frozen bool) { b.srv.FreezeSubscriptions(frozen) }

// FreezeValues stops (true) or resumes the sampling: the BMS keeps
// serving its last values with their old timestamps, as a gateway that
// lost its devices but not its clients would.
func (b *BMS) FreezeValues(frozen bool) {
	b.mu.Lock()
	b.frozen = frozen
	b.mu.Unlock()
}

// TripGenerator makes the generator unavailable (true) or available.
func (b *BMS) TripGenerator(down bool) {
	b.mu.Lock()
	b.genDown = down
	b.mu.Unlock()
}

func (b *BMS) run(period time.Duration) {
	defer close(b.done)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.sample()
		}
	}
}

// sample copies the site's state into the variables.
func (b *BMS) sample() {
	b.mu.Lock()
	frozen, genDown := b.frozen, b.genDown
	b.mu.Unlock()
	if frozen {
		return
	}
	st := b.site.Snapshot()
	gen := b.genKW
	if genDown {
		gen = 0
	}
	// Values as a BMS reports them: rounded to its resolution, stamped
	// at every sample.
	b.vars.soc.Set(round(st.BatterySoCPct, 0.01))
	b.vars.discharge.Set(round(max(0, st.IslandCapacity-b.genKW), 0.1))
	b.vars.power.Set(round(st.BatteryKW, 0.1))
	b.vars.genKW.Set(gen)
	b.vars.genOK.Set(!genDown)
	for i, v := range b.chiller {
		// The chillers share the load unevenly and wander a little.
		w := 1 + 0.05*math.Sin(float64(st.Time)/float64(7*time.Second)+float64(i))
		v.Set(float32(round(st.AuxKW*chillerShare/Chillers*w, 0.1)))
	}
}

func round(x, step float64) float64 { return math.Round(x/step) * step }

// LowBattery is siteCfg with a battery that runs low within about twenty seconds
// of islanding: a small battery (150 kWh) at 12 % state of charge, whose
// available discharge tapers from full at 10 % to nothing at 5 %. With it,
// islanding the site shows island capacity shrinking and the controller
// shedding more as the battery drains.
func LowBattery(siteCfg sim.Config) sim.Config {
	siteCfg.BatteryCapacityKWh = 150
	siteCfg.BatterySoCPct = 12
	siteCfg.BatteryTaperSoCPct = 10
	siteCfg.BatteryEmptySoCPct = 5
	return siteCfg
}
