package config

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
func Decode(file string, data []byte, v any) *Problems {
	panic("not implemented")
}
