package cgminer

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Kind is the type of a JSON value.
type Kind uint8

const (
	Null Kind = iota
	Bool
	Number
	String
	Array
	Object
	// NaN is a bare nan / inf the firmware printed where a number belongs:
	// the value exists but cannot be used.
	NaN
)

var kindNames = [...]string{"null", "bool", "number", "string", "array", "object", "nan"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Value is one parsed JSON value. Objects keep their members in order and
// keep duplicate keys, so that an accessor can refuse a key whose copies
// disagree instead of silently taking one.
type Value struct {
	Kind  Kind
	num   float64
	str   string // String: the text; Number and NaN: the raw token
	b     bool
	items []Value  // Array
	keys  []string // Object
	vals  []Value  // Object
}

// Errors returned by the accessors; match them with errors.Is.
var (
	// ErrMissing: the key or index is not there.
	ErrMissing = errors.New("missing")
	// ErrType: the value is there but of the wrong kind.
	ErrType = errors.New("wrong type")
	// ErrNotANumber: the firmware reported nan, inf or "N/A".
	ErrNotANumber = errors.New("not a number")
	// ErrAmbiguous: the key appears more than once with different values.
	ErrAmbiguous = errors.New("duplicate key with different values")
)

// Len is the number of items of an array or members of an object.
func (v Value) Len() int {
	if v.Kind == Array {
		return len(v.items)
	}
	return len(v.keys)
}

// Index returns item i of an array.
func (v Value) Index(i int) (Value, error) {
	if v.Kind != Array {
		return Value{}, fmt.Errorf("%w: %s is not an array", ErrType, v.Kind)
	}
	if i < 0 || i >= len(v.items) {
		return Value{}, fmt.Errorf("%w: item %d of %d", ErrMissing, i, len(v.items))
	}
	return v.items[i], nil
}

// Items returns the items of an array (nil for anything else).
func (v Value) Items() []Value {
	if v.Kind != Array {
		return nil
	}
	return v.items
}

// Keys returns an object's keys in order, duplicates included.
func (v Value) Keys() []string {
	if v.Kind != Object {
		return nil
	}
	return v.keys
}

// Get returns the member key of an object. A key present more than once
// is returned only when every copy is equal.
func (v Value) Get(key string) (Value, error) {
	if v.Kind != Object {
		return Value{}, fmt.Errorf("%w: %s is not an object (looking for %q)", ErrType, v.Kind, key)
	}
	found := -1
	for i, k := range v.keys {
		if k != key {
			continue
		}
		if found >= 0 && !Equal(v.vals[found], v.vals[i]) {
			return Value{}, fmt.Errorf("%q: %w", key, ErrAmbiguous)
		}
		if found < 0 {
			found = i
		}
	}
	if found < 0 {
		return Value{}, fmt.Errorf("%q: %w", key, ErrMissing)
	}
	return v.vals[found], nil
}

// Has reports whether the object has the key.
func (v Value) Has(key string) bool {
	for _, k := range v.keys {
		if k == key {
			return true
		}
	}
	return false
}

// AsFloat reads a number. Numeric strings ("3215.5") are accepted, as
// firmware quotes numbers freely; nan, inf and "N/A" are ErrNotANumber.
func (v Value) AsFloat() (float64, error) {
	switch v.Kind {
	case Number:
		return v.num, nil
	case NaN:
		return 0, fmt.Errorf("%w: firmware reported %s", ErrNotANumber, v.str)
	case String:
		s := strings.TrimSpace(v.str)
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			if isNaNWord(s) || strings.EqualFold(s, "n/a") || s == "" {
				return 0, fmt.Errorf("%w: firmware reported %q", ErrNotANumber, v.str)
			}
			return 0, fmt.Errorf("%w: %q is not a number", ErrType, v.str)
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return 0, fmt.Errorf("%w: firmware reported %q", ErrNotANumber, v.str)
		}
		return f, nil
	}
	return 0, fmt.Errorf("%w: %s is not a number", ErrType, v.Kind)
}

// AsString reads a string (numbers give their raw text).
func (v Value) AsString() (string, error) {
	switch v.Kind {
	case String, Number:
		return v.str, nil
	}
	return "", fmt.Errorf("%w: %s is not a string", ErrType, v.Kind)
}

// AsBool reads true/false, also written as "true", "Y", "N" by some
// firmware.
func (v Value) AsBool() (bool, error) {
	switch v.Kind {
	case Bool:
		return v.b, nil
	case String:
		switch strings.ToLower(strings.TrimSpace(v.str)) {
		case "true", "y", "yes":
			return true, nil
		case "false", "n", "no":
			return false, nil
		}
	}
	return false, fmt.Errorf("%w: %s %q is not a boolean", ErrType, v.Kind, v.str)
}

