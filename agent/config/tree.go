package config

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// This file turns go-toml's expression stream into a document tree with a
// line for every node, and enforces TOML's "define once" rules itself (the
// unstable parser checks syntax only), so every duplicate is reported with
// both lines instead of one value silently winning.

type kind uint8

const (
	kString kind = iota
	kBool
	kInt
	kFloat
	kDateTime
	kTable
	kArray
)

// origin records how a table or array came to exist; it decides what may
// extend it later.
type origin uint8

const (
	fromValue       origin = iota // written as a value (key = ... or inline): closed
	fromHeader                    // [a.b] for b
	fromParent                    // [a.b] for a: implied, may still get its own [a]
	fromDotted                    // a.b = 1 for a: extendable by more dotted keys only
	fromArrayHeader               // [[a]]: the array and each element table
)

// node is one value of the document.
type node struct {
	kind   kind
	origin origin
	line   int
	text   string // scalars as written; a string's decoded contents
	bad    bool   // a malformed number, already reported
	keys   []string
	fields map[string]*node
	elems  []*node
}

func newTable(o origin, line int) *node {
	return &node{kind: kTable, origin: o, line: line, fields: map[string]*node{}}
}

func (t *node) set(key string, n *node) {
	t.keys = append(t.keys, key)
	t.fields[key] = n
}

// describe names a value in a message: `integer 5`, `string "7"`.
func (n *node) describe() string {
	switch n.kind {
	case kString:
		s := n.text
		if len(s) > 40 {
			s = s[:37] + "..."
		}
		return "string " + strconv.Quote(s)
	case kBool:
		return n.text
	case kInt:
		return "integer " + n.text
	case kFloat:
		return "decimal number " + n.text
	case kDateTime:
		return "date/time " + n.text + " (dates and times are not used in this file)"
	case kArray:
		return "an array"
	}
	if n.origin == fromValue {
		return "an inline table {...}"
	}
	return "a table"
}

var (
	intPattern   = regexp.MustCompile(`^[+-]?(0|[1-9](_?[0-9])*)$|^0x[0-9a-fA-F](_?[0-9a-fA-F])*$|^0o[0-7](_?[0-7])*$|^0b[01](_?[01])*$`)
	leadingZero  = regexp.MustCompile(`^[+-]?0[0-9_]`)
	floatPattern = regexp.MustCompile(`^[+-]?(0|[1-9](_?[0-9])*)(\.[0-9](_?[0-9])*)?([eE][+-]?[0-9](_?[0-9])*)?$|^[+-]?(inf|nan)$`)
)

type keyPart struct {
	name string
	line int
}

// treeBuilder builds the tree one top-level expression at a time.
type treeBuilder struct {
	parser     unstable.Parser
	lineStarts []int // byte offset where each line begins
	probs      *Problems
	root       *node
	cur        *node // table that key = value lines go to; nil after a bad header
	curPath    string
}

// parseTree parses data into a tree and records every key path's line in
// probs. It returns nil after a syntax error: the rest of the file is not
// read, because the parser cannot resynchronise.
func parseTree(data []byte, probs *Problems) *node {
	b := &treeBuilder{probs: probs, root: newTable(fromHeader, 1), lineStarts: []int{0}}
	for i, c := range data {
		if c == '\n' {
			b.lineStarts = append(b.lineStarts, i+1)
		}
	}
	if line := tooDeep(data); line > 0 {
		probs.AddAt(line, "", "brackets are nested more than %d levels deep here; a site file never needs that many", maxDepth)
		return nil
	}
	b.cur = b.root
	b.parser.Reset(data)
	for b.parser.NextExpression() {
		e := b.parser.Expression()
		switch e.Kind {
		case unstable.Table:
			b.header(e, false)
		case unstable.ArrayTable:
			b.header(e, true)
		case unstable.KeyValue:
			if b.cur != nil {
				b.keyval(b.cur, b.curPath, e)
			}
		}
	}
	if err := b.parser.Error(); err != nil {
		b.syntaxError(err)
		return nil
	}
	budget := maxPathBytes
	if !recordLines(b.root, "", probs.lines, &budget) {
		probs.AddAt(0, "", "this file is too large to check (its key names add up to more than %d MiB); remove repeated entries", maxPathBytes>>20)
		return nil
	}
	return b.root
}

