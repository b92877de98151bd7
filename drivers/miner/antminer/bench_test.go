package antminer_test

import (
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/antminer"
	"github.com/siteagent/siteagent/sim/miners"
)

// BenchmarkDispatch1000 dispatches sleep to 1,000 simulated stock
// Antminers whose config write takes the real ~20 s, and measures until
// every miner's CGI has the write in hand (the shed is then committed; it
// takes effect ~20 s later, all miners together). Dispatch itself returns
// at once.
func BenchmarkDispatch1000(b *testing.B) {
	const n = 1000
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		f, err := miners.StartAntminer(miners.AntminerConfig{Miners: n})
		if err != nil {
			b.Fatal(err)
		}
		d := antminer.New(antminer.Options{})
		b.StartTimer()
		start := time.Now()
		for _, a := range f.Addrs() {
			d.Dispatch(miner.Miner{Host: a}, antminer.ModeSleep)
		}
		for posts := 0; posts < n; {
			time.Sleep(2 * time.Millisecond)
			posts = 0
			for j := 0; j < n; j++ {
				posts += f.State(j).Posts
			}
			if time.Since(start) > time.Minute {
				b.Fatalf("after a minute only %d of %d writes arrived", posts, n)
			}
		}
		total += time.Since(start)
		b.StopTimer()
		f.Close()
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "antminer_dispatch_1000_s")
}
