package config

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Decode parses data, the contents of file, and fills v, a pointer to a
// struct, strictly. It returns a Problems collector holding every problem
// found (syntax errors, unknown keys, wrong types, missing required keys) and
// the line of every key in the document, for the owners' own checks.
//
// Struct tags: `toml:"key"`, `toml:"key,required"`, `toml:"-"`. Anonymous
// embedded struct fields are inlined. Supported field types: string, bool,
// signed and unsigned integers (range-checked), float32/float64 (an integer
// literal is accepted), time.Duration (only from a string such as "250ms";
// a bare number is refused with a hint to write a unit), slices of any
// supported type (arrays, arrays of tables, arrays of inline tables),
// structs (tables and inline tables), and pointers to any supported type
// (allocated only when the key is present, to tell "absent" from "zero").
//
// Exported fields without a tag take their lower-cased Go name as key.
// TOML dates and times are refused (no setting uses them), and so is nan.
// After a syntax error nothing is filled: the problem names the line.
func Decode(file string, data []byte, v any) (probs *Problems) {
	probs = NewProblems(file, nil)
	defer func() {
		// A bug here must not take the agent down with it: report it as
		// a problem with the file's handling instead.
		if r := recover(); r != nil {
			probs.AddAt(0, "", "internal error while reading this file (%v); please report it", r)
			probs.unreadable = true
		}
		probs.decoded = map[string]bool{}
		for _, pr := range probs.list {
			if pr.Key != "" {
				probs.decoded[pr.Key] = true
			}
		}
	}()
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() || rv.Elem().Kind() != reflect.Struct {
		probs.AddAt(0, "", "internal error: Decode needs a pointer to a struct, not %T", v)
		probs.unreadable = true
		return probs
	}
	root := parseTree(data, probs)
	if root == nil {
		probs.unreadable = true
		return probs
	}
	d := decoder{probs}
	d.fillStruct("", root, rv.Elem())
	return probs
}

type decoder struct{ p *Problems }

var durationType = reflect.TypeOf(time.Duration(0))

// fill sets rv from n; path is n's key path.
func (d decoder) fill(path string, n *node, rv reflect.Value) {
	if n.bad {
		return // already reported
	}
	t := rv.Type()
	if t == durationType {
		d.fillDuration(path, n, rv)
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		if rv.IsNil() {
			rv.Set(reflect.New(t.Elem()))
		}
		d.fill(path, n, rv.Elem())
	case reflect.Struct:
		if n.kind != kTable {
			hint := ""
			if n.origin == fromArrayHeader {
				hint = fmt.Sprintf("write [%s] with single brackets, once", tomlName(path))
			}
			d.mismatch(path, n, t, hint)
			return
		}
		d.fillStruct(path, n, rv)
	case reflect.Slice:
		d.fillSlice(path, n, rv)
	case reflect.String:
		if n.kind != kString {
			d.mismatch(path, n, t, "put the value in double quotes")
			return
		}
		rv.SetString(n.text)
	case reflect.Bool:
		if n.kind != kBool {
			d.mismatch(path, n, t, "write true or false without quotes")
			return
		}
		rv.SetBool(n.text == "true")
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		d.fillInt(path, n, rv)
	case reflect.Float32, reflect.Float64:
		d.fillFloat(path, n, rv)
	default:
		d.p.Addf(path, "internal error: a setting of Go type %s cannot be read from TOML; please report it", t)
	}
}

func (d decoder) fillDuration(path string, n *node, rv reflect.Value) {
	switch n.kind {
	case kString:
		v, err := time.ParseDuration(n.text)
		if err != nil {
			d.p.Addf(path, "%q is not a duration; write a number with a unit, such as \"250ms\", \"5s\" or \"2m\" (units: ns, us, ms, s, m, h)", n.text)
			return
		}
		rv.SetInt(int64(v))
	case kInt, kFloat:
		d.mismatch(path, n, rv.Type(), fmt.Sprintf("write the unit, e.g. \"%ss\" or \"%sms\"", n.text, n.text))
	default:
		d.mismatch(path, n, rv.Type(), "")
	}
}

func (d decoder) fillInt(path string, n *node, rv reflect.Value) {
	if n.kind != kInt {
		hint := ""
		if n.kind == kString && isNumber(n.text) {
			hint = "remove the quotes"
		} else if n.kind == kFloat {
			hint = "write a whole number, without a decimal point"
		}
		d.mismatch(path, n, rv.Type(), hint)
		return
	}
	v, err := parseInt(n.text)
	lo, hi := intRange(rv.Type())
	tooBig := err != nil || (rv.CanInt() && rv.OverflowInt(v)) || (rv.CanUint() && (v < 0 || rv.OverflowUint(uint64(v))))
	if tooBig {
		d.p.Addf(path, "%s is out of range; it must be between %s and %s", n.text, lo, hi)
		return
	}
	if rv.CanInt() {
		rv.SetInt(v)
	} else {
		rv.SetUint(uint64(v))
	}
}