func (b *treeBuilder) lineAt(offset int) int {
	return sort.Search(len(b.lineStarts), func(i int) bool { return b.lineStarts[i] > offset })
}

// lineOf finds the line of a value node. Bools and dates carry no range, but
// their Data is a slice of the input.
func (b *treeBuilder) lineOf(n *unstable.Node, fallback int) int {
	switch {
	case n.Raw.Length > 0:
		return b.lineAt(int(n.Raw.Offset))
	case len(n.Data) > 0 && (n.Kind == unstable.Bool || n.Kind >= unstable.LocalDate):
		return b.lineAt(int(b.parser.Range(n.Data).Offset))
	}
	return fallback
}

func (b *treeBuilder) syntaxError(err error) {
	line, col, msg := len(b.lineStarts), 0, err.Error()
	var perr *unstable.ParserError
	if errors.As(err, &perr) {
		if off, ok := b.offsetOf(perr.Highlight); ok {
			line = b.lineAt(off)
			col = off - b.lineStarts[line-1] + 1
		}
	}
	where := ""
	if col > 0 {
		where = fmt.Sprintf(" at column %d", col)
	}
	b.probs.AddAt(line, "", "not valid TOML%s: %s; fix this line (nothing after it was read)%s", where, msg, b.hint(line))
}

// hint explains the commonest hand-editing slips on the failing line: a
// missing value, a leading zero, text without quotes.
func (b *treeBuilder) hint(line int) string {
	data := b.parser.Data()
	end := len(data)
	if line < len(b.lineStarts) {
		end = b.lineStarts[line]
	}
	text := string(data[b.lineStarts[line-1]:end])
	if _, val, ok := strings.Cut(text, "="); ok {
		val = strings.TrimSpace(val)
		if val == "" || val[0] == '#' {
			return "; write a value after ="
		}
		if leadingZero.MatchString(val) {
			return "; a number cannot start with 0 (write 7, not 07)"
		}
		if (val[0] >= 'a' && val[0] <= 'z' || val[0] >= 'A' && val[0] <= 'Z') &&
			!strings.HasPrefix(val, "true") && !strings.HasPrefix(val, "false") {
			return "; text values need double quotes, e.g. name = \"pcc\""
		}
	}
	return ""
}

// offsetOf locates a parser error's highlight in the input; the parser
// promises it is a subslice, but a wrong line beats a crash.
func (b *treeBuilder) offsetOf(h []byte) (off int, ok bool) {
	if h == nil {
		return 0, false
	}
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	return int(b.parser.Range(h).Offset), true
}

// keyParts splits a dotted key; nil (reported) when it is absurdly long.
func (b *treeBuilder) keyParts(n *unstable.Node) []keyPart {
	var parts []keyPart
	it := n.Key()
	for it.Next() {
		k := it.Node()
		parts = append(parts, keyPart{string(k.Data), b.lineAt(int(k.Raw.Offset))})
	}
	if len(parts) > maxDepth {
		b.probs.AddAt(parts[0].line, "", "this key has more than %d dotted parts; a site file never needs that many", maxDepth)
		return nil
	}
	return parts
}

