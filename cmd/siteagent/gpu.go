package main

import "github.com/siteagent/siteagent/drivers/nvml"

// gpuSupport says whether this binary can drive GPUs itself: the cgo build
// has NVML, the CGO_ENABLED=0 build (make build-static) has a stub.
func gpuSupport() string { return nvml.Support() }
