package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	lib "github.com/simonvetter/modbus"

	"github.com/siteagent/siteagent/configs"
	"github.com/siteagent/siteagent/drivers/opcua/uacert"
	"github.com/siteagent/siteagent/sim"
	opcuasim "github.com/siteagent/siteagent/sim/opcua"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runMain(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestOPCUAGenCert(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "agent.pem"), filepath.Join(dir, "agent.key")
	code, out, errs := run(t, "opcua", "gen-cert", "--cert", cert, "--key", key, "--uri", "urn:siteagent:site-7", "--host", "10.0.0.9")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	der, key2, err := uacert.ReadPair(cert, key)
	if err != nil {
		t.Fatalf("the files do not form a pair: %v", err)
	}
	_, c, _ := uacert.ParseCertificate(der, cert)
	if uacert.ApplicationURI(c) != "urn:siteagent:site-7" || len(c.IPAddresses) != 1 || key2.N.BitLen() != 2048 {
		t.Errorf("certificate: URI %q, IPs %v, key %d bits", uacert.ApplicationURI(c), c.IPAddresses, key2.N.BitLen())
	}
	if !strings.Contains(out, uacert.Fingerprint(der)) {
		t.Errorf("the fingerprint is not printed:\n%s", out)
	}
	if fi, _ := os.Stat(key); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	if code, _, errs := run(t, "opcua", "gen-cert", "--cert", cert, "--key", key); code == 0 || !strings.Contains(errs, "--force") {
		t.Errorf("overwrote existing files without --force: exit %d, %s", code, errs)
	}
}

func TestOPCUABrowse(t *testing.T) {
	srv, err := opcuasim.Start(opcuasim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.MustAdd("BMS/Battery/SoCPct", 64.5)
	srv.MustAdd("BMS/Battery/Vendor", "ACME")
	code, out, errs := run(t, "opcua", "browse", srv.URL(), "--depth", "5")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	fp := uacert.Fingerprint(srv.Certificate())
	for _, want := range []string{"server_fingerprint = \"" + fp + "\"", "Basic256Sha256/SignAndEncrypt", "1:BMS/1:Battery/1:SoCPct", "ns=1;s=BMS.Battery.SoCPct", "Double", "64.5"} {
		if !strings.Contains(out, want) {
			t.Errorf("listing lacks %q:\n%s", want, out)
		}
	}
	// The start node and the TOML form, with flags after the arguments.
	code, out, errs = run(t, "opcua", "browse", srv.URL(), "ns=1;s=BMS", "--toml", "--pin", fp)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "[[opcua.points]]\nname = \"battery_socpct\"\nnode = \"ns=1;s=BMS.Battery.SoCPct\"") || strings.Contains(out, "Vendor") {
		t.Errorf("TOML output:\n%s", out)
	}
	// A pin that does not match is refused.
	code, _, errs = run(t, "opcua", "browse", srv.URL(), "--pin", strings.Repeat("AB", 32))
	if code != 1 || !strings.Contains(errs, "does not match the pinned one") {
		t.Errorf("mismatched pin: exit %d, %s", code, errs)
	}
	if code, _, errs := run(t, "opcua", "browse"); code != 2 || !strings.Contains(errs, "usage") {
		t.Errorf("no endpoint: exit %d, %s", code, errs)
	}
}

type registersDevice struct{ holding [16]uint16 }

func (d *registersDevice) HandleCoils(*lib.CoilsRequest) ([]bool, error) {
	return []bool{true, false, true}, nil
}
func (d *registersDevice) HandleDiscreteInputs(*lib.DiscreteInputsRequest) ([]bool, error) {
	return nil, lib.ErrIllegalFunction
}
func (d *registersDevice) HandleInputRegisters(*lib.InputRegistersRequest) ([]uint16, error) {
	return nil, lib.ErrIllegalFunction
}
func (d *registersDevice) HandleHoldingRegisters(r *lib.HoldingRegistersRequest) ([]uint16, error) {
	if int(r.Addr)+int(r.Quantity) > len(d.holding) {
		return nil, lib.ErrIllegalDataAddress
	}
	return d.holding[r.Addr : r.Addr+r.Quantity], nil
}

