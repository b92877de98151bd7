package agent

import (
	"context"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/modbus"
	"github.com/siteagent/siteagent/drivers/opcua"
)

// SourceProbe is what `siteagent points` learns of one source.
type SourceProbe struct {
	Name string
	Kind string // "modbus", "opcua", ...
	// Err is the source's last failure; "" when every read worked.
	Err    string
	Points []PointProbe
}

// PointProbe is one point as read once.
type PointProbe struct {
	Name       string
	Unit       string
	StaleAfter time.Duration
	Point      point.Point
}

// ProbeSources connects to every source once, the way `run` would, and
// reads each point: the first thing to run on a new site. Each source
// gets until wait to complete its first read; the store is fresh, so
// nothing of a running agent is touched.
func (c *SiteConfig) ProbeSources(ctx context.Context, log *slog.Logger, wait time.Duration) ([]SourceProbe, error) {
	store := point.NewStore()
	built, err := c.buildSources(store, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var wg sync.WaitGroup
	for _, src := range built.all {
		wg.Add(1)
		go func(src source) {
			defer wg.Done()
			sctx, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = src.Run(sctx)
			}()
			select {
			case <-src.Ready():
			case <-ctx.Done():
			}
			stop()
			<-done
		}(src)
	}
	wg.Wait()

	defined := c.points()
	snap := store.Snapshot(nil)
	names := store.Names()
	var out []SourceProbe
	for _, src := range built.all {
		sp := SourceProbe{Name: src.Name(), Kind: "source"}
		switch s := src.(type) {
		case *modbus.Endpoint:
			sp.Kind, sp.Err = "modbus", s.Stats().LastError
		case *opcua.Source:
			sp.Kind, sp.Err = "opcua", s.Stats().LastError
		}
		for id, name := range names {
			if !strings.HasPrefix(name, sp.Name+".") {
				continue
			}
			info := defined[name]
			sp.Points = append(sp.Points, PointProbe{Name: name, Unit: info.meta.Unit, StaleAfter: staleAfter(info.meta, info.period), Point: snap[id]})
		}
		out = append(out, sp)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
