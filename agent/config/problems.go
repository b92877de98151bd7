// Package config reads the agent's TOML files strictly and reports every
// mistake with file:line, the key, and what to change.
//
// Decode fills Go structs from a TOML document (unknown keys, wrong types and
// missing required keys are problems, never silently ignored) and returns a
// Problems collector that remembers where every key sits in the file, so that
// the owners of each config struct can add their own checks (floors above
// ceilings, unknown point names) with the right line number.
package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Problem is one thing wrong with a configuration file.
type Problem struct {
	File string
	Line int    // 1-based; 0 when unknown
	Key  string // dotted path such as "modbus[0].points[2].type"
	Msg  string // what is wrong and what to change
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(p.Line))
	}
	b.WriteString(": ")
	if p.Key != "" {
		b.WriteString(p.Key)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Problems collects the problems of one file. Owners of config structs add
// to it with Addf, naming the key path; the line is looked up from the
// document.
type Problems struct {
	file       string
	lines      map[string]int // key path -> line where it is defined
	list       []Problem
	decoded    map[string]bool // keys Decode reported: owners' checks would only echo them
	unreadable bool            // Decode could not read the document at all
}

// NewProblems starts an empty collector for file. lines maps key paths to
// their line numbers and may be nil.
func NewProblems(file string, lines map[string]int) *Problems {
	if lines == nil {
		lines = map[string]int{}
	}
	return &Problems{file: file, lines: lines}
}

// File is the name of the file being checked.
func (p *Problems) File() string { return p.file }

// Line returns the line where key is defined. When the key itself is absent
// (a missing required key, a default) it falls back to its nearest parent
// table, so the error still points at the right place in the file.
func (p *Problems) Line(key string) int {
	for k := key; k != ""; k = Parent(k) {
		if l, ok := p.lines[k]; ok {
			return l
		}
	}
	return 0
}

// Has reports whether key is written in the file (as opposed to defaulted).
func (p *Problems) Has(key string) bool {
	_, ok := p.lines[key]
	return ok
}

// Addf records a problem with key. Write the message for the engineer who
// will fix the file: what is wrong and what to change.
//
// A problem on a key that Decode already reported, or on a key inside it, is
// dropped: the owner's check sees the value Decode could not fill (an
// out-of-range unit_id reads as absent) and would only echo the cause.
func (p *Problems) Addf(key, format string, args ...any) {
	for k := key; k != ""; k = Parent(k) {
		if p.decoded[k] {
			return
		}
	}
	p.list = append(p.list, Problem{File: p.file, Line: p.Line(key), Key: key, Msg: fmt.Sprintf(format, args...)})
}

// Syntax reports whether Decode could not read the document at all (a
// syntax error, or a file too large or deeply nested to check): nothing was
// filled, so further checks would only add noise.
func (p *Problems) Syntax() bool { return p.unreadable }

// AddAt records a problem at an explicit line (parse errors).
func (p *Problems) AddAt(line int, key, format string, args ...any) {
	p.list = append(p.list, Problem{File: p.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// List returns the problems sorted by line, then key.
func (p *Problems) List() []Problem {
	out := append([]Problem(nil), p.list...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Line != out[j].Line {
			return out[i].Line < out[j].Line
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// Len is the number of problems found so far.
func (p *Problems) Len() int { return len(p.list) }

// Err returns nil when there are no problems, else an *Error listing them all.
func (p *Problems) Err() error {
	if len(p.list) == 0 {
		return nil
	}
	return &Error{Problems: p.List()}
}

// Error is a configuration that cannot be used; it lists every problem.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Join builds a child key path: Join("modbus[0]", "points") = "modbus[0].points".
func Join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// Index builds an array element path: Index("modbus", 2) = "modbus[2]".
func Index(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}

// Parent strips the last component of a key path: "a[1].b" -> "a[1]",
// "a[1]" -> "a", "a" -> "".
func Parent(key string) string {
	if strings.HasSuffix(key, "]") {
		if i := strings.LastIndexByte(key, '['); i >= 0 {
			return key[:i]
		}
	}
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		return key[:i]
	}
	return ""
}
