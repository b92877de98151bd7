package sim

// SetExternalASIC makes the site's ASIC load come from fn, in kW, read at
// every physics step: miners simulated on the network (sim/miners) that
// the agent sheds through their firmware's API, instead of the PLC's coil
// miners (use with Config.Miners = 0). fn is called with the site's lock
// held and must be quick: return a value kept up to date elsewhere.
func (s *Site) SetExternalASIC(fn func() float64) {
	s.mu.Lock()
	s.external = fn
	s.mu.Unlock()
}
