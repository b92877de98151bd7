package opcua

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/opcua/uacert"
	opcuasim "github.com/siteagent/siteagent/sim/opcua"
)

// rig is a simulated server, the agent's certificate files and a log.
type rig struct {
	t      *testing.T
	srv    *opcuasim.Server
	srvCfg opcuasim.Config
	dir    string
	cert   string // agent certificate file
	key    string
	log    *syncBuffer
}

func newRig(t *testing.T, cfg opcuasim.Config) *rig {
	t.Helper()
	if cfg.Certificate == nil {
		der, key, err := uacert.Generate(uacert.Options{ApplicationURI: "urn:siteagent:sim:server", Hosts: []string{"127.0.0.1"}})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificate, cfg.Key = der, key
	}
	srv, err := opcuasim.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, srv: srv, srvCfg: cfg, dir: t.TempDir(), log: &syncBuffer{}}
	t.Cleanup(func() { r.srv.Close() })
	r.cert, r.key = r.writePair("agent", "urn:siteagent:test")
	return r
}

// writePair makes a certificate and key and writes them as PEM files.
func (r *rig) writePair(name, uri string) (certFile, keyFile string) {
	r.t.Helper()
	der, key, err := uacert.Generate(uacert.Options{ApplicationURI: uri})
	if err != nil {
		r.t.Fatal(err)
	}
	certFile = filepath.Join(r.dir, name+".pem")
	keyFile = filepath.Join(r.dir, name+".key")
	if err := os.WriteFile(certFile, uacert.CertificatePEM(der), 0o600); err != nil {
		r.t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, uacert.KeyPEM(key), 0o600); err != nil {
		r.t.Fatal(err)
	}
	return certFile, keyFile
}

// restart stops the server and starts an identical one on the same port.
func (r *rig) restart(downFor func()) {
	r.t.Helper()
	addr := r.srv.Addr()
	r.srv.Close()
	if downFor != nil {
		downFor()
	}
	cfg := r.srvCfg
	cfg.Addr = addr
	srv, err := opcuasim.Start(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	r.srv = srv
}

// source is a secure source config for the rig's server, pinned by
// fingerprint, with points.
func (r *rig) source(points ...PointConfig) SourceConfig {
	return SourceConfig{
		Name:               "bms",
		Endpoint:           r.srv.URL(),
		PublishingInterval: 50 * time.Millisecond,
		Timeout:            3 * time.Second,
		CertificateFile:    r.cert,
		PrivateKeyFile:     r.key,
		ServerFingerprint:  uacert.Fingerprint(r.srv.Certificate()),
		Points:             points,
	}
}

func (r *rig) logger() *slog.Logger {
	w := io.Writer(r.log)
	if testing.Verbose() {
		w = io.MultiWriter(r.log, os.Stderr)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// run starts a source on cfg and stops it when the test ends.
func (r *rig) run(cfg SourceConfig) (*Source, *point.Store) {
	r.t.Helper()
	store := point.NewStore()
	s, err := NewSource(cfg, store, r.logger())
	if err != nil {
		r.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil {
			r.t.Errorf("Run: %v", err)
		}
	}()
	r.t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			r.t.Error("Run did not return within 10s of cancel")
		}
	})
	return s, store
}

func pt(name, node string) PointConfig { return PointConfig{Name: name, Node: node} }

func get(t testing.TB, s *point.Store, name string) point.Point {
	t.Helper()
	id, ok := s.Lookup(name)
	if !ok {
		t.Fatalf("no point %s", name)
	}
	return s.Get(id)
}

// waitFor polls cond for up to 20s (the machine is shared and slow).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: not within 20s", what)
}

func isGood(s *point.Store, name string, v float64) func() bool {
	return func() bool {
		id, _ := s.Lookup(name)
		p := s.Get(id)
		return p.Quality == point.Good && p.Value == v
	}
}

func isBad(s *point.Store, name string, why point.Reason) func() bool {
	return func() bool {
		id, _ := s.Lookup(name)
		p := s.Get(id)
		return p.Quality == point.Bad && p.Reason == why
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// has reports whether one log line holds every part.
func (s *syncBuffer) has(parts ...string) bool {
	for _, line := range strings.Split(s.String(), "\n") {
		ok := true
		for _, p := range parts {
			if !strings.Contains(line, p) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func f64(v float64) *float64 { return &v }
