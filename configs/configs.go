// Package configs holds the example site files. They are embedded so that
// `siteagent demo` runs with no file on disk, and a test checks every one
// of them so the examples never rot.
package configs

import "embed"

// Files holds every example: *.toml.
//
//go:embed *.toml
var Files embed.FS

// DemoName is the site file of the simulated demo site.
const DemoName = "demo.toml"

// Demo returns the demo site file.
func Demo() []byte {
	b, err := Files.ReadFile(DemoName)
	if err != nil {
		panic("configs: demo.toml is not embedded: " + err.Error())
	}
	return b
}
