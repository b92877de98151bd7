package uacert

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGenerateAndReadBack(t *testing.T) {
	der, key, err := Generate(Options{ApplicationURI: "urn:siteagent:x", Hosts: []string{"10.0.0.9", "agent.local"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPEM, certDER := filepath.Join(dir, "a.pem"), filepath.Join(dir, "a.der")
	keyPEM, keyPKCS8 := filepath.Join(dir, "a.key"), filepath.Join(dir, "a8.key")
	os.WriteFile(certPEM, CertificatePEM(der), 0o600)
	os.WriteFile(certDER, der, 0o600)
	os.WriteFile(keyPEM, KeyPEM(key), 0o600)
	p8, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(keyPKCS8, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8}), 0o600)
	for _, c := range []struct{ cert, key string }{{certPEM, keyPEM}, {certDER, keyPKCS8}} {
		got, k, err := ReadPair(c.cert, c.key)
		if err != nil || string(got) != string(der) || k.N.Cmp(key.N) != 0 {
			t.Errorf("ReadPair(%s, %s): %v", c.cert, c.key, err)
		}
	}
	_, cert, _ := ParseCertificate(der, "x")
	if ApplicationURI(cert) != "urn:siteagent:x" || len(cert.IPAddresses) != 1 || cert.DNSNames[0] != "agent.local" {
		t.Errorf("certificate holds URI %q, IPs %v, names %v", ApplicationURI(cert), cert.IPAddresses, cert.DNSNames)
	}
	if cert.KeyUsage&x509.KeyUsageKeyEncipherment == 0 || cert.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		t.Errorf("key usage %v lacks what OPC UA needs", cert.KeyUsage)
	}

	_, other, _ := Generate(Options{ApplicationURI: "urn:other"})
	otherKey := filepath.Join(dir, "other.key")
	os.WriteFile(otherKey, KeyPEM(other), 0o600)
	if _, _, err := ReadPair(certPEM, otherKey); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("a key of another certificate: %v", err)
	}
	if _, _, err := ReadCertificate(keyPEM); err == nil {
		t.Error("a key file read as a certificate")
	}
	if _, _, err := Generate(Options{ApplicationURI: "not a uri"}); err == nil {
		t.Error("accepted an application URI without a scheme")
	}
	if _, _, err := Generate(Options{ApplicationURI: "urn:x", Bits: 1024}); err == nil {
		t.Error("accepted a 1024-bit key")
	}
}

func TestFingerprints(t *testing.T) {
	der, _, err := Generate(Options{ApplicationURI: "urn:x"})
	if err != nil {
		t.Fatal(err)
	}
	fp := Fingerprint(der)
	if len(fp) != 95 || strings.ToUpper(fp) != fp {
		t.Fatalf("fingerprint %q is not 32 upper-case hex pairs", fp)
	}
	for _, s := range []string{fp, strings.ToLower(strings.ReplaceAll(fp, ":", "")), "sha256:" + fp, "SHA256 Fingerprint=" + fp} {
		got, err := ParseFingerprint(s)
		if err != nil || !MatchesFingerprint(der, got) {
			t.Errorf("ParseFingerprint(%q): %v", s, err)
		}
	}
	for _, s := range []string{"", "AB:CD", strings.Repeat("ZZ", 32)} {
		if _, err := ParseFingerprint(s); err == nil {
			t.Errorf("ParseFingerprint(%q) accepted", s)
		}
	}
}
