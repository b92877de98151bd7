package cgminer

import (
	"errors"
	"fmt"
	"strings"
)

// Reply is one parsed API reply.
type Reply struct {
	// Value is the whole document.
	Value Value
	// Repaired lists what the parser fixed in a malformed reply; empty for
	// well-formed JSON.
	Repaired []string
}

// ParseReply parses a reply (without its terminating NUL).
func ParseReply(data []byte) (*Reply, error) {
	v, repaired, err := Parse(data)
	if err != nil {
		return nil, err
	}
	if v.Kind != Object {
		return nil, fmt.Errorf("reply is a JSON %s, not an object", v.Kind)
	}
	return &Reply{Value: v, Repaired: repaired}, nil
}

// Status is the STATUS section every cgminer-API reply carries.
type Status struct {
	// Kind: 'S' success, 'I' informational, 'W' warning, 'E' error, 'F'
	// fatal.
	Kind        byte
	Code        int64
	Msg         string
	Description string
	When        int64
}

// OK is true for success and informational replies.
func (s Status) OK() bool { return s.Kind == 'S' || s.Kind == 'I' }

func (s Status) String() string {
	return fmt.Sprintf("STATUS=%c Code=%d Msg=%q", s.Kind, s.Code, s.Msg)
}

// StatusError is a reply whose STATUS is an error, a warning or fatal: the
// firmware understood the request and said no.
type StatusError struct {
	Status Status
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("firmware answered %c (code %d): %s", e.Status.Kind, e.Status.Code, e.Status.Msg)
}

// Status reads the first entry of the STATUS section.
func (r *Reply) Status() (Status, error) {
	sec, err := r.Value.Get("STATUS")
	if err != nil {
		return Status{}, fmt.Errorf("no STATUS section: %w", err)
	}
	entry := sec
	if sec.Kind == Array {
		if entry, err = sec.Index(0); err != nil {
			return Status{}, fmt.Errorf("empty STATUS section: %w", err)
		}
	}
	if entry.Kind != Object {
		return Status{}, fmt.Errorf("STATUS is a %s, not an object: %w", entry.Kind, ErrType)
	}
	var st Status
	kind, err := entry.Str("STATUS")
	if err != nil {
		return Status{}, fmt.Errorf("STATUS entry: %w", err)
	}
	if len(kind) != 1 || !strings.ContainsRune("SIWEF", rune(kind[0])) {
		return Status{}, fmt.Errorf("STATUS %q is not one of S, I, W, E, F", kind)
	}
	st.Kind = kind[0]
	// Code, Msg and When are informative; a reply missing them is still
	// a clear success or failure.
	if c, err := entry.Int("Code"); err == nil {
		st.Code = c
	}
	st.Msg, _ = entry.Str("Msg")
	st.Description, _ = entry.Str("Description")
	if w, err := entry.Int("When"); err == nil {
		st.When = w
	}
	return st, nil
}

// Check returns the status, and a *StatusError when it is not a success.
func (r *Reply) Check() (Status, error) {
	st, err := r.Status()
	if err != nil {
		return st, err
	}
	if !st.OK() {
		return st, &StatusError{Status: st}
	}
	return st, nil
}

// Section returns the entries of a reply section ("SUMMARY", "DEVS"):
// an array of objects. A section given as a single object is returned as
// one entry.
func (r *Reply) Section(name string) ([]Value, error) {
	sec, err := r.Value.Get(name)
	if err != nil {
		return nil, err
	}
	switch sec.Kind {
	case Object:
		return []Value{sec}, nil
	case Array:
		for i, it := range sec.items {
			if it.Kind != Object {
				return nil, fmt.Errorf("%s[%d] is a %s, not an object: %w", name, i, it.Kind, ErrType)
			}
		}
		return sec.items, nil
	}
	return nil, fmt.Errorf("%s is a %s: %w", name, sec.Kind, ErrType)
}

// First returns the first entry of a section.
func (r *Reply) First(name string) (Value, error) {
	entries, err := r.Section(name)
	if err != nil {
		return Value{}, err
	}
	if len(entries) == 0 {
		return Value{}, fmt.Errorf("%s is empty: %w", name, ErrMissing)
	}
	return entries[0], nil
}

// Part returns the reply to one command of a multi-command request
// ("summary+devs" answers {"summary":[{...}],"devs":[{...}]}).
func (r *Reply) Part(command string) (*Reply, error) {
	v, err := r.Value.Get(command)
	if err != nil {
		return nil, fmt.Errorf("multi-command reply: %w", err)
	}
	if v.Kind == Array {
		if v, err = v.Index(0); err != nil {
			return nil, fmt.Errorf("multi-command reply %q: %w", command, err)
		}
	}
	if v.Kind != Object {
		return nil, fmt.Errorf("multi-command reply %q is a %s: %w", command, v.Kind, ErrType)
	}
	return &Reply{Value: v, Repaired: r.Repaired}, nil
}

// IsMissing reports whether err means a key, section or item is absent
// (as opposed to present but wrong).
func IsMissing(err error) bool { return errors.Is(err, ErrMissing) }
