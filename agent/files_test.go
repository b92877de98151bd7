package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siteagent/siteagent/configs"
)

func TestCheckFilesSaysWhatCannotBeRead(t *testing.T) {
	data, _ := configs.Files.ReadFile("site.example.toml")
	cfg, err := Load("site.example.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, []byte("x"), 0o600)
	cfg.MQTT.TLS.CAFile = ca
	cfg.MQTT.TLS.CertFile = filepath.Join(dir, "missing.pem")
	creds := t.TempDir()
	os.WriteFile(filepath.Join(creds, "mqtt-password"), []byte("pw"), 0o600)
	t.Setenv("CREDENTIALS_DIRECTORY", creds)

	out := strings.Join(cfg.CheckFiles(), "\n")
	for _, want := range []string{
		"mqtt.password_file", "mqtt-password: ok",
		"mqtt.tls.ca_file", ca + ": ok",
		"mqtt.tls.cert_file", "missing.pem: NOT READABLE",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("lacks %q:\n%s", want, out)
		}
	}
}
