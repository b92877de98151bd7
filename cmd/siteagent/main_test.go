package main

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/sim"
	"github.com/siteagent/siteagent/sim/broker"
)

func TestCheckConfigGoodFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "site.toml")
	os.WriteFile(path, configs.Demo(), 0o644)
	var out, errb bytes.Buffer
	if code := runMain([]string{"check-config", path}, &out, &errb); code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errb.String())
	}
	for _, want := range []string{"site demo-site", "asic", "uf1", path + ": OK"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCheckConfigBadFileListsEveryProblem(t *testing.T) {
	doc := strings.Replace(string(configs.Demo()), "floor_kw = 1800", "floor_kw = 9000", 1)
	doc = strings.Replace(doc, `cycle_period = "100ms"`, `cycle_period = 100`, 1)
	path := filepath.Join(t.TempDir(), "site.toml")
	os.WriteFile(path, []byte(doc), 0o644)
	var out, errb bytes.Buffer
	if code := runMain([]string{"check-config", path}, &out, &errb); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	msg := errb.String()
	for _, want := range []string{path + ":", "groups[1].floor_kw", "site.cycle_period", "2 problem(s)"} {
		if !strings.Contains(msg, want) {
			t.Errorf("stderr lacks %q:\n%s", want, msg)
		}
	}
}

func TestUnknownCommandAndUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := runMain([]string{"frobnicate"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "usage") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

// buildBinary compiles siteagent once per test binary run.
func buildBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "siteagent")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// demoOnLoopback starts the simulated site and a broker in this process
// and writes the demo site file pointed at them.
func demoOnLoopback(t testing.TB) (path string, site *sim.Site) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	site = sim.New(sim.DefaultConfig())
	if err := site.Start(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(site.Close)
	b, err := broker.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	doc := strings.ReplaceAll(string(configs.Demo()), "tcp://127.0.0.1:15020", site.URL())
	doc = strings.Replace(doc, `broker = ""`, `broker = "`+b.URL()+`"`, 1)
	path = filepath.Join(t.TempDir(), "site.toml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, site
}

// TestRunSpeaksSystemdNotify runs the real binary as systemd would: with a
// notify socket and a watchdog. It must send READY=1 once its sources are
// polled, WATCHDOG=1 while cycles complete, and STOPPING=1 on SIGTERM.
func TestRunSpeaksSystemdNotify(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	cfg, _ := demoOnLoopback(t)
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=1000000")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()

	got := map[string]int{}
	buf := make([]byte, 512)
	deadline := time.Now().Add(20 * time.Second)
	for got["READY=1"] == 0 || got["WATCHDOG=1"] < 2 {
		conn.SetReadDeadline(deadline)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("notifications so far %v: %v\nlogs:\n%s", got, err, logs.String())
		}
		got[string(buf[:n])]++
	}
	cmd.Process.Signal(syscall.SIGTERM)
	conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	for got["STOPPING=1"] == 0 {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no STOPPING=1 after SIGTERM: %v", err)
		}
		got[string(buf[:n])]++
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\nlogs:\n%s", err, logs.String())
	}
}

// BenchmarkAgentRSS runs `siteagent run` as its own process on the demo
// site (simulator and broker in the benchmark process) and reports its
// resident memory after it has run a while: agent_rss_mb (now) and
// agent_rss_peak_mb (high-water mark).
func BenchmarkAgentRSS(b *testing.B) {
	bin := buildBinary(b)
	cfg, site := demoOnLoopback(b)
	cmd := exec.Command(bin, "run", "--config", cfg, "--log-level", "warn")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	// Exercise it: a frequency dip and its recovery while it runs.
	time.Sleep(5 * time.Second)
	site.SetFrequency(59.4)
	time.Sleep(5 * time.Second)
	site.ClearFrequency()
	time.Sleep(10 * time.Second)
	rss, peak := procMemory(b, cmd.Process.Pid)
	b.ReportMetric(rss, "agent_rss_mb")
	b.ReportMetric(peak, "agent_rss_peak_mb")
}

// procMemory reads VmRSS and VmHWM of a process, in MB.
func procMemory(t testing.TB, pid int) (rss, peak float64) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(fields[1], 64)
		switch fields[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	return rss, peak
}

func TestCheckConfigRecognisesNodeFiles(t *testing.T) {
	data, err := configs.Files.ReadFile("node.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "node.toml")
	os.WriteFile(path, data, 0o644)
	var out, errb bytes.Buffer
	if code := runMain([]string{"check-config", path}, &out, &errb); code != 0 || !strings.Contains(out.String(), "node ") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
}
