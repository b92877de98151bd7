package whatsminer_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/whatsminer"
	"github.com/siteagent/siteagent/sim/miners"
)

// BenchmarkShed1000 sheds 1,000 simulated Whatsminers over API v3 with 200
// commands in flight, from the first command to the last acknowledgement.
// The driver is warm (salts cached), as it is after the first poll sweep.
func BenchmarkShed1000(b *testing.B) {
	const n, workers = 1000, 200
	f, err := miners.StartWhatsminer(miners.WhatsminerConfig{Miners: n})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	d := whatsminer.New(whatsminer.Options{API: whatsminer.APIv3, PortV3: f.PortV3(), Password: "super"})
	hosts := f.Hosts()
	run := func(op func(context.Context, miner.Miner) error) {
		work := make(chan string)
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for h := range work {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					if err := op(ctx, miner.Miner{Host: h}); err != nil {
						b.Error(err)
					}
					cancel()
				}
			}()
		}
		for _, h := range hosts {
			work <- h
		}
		close(work)
		wg.Wait()
	}
	run(d.Wake) // warm: salts fetched
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		run(d.Sleep)
		total += time.Since(start)
		b.StopTimer()
		run(d.Wake)
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "whatsminer_shed_1000_s")
}
