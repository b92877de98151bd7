//go:build cgo

package main

import (
	"github.com/siteagent/siteagent/drivers/nvml"
	"github.com/siteagent/siteagent/node"
	"github.com/siteagent/siteagent/sim/gpunode"
)

// openMockGPUs runs the simulated GPU server of [gpu.mock] in this process.
func openMockGPUs(cfg *node.Config, opts nvml.Options) (node.GPUs, error) {
	m := cfg.GPU.Mock
	gc := gpunode.Config{Seed: cfg.Node.Site + "/" + cfg.Node.ID, GPUs: m.GPUs, Model: m.Model,
		MinW: uint32(m.MinW), MaxW: uint32(m.MaxW), DefaultW: uint32(m.DefaultW),
		Demand: m.Demand(), Latency: m.Latency, InstantPower: m.InstantPower}
	if err := gc.Validate(); err != nil {
		return nil, err
	}
	h, err := nvml.Open(gpunode.New(gc).Interface(), opts)
	if err != nil {
		return nil, err
	}
	return h, nil
}
