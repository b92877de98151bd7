package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/siteagent/siteagent/agent/config"
	"github.com/siteagent/siteagent/drivers/miner"
)

// FileRef is a file the agent reads at start or on connect: certificates,
// keys, password files, inventories.
type FileRef struct {
	Key  string // where the site file names it
	Path string
}

// Files lists every file the site file makes the agent read, in file order.
func (c *SiteConfig) Files() []FileRef {
	var out []FileRef
	add := func(key, path string) {
		if path != "" {
			out = append(out, FileRef{key, path})
		}
	}
	if m := c.MQTT; m != nil {
		add("mqtt.password_file", m.PasswordFile)
		if t := m.TLS; t != nil {
			add("mqtt.tls.ca_file", t.CAFile)
			add("mqtt.tls.cert_file", t.CertFile)
			add("mqtt.tls.key_file", t.KeyFile)
		}
	}
	for i, ep := range c.Modbus {
		if t := ep.TLS; t != nil {
			k := config.Index("modbus", i) + ".tls."
			add(k+"ca_file", t.CAFile)
			add(k+"cert_file", t.CertFile)
			add(k+"key_file", t.KeyFile)
		}
	}
	for i, s := range c.OPCUA {
		k := config.Index("opcua", i) + "."
		add(k+"certificate_file", s.CertificateFile)
		add(k+"private_key_file", s.PrivateKeyFile)
		add(k+"server_certificate_file", s.ServerCertificateFile)
		add(k+"password_file", s.PasswordFile)
		add(k+"user_certificate_file", s.UserCertificateFile)
		add(k+"user_private_key_file", s.UserPrivateKeyFile)
	}
	for i, g := range c.Groups {
		if g.Miners == nil {
			continue
		}
		k := config.Index("groups", i) + ".miners."
		add(k+"inventory_file", g.Miners.InventoryFile)
		cr := &g.Miners.Credentials
		for _, f := range []struct {
			name string
			path string
		}{{"braiins", credPath(cr.Braiins)}, {"whatsminer", credPath(cr.Whatsminer)}, {"antminer", credPath(cr.Antminer)}, {"vnish", credPath(cr.Vnish)}} {
			add(k+"credentials."+f.name+".password_file", f.path)
		}
	}
	return out
}

// CheckFiles says, for each file the agent will read, whether this process
// can read it. A bare name without a slash is a systemd credential: it is
// looked up in $CREDENTIALS_DIRECTORY, which only the service has, so
// outside the service it can only be noted.
func (c *SiteConfig) CheckFiles() []string {
	var out []string
	for _, f := range c.Files() {
		path := f.Path
		if !strings.Contains(path, "/") {
			dir := os.Getenv("CREDENTIALS_DIRECTORY")
			if dir == "" {
				out = append(out, fmt.Sprintf("  %-45s %s: a systemd credential (LoadCredential=%s:...); readable only inside the service", f.Key, path, path))
				continue
			}
			path = filepath.Join(dir, path)
		} else if !filepath.IsAbs(path) && c.dir != "" {
			path = filepath.Join(c.dir, path)
		}
		fh, err := os.Open(path)
		if err != nil {
			out = append(out, fmt.Sprintf("  %-45s %s: NOT READABLE here: %v", f.Key, f.Path, err))
			continue
		}
		fh.Close()
		out = append(out, fmt.Sprintf("  %-45s %s: ok", f.Key, f.Path))
	}
	return out
}

func credPath(c *miner.CredentialConfig) string {
	if c == nil {
		return ""
	}
	return c.PasswordFile
}