func (d decoder) fillFloat(path string, n *node, rv reflect.Value) {
	var v float64
	switch n.kind {
	case kInt:
		i, err := parseInt(n.text)
		if err != nil {
			d.p.Addf(path, "%s is too large; write it as a decimal number such as 1e19", n.text)
			return
		}
		v = float64(i)
	case kFloat:
		if strings.Contains(n.text, "nan") {
			d.p.Addf(path, "nan (not a number) cannot be used here; write a number")
			return
		}
		f, err := strconv.ParseFloat(strings.ReplaceAll(n.text, "_", ""), 64)
		if err != nil {
			d.p.Addf(path, "%s is out of range for this setting; write a smaller number", n.text)
			return
		}
		v = f
	default:
		hint := ""
		if n.kind == kString && isNumber(n.text) {
			hint = "remove the quotes"
		}
		d.mismatch(path, n, rv.Type(), hint)
		return
	}
	if rv.OverflowFloat(v) {
		d.p.Addf(path, "%s is out of range for this setting; write a smaller number", n.text)
		return
	}
	rv.SetFloat(v)
}

func (d decoder) fillSlice(path string, n *node, rv reflect.Value) {
	t := rv.Type()
	if n.kind != kArray {
		hint := "write it in brackets: [ ... ]"
		if n.kind == kTable && n.origin != fromValue && isTable(t.Elem()) {
			hint = fmt.Sprintf("write [[%s]] with double brackets, once for each entry", tomlName(path))
		}
		d.mismatch(path, n, t, hint)
		return
	}
	s := reflect.MakeSlice(t, len(n.elems), len(n.elems))
	for i, e := range n.elems {
		d.fill(Index(path, i), e, s.Index(i))
	}
	rv.Set(s)
}

func (d decoder) fillStruct(path string, n *node, rv reflect.Value) {
	fields := fieldsOf(rv.Type())
	for _, k := range n.keys {
		p := Join(path, quoteKey(k))
		f := fields.byKey[k]
		if f == nil {
			d.unknown(p, k, fields)
			continue
		}
		d.fill(p, n.fields[k], rv.FieldByIndex(f.index))
	}
	for _, f := range fields.list {
		if f.required && n.fields[f.key] == nil {
			d.missing(path, n, f)
		}
	}
}

// mismatch reports a value of the wrong type, naming what is wanted.
func (d decoder) mismatch(path string, n *node, t reflect.Type, hint string) {
	msg := fmt.Sprintf("expected %s, got %s", want(t, path), n.describe())
	if hint != "" {
		msg += "; " + hint
	}
	d.p.Addf(path, "%s", msg)
}

// want describes what a field of type t accepts.
func want(t reflect.Type, path string) string {
	if t == durationType {
		return `a duration string such as "250ms"`
	}
	switch t.Kind() {
	case reflect.Pointer:
		return want(t.Elem(), path)
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Struct:
		return "a table"
	case reflect.Slice:
		if isTable(t.Elem()) {
			return fmt.Sprintf("an array of tables [[%s]]", tomlName(path))
		}
		return "an array of " + plural(want(t.Elem(), path))
	}
	return "a whole number"
}

func plural(s string) string {
	switch {
	case s == "true or false":
		return "true/false values"
	case strings.HasPrefix(s, "a duration"):
		return `duration strings such as ["250ms", "1s"]`
	case strings.HasPrefix(s, "an array"):
		return "arrays"
	}
	s = strings.TrimPrefix(s, "a ")
	return s + "s"
}

func (d decoder) unknown(path, key string, fields *structFields) {
	if len(fields.list) == 0 {
		d.p.Addf(path, "unknown key; this table takes no keys, remove it")
		return
	}
	if s := closest(key, fields.list); s != "" {
		d.p.Addf(path, "unknown key; did you mean %q?", s)
		return
	}
	keys := make([]string, len(fields.list))
	for i, f := range fields.list {
		keys[i] = f.key
	}
	d.p.Addf(path, "unknown key; the keys allowed here are: %s", strings.Join(keys, ", "))
}

