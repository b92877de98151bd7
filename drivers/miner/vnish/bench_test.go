package vnish_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/vnish"
	"github.com/siteagent/siteagent/sim/miners"
)

// BenchmarkShed1000 stops 1,000 simulated Vnish miners with 200 commands
// in flight, from the first command to the last acknowledgement, tokens
// already held (the driver is warm after its first poll).
func BenchmarkShed1000(b *testing.B) {
	const n, workers = 1000, 200
	f, err := miners.StartVnish(miners.VnishConfig{Miners: n})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	d := vnish.New(vnish.Options{Password: "admin"})
	run := func(op func(context.Context, miner.Miner) error) {
		work := make(chan string)
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for a := range work {
					if err := op(context.Background(), miner.Miner{Host: a}); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		for _, a := range f.Addrs() {
			work <- a
		}
		close(work)
		wg.Wait()
	}
	run(func(ctx context.Context, m miner.Miner) error { _, err := d.Poll(ctx, m); return err }) // warm: tokens
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		run(d.Sleep)
		total += time.Since(start)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "vnish_shed_1000_s")
}
