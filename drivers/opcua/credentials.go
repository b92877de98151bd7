package opcua

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// credentialPath resolves a secret's file name the way systemd hands
// secrets to a unit: a bare name (no slash) is looked up in
// $CREDENTIALS_DIRECTORY (LoadCredential=) when that is set; anything
// else is an ordinary path. The same rule as the MQTT password's.
func credentialPath(name string) string {
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" && !strings.Contains(name, "/") {
		return filepath.Join(dir, name)
	}
	return name
}

// readPassword reads a password from a file or credential, without the
// trailing newline that editors and `echo` add.
func readPassword(name string) (string, error) {
	path := credentialPath(name)
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read the password: %w", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", errors.New(path + " is empty; write the password in it")
	}
	return pw, nil
}
