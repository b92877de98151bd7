package main

// gpuSupport says whether this binary can drive GPUs itself; the NVML
// driver arrives with the GPU issue.
func gpuSupport() string { return "GPU control: not built in yet" }
