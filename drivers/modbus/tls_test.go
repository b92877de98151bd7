package modbus

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/simonvetter/modbus"

	"github.com/siteagent/siteagent/agent/point"
)

// pki is a test CA with the files an MBAPS device and client need.
type pki struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // the CA certificate, PEM
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	p := &pki{t: t, dir: t.TempDir(), cert: c, key: key}
	p.file = p.write(name+"-ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(name, typ string, der []byte) string {
	p.t.Helper()
	f := filepath.Join(p.dir, name)
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		p.t.Fatal(err)
	}
	return f
}

// issue signs a leaf for a server (with the loopback IP) or a client.
func (p *pki) issue(name string, server bool) (certFile, keyFile string) {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	tpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		p.t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.write(name+".pem", "CERTIFICATE", der), p.write(name+".key", "PRIVATE KEY", kder)
}

// startTLSServer serves h over MBAPS, trusting clients signed by clients.
func startTLSServer(t *testing.T, h modbus.RequestHandler, device *pki, clients *pki) string {
	t.Helper()
	certFile, keyFile := device.issue("device", true)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := modbus.LoadCertPool(clients.file)
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	srv, err := modbus.NewServer(&modbus.ServerConfiguration{
		URL: "tcp+tls://" + addr, MaxClients: 10, Timeout: 5 * time.Second,
		TLSServerCert: &cert, TLSClientCAs: pool, Logger: log.New(io.Discard, "", 0),
	}, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	return "tcp+tls://" + addr
}

func tlsEndpoint(url string, tc *TLSConfig) EndpointConfig {
	return EndpointConfig{
		Name: "pcc", URL: url, PollPeriod: 20 * time.Millisecond, Timeout: 2 * time.Second, TLS: tc,
		Points: []PointConfig{{Name: "import_kw", Table: "input", Address: u16(2), Type: "float32"}},
	}
}

func TestModbusOverTLSWithAClientCertificate(t *testing.T) {
	site := newPKI(t, "site")
	dev := &device{}
	copy(dev.input[2:], registers(wireOf(Float32, ABCD, 1234.5)))
	url := startTLSServer(t, dev, site, site)
	cert, key := site.issue("agent", false)

	e, store := newEndpoint(t, tlsEndpoint(url, &TLSConfig{CAFile: site.file, CertFile: cert, KeyFile: key}), nil)
	run(t, e)
	waitFor(t, "a value over TLS", func() bool {
		p := get(t, store, "pcc.import_kw")
		return p.Good() && p.Value == 1234.5
	})
}

func TestModbusOverTLSRefusesWhatItCannotTrust(t *testing.T) {
	site, stranger := newPKI(t, "site"), newPKI(t, "stranger")
	dev := &device{}
	url := startTLSServer(t, dev, site, site)
	siteCert, siteKey := site.issue("agent", false)
	strangerCert, strangerKey := stranger.issue("intruder", false)

	// A client certificate the device does not trust.
	e, store := newEndpoint(t, tlsEndpoint(url, &TLSConfig{CAFile: site.file, CertFile: strangerCert, KeyFile: strangerKey}), nil)
	run(t, e)
	<-e.Ready()
	waitFor(t, "points bad", isBad(store, "pcc.import_kw", point.CommError))
	waitFor(t, "the refusal recorded", func() bool { return strings.Contains(e.Stats().LastError, "certificate") })
	t.Logf("untrusted client: %s", e.Stats().LastError)
	if get(t, store, "pcc.import_kw").Good() {
		t.Error("read with an untrusted client certificate")
	}

	// A device whose certificate is not signed by the CA we trust.
	e2, store2 := newEndpoint(t, tlsEndpoint(url, &TLSConfig{CAFile: stranger.file, CertFile: siteCert, KeyFile: siteKey}), nil)
	run(t, e2)
	<-e2.Ready()
	waitFor(t, "points bad", isBad(store2, "pcc.import_kw", point.CommError))
	waitFor(t, "the refusal recorded", func() bool { return strings.Contains(e2.Stats().LastError, "certificate") })
	t.Logf("untrusted device: %s", e2.Stats().LastError)

	// Without any client certificate the device refuses the handshake.
	conn, err := tls.Dial("tcp", strings.TrimPrefix(url, "tcp+tls://"), &tls.Config{RootCAs: mustPool(t, site.file)})
	if err == nil {
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		// TLS 1.3 reports the refusal at the first read.
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil {
		t.Error("the device accepted a TLS client without a certificate")
	}
}

func TestModbusOverTLSReadsRenewedFilesAtReconnect(t *testing.T) {
	site := newPKI(t, "site")
	dev := &device{}
	copy(dev.input[2:], registers(wireOf(Float32, ABCD, 42)))
	url := startTLSServer(t, dev, site, site)
	cert, key := site.issue("agent", false)
	later := filepath.Join(t.TempDir(), "agent.pem")
	e, store := newEndpoint(t, tlsEndpoint(url, &TLSConfig{CAFile: site.file, CertFile: later, KeyFile: key}), nil)
	run(t, e)
	waitFor(t, "missing file reported", func() bool { return strings.Contains(e.Stats().LastError, "agent.pem") })
	b, _ := os.ReadFile(cert)
	if err := os.WriteFile(later, b, 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "connected once the file exists", func() bool { return get(t, store, "pcc.import_kw").Value == 42 })
}

func TestTLSConfigMustMatchTheScheme(t *testing.T) {
	cases := []struct {
		url  string
		tls  *TLSConfig
		key  string
		want string
	}{
		{"tcp+tls://10.0.0.5:802", nil, "modbus[0].url", "needs a [modbus.tls] table"},
		{"tcp://10.0.0.5:502", &TLSConfig{CAFile: "a", CertFile: "b", KeyFile: "c"}, "modbus[0].tls", "applies to tcp+tls://"},
		{"tcp+tls://10.0.0.5:802", &TLSConfig{CAFile: "ca.pem", KeyFile: "k"}, "modbus[0].tls.cert_file", "requires one"},
		{"tcp+tls://10.0.0.5:802", &TLSConfig{CertFile: "c", KeyFile: "k"}, "modbus[0].tls.ca_file", "signs the device's certificate"},
	}
	for _, c := range cases {
		cfg := goodEndpoint()
		cfg.URL, cfg.TLS = c.url, c.tls
		probs := problemsOf(cfg)
		found := false
		for _, p := range probs {
			if p.Key == c.key && strings.Contains(p.Msg, c.want) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s with %+v: want %s %q, got %v", c.url, c.tls, c.key, c.want, probs)
		}
	}
	ok := goodEndpoint()
	ok.URL, ok.TLS = "tcp+tls://10.0.0.5:802", &TLSConfig{CAFile: "a", CertFile: "b", KeyFile: "c"}
	if probs := problemsOf(ok); len(probs) != 0 {
		t.Errorf("a complete TLS endpoint has problems: %v", probs)
	}
}

func mustPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	p, err := modbus.LoadCertPool(file)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
