package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/agent"
	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/drivers/mqtt/mqtttest"
	"github.com/siteagent/siteagent/sim"
)

const telemetry = 200 * time.Millisecond

// TestAgentChildProcess is the agent that TestAgentKilledAndRestarted
// kills: the real agent on the demo site file, pointed at the parent's
// simulator and broker, with its state directory.
func TestAgentChildProcess(t *testing.T) {
	if os.Getenv("SITEAGENT_AGENT_CHILD") == "" {
		t.Skip("runs only as the child process of TestAgentKilledAndRestarted")
	}
	cfg, err := agent.Load("demo.toml", configs.Demo())
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.Modbus {
		cfg.Modbus[i].URL = os.Getenv("SIM_URL")
	}
	cfg.MQTT.Broker = os.Getenv("BROKER")
	cfg.MQTT.TelemetryPeriod = telemetry
	cfg.Site.StateDir = os.Getenv("STATE_DIR")
	a, err := agent.New(cfg, agent.Options{Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// The agent is killed (SIGKILL) while the broker is down, with point
// batches queued on disk, and started again: once the broker is back the
// batches queued before the kill arrive (historical), so the series has no
// hole but the time no agent ran.
func TestAgentKilledAndRestarted(t *testing.T) {
	m := mqtttest.Start(t, mqtttest.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	site := sim.New(sim.DefaultConfig())
	if err := site.Start(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	defer site.Close()
	state := t.TempDir()

	var mu sync.Mutex
	var got []time.Time
	hist := 0
	o := paho.NewClientOptions().AddBroker(m.URL()).SetClientID(fmt.Sprintf("historian-%d", time.Now().UnixNano())).
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(500 * time.Millisecond)
	o.SetOnConnectHandler(func(pc paho.Client) {
		pc.Subscribe("siteagent/demo-site/points", 1, func(_ paho.Client, msg paho.Message) {
			var b struct {
				TS         time.Time `json:"ts"`
				Historical bool      `json:"historical"`
			}
			json.Unmarshal(msg.Payload(), &b)
			mu.Lock()
			got = append(got, b.TS)
			if b.Historical {
				hist++
			}
			mu.Unlock()
		})
	})
	pc := paho.NewClient(o)
	if tok := pc.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pc.Disconnect(0)
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("gave up waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	child := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAgentChildProcess$")
		cmd.Env = append(os.Environ(), "SITEAGENT_AGENT_CHILD=1", "SIM_URL="+site.URL(), "BROKER="+m.URL(), "STATE_DIR="+state)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}

	c := child()
	wait("live batches", func() bool { return count() >= 5 })
	m.Stop()
	time.Sleep(3 * time.Second) // the agent queues ~15 batches on disk
	killedAt := time.Now()
	if err := c.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	c.Wait()
	child()
	time.Sleep(2 * time.Second) // more batches queued by the new agent
	restartedAt := time.Now()
	m.Start()
	wait("live batches after the restart", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, ts := range got {
			if ts.After(restartedAt.Add(2 * time.Second)) {
				return true
			}
		}
		return false
	})
	time.Sleep(3 * time.Second) // the backlog follows at the replay rate

	mu.Lock()
	series := append([]time.Time(nil), got...)
	h := hist
	mu.Unlock()
	sort.Slice(series, func(i, j int) bool { return series[i].Before(series[j]) })
	holes := 0
	for i := 1; i < len(series); i++ {
		gap := series[i].Sub(series[i-1])
		if gap <= 3*telemetry/2 {
			continue
		}
		// The only hole allowed: from the kill to the new agent's first
		// batch (it was not running).
		if series[i-1].After(killedAt.Add(-telemetry)) && series[i].Before(restartedAt) {
			holes++
			continue
		}
		t.Fatalf("a %s hole from %s to %s (killed %s, restarted %s)", gap, series[i-1].Format("15:04:05.000"), series[i].Format("15:04:05.000"),
			killedAt.Format("15:04:05.000"), restartedAt.Format("15:04:05.000"))
	}
	if holes != 1 {
		t.Fatalf("%d holes around the kill, want exactly the one while no agent ran", holes)
	}
	if h < 20 {
		t.Fatalf("%d historical batches: want those queued before and after the kill", h)
	}
	t.Logf("%d batches, %d historical", len(series), h)
}
