//go:build !cgo

package nvml

// This is the driver of a binary built with CGO_ENABLED=0: go-nvml needs
// cgo, so there is no NVML here and every call says so.

// BuiltIn reports whether this binary can drive GPUs (built with cgo).
const BuiltIn = false

// Support says, for `siteagent version`, whether GPU control is built in.
func Support() string {
	return "GPU control: not built in (this binary was built without cgo)"
}

// Host is never opened in this build.
type Host struct{}

// OpenSystem always fails here: GPU control is not built in.
func OpenSystem(opt Options) (*Host, error) { return nil, ErrNotBuiltIn }

// DriverVersion is empty: there is no driver.
func (h *Host) DriverVersion() string { return "" }

// GPUs is empty: there is no driver.
func (h *Host) GPUs() []GPU { return nil }

// Read reads nothing.
func (h *Host) Read(dst []Reading) []Reading { return dst[:0] }

// SetCaps refuses every cap.
func (h *Host) SetCaps(want []uint32) []SetResult {
	res := make([]SetResult, len(want))
	for i := range res {
		res[i] = SetResult{Index: i, WantMW: want[i], Err: ErrNotBuiltIn}
	}
	return res
}

// Close does nothing.
func (h *Host) Close(restoreDefault bool) error { return nil }