// Float reads member key as a number.
func (v Value) Float(key string) (float64, error) {
	m, err := v.Get(key)
	if err != nil {
		return 0, err
	}
	f, err := m.AsFloat()
	if err != nil {
		return 0, fmt.Errorf("%q: %w", key, err)
	}
	return f, nil
}

// Int reads member key as an integer; a fractional value is an error.
func (v Value) Int(key string) (int64, error) {
	f, err := v.Float(key)
	if err != nil {
		return 0, err
	}
	if f != math.Trunc(f) || math.Abs(f) > 1<<53 {
		return 0, fmt.Errorf("%q: %w: %g is not an integer", key, ErrType, f)
	}
	return int64(f), nil
}

// Str reads member key as a string.
func (v Value) Str(key string) (string, error) {
	m, err := v.Get(key)
	if err != nil {
		return "", err
	}
	s, err := m.AsString()
	if err != nil {
		return "", fmt.Errorf("%q: %w", key, err)
	}
	return s, nil
}

// BoolAt reads member key as a boolean.
func (v Value) BoolAt(key string) (bool, error) {
	m, err := v.Get(key)
	if err != nil {
		return false, err
	}
	b, err := m.AsBool()
	if err != nil {
		return false, fmt.Errorf("%q: %w", key, err)
	}
	return b, nil
}

// Equal compares two values deeply (duplicate keys must match in order).
func Equal(a, b Value) bool {
	if a.Kind != b.Kind {
		return false
	}
	switch a.Kind {
	case Null:
		return true
	case Bool:
		return a.b == b.b
	case Number:
		return a.num == b.num
	case String, NaN:
		return a.str == b.str
	case Array:
		if len(a.items) != len(b.items) {
			return false
		}
		for i := range a.items {
			if !Equal(a.items[i], b.items[i]) {
				return false
			}
		}
		return true
	case Object:
		if len(a.keys) != len(b.keys) {
			return false
		}
		for i := range a.keys {
			if a.keys[i] != b.keys[i] || !Equal(a.vals[i], b.vals[i]) {
				return false
			}
		}
		return true
	}
	return false
}

// maxDepth bounds nesting: replies are two or three levels deep, and an
// unbounded recursion on hostile input would exhaust the stack.
const maxDepth = 64

// ParseError says where and why a reply could not be parsed.
type ParseError struct {
	Offset int
	Msg    string
}

func (e *ParseError) Error() string { return fmt.Sprintf("at byte %d: %s", e.Offset, e.Msg) }

// Parse reads one JSON document the way cgminer-API firmware writes it,
// repairing what is unambiguous and naming each repair: trailing NULs, a
// missing or extra comma between values, raw control characters in
// strings, bare nan/inf. What cannot be repaired without guessing (a
// truncated reply, garbage, an unknown escape) is an error.
func Parse(data []byte) (Value, []string, error) {
	p := parser{b: data}
	p.trimEnd()
	p.ws()
	if p.i >= len(p.b) {
		return Value{}, p.report(), &ParseError{Offset: p.i, Msg: "empty reply"}
	}
	v, err := p.value(0)
	if err != nil {
		return Value{}, p.report(), err
	}
	p.ws()
	if p.i < len(p.b) {
		return Value{}, p.report(), p.errf("%d bytes of unexpected data after the reply (%q)", len(p.b)-p.i, snippet(p.b[p.i:]))
	}
	return v, p.report(), nil
}

type parser struct {
	b       []byte
	i       int
	repairs map[string]int
}

func (p *parser) repair(what string) {
	if p.repairs == nil {
		p.repairs = map[string]int{}
	}
	p.repairs[what]++
}

// report lists the repairs, sorted, with counts where a repair was made
// more than once.
func (p *parser) report() []string {
	if len(p.repairs) == 0 {
		return nil
	}
	out := make([]string, 0, len(p.repairs))
	for what, n := range p.repairs {
		if n > 1 {
			what = fmt.Sprintf("%s (%d times)", what, n)
		}
		out = append(out, what)
	}
	sort.Strings(out)
	return out
}

func (p *parser) errf(format string, args ...any) error {
	return &ParseError{Offset: p.i, Msg: fmt.Sprintf(format, args...)}
}