func (d decoder) missing(path string, n *node, f *field) {
	p := Join(path, quoteKey(f.key))
	if t := f.typ; isTable(t) {
		d.p.Addf(p, "required table [%s] is missing; add that section", tomlName(p))
		return
	} else if t.Kind() == reflect.Slice && isTable(t.Elem()) {
		d.p.Addf(p, "required key is missing %s; add at least one [[%s]] table", where(path, n), tomlName(p))
		return
	}
	d.p.Addf(p, "required key is missing %s", where(path, n))
}

// where says which table a missing key belongs to, in the file's terms.
func where(path string, n *node) string {
	switch {
	case path == "":
		return "at the top of the file (before the first [table])"
	case n.origin == fromValue:
		return fmt.Sprintf("in the inline table {...} at line %d", n.line)
	case strings.HasSuffix(path, "]"):
		return fmt.Sprintf("in the [[%s]] table that starts at line %d", tomlName(path), n.line)
	case n.origin == fromHeader:
		return fmt.Sprintf("in the [%s] table that starts at line %d", tomlName(path), n.line)
	}
	return fmt.Sprintf("in table %s (line %d)", path, n.line)
}

// tomlName turns a key path into a header name: "modbus[0].points" ->
// "modbus.points".
func tomlName(path string) string {
	var b strings.Builder
	skip := false
	for _, c := range path {
		switch {
		case c == '[':
			skip = true
		case c == ']':
			skip = false
		case !skip:
			b.WriteRune(c)
		}
	}
	return b.String()
}

func isTable(t reflect.Type) bool {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.Kind() == reflect.Struct && t != durationType
}

func isNumber(s string) bool {
	_, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	return err == nil
}

// parseInt reads a TOML integer literal (the parser has checked its syntax).
func parseInt(s string) (int64, error) {
	s = strings.ReplaceAll(s, "_", "")
	if len(s) > 2 && s[0] == '0' {
		switch s[1] {
		case 'x':
			return strconv.ParseInt(s[2:], 16, 64)
		case 'o':
			return strconv.ParseInt(s[2:], 8, 64)
		case 'b':
			return strconv.ParseInt(s[2:], 2, 64)
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

func intRange(t reflect.Type) (lo, hi string) {
	bits := t.Bits()
	if t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uintptr {
		return "0", strconv.FormatUint(math.MaxUint64>>(64-bits), 10)
	}
	return strconv.FormatInt(math.MinInt64>>(64-bits), 10), strconv.FormatInt(math.MaxInt64>>(64-bits), 10)
}

// closest suggests the known key nearest to a misspelt one, if any is close.
func closest(key string, fields []*field) string {
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "-", "_") }
	best, bestDist := "", math.MaxInt
	for _, f := range fields {
		if dist := editDistance(norm(key), norm(f.key)); dist < bestDist {
			best, bestDist = f.key, dist
		}
	}
	limit := 2 // typos: a letter or two dropped, doubled or swapped
	if len(key) <= 2 {
		limit = 1
	}
	if bestDist > limit || bestDist >= len(best) {
		return ""
	}
	return best
}

// field is one settable key of a struct.
type field struct {
	key      string
	index    []int // for FieldByIndex, through embedded structs
	required bool
	typ      reflect.Type
}

type structFields struct {
	list  []*field // declaration order; embedded fields after the outer ones
	byKey map[string]*field
}

var fieldCache sync.Map // reflect.Type -> *structFields

func fieldsOf(t reflect.Type) *structFields {
	if c, ok := fieldCache.Load(t); ok {
		return c.(*structFields)
	}
	fs := &structFields{byKey: map[string]*field{}}
	collectFields(t, nil, fs)
	c, _ := fieldCache.LoadOrStore(t, fs)
	return c.(*structFields)
}

// collectFields adds t's keys to fs. Outer fields come first, so that (as in
// Go) a field of the outer struct hides one of the same name inside an
// embedded struct.
func collectFields(t reflect.Type, index []int, fs *structFields) {
	var embedded []int
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag := sf.Tag.Get("toml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if sf.Anonymous && name == "" && sf.Type.Kind() == reflect.Struct {
			embedded = append(embedded, i)
			continue
		}
		if !sf.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(sf.Name)
		}
		if fs.byKey[name] != nil {
			continue
		}
		f := &field{key: name, index: append(append([]int(nil), index...), i), typ: sf.Type}
		for _, o := range strings.Split(opts, ",") {
			f.required = f.required || o == "required"
		}
		fs.list = append(fs.list, f)
		fs.byKey[name] = f
	}
	for _, i := range embedded {
		collectFields(t.Field(i).Type, append(append([]int(nil), index...), i), fs)
	}
}
