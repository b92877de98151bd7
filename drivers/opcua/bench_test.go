package opcua

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/opcua/uacert"
	opcuasim "github.com/siteagent/siteagent/sim/opcua"
)

// BenchmarkChangeToPoint measures how long a value changed on the server
// takes to be in the point store, with 50 ms sampling and publishing,
// over a signed and encrypted channel (Basic256Sha256). Changes come at
// random moments so that they fall anywhere in the publishing cycle.
func BenchmarkChangeToPoint(b *testing.B) {
	const changes = 400
	r := newBenchRig(b)
	v := r.srv.MustAdd("Battery/DischargeAvailableKW", 0.0)
	cfg := r.source(PointConfig{Name: "discharge_kw", Node: v.NodeID().String(), Meta: point.Meta{TriggerOnChange: true}})
	cfg.PublishingInterval, cfg.SamplingInterval = 50*time.Millisecond, 50*time.Millisecond
	store := point.NewStore()
	s, err := NewSource(cfg, store, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	id, _ := store.Lookup("bms.discharge_kw")
	waitFor(b, "connected", func() bool { return store.Get(id).Good() })

	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		lat = lat[:0]
		for i := range changes {
			time.Sleep(time.Duration(20+rand.IntN(60)) * time.Millisecond)
			for len(store.Wake()) > 0 {
				<-store.Wake()
			}
			want := float64(i + 1)
			start := time.Now()
			v.SetAt(want, ua.StatusOK, start)
			deadline := time.After(5 * time.Second)
			for store.Get(id).Value != want {
				select {
				case <-store.Wake():
				case <-deadline:
					b.Fatalf("change %d not in the store after 5s", i)
				}
			}
			lat = append(lat, time.Since(start))
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(ms(lat[len(lat)/2]), "opcua_change_to_point_p50_ms")
	b.ReportMetric(ms(lat[len(lat)*99/100]), "opcua_change_to_point_p99_ms")
}

// BenchmarkItemsCPU measures the CPU the agent's side spends on a
// subscription of 2,000 monitored items that each change once a second
// (Basic256Sha256, SignAndEncrypt, 100 ms publishing). The server runs in
// its own process, so that only the client's work is counted: the
// figure is this process's user + system CPU time over the wall time, in
// percent of one core.
func BenchmarkItemsCPU(b *testing.B) {
	const items = 2000
	window := 20 * time.Second
	if testing.Short() {
		window = 5 * time.Second
	}
	url, fp := serveElsewhere(b, items)
	dir := b.TempDir()
	certFile, keyFile := filepath.Join(dir, "agent.pem"), filepath.Join(dir, "agent.key")
	der, key, err := uacert.Generate(uacert.Options{ApplicationURI: "urn:siteagent:bench"})
	if err != nil {
		b.Fatal(err)
	}
	os.WriteFile(certFile, uacert.CertificatePEM(der), 0o600)
	os.WriteFile(keyFile, uacert.KeyPEM(key), 0o600)
	cfg := SourceConfig{Name: "bms", Endpoint: url, PublishingInterval: 100 * time.Millisecond,
		CertificateFile: certFile, PrivateKeyFile: keyFile, ServerFingerprint: fp}
	for i := range items {
		cfg.Points = append(cfg.Points, PointConfig{Name: fmt.Sprintf("p%04d", i), Node: fmt.Sprintf("ns=1;s=Plant.P%04d", i)})
	}
	store := point.NewStore()
	s, err := NewSource(cfg, store, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	waitFor(b, "every item subscribed and delivering", func() bool {
		if st := s.Stats(); st.LastError != "" {
			b.Fatalf("source failed: %s", st.LastError)
		}
		st := s.Stats()
		return st.Connected && st.Notifications > 2*items
	})
	time.Sleep(2 * time.Second) // past the start-up burst

	b.ResetTimer()
	var pct, perSec float64
	for range b.N {
		n0 := s.Stats().Notifications
		cpu0, wall0 := cpuTime(), time.Now()
		time.Sleep(window)
		cpu, wall := cpuTime()-cpu0, time.Since(wall0)
		pct = 100 * cpu.Seconds() / wall.Seconds()
		perSec = float64(s.Stats().Notifications-n0) / wall.Seconds()
	}
	b.StopTimer()
	if perSec < 0.8*items {
		b.Fatalf("only %.0f values a second delivered of %d changing", perSec, items)
	}
	st := s.Stats()
	if st.MissedUpdates > 0 || st.Resubscribes > 0 {
		b.Errorf("the subscription missed updates under load: %+v", st)
	}
	b.ReportMetric(pct, "opcua_items_cpu_pct")
	b.ReportMetric(perSec, "opcua_values_per_s")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// serveEnv, when set in the environment of this test binary, makes it an
// OPC UA server with that many items instead of running tests (see
// TestMain): the benchmarks' server in a process of its own.
const serveEnv = "SITEAGENT_OPCUA_BENCH_SERVE"

// serveElsewhere starts this binary as a server of n items changing once a
// second, and returns its URL and certificate fingerprint.
func serveElsewhere(b *testing.B, n int) (url, fingerprint string) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), serveEnv+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		in.Close() // the server stops when its stdin closes
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("the server process said nothing: %v", err)
	}
	url, fingerprint, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok {
		b.Fatalf("the server process said %q", line)
	}
	return url, fingerprint
}

// serveBench runs the benchmark server: n items under Plant, each
// changing once a second, spread evenly over the second.
func serveBench(n int) {
	srv, err := opcuasim.Start(opcuasim.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	vars := make([]*opcuasim.Variable, n)
	for i := range vars {
		vars[i] = srv.MustAdd(fmt.Sprintf("Plant/P%04d", i), float64(i))
	}
	fmt.Printf("%s %s\n", srv.URL(), uacert.Fingerprint(srv.Certificate()))
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	const parts = 20 // a twentieth of the items every 50 ms
	t := time.NewTicker(time.Second / parts)
	defer t.Stop()
	for k := 0; ; k++ {
		select {
		case <-stop:
			srv.Close()
			return
		case <-t.C:
			for i := k % parts; i < n; i += parts {
				vars[i].Set(float64(k*n + i))
			}
		}
	}
}

// benchRig is a rig for benchmarks (which have no *testing.T).
type benchRig struct {
	srv  *opcuasim.Server
	cert string
	key  string
}

func newBenchRig(b *testing.B) *benchRig {
	b.Helper()
	srv, err := opcuasim.Start(opcuasim.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Close)
	dir := b.TempDir()
	der, key, err := uacert.Generate(uacert.Options{ApplicationURI: "urn:siteagent:bench"})
	if err != nil {
		b.Fatal(err)
	}
	r := &benchRig{srv: srv, cert: filepath.Join(dir, "agent.pem"), key: filepath.Join(dir, "agent.key")}
	os.WriteFile(r.cert, uacert.CertificatePEM(der), 0o600)
	os.WriteFile(r.key, uacert.KeyPEM(key), 0o600)
	return r
}

func (r *benchRig) source(points ...PointConfig) SourceConfig {
	return SourceConfig{Name: "bms", Endpoint: r.srv.URL(), Timeout: 3 * time.Second,
		CertificateFile: r.cert, PrivateKeyFile: r.key, ServerFingerprint: uacert.Fingerprint(r.srv.Certificate()), Points: points}
}