// trimEnd drops NUL bytes and whitespace after the document. The single
// NUL that terminates a reply is framing and is removed by the client; any
// left here are extra.
func (p *parser) trimEnd() {
	end := len(p.b)
	nul := false
	for end > 0 {
		c := p.b[end-1]
		if c == 0 {
			nul = true
		} else if !isSpace(c) {
			break
		}
		end--
	}
	if nul {
		p.repair("trailing NUL bytes removed")
	}
	p.b = p.b[:end]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func (p *parser) ws() {
	for p.i < len(p.b) && isSpace(p.b[p.i]) {
		p.i++
	}
}

func snippet(b []byte) string {
	if len(b) > 24 {
		b = b[:24]
	}
	return string(b)
}

func (p *parser) value(depth int) (Value, error) {
	if depth > maxDepth {
		return Value{}, p.errf("nested deeper than %d levels", maxDepth)
	}
	p.ws()
	if p.i >= len(p.b) {
		return Value{}, p.errf("reply ends where a value should be (truncated)")
	}
	switch c := p.b[p.i]; {
	case c == '{':
		return p.object(depth)
	case c == '[':
		return p.array(depth)
	case c == '"':
		s, err := p.str()
		return Value{Kind: String, str: s}, err
	case c == '-' || (c >= '0' && c <= '9'):
		if v, ok := p.nanWord(); ok {
			return v, nil
		}
		return p.number()
	default:
		if v, ok := p.nanWord(); ok {
			return v, nil
		}
		for _, lit := range []struct {
			word string
			v    Value
		}{{"true", Value{Kind: Bool, b: true}}, {"false", Value{Kind: Bool}}, {"null", Value{Kind: Null}}} {
			if bytes.HasPrefix(p.b[p.i:], []byte(lit.word)) {
				p.i += len(lit.word)
				return lit.v, nil
			}
		}
		return Value{}, p.errf("unexpected %q where a value should be", snippet(p.b[p.i:]))
	}
}

var nanWords = []string{"-Infinity", "Infinity", "-nan", "-NaN", "-inf", "-Inf", "nan", "NaN", "inf", "Inf"}

func isNaNWord(s string) bool {
	for _, w := range nanWords {
		if s == w {
			return true
		}
	}
	return false
}

// nanWord reads a bare nan/inf, which C printf writes for a float it
// could not compute.
func (p *parser) nanWord() (Value, bool) {
	for _, w := range nanWords {
		if bytes.HasPrefix(p.b[p.i:], []byte(w)) {
			end := p.i + len(w)
			if end < len(p.b) && (isAlnum(p.b[end])) {
				continue
			}
			p.i = end
			p.repair("bare " + strings.ToLower(strings.TrimPrefix(w, "-")) + " read as not-a-number")
			return Value{Kind: NaN, str: w}, true
		}
	}
	return Value{}, false
}

func isAlnum(c byte) bool {
	return c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func (p *parser) number() (Value, error) {
	start := p.i
	if p.b[p.i] == '-' {
		p.i++
	}
	digits := func() int {
		n := 0
		for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	first := p.i
	if digits() == 0 {
		return Value{}, p.errf("a number needs digits")
	}
	if p.b[first] == '0' && p.i-first > 1 {
		p.i = first
		return Value{}, p.errf("a number may not have leading zeros")
	}
	if p.i < len(p.b) && p.b[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return Value{}, p.errf("a number needs digits after its decimal point")
		}
	}
	if p.i < len(p.b) && (p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		p.i++
		if p.i < len(p.b) && (p.b[p.i] == '+' || p.b[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return Value{}, p.errf("a number needs digits in its exponent")
		}
	}
	raw := string(p.b[start:p.i])
	f, err := strconv.ParseFloat(raw, 64)
	if err != nil || math.IsInf(f, 0) {
		// Out of float64 range: not a value we can use.
		return Value{Kind: NaN, str: raw}, nil
	}
	return Value{Kind: Number, num: f, str: raw}, nil
}

func (p *parser) str() (string, error) {
	start := p.i
	p.i++ // opening quote
	var sb strings.Builder
	plain := p.i
	for {
		if p.i >= len(p.b) {
			p.i = start
			return "", p.errf("string never closed (truncated reply)")
		}
		c := p.b[p.i]
		switch {
		case c == '"':
			sb.Write(p.b[plain:p.i])
			p.i++
			s := sb.String()
			if !utf8.ValidString(s) {
				p.repair("invalid UTF-8 in a string replaced")
				s = strings.ToValidUTF8(s, "\uFFFD")
			}
			return s, nil
		case c == '\\':
			sb.Write(p.b[plain:p.i])
			if err := p.escape(&sb); err != nil {
				return "", err
			}
			plain = p.i
		case c < 0x20:
			// Real firmware puts raw newlines and tabs in messages.
			p.repair("raw control character in a string accepted")
			p.i++
		default:
			p.i++
		}
	}
}

func (p *parser) escape(sb *strings.Builder) error {
	if p.i+1 >= len(p.b) {
		return p.errf("string ends inside an escape (truncated reply)")
	}
	c := p.b[p.i+1]
	p.i += 2
	switch c {
	case '"', '\\', '/':
		sb.WriteByte(c)
	case 'b':
		sb.WriteByte('\b')
	case 'f':
		sb.WriteByte('\f')
	case 'n':
		sb.WriteByte('\n')
	case 'r':
		sb.WriteByte('\r')
	case 't':
		sb.WriteByte('\t')
	case 'u':
		r, err := p.hex4()
		if err != nil {
			return err
		}
		if utf16.IsSurrogate(r) {
			if p.i+1 < len(p.b) && p.b[p.i] == '\\' && p.b[p.i+1] == 'u' {
				p.i += 2
				r2, err := p.hex4()
				if err != nil {
					return err
				}
				if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
					sb.WriteRune(d)
					return nil
				}
			}
			p.repair("unpaired surrogate in a string replaced")
			r = utf8.RuneError
		}
		sb.WriteRune(r)
	default:
		p.i -= 2
		return p.errf("unknown escape \\%c in a string", c)
	}
	return nil
}

func (p *parser) hex4() (rune, error) {
	if p.i+4 > len(p.b) {
		return 0, p.errf("\\u escape cut short")
	}
	n, err := strconv.ParseUint(string(p.b[p.i:p.i+4]), 16, 32)
	if err != nil {
		return 0, p.errf("\\u escape %q is not hexadecimal", p.b[p.i:p.i+4])
	}
	p.i += 4
	return rune(n), nil
}

// startsValue reports whether c begins a value whose boundary with the
// previous one is unmistakable: used to repair a missing comma ("}{" in
// bmminer's stats). Bare words and numbers are not repaired: "1 2" could
// as well be one number broken in two.
func startsValue(c byte) bool { return c == '{' || c == '[' || c == '"' }

func (p *parser) array(depth int) (Value, error) {
	p.i++ // [
	v := Value{Kind: Array}
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == ',' {
		p.repair("leading comma in an array removed")
		p.i++
	}
	for {
		p.ws()
		if p.i >= len(p.b) {
			return Value{}, p.errf("array never closed (truncated reply)")
		}
		if p.b[p.i] == ']' {
			p.i++
			return v, nil
		}
		item, err := p.value(depth + 1)
		if err != nil {
			return Value{}, err
		}
		v.items = append(v.items, item)
		p.ws()
		if p.i >= len(p.b) {
			return Value{}, p.errf("array never closed (truncated reply)")
		}
		switch c := p.b[p.i]; {
		case c == ',':
			p.i++
			p.ws()
			if p.i < len(p.b) && p.b[p.i] == ']' {
				p.repair("trailing comma removed")
			}
		case c == ']':
		case startsValue(c):
			p.repair("missing comma between values inserted")
		default:
			return Value{}, p.errf("expected ',' or ']' in an array, found %q", snippet(p.b[p.i:]))
		}
	}
}

func (p *parser) object(depth int) (Value, error) {
	p.i++ // {
	v := Value{Kind: Object}
	for {
		p.ws()
		if p.i >= len(p.b) {
			return Value{}, p.errf("object never closed (truncated reply)")
		}
		if p.b[p.i] == '}' {
			p.i++
			return v, nil
		}
		if p.b[p.i] != '"' {
			return Value{}, p.errf("expected a quoted key, found %q", snippet(p.b[p.i:]))
		}
		key, err := p.str()
		if err != nil {
			return Value{}, err
		}
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			if p.i >= len(p.b) {
				return Value{}, p.errf("reply ends after key %q (truncated)", key)
			}
			return Value{}, p.errf("expected ':' after key %q", key)
		}
		p.i++
		val, err := p.value(depth + 1)
		if err != nil {
			return Value{}, err
		}
		// A linear scan: replies' objects are small, and a map per object
		// cost more than the whole parse.
		if slices.Contains(v.keys, key) {
			p.repair(fmt.Sprintf("duplicate key %q", key))
		}
		v.keys = append(v.keys, key)
		v.vals = append(v.vals, val)
		p.ws()
		if p.i >= len(p.b) {
			return Value{}, p.errf("object never closed (truncated reply)")
		}
		switch c := p.b[p.i]; {
		case c == ',':
			p.i++
			p.ws()
			if p.i < len(p.b) && p.b[p.i] == '}' {
				p.repair("trailing comma removed")
			}
		case c == '}':
		case c == '"':
			p.repair("missing comma between members inserted")
		default:
			return Value{}, p.errf("expected ',' or '}' after the value of %q, found %q", key, snippet(p.b[p.i:]))
		}
	}
}
