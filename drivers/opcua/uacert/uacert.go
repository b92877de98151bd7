// Package uacert makes and reads the X.509 certificates that OPC UA
// applications present: RSA keys, the application URI as a URI subject
// alternative name, and the key usages that OPC UA's security policies need.
//
// It is shared by the OPC UA driver (loading the agent's certificate and
// pinning the server's), `siteagent opcua gen-cert`, the simulated BMS
// server and the tests, and depends on nothing of the agent's.
package uacert

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Options describe a self-signed application certificate.
type Options struct {
	// ApplicationURI goes into the certificate as a URI SAN; OPC UA peers
	// compare it with the ApplicationURI the application announces.
	ApplicationURI string
	// CommonName of the subject; the URI unless set.
	CommonName string
	// Hosts are DNS names or IP addresses the application runs on.
	Hosts []string
	// Bits of the RSA key: 2048 unless set (the OPC UA policies accept
	// 2048..4096).
	Bits int
	// Valid is how long the certificate is valid from now; one year unless set.
	Valid time.Duration
}

// Generate makes a self-signed certificate and its key. It returns the
// certificate in DER form.
func Generate(o Options) (der []byte, key *rsa.PrivateKey, err error) {
	u, err := url.Parse(o.ApplicationURI)
	if err != nil || u.Scheme == "" {
		return nil, nil, fmt.Errorf("application URI %q is not a URI; write e.g. urn:siteagent:site-1", o.ApplicationURI)
	}
	bits := o.Bits
	if bits == 0 {
		bits = 2048
	}
	if bits < 2048 || bits > 4096 {
		return nil, nil, fmt.Errorf("%d-bit keys are outside what the OPC UA security policies accept (2048..4096)", bits)
	}
	valid := o.Valid
	if valid <= 0 {
		valid = 365 * 24 * time.Hour
	}
	cn := o.CommonName
	if cn == "" {
		cn = o.ApplicationURI
	}
	key, err = rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tpl := x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"siteagent"}},
		// A little slack before now: peers' clocks differ.
		NotBefore: now.Add(-time.Hour),
		NotAfter:  now.Add(valid),
		// OPC UA signs with the key (channel and session signatures) and
		// encrypts to it (OpenSecureChannel, user passwords); a
		// self-signed certificate also signs itself.
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment |
			x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{u},
	}
	for _, h := range o.Hosts {
		if ip := net.ParseIP(h); ip != nil {
			tpl.IPAddresses = append(tpl.IPAddresses, ip)
		} else if h != "" {
			tpl.DNSNames = append(tpl.DNSNames, h)
		}
	}
	der, err = x509.CreateCertificate(rand.Reader, &tpl, &tpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	return der, key, nil
}

// CertificatePEM encodes a DER certificate as PEM.
func CertificatePEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// KeyPEM encodes an RSA key as PEM (PKCS #1).
func KeyPEM(key *rsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
}

// ReadCertificate reads a certificate file in PEM or DER form and returns
// it in DER form, checked to parse.
func ReadCertificate(path string) ([]byte, *x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return ParseCertificate(b, path)
}

// ParseCertificate reads certificate bytes in PEM or DER form; name is used
// in errors.
func ParseCertificate(b []byte, name string) ([]byte, *x509.Certificate, error) {
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "CERTIFICATE" {
			return nil, nil, fmt.Errorf("%s holds a PEM %q block, not a CERTIFICATE", name, blk.Type)
		}
		der = blk.Bytes
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("%s is not a certificate in PEM or DER form: %v", name, err)
	}
	return der, c, nil
}

// ReadKey reads an RSA private key file in PEM (PKCS #1 or PKCS #8) or DER
// form.
func ReadKey(path string) (*rsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	der := b
	if blk, _ := pem.Decode(b); blk != nil {
		der = blk.Bytes
	}
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s is not an RSA private key in PEM or DER form", path)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s holds a %T key; OPC UA's security policies need RSA", path, k)
	}
	return rk, nil
}

// ReadPair reads a certificate and its key and checks that they belong
// together.
func ReadPair(certPath, keyPath string) ([]byte, *rsa.PrivateKey, error) {
	der, c, err := ReadCertificate(certPath)
	if err != nil {
		return nil, nil, err
	}
	key, err := ReadKey(keyPath)
	if err != nil {
		return nil, nil, err
	}
	pub, ok := c.PublicKey.(*rsa.PublicKey)
	if !ok || pub.N.Cmp(key.N) != 0 || pub.E != key.E {
		return nil, nil, fmt.Errorf("key %s does not belong to certificate %s", keyPath, certPath)
	}
	return der, key, nil
}

// Fingerprint is the SHA-256 of a DER certificate, written as colon
// separated upper-case hex pairs ("AB:CD:...").
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	var b strings.Builder
	for i, x := range sum {
		if i > 0 {
			b.WriteByte(':')
		}
		fmt.Fprintf(&b, "%02X", x)
	}
	return b.String()
}

// ParseFingerprint reads a SHA-256 fingerprint as written by people and
// tools: hex with or without colons or spaces, any case, optionally
// prefixed "sha256:" or "SHA256=".
func ParseFingerprint(s string) ([32]byte, error) {
	var out [32]byte
	t := strings.TrimSpace(s)
	for _, p := range []string{"sha256:", "SHA256:", "sha256=", "SHA256=", "SHA256 Fingerprint="} {
		t = strings.TrimPrefix(t, p)
	}
	t = strings.NewReplacer(":", "", " ", "", "-", "").Replace(t)
	b, err := hex.DecodeString(t)
	if err != nil || len(b) != len(out) {
		return out, errors.New("expected a SHA-256 fingerprint: 64 hex digits, colons allowed (e.g. from `openssl x509 -noout -fingerprint -sha256`)")
	}
	copy(out[:], b)
	return out, nil
}

// MatchesFingerprint reports whether der hashes to fp.
func MatchesFingerprint(der []byte, fp [32]byte) bool {
	return sha256.Sum256(der) == fp
}

// ApplicationURI returns the first URI SAN of a certificate, or "".
func ApplicationURI(c *x509.Certificate) string {
	if len(c.URIs) == 0 {
		return ""
	}
	return c.URIs[0].String()
}