func TestModbusRead(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	dev := &registersDevice{}
	// 1234.5 as float32, words swapped (CDAB), at 4; -2 as int16 at 8.
	bits := math.Float32bits(1234.5)
	dev.holding[4], dev.holding[5] = uint16(bits), uint16(bits>>16)
	var w [2]byte
	binary.BigEndian.PutUint16(w[:], uint16(0xFFFE))
	dev.holding[8] = binary.BigEndian.Uint16(w[:])
	srv, err := lib.NewServer(&lib.ServerConfiguration{URL: "tcp://" + addr, MaxClients: 10, Logger: log.New(io.Discard, "", 0)}, dev)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	url := "tcp://" + addr
	code, out, errs := run(t, "modbus", "read", url, "1", "4", "1", "--type", "float32", "--order", "CDAB")
	if code != 0 || !regexp.MustCompile(`(?m)^4\s+5000 449A\s+1234\.5$`).MatchString(out) {
		t.Errorf("float32 CDAB: exit %d\n%s%s", code, out, errs)
	}
	code, out, _ = run(t, "modbus", "read", "--type", "int16", "--scale", "0.5", url, "1", "8", "1")
	if code != 0 || !regexp.MustCompile(`(?m)^8\s+FFFE\s+-1$`).MatchString(out) {
		t.Errorf("int16 scaled: exit %d\n%s", code, out)
	}
	code, out, _ = run(t, "modbus", "read", url, "1", "0", "3", "--table", "coil")
	if code != 0 || !regexp.MustCompile(`(?m)^2\s+1\s+1$`).MatchString(out) {
		t.Errorf("coils: exit %d\n%s", code, out)
	}
	code, _, errs = run(t, "modbus", "read", url, "1", "14", "2", "--type", "float32")
	if code != 1 || !strings.Contains(errs, "illegal data address") {
		t.Errorf("a refused read: exit %d, %s", code, errs)
	}
	code, _, errs = run(t, "modbus", "read", url, "1", "0", "1", "--type", "float33")
	if code != 2 || !strings.Contains(errs, "--type") {
		t.Errorf("bad type: exit %d, %s", code, errs)
	}
}

// bmsSite runs the simulated site and its OPC UA BMS and writes the
// OPC UA example site file pointed at them.
func bmsSite(t *testing.T) (path string, site *sim.Site, bms *opcuasim.BMS) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cfg := sim.DefaultConfig()
	site = sim.New(cfg)
	if err := site.Start(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(site.Close)
	dir := t.TempDir()
	der, key, err := uacert.Generate(uacert.Options{ApplicationURI: "urn:siteagent:test"})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "agent.pem"), uacert.CertificatePEM(der), 0o600)
	os.WriteFile(filepath.Join(dir, "agent.key"), uacert.KeyPEM(key), 0o600)
	os.WriteFile(filepath.Join(dir, "opcua-bms-password"), []byte("s3cret\n"), 0o600)
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	bms, err = opcuasim.StartBMS(site, cfg, opcuasim.Config{NoAnonymous: true, Users: map[string]string{"siteagent": "s3cret"}}, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bms.Close)
	raw, err := configs.Files.ReadFile("bms-opcua.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	doc = strings.ReplaceAll(doc, "tcp://127.0.0.1:15020", site.URL())
	doc = strings.Replace(doc, "opc.tcp://127.0.0.1:4840", bms.URL(), 1)
	doc = strings.Replace(doc, "/etc/siteagent/opcua/agent.pem", filepath.Join(dir, "agent.pem"), 1)
	doc = strings.Replace(doc, "/etc/siteagent/opcua/agent.key", filepath.Join(dir, "agent.key"), 1)
	doc = regexp.MustCompile(`server_fingerprint = "[0-9A-F:]+"`).ReplaceAllString(doc, `server_fingerprint = "`+uacert.Fingerprint(bms.Server().Certificate())+`"`)
	path = filepath.Join(dir, "site.toml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, site, bms
}

func TestPointsReadsEverySourceOnce(t *testing.T) {
	path, _, bms := bmsSite(t)
	code, out, errs := run(t, "points", "--config", path)
	if code != 0 {
		t.Fatalf("exit %d:\n%s\n%s", code, out, errs)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^pcc\.frequency_hz\s+(59|60)\.\d+\s+Hz\s+good\s+\d`),
		regexp.MustCompile(`(?m)^bms\.battery_discharge_available_kw\s+4000\s+kW\s+good\s+\d`),
		regexp.MustCompile(`(?m)^bms\.generation_available_kw\s+6000\s+kW\s+good`),
		regexp.MustCompile(`(?m)^bms\.chiller1_kw\s+\d+(\.\d+)?\s+kW\s+good`),
		regexp.MustCompile(`(?m)^\d+ of \d+ point\(s\) good and fresh$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	// A BMS whose certificate no longer matches the pin: its points are
	// bad, the others still read, and the reason is printed.
	bms.Close()
	srv, err := opcuasim.Start(opcuasim.Config{Addr: bms.Server().Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	code, out, _ = run(t, "points", "--config", path, "--timeout", "5s")
	if code != 1 {
		t.Errorf("exit %d with a refused source, want 1", code)
	}
	if !regexp.MustCompile(`(?m)^bms\.battery_soc_pct\s+-\s+%\s+bad`).MatchString(out) || !strings.Contains(out, "opcua source bms: the server's certificate does not match the pinned one") {
		t.Errorf("a refused server is not reported:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^pcc\.import_kw\s+\d+(\.\d+)?\s+kW\s+good`).MatchString(out) {
		t.Errorf("the Modbus points stopped reading:\n%s", out)
	}
}
