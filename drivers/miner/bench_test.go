package miner_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/drivers/actuator"
	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/luxos"
	"github.com/siteagent/siteagent/sim/miners"
)

const benchMiners = 5000

var benchBase = netip.MustParseAddr("127.12.0.1")

// benchFleet builds a fleet of n LuxOS miners at the simulator's
// addresses, with a fresh driver (no session yet), and runs it.
func benchFleet(tb testing.TB, n, port int) (*miner.Fleet, context.CancelFunc) {
	tb.Helper()
	cfg := miner.GroupConfig{Hosts: []miner.HostEntry{{CIDR: "127.12.0.0/16", Count: n, Port: port, Family: "luxos", RatedW: 3250, EfficiencyJTH: 29.5}},
		PollPeriod: 10 * time.Minute, WakePerS: 10_000}.WithDefaults("asic", 0)
	p := config.NewProblems("bench", nil)
	cfg.Validate(p, "miners")
	cfg.Resolve(p, "miners", "", "asic")
	if err := p.Err(); err != nil {
		tb.Fatal(err)
	}
	f, err := miner.New(miner.Options{Group: "asic", Kind: actuator.Shed, Config: cfg, Log: slog.New(slog.DiscardHandler),
		Drivers: map[miner.Family]miner.Driver{miner.LuxOS: luxos.New()}})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	<-f.Ready()
	return f, func() { cancel(); <-done }
}

func startBenchSim(tb testing.TB) *miners.LuxOSFleet {
	tb.Helper()
	sim, err := miners.StartLuxOS(miners.LuxOSConfig{Miners: benchMiners, Base: benchBase})
	if err != nil {
		tb.Fatal(err)
	}
	return sim
}

// BenchmarkShed5000 measures miner_shed_5000_s: from the plan to shed
// 5,000 simulated LuxOS miners on loopback (UnitsOn 0) until every shed
// command is acknowledged. Each round starts cold, as a grid event would:
// no LuxOS session, so every miner costs a logon and a curtail (10,000
// connections), simulator and agent sharing the machine's cores.
func BenchmarkShed5000(b *testing.B) {
	sim := startBenchSim(b)
	defer sim.Close()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		sim.Reset()
		f, stop := benchFleet(b, benchMiners, sim.Port())
		b.StartTimer()
		start := time.Now()
		res, err := f.Apply(context.Background(), actuator.Command{Kind: actuator.Shed, UnitsOn: 0})
		took := time.Since(start)
		b.StopTimer()
		if err != nil || res.UnitsOn != 0 {
			b.Fatalf("shed: %v %+v", err, res)
		}
		if got := sim.CommandCount("curtail"); got < uint64(benchMiners*(i+1)) {
			b.Fatalf("only %d curtail commands reached the miners", got)
		}
		total += took
		stop()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "miner_shed_5000_s")
}

// BenchmarkPoll5000 measures miner_poll_5000_s: one telemetry sweep of
// 5,000 miners (summary+power+config+stats in one request each).
func BenchmarkPoll5000(b *testing.B) {
	sim := startBenchSim(b)
	defer sim.Close()
	f, stop := benchFleet(b, benchMiners, sim.Port())
	defer stop()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		f.Sweep(context.Background())
	}
	took := time.Since(start)
	b.StopTimer()
	if st := f.ByState(); st[miner.Mining] != benchMiners {
		b.Fatalf("after a sweep: %v", st)
	}
	b.ReportMetric(took.Seconds()/float64(b.N), "miner_poll_5000_s")
}

// BenchmarkFleetRSS measures miner_rss_mb_per_1000: the resident memory a
// fleet costs per 1,000 miners tracked. The fleet runs in a child
// process (the simulator stays here), tracking 1,000 and then 5,000
// miners through a sweep, a shed and a restore; the figure is the
// difference of the two resident sizes per 1,000 miners, so the Go
// runtime's own baseline cancels out.
func BenchmarkFleetRSS(b *testing.B) {
	sim := startBenchSim(b)
	defer sim.Close()
	rss := func(n int) float64 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFleetProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), "SITEAGENT_FLEET_CHILD="+strconv.Itoa(n), "SITEAGENT_FLEET_PORT="+strconv.Itoa(sim.Port()))
		out, err := cmd.CombinedOutput()
		if err != nil {
			b.Fatalf("child: %v\n%s", err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(line, "fleet_rss_mb "); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err == nil {
					return f
				}
			}
		}
		b.Fatalf("child printed no figure:\n%s", out)
		return 0
	}
	var small, large float64
	for i := 0; i < b.N; i++ {
		sim.Reset()
		small = rss(1000)
		sim.Reset()
		large = rss(benchMiners)
	}
	b.ReportMetric((large-small)/float64(benchMiners/1000-1), "miner_rss_mb_per_1000")
	b.ReportMetric(large, "miner_rss_5000_mb")
}

// TestFleetProcess is BenchmarkFleetRSS's child; it does nothing in a
// normal test run.
func TestFleetProcess(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("SITEAGENT_FLEET_CHILD"))
	port, _ := strconv.Atoi(os.Getenv("SITEAGENT_FLEET_PORT"))
	if n == 0 {
		t.Skip("child of BenchmarkFleetRSS only")
	}
	f, stop := benchFleet(t, n, port)
	defer stop()
	ctx := context.Background()
	if _, err := f.Apply(ctx, actuator.Command{Kind: actuator.Shed, UnitsOn: 0}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	f.Apply(cctx, actuator.Command{Kind: actuator.Shed, UnitsOn: n})
	f.Sweep(ctx)
	fmt.Printf("fleet_rss_mb %.2f\n", vmRSS(t))
}

func vmRSS(t testing.TB) float64 {
	fh, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skip("no /proc: ", err)
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}