// header handles [a.b] and [[a.b]]: it walks to the table the following
// key = value lines belong to, creating implied tables on the way.
func (b *treeBuilder) header(e *unstable.Node, array bool) {
	b.cur = nil // until the header proves valid: its keys are then skipped
	parts := b.keyParts(e)
	if parts == nil {
		return
	}
	name := headerName(parts)
	t, path := b.root, ""
	for i, k := range parts {
		p := Join(path, quoteKey(k.name))
		child := t.fields[k.name]
		if i < len(parts)-1 {
			switch {
			case child == nil:
				child = newTable(fromParent, k.line)
				t.set(k.name, child)
			case child.kind == kTable && child.origin != fromValue:
			case child.kind == kArray && child.origin == fromArrayHeader:
				p = Index(p, len(child.elems)-1)
				child = child.elems[len(child.elems)-1]
			default:
				b.probs.AddAt(k.line, p, "already set to a value at line %d, so [%s] cannot add to it; rename one of them", child.line, name)
				return
			}
			t, path = child, p
			continue
		}
		if array {
			switch {
			case child == nil:
				child = &node{kind: kArray, origin: fromArrayHeader, line: k.line}
				t.set(k.name, child)
			case child.kind == kArray && child.origin == fromArrayHeader:
			case child.kind == kArray:
				b.probs.AddAt(k.line, p, "already set to an array at line %d; write all its entries there or all as [[%s]] tables, not both", child.line, name)
				return
			default:
				b.probs.AddAt(k.line, p, "already defined at line %d as a single table; use either [%s] once or [[%s]] for each entry, not both", child.line, name, name)
				return
			}
			child.elems = append(child.elems, newTable(fromArrayHeader, k.line))
			b.cur, b.curPath = child.elems[len(child.elems)-1], Index(p, len(child.elems)-1)
			return
		}
		switch {
		case child == nil:
			child = newTable(fromHeader, k.line)
			t.set(k.name, child)
		case child.kind == kTable && child.origin == fromParent:
			child.origin, child.line = fromHeader, k.line
		case child.kind == kTable && child.origin == fromHeader:
			b.probs.AddAt(k.line, p, "table [%s] is defined twice (first at line %d); merge the two sections into one", name, child.line)
			return
		case child.kind == kTable && child.origin == fromDotted:
			b.probs.AddAt(k.line, p, "table [%s] was already filled with dotted keys at line %d; use one form, not both", name, child.line)
			return
		case child.kind == kArray && child.origin == fromArrayHeader:
			b.probs.AddAt(k.line, p, "this is a list of [[%s]] tables (first at line %d); write [[%s]] with double brackets to add an entry", name, child.line, name)
			return
		default:
			b.probs.AddAt(k.line, p, "already set to a value at line %d, so it cannot also be a [%s] table; keep one of them", child.line, name)
			return
		}
		b.cur, b.curPath = child, p
	}
}

// keyval adds `a.b.c = value` to table t at path.
func (b *treeBuilder) keyval(t *node, path string, e *unstable.Node) {
	parts := b.keyParts(e)
	if parts == nil {
		return
	}
	full := Join(path, headerName(parts))
	for i, k := range parts {
		p := Join(path, quoteKey(k.name))
		child := t.fields[k.name]
		if i == len(parts)-1 {
			if child != nil {
				b.probs.AddAt(k.line, p, "set twice (first at line %d); keep only one", child.line)
				return
			}
			v := b.value(e.Value(), p, k.line)
			v.line = k.line
			t.set(k.name, v)
			return
		}
		switch {
		case child == nil:
			child = newTable(fromDotted, k.line)
			t.set(k.name, child)
		case child.kind == kTable && child.origin == fromDotted:
		default:
			b.probs.AddAt(k.line, full, "%s is already defined at line %d; a dotted key cannot add to it, so write this key in that table instead", p, child.line)
			return
		}
		t, path = child, p
	}
}

