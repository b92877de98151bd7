// Package mqtttest runs real brokers for tests: Mosquitto on loopback,
// plain or with TLS and client certificates from a PKI generated in the
// test, with an ACL file when asked, stoppable and restartable on the same
// port.
package mqtttest

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// MosquittoBin is where Debian's package puts the broker.
const MosquittoBin = "/usr/sbin/mosquitto"

// Options shape a Mosquitto instance.
type Options struct {
	// TLS: the main listener speaks TLS with a server certificate from PKI
	// and requires a client certificate, whose CN becomes the user name.
	TLS *PKI
	// ACL is the content of an acl_file for the main listener ("" = none:
	// every authenticated client may use every topic).
	ACL string
	// Plain adds a second listener without TLS, anonymous and without ACL
	// (PlainURL), for tests of what must be refused over plain TCP.
	Plain bool
	// Log, when set, receives the broker's output.
	Log io.Writer
}

// Mosquitto is one broker process that a test can stop and start again.
// Persistence is on, so a subscriber's persistent session (and the
// messages queued for it) survives a restart.
type Mosquitto struct {
	t         testing.TB
	opt       Options
	port      int
	plainPort int
	conf      string
	cmd       *exec.Cmd
}

// Start runs Mosquitto, stopped at the end of the test. It skips the test
// when Mosquitto is not installed, unless SITEAGENT_REQUIRE_MOSQUITTO=1.
func Start(t testing.TB, opt Options) *Mosquitto {
	t.Helper()
	if _, err := os.Stat(MosquittoBin); err != nil {
		if os.Getenv("SITEAGENT_REQUIRE_MOSQUITTO") == "1" {
			t.Fatalf("mosquitto required (SITEAGENT_REQUIRE_MOSQUITTO=1): %v", err)
		}
		t.Skipf("no %s: %v", MosquittoBin, err)
	}
	dir := t.TempDir()
	m := &Mosquitto{t: t, opt: opt, port: FreePort(t), conf: filepath.Join(dir, "mosquitto.conf")}
	var b strings.Builder
	// Queue for offline persistent subscribers without limit, QoS 0
	// included, so that a test subscriber that reconnects after the
	// client under test misses nothing the broker accepted.
	fmt.Fprintf(&b, "per_listener_settings true\npersistence true\npersistence_location %s/\nmax_queued_messages 0\nqueue_qos0_messages true\n", dir)
	if os.Geteuid() == 0 {
		b.WriteString("user root\n") // else it drops to user mosquitto, who cannot read the temp dir
	}
	fmt.Fprintf(&b, "listener %d 127.0.0.1\n", m.port)
	if opt.TLS != nil {
		cert, key := opt.TLS.Server("127.0.0.1", "localhost")
		fmt.Fprintf(&b, "cafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\nuse_identity_as_username true\nallow_anonymous false\n",
			opt.TLS.CAFile, cert, key)
	} else {
		b.WriteString("allow_anonymous true\n")
	}
	if opt.ACL != "" {
		acl := filepath.Join(dir, "acl")
		if err := os.WriteFile(acl, []byte(opt.ACL), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "acl_file %s\n", acl)
	}
	if opt.Plain {
		m.plainPort = FreePort(t)
		fmt.Fprintf(&b, "listener %d 127.0.0.1\nallow_anonymous true\n", m.plainPort)
	}
	if err := os.WriteFile(m.conf, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	m.Start()
	t.Cleanup(m.Stop)
	return m
}

// URL of the main listener: ssl:// with TLS, else tcp://.
func (m *Mosquitto) URL() string {
	if m.opt.TLS != nil {
		return fmt.Sprintf("ssl://127.0.0.1:%d", m.port)
	}
	return fmt.Sprintf("tcp://127.0.0.1:%d", m.port)
}

// PlainURL is the listener without TLS (Options.Plain).
func (m *Mosquitto) PlainURL() string { return fmt.Sprintf("tcp://127.0.0.1:%d", m.plainPort) }

// Start (re)starts the process on the same ports and waits until it listens.
func (m *Mosquitto) Start() {
	m.t.Helper()
	m.cmd = exec.Command(MosquittoBin, "-c", m.conf)
	m.cmd.Stdout, m.cmd.Stderr = io.Discard, io.Discard
	if m.opt.Log != nil {
		m.cmd.Stdout, m.cmd.Stderr = m.opt.Log, m.opt.Log
	}
	if err := m.cmd.Start(); err != nil {
		m.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", m.port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("mosquitto not listening on %d after 30s", m.port)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop ends the process as an operator would (SIGTERM: it saves its state).
func (m *Mosquitto) Stop() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	_ = m.cmd.Wait()
	m.cmd = nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
