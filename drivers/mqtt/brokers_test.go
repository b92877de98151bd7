package mqtt

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/sim/broker"
)

// Helpers shared by the tests: real brokers (embedded mochi, Mosquitto), a
// TCP relay that can cut the client off, and a recording subscriber.

const patience = 30 * time.Second // how long to wait for something that should happen

// forEachBroker runs f against a fresh embedded broker and a fresh Mosquitto.
func forEachBroker(t *testing.T, f func(t *testing.T, url string)) {
	t.Run("mochi", func(t *testing.T) { f(t, startEmbedded(t).URL()) })
	t.Run("mosquitto", func(t *testing.T) { f(t, startMosquitto(t).url()) })
}

func startEmbedded(t testing.TB) *broker.Broker {
	t.Helper()
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

const mosquittoBin = "/usr/sbin/mosquitto"

// mosquitto is a Mosquitto process on a fixed loopback port that a test can
// stop and start again. Persistence is on so that a subscriber's session
// (and the messages queued for it) survives a restart.
type mosquitto struct {
	t    *testing.T
	port int
	conf string
	cmd  *exec.Cmd
}

func startMosquitto(t *testing.T) *mosquitto {
	t.Helper()
	if _, err := os.Stat(mosquittoBin); err != nil {
		if os.Getenv("SITEAGENT_REQUIRE_MOSQUITTO") == "1" {
			t.Fatalf("mosquitto required (SITEAGENT_REQUIRE_MOSQUITTO=1): %v", err)
		}
		t.Skipf("no %s: %v", mosquittoBin, err)
	}
	dir := t.TempDir()
	m := &mosquitto{t: t, port: freePort(t), conf: filepath.Join(dir, "mosquitto.conf")}
	conf := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\n", m.port, dir)
	if os.Geteuid() == 0 {
		conf += "user root\n" // else it drops to user mosquitto, who cannot write the temp dir
	}
	if err := os.WriteFile(m.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	m.start()
	t.Cleanup(m.stop)
	return m
}

func (m *mosquitto) url() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.port) }

func (m *mosquitto) start() {
	m.t.Helper()
	m.cmd = exec.Command(mosquittoBin, "-c", m.conf)
	m.cmd.Stdout, m.cmd.Stderr = io.Discard, io.Discard
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	waitUntil(m.t, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", m.port))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// stop ends the process as an operator would (SIGTERM: it saves its state).
func (m *mosquitto) stop() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	_ = m.cmd.Wait()
	m.cmd = nil
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// relay forwards TCP from its own port to a broker. cut closes every
// relayed connection abruptly and stops listening (the broker becomes
// unreachable for whoever goes through the relay, and sees the sockets die
// without an MQTT DISCONNECT); mend listens again on the same port.
type relay struct {
	t      *testing.T
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newRelay(t *testing.T, brokerURL string) *relay {
	r := &relay{t: t, target: brokerURL[len("tcp://"):]}
	r.listen("127.0.0.1:0")
	t.Cleanup(r.cut)
	return r
}

func (r *relay) url() string { return "tcp://" + r.addr }

func (r *relay) listen(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.ln, r.addr = ln, ln.Addr().String()
	r.mu.Unlock()
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", r.target)
			if err != nil {
				in.Close()
				continue
			}
			r.mu.Lock()
			if r.ln != ln { // cut while this one was being set up
				r.mu.Unlock()
				in.Close()
				out.Close()
				return
			}
			r.conns = append(r.conns, in, out)
			r.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
}

func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

func (r *relay) mend() { r.listen(r.addr) }

// received is one message seen by a recorder.
type received struct {
	topic    string
	payload  string
	retained bool
}

// recorder is a separate paho client that records what it receives.
type recorder struct {
	mu   sync.Mutex
	msgs []received
	pc   paho.Client
}

func record(t *testing.T, url, filter string) *recorder {
	return recordWith(t, paho.NewClientOptions().SetClientID(fmt.Sprintf("rec-%d", time.Now().UnixNano())), url, filter)
}

func recordWith(t *testing.T, o *paho.ClientOptions, url, filter string) *recorder {
	t.Helper()
	r := &recorder{}
	o.AddBroker(url).SetAutoReconnect(true).SetMaxReconnectInterval(time.Second)
	r.pc = paho.NewClient(o)
	if tok := r.pc.Connect(); !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatalf("recorder connect: %v", tok.Error())
	}
	t.Cleanup(func() { r.pc.Disconnect(0) })
	tok := r.pc.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) {
		r.mu.Lock()
		r.msgs = append(r.msgs, received{m.Topic(), string(m.Payload()), m.Retained()})
		r.mu.Unlock()
	})
	if !tok.WaitTimeout(patience) || tok.Error() != nil {
		t.Fatalf("recorder subscribe: %v", tok.Error())
	}
	return r
}

func (r *recorder) all() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.msgs...)
}

// waitFor waits until the recorder holds n messages and returns them.
func (r *recorder) waitFor(t *testing.T, n int) []received {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d messages", n), func() bool { return len(r.all()) >= n })
	return r.all()
}

// waitLast waits until the latest message satisfies ok and returns it.
// (Brokers may deliver a retained message twice to a subscription made
// just before it was published, so the tests look at the latest one.)
func (r *recorder) waitLast(t *testing.T, what string, ok func(received) bool) received {
	t.Helper()
	var last received
	waitUntil(t, what, func() bool {
		all := r.all()
		if len(all) == 0 {
			return false
		}
		last = all[len(all)-1]
		return ok(last)
	})
	return last
}

// waitUntil polls cond until it holds; it fails the test after patience.
// It asserts that something happens, never how fast.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
