package sparkplug

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/drivers/mqtt"
	"github.com/siteagent/siteagent/drivers/mqtt/mqtttest"
)

// BenchmarkSparkplugPointsPerSecond: 1000 points in 10 devices, every one
// changing each round, set on the node, flushed as DDATA through the disk
// queue to Mosquitto on loopback and counted by a subscriber. Reported as
// mqtt_points_per_s_sparkplug.
func BenchmarkSparkplugPointsPerSecond(b *testing.B) {
	const devices, perDevice = 10, 100
	m := mqtttest.Start(b, mqtttest.Options{})
	var devs []Device
	for d := range devices {
		dev := Device{ID: fmt.Sprintf("src%02d", d)}
		for i := range perDevice {
			dev.Metrics = append(dev.Metrics, Def{Name: fmt.Sprintf("p%03d", i), Type: DataType_Double})
		}
		devs = append(devs, dev)
	}
	n, err := NewNode(NodeConfig{GroupID: "g", NodeID: "bench"}, nil, devs, nil, quiet)
	if err != nil {
		b.Fatal(err)
	}
	c, err := mqtt.New(mqtt.Config{Broker: m.URL(), Format: "sparkplug"}, "bench", quiet, append(n.Options(), mqtt.WithQueueDir(b.TempDir()))...)
	if err != nil {
		b.Fatal(err)
	}
	if err := n.Attach(c); err != nil {
		b.Fatal(err)
	}
	defer c.Stop()
	var got atomic.Int64
	pc := paho.NewClient(paho.NewClientOptions().AddBroker(m.URL()).SetClientID("count"))
	if tok := pc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	defer pc.Disconnect(0)
	if tok := pc.Subscribe("spBv1.0/g/DDATA/bench/+", 0, func(paho.Client, paho.Message) { got.Add(1) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	if err := c.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	for !c.Stats().Session {
		time.Sleep(10 * time.Millisecond)
	}
	rounds := max(b.N, 300)
	b.ResetTimer()
	start := time.Now()
	for r := range rounds {
		for c.Stats().Queued > 64 {
			time.Sleep(100 * time.Microsecond)
		}
		now := time.Now()
		for d := range devices {
			for i := range perDevice {
				n.Set(d, i, Number(float64(r*perDevice+i)), now)
			}
		}
		n.Flush(now)
	}
	for got.Load() < int64(rounds*devices) {
		if time.Since(start) > time.Minute {
			b.Fatalf("only %d of %d DDATA arrived", got.Load(), rounds*devices)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(rounds*devices*perDevice)/elapsed.Seconds(), "mqtt_points_per_s_sparkplug")
}
