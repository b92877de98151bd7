//go:build !cgo

package nvml_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/siteagent/siteagent/drivers/nvml"
)

func TestStubSaysGPUControlIsNotBuiltIn(t *testing.T) {
	if nvml.BuiltIn {
		t.Fatal("a !cgo build claims GPU control")
	}
	_, err := nvml.OpenSystem(nvml.Options{})
	if !errors.Is(err, nvml.ErrNotBuiltIn) || !strings.Contains(err.Error(), "GPU control is not built in: this binary was built without cgo") {
		t.Fatalf("%v", err)
	}
	if !strings.Contains(nvml.Support(), "not built in") {
		t.Fatal(nvml.Support())
	}
	var h *nvml.Host
	if r := h.SetCaps([]uint32{100}); !errors.Is(r[0].Err, nvml.ErrNotBuiltIn) {
		t.Fatal(r[0].Err)
	}
}
