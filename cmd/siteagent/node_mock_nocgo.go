//go:build !cgo

package main

import (
	"fmt"

	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/node"
)

// openMockGPUs: the simulated GPUs run on go-nvml's mock, which needs cgo
// as much as the real library does.
func openMockGPUs(cfg *node.Config, opts nvml.Options) (node.GPUs, error) {
	return nil, fmt.Errorf("the mock GPU backend: %w", nvml.ErrNotBuiltIn)
}
