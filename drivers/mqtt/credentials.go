package mqtt

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// readPassword reads the broker password from name. A bare name (no slash)
// is looked up first in $CREDENTIALS_DIRECTORY, where systemd puts the
// credentials of a unit started with LoadCredential=; otherwise (and when
// that variable is unset) name is an ordinary path. The trailing newline
// (and CR) that editors and `echo` add is removed.
func readPassword(name string) (string, error) {
	path := name
	if dir := os.Getenv("CREDENTIALS_DIRECTORY"); dir != "" && !strings.Contains(name, "/") {
		path = filepath.Join(dir, name)
	}
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
