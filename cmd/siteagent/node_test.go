package main

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/node/wire"
	"github.com/siteagent/siteagent/sim/broker"
)

func TestNodeCheckGoodAndBadFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "node.toml")
	data, _ := configs.Files.ReadFile("node.mock.toml")
	os.WriteFile(good, data, 0o644)
	var out, errb bytes.Buffer
	if code := runMain([]string{"node", "--check", "--config", good}, &out, &errb); code != 0 {
		t.Fatalf("exit %d:\n%s", code, errb.String())
	}
	for _, want := range []string{"node gpu-sim-01 of site demo-site", "SIMULATED", good + ": OK"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	bad := filepath.Join(dir, "bad.toml")
	os.WriteFile(bad, []byte(strings.Replace(string(data), "safe_cap_w = 150", "safe_cap_w = -1", 1)), 0o644)
	out.Reset()
	errb.Reset()
	if code := runMain([]string{"node", "--check", "--config", bad}, &out, &errb); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(errb.String(), bad+":") || !strings.Contains(errb.String(), "lease.safe_cap_w") {
		t.Fatalf("stderr: %s", errb.String())
	}
}

func TestVersionSaysWhetherGPUControlIsBuiltIn(t *testing.T) {
	var out bytes.Buffer
	runMain([]string{"version"}, &out, &out)
	want := "GPU control: built in"
	if !nvml.BuiltIn {
		want = "GPU control: not built in (this binary was built without cgo)"
	}
	if !strings.Contains(out.String(), want) {
		t.Fatalf("%q lacks %q", out.String(), want)
	}
}

// The node unit is the only privileged one: CAP_SYS_ADMIN and the NVIDIA
// devices, nothing more; the site unit has no capability at all.
func TestUnitPrivileges(t *testing.T) {
	read := func(name string) map[string][]string {
		b, err := os.ReadFile(filepath.Join("..", "..", "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		kv := map[string][]string{}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(k, "#") {
				kv[k] = append(kv[k], v)
			}
		}
		return kv
	}
	n := read("siteagent-node.service")
	if fmt.Sprint(n["CapabilityBoundingSet"]) != "[CAP_SYS_ADMIN]" || fmt.Sprint(n["AmbientCapabilities"]) != "[CAP_SYS_ADMIN]" {
		t.Fatalf("node unit capabilities: %v %v", n["CapabilityBoundingSet"], n["AmbientCapabilities"])
	}
	if fmt.Sprint(n["DevicePolicy"]) != "[closed]" || len(n["DeviceAllow"]) == 0 {
		t.Fatalf("node unit devices: %v %v", n["DevicePolicy"], n["DeviceAllow"])
	}
	for _, d := range n["DeviceAllow"] {
		if !strings.Contains(d, "nvidia") {
			t.Fatalf("node unit allows a non-NVIDIA device: %s", d)
		}
	}
	if n["User"][0] == "root" || fmt.Sprint(n["NoNewPrivileges"]) != "[yes]" {
		t.Fatal("node unit must run as its own user without new privileges")
	}
	s := read("siteagent.service")
	if fmt.Sprint(s["CapabilityBoundingSet"]) != "[]" || fmt.Sprint(s["AmbientCapabilities"]) != "[]" {
		t.Fatalf("the site unit must have no capability: %v", s["CapabilityBoundingSet"])
	}
}