// value converts one value node; fallback is the line to use when the node
// has no position of its own (arrays).
func (b *treeBuilder) value(v *unstable.Node, path string, fallback int) *node {
	n := &node{origin: fromValue, line: b.lineOf(v, fallback), text: string(v.Data)}
	switch v.Kind {
	case unstable.String:
		n.kind = kString
	case unstable.Bool:
		n.kind = kBool
	case unstable.Integer, unstable.Float:
		pattern := intPattern
		n.kind = kInt
		if v.Kind == unstable.Float {
			n.kind, pattern = kFloat, floatPattern
		}
		// The parser only scans number characters; the form is checked here.
		if !pattern.MatchString(n.text) {
			n.bad = true
			b.probs.AddAt(n.line, path, "%s is not a valid number; write it like 42, -3, 1.5, 2e3 or 0x1F (an underscore may only sit between two digits)", n.text)
		}
	case unstable.Array:
		n.kind = kArray
		it := v.Children()
		for it.Next() {
			if c := it.Node(); c.Kind != unstable.Comment {
				n.elems = append(n.elems, b.value(c, Index(path, len(n.elems)), n.line))
			}
		}
	case unstable.InlineTable:
		n = newTable(fromValue, n.line)
		it := v.Children()
		for it.Next() {
			b.keyval(n, path, it.Node())
		}
		closeTables(n)
	default: // the four date and time kinds
		n.kind = kDateTime
	}
	return n
}

// closeTables marks the dotted sub-tables of an inline table as values: an
// inline table is complete once written.
func closeTables(n *node) {
	if n.kind != kTable {
		return
	}
	n.origin = fromValue
	for _, c := range n.fields {
		closeTables(c)
	}
}

// recordLines stores the line of every key path in the tree.
// It reports false when the paths exceed the budget of bytes.
func recordLines(n *node, path string, lines map[string]int, budget *int) bool {
	if path != "" {
		if *budget -= len(path); *budget < 0 {
			return false
		}
		lines[path] = n.line
	}
	for _, k := range n.keys {
		if !recordLines(n.fields[k], Join(path, quoteKey(k)), lines, budget) {
			return false
		}
	}
	for i, e := range n.elems {
		if !recordLines(e, Index(path, i), lines, budget) {
			return false
		}
	}
	return true
}

// Limits against pathological files. The parser recurses once per bracket
// level and a stack overflow cannot be recovered, so deep nesting is refused
// before parsing; the line map holds every key path, so its size is capped.
const (
	maxDepth     = 32
	maxPathBytes = 64 << 20
)

// tooDeep returns the line of the first bracket nested deeper than maxDepth,
// or 0. It skips strings and comments, so for a valid file it sees exactly
// the brackets the parser will.
func tooDeep(data []byte) int {
	depth, line := 0, 1
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '\n':
			line++
		case '#':
			for i+1 < len(data) && data[i+1] != '\n' {
				i++
			}
		case '"', '\'':
			quote := []byte{c, c, c}
			if !bytes.HasPrefix(data[i:], quote) { // one-line string
				for i++; i < len(data) && data[i] != c && data[i] != '\n'; i++ {
					if c == '"' && data[i] == '\\' {
						i++
					}
				}
				if i < len(data) && data[i] == '\n' {
					line++
				}
				continue
			}
			for i += 3; i < len(data) && !bytes.HasPrefix(data[i:], quote); i++ {
				switch {
				case data[i] == '\n':
					line++
				case c == '"' && data[i] == '\\' && i+1 < len(data) && data[i+1] != '\n':
					i++
				}
			}
			// A closing delimiter may follow up to two quotes of content.
			for i += 3; i < len(data) && data[i] == c; i++ {
			}
			i--
		case '[', '{':
			if depth++; depth > maxDepth {
				return line
			}
		case ']', '}':
			depth = max(depth-1, 0)
		}
	}
	return 0
}

func headerName(parts []keyPart) string {
	names := make([]string, len(parts))
	for i, k := range parts {
		names[i] = quoteKey(k.name)
	}
	return strings.Join(names, ".")
}

// quoteKey writes a key as TOML would need it: bare when it can be.
func quoteKey(k string) string {
	if k == "" {
		return `""`
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return strconv.Quote(k)
		}
	}
	return k
}
