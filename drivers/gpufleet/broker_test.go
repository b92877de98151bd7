//go:build cgo

package gpufleet_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/siteagent/siteagent/sim/broker"
)

const mosquittoBin = "/usr/sbin/mosquitto"

// benchBroker starts Mosquitto on a free loopback port when it is
// installed (SITEAGENT_REQUIRE_MOSQUITTO=1 makes its absence a failure),
// else the embedded broker.
func benchBroker(t testing.TB) (url string, stop func()) {
	if _, err := os.Stat(mosquittoBin); err != nil {
		if os.Getenv("SITEAGENT_REQUIRE_MOSQUITTO") == "1" {
			t.Fatalf("mosquitto required (SITEAGENT_REQUIRE_MOSQUITTO=1): %v", err)
		}
		b, err := broker.Start("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Log("broker: embedded (no mosquitto)")
		return b.URL(), func() { b.Close() }
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "mosquitto.conf")
	body := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n", port)
	if os.Geteuid() == 0 {
		body += "user root\n"
	}
	os.WriteFile(conf, []byte(body), 0o600)
	cmd := exec.Command(mosquittoBin, "-c", conf)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitFor(t, "mosquitto listening", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	t.Log("broker: mosquitto")
	return "tcp://" + addr, func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
}