// TestBuildsLinkage builds both binaries as the Makefile does: the cgo one
// may need only glibc (and must have GPU control), the CGO_ENABLED=0 one
// must be fully static (and say that GPU control is not built in).
func TestBuildsLinkage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two binaries")
	}
	dir := t.TempDir()
	build := func(cgo string) string {
		out := filepath.Join(dir, "siteagent-cgo"+cgo)
		cmd := exec.Command("go", "build", "-trimpath", "-o", out, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+cgo)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("CGO_ENABLED=%s go build: %v\n%s (the cgo build needs gcc and libc6-dev)", cgo, err, b)
		}
		return out
	}
	glibc := map[string]bool{"libc.so.6": true, "libm.so.6": true, "libpthread.so.0": true, "libdl.so.2": true, "librt.so.1": true, "libresolv.so.2": true}
	dyn := build("1")
	f, err := elf.Open(dyn)
	if err != nil {
		t.Fatal(err)
	}
	libs, _ := f.ImportedLibraries()
	f.Close()
	if len(libs) == 0 {
		t.Fatal("the cgo build imports no library: is cgo really on?")
	}
	for _, l := range libs {
		if !glibc[l] {
			t.Errorf("the cgo build needs %s; only glibc is allowed", l)
		}
	}
	static := build("0")
	f, err = elf.Open(static)
	if err != nil {
		t.Fatal(err)
	}
	libs, _ = f.ImportedLibraries()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the static build has a dynamic loader")
		}
	}
	f.Close()
	if len(libs) != 0 {
		t.Errorf("the static build imports %v", libs)
	}
	for bin, want := range map[string]string{dyn: "GPU control: built in", static: "GPU control: not built in"} {
		out, err := exec.Command(bin, "version").Output()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("%s version: %q (%v), want %q", filepath.Base(bin), out, err, want)
		}
	}
}

// BenchmarkNodeRSS runs `siteagent node` as its own process on 8
// simulated GPUs (15 ms per NVML call), takes a grant every 100 ms for
// 10 s, and reports its resident memory: node_rss_mb (then) and
// node_rss_peak_mb (high-water mark).
func BenchmarkNodeRSS(b *testing.B) {
	if !nvml.BuiltIn {
		b.Skip("GPU control is not built in")
	}
	bin := buildBinary(b)
	br, err := broker.Start("127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	data, _ := configs.Files.ReadFile("node.mock.toml")
	cfg := filepath.Join(b.TempDir(), "node.toml")
	os.WriteFile(cfg, []byte(strings.Replace(string(data), "tcp://127.0.0.1:1883", br.URL(), 1)), 0o644)
	cmd := exec.Command(bin, "node", "--config", cfg, "--log-level", "warn")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	c := paho.NewClient(paho.NewClientOptions().AddBroker(br.URL()).SetClientID("rss-bench"))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		b.Fatal(tok.Error())
	}
	defer c.Disconnect(100)
	var uuids []string
	inv := make(chan []string, 1)
	c.Subscribe(wire.Topic("siteagent", "demo-site", "gpu-sim-01", wire.KindInventory), 1, func(_ paho.Client, m paho.Message) {
		var v wire.Inventory
		if json.Unmarshal(m.Payload(), &v) == nil {
			var u []string
			for _, g := range v.GPUs {
				u = append(u, g.UUID)
			}
			select {
			case inv <- u:
			default:
			}
		}
	}).WaitTimeout(5 * time.Second)
	select {
	case uuids = <-inv:
	case <-time.After(20 * time.Second):
		b.Fatal("no inventory from the node")
	}
	topic := wire.Topic("siteagent", "demo-site", "gpu-sim-01", wire.KindGrant)
	for i := 0; i < 100; i++ {
		g := wire.Grant{Site: "demo-site", Node: "gpu-sim-01", Epoch: 1, Seq: uint64(i + 1), Issued: time.Now(), LeaseMS: 5000}
		for _, u := range uuids {
			g.Caps = append(g.Caps, wire.GPUCap{UUID: u, W: 200 + float64(i%5)*40})
		}
		p, _ := json.Marshal(g)
		c.Publish(topic, 1, false, p).WaitTimeout(5 * time.Second)
		time.Sleep(100 * time.Millisecond)
	}
	rss, peak := procMemory(b, cmd.Process.Pid)
	b.ReportMetric(rss, "node_rss_mb")
	b.ReportMetric(peak, "node_rss_peak_mb")
}
