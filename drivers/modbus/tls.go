package modbus

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/simonvetter/modbus"
)

// tlsFile resolves a file name the way systemd hands secrets to a unit: a
// bare name is looked up in $CREDENTIALS_DIRECTORY when that is set.
func tlsFile(name string) string {
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" && !strings.Contains(name, "/") {
		return filepath.Join(dir, name)
	}
	return name
}

// loadTLS reads the client certificate and the CAs of [modbus.tls].
func loadTLS(c *TLSConfig) (*tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(tlsFile(c.CertFile), tlsFile(c.KeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("client certificate %s / key %s: %w", c.CertFile, c.KeyFile, err)
	}
	pem, err := os.ReadFile(tlsFile(c.CAFile))
	if err != nil {
		return nil, nil, fmt.Errorf("ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("ca_file %s holds no PEM certificate", c.CAFile)
	}
	return &cert, pool, nil
}

// newClient makes the library's client for the endpoint. A TLS client is
// made anew at every connection, with the certificate files as they are
// then.
func (e *Endpoint) newClient() (*modbus.ModbusClient, error) {
	conf := &modbus.ClientConfiguration{
		URL:     e.cfg.URL,
		Timeout: e.cfg.Timeout,
		// The library's own warnings (stray transaction ids) are debug detail.
		Logger: e.libLog,
	}
	if e.cfg.usesTLS() {
		cert, pool, err := loadTLS(e.cfg.TLS)
		if err != nil {
			return nil, err
		}
		conf.TLSClientCert, conf.TLSRootCAs = cert, pool
	}
	client, err := modbus.NewClient(conf)
	if err != nil {
		return nil, err
	}
	if err := client.SetUnitId(*e.cfg.UnitID); err != nil {
		return nil, err
	}
	return client, nil
}
