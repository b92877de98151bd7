package miner

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// The JSON-speaking families (Antminer CGIs, Vnish, Whatsminer) share
// these two readers, so that a reply is trusted the same way everywhere.

// DecodeReply decodes exactly one JSON value. Firmware sometimes ends a
// reply with a NUL or a newline; those are allowed, anything else after
// the value is not. Numbers decoded into interface values stay
// json.Number, never a rounded float.
func DecodeReply(b []byte, v any) error {
	b = bytes.TrimRight(b, "\x00\r\n\t ")
	if len(b) == 0 {
		return errors.New("empty reply")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if dec.More() {
		return errors.New("not JSON: data after the reply")
	}
	return nil
}

// ReplyNumber reads a JSON number, or a number quoted as a string, as
// several firmwares write them. NaN, infinities and the unparseable are
// errors naming the field.
func ReplyNumber(raw json.RawMessage, name string) (float64, error) {
	s := strings.TrimSpace(string(raw))
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		var q string
		if err := json.Unmarshal(raw, &q); err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		s = strings.TrimSpace(q)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%s: %.40q is not a number", name, s)
	}
	return f, nil
}
