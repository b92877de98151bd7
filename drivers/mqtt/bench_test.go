package mqtt

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// BenchmarkPublish measures end-to-end throughput into the embedded broker
// on loopback: from Publish until paho reports the message done (QoS 0:
// written to the socket; QoS 1: acknowledged by the broker).
func BenchmarkPublish(b *testing.B) {
	for _, qos := range []byte{0, 1} {
		b.Run(fmt.Sprintf("qos%d", qos), func(b *testing.B) {
			br := startEmbedded(b)
			c, err := New(Config{Broker: br.URL()}, "bench", quiet)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Stop()
			if err := c.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			waitUntil(b, "connected", func() bool { return c.Stats().Connected })
			payload := make([]byte, 200) // about one point batch entry
			m := Message{Topic: c.Topics().Points(), Payload: payload, QoS: qos}
			b.SetBytes(int64(len(payload)))
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				for c.Stats().Queued > 1000 { // let the sender catch up: nothing may be dropped
					runtime.Gosched()
				}
				c.Publish(m)
			}
			for c.Stats().Sent < uint64(b.N) {
				if s := c.Stats(); s.Dropped > 0 {
					b.Fatalf("dropped: %+v", s)
				}
				time.Sleep(100 * time.Microsecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
		})
	}
}
