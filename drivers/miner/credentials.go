package miner

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Credentials are one family's login.
type Credentials struct {
	User     string
	Password string
}

// ReadSecret reads a password from name. A bare name (no slash) is looked
// up first in $CREDENTIALS_DIRECTORY, where systemd puts the credentials
// of a unit started with LoadCredential=; otherwise name is a path. The
// trailing newline editors add is removed.
func ReadSecret(name string) (string, error) {
	path := name
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" && !strings.Contains(name, "/") {
		path = filepath.Join(dir, name)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read the password: %w", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" && len(b) == 0 {
		return "", errors.New(path + " is empty; write the password in it (a single newline means an empty password)")
	}
	return pw, nil
}

// LoadCredentials reads every family's password.
func (c *GroupConfig) LoadCredentials() (map[Family]Credentials, error) {
	out := map[Family]Credentials{}
	for _, f := range Families {
		cc := c.Credentials.byFamily()[f]
		if cc == nil {
			continue
		}
		pw, err := ReadSecret(cc.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("%s credentials: %w", f, err)
		}
		out[f] = Credentials{User: cc.User, Password: pw}
	}
	return out, nil
}
