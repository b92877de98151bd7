// Package miners simulates networked ASIC miners on loopback, each family
// speaking its vendor's protocol, for tests, benchmarks and the demo.
//
// Many miners share one port on many loopback addresses (127.0.0.0/8 is
// all loopback on Linux), so a fleet of 5,000 looks to the agent like 5,000
// machines on a LAN, each at "127.10.x.y:port", with one listener each.
//
// Physics is computed from the clock when asked (a miner's power is a
// function of its mode and the time since its last command), so a fleet of
// thousands costs nothing between requests, and tests can drive the clock.
package miners

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Fault is a misbehaviour a simulated miner can be given.
type Fault uint8

const (
	// NoFault: behaves.
	NoFault Fault = iota
	// FaultSlow: answers after SlowDelay (longer than the agent's timeout
	// unless the test says otherwise).
	FaultSlow
	// FaultGarbled: answers with a reply cut in half and followed by junk.
	FaultGarbled
	// FaultRefusing: resets every connection at once (API disabled,
	// firewall), or, where the family authenticates, refuses the login.
	FaultRefusing
	// FaultDropping: reads the request and closes without answering.
	FaultDropping
	// FaultIgnoring: acknowledges commands and does not act on them, so
	// only a read-back can tell.
	FaultIgnoring
)

var faultNames = [...]string{"none", "slow", "garbled", "refusing", "dropping", "ignoring"}

func (f Fault) String() string {
	if int(f) < len(faultNames) {
		return faultNames[f]
	}
	return fmt.Sprintf("fault(%d)", uint8(f))
}

// ParseFault reads a fault name as String writes it.
func ParseFault(s string) (Fault, error) {
	for i, n := range faultNames {
		if n == s {
			return Fault(i), nil
		}
	}
	return 0, fmt.Errorf("no fault %q (have none, slow, garbled, refusing, dropping, ignoring)", s)
}

// Mode is what a simulated miner is doing.
type Mode uint8

const (
	Mining   Mode = iota
	Stopping      // commanded to sleep, power still falling
	Sleeping      // asleep: control board and fans only
	Waking        // commanded to wake, power ramping up
)

var modeNames = [...]string{"mining", "stopping", "sleeping", "waking"}

func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Physics is how a miner's power moves after a command.
type Physics struct {
	// RatedW: power while hashing at the default profile.
	RatedW float64
	// SleepW: power asleep (control board, fans at idle).
	SleepW float64
	// SleepDelay: from the sleep command until power starts to fall;
	// SleepFall: the fall from full to SleepW.
	SleepDelay, SleepFall time.Duration
	// WakeDelay: from the wake command until the boards draw power (PSU
	// on, boards enumerated); WakeRamp: the ramp to full power.
	WakeDelay, WakeRamp time.Duration
	// HashrateTHs at RatedW; the hashrate follows power above SleepW.
	HashrateTHs float64
}

// machine is the physical state of one simulated miner.
type machine struct {
	mode    Mode
	since   time.Time // of the last mode change
	fromW   float64   // power when the transition began
	targetW float64   // power when hashing (a profile / power target)
}

func (m *machine) powerAt(p *Physics, now time.Time) float64 {
	dt := now.Sub(m.since)
	switch m.mode {
	case Mining:
		return m.targetW
	case Sleeping:
		return p.SleepW
	case Stopping:
		return ramp(m.fromW, p.SleepW, dt-p.SleepDelay, p.SleepFall)
	case Waking:
		return ramp(m.fromW, m.targetW, dt-p.WakeDelay, p.WakeRamp)
	}
	return 0
}

// ramp moves linearly from a to b over span, starting at t = 0.
func ramp(a, b float64, t, span time.Duration) float64 {
	if t <= 0 {
		return a
	}
	if span <= 0 || t >= span {
		return b
	}
	return a + (b-a)*float64(t)/float64(span)
}

// settle finishes a transition whose time is up.
func (m *machine) settle(p *Physics, now time.Time) {
	dt := now.Sub(m.since)
	switch {
	case m.mode == Stopping && dt >= p.SleepDelay+p.SleepFall:
		m.mode, m.since = Sleeping, m.since.Add(p.SleepDelay+p.SleepFall)
	case m.mode == Waking && dt >= p.WakeDelay+p.WakeRamp:
		m.mode, m.since = Mining, m.since.Add(p.WakeDelay+p.WakeRamp)
	}
}

// sleep and wake start a transition from the power drawn now, so that a
// command reversed halfway continues from where the power is.
func (m *machine) sleep(p *Physics, now time.Time) {
	m.settle(p, now)
	if m.mode == Sleeping || m.mode == Stopping {
		return
	}
	m.fromW = m.powerAt(p, now)
	m.mode, m.since = Stopping, now
}

func (m *machine) wake(p *Physics, now time.Time) {
	m.settle(p, now)
	if m.mode == Mining || m.mode == Waking {
		return
	}
	m.fromW = m.powerAt(p, now)
	m.mode, m.since = Waking, now
}

// hashrate follows power above the sleep level.
func (m *machine) hashrate(p *Physics, now time.Time) float64 {
	w := m.powerAt(p, now)
	if w <= p.SleepW || p.RatedW <= p.SleepW {
		return 0
	}
	return p.HashrateTHs * (w - p.SleepW) / (p.RatedW - p.SleepW)
}

// Counters count what a simulated fleet was asked.
type Counters struct {
	Connections atomic.Uint64
	Requests    atomic.Uint64
}

// loopbackSet listens on one port on many loopback addresses.
type loopbackSet struct {
	lns    []net.Listener
	addrs  []string
	port   int
	wg     sync.WaitGroup
	closed atomic.Bool
}

// listenConfig turns TCP keep-alive off: a connection carries one request
// and lives milliseconds, and the four setsockopt calls per accepted
// connection showed in the profile.
var listenConfig = net.ListenConfig{KeepAlive: -1}

// listenLoopback opens n listeners at base, base+1, ... on one port (port
// 0 picks a free one, the same for all).
func listenLoopback(base netip.Addr, n, port int) (*loopbackSet, error) {
	if !base.Is4() || !base.IsLoopback() {
		return nil, fmt.Errorf("base address %s is not an IPv4 loopback address (127.x.y.z)", base)
	}
	addrs := make([]netip.Addr, n)
	a := base
	for i := range addrs {
		if !a.IsValid() || !a.IsLoopback() {
			return nil, fmt.Errorf("%d miners do not fit in 127.0.0.0/8 from %s", n, base)
		}
		addrs[i] = a
		a = a.Next()
	}
	for attempt := 0; attempt < 20; attempt++ {
		p := port
		if p == 0 {
			ln, err := listenConfig.Listen(context.Background(), "tcp", netip.AddrPortFrom(addrs[0], 0).String())
			if err != nil {
				return nil, err
			}
			p = ln.Addr().(*net.TCPAddr).Port
			ln.Close()
		}
		s := &loopbackSet{port: p}
		var err error
		for _, ad := range addrs {
			var ln net.Listener
			ln, err = listenConfig.Listen(context.Background(), "tcp", netip.AddrPortFrom(ad, uint16(p)).String())
			if err != nil {
				break
			}
			s.lns = append(s.lns, ln)
			s.addrs = append(s.addrs, ln.Addr().String())
		}
		if err == nil {
			return s, nil
		}
		for _, ln := range s.lns {
			ln.Close()
		}
		if port != 0 {
			return nil, err
		}
	}
	return nil, errors.New("no port was free on every address")
}

// serve accepts on every listener and hands each connection to handle
// with the miner's index.
func (s *loopbackSet) serve(handle func(i int, c net.Conn)) {
	for i, ln := range s.lns {
		s.wg.Add(1)
		go func(i int, ln net.Listener) {
			defer s.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					if s.closed.Load() {
						return
					}
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						continue
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				s.wg.Add(1)
				go func() {
					defer s.wg.Done()
					handle(i, c)
				}()
			}
		}(i, ln)
	}
}

func (s *loopbackSet) close() {
	if s.closed.Swap(true) {
		return
	}
	for _, ln := range s.lns {
		ln.Close()
	}
}

// readRequest reads one JSON request: the API has no framing on the way
// in, so read until the bytes form a complete JSON document.
func readRequest(c net.Conn, timeout time.Duration) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 0, 256)
	tmp := make([]byte, 512)
	for len(buf) < 16<<10 {
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if t := bytes.TrimRight(buf, "\x00\r\n "); len(t) > 0 && json.Valid(t) {
			return t, nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				return bytes.TrimRight(buf, "\x00\r\n "), nil
			}
			return nil, err
		}
	}
	return nil, errors.New("request too long")
}

// reset closes c with an RST, as a host that refuses the service.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

// garble cuts a reply in half and appends junk: what a crashed or
// overflowing API daemon sends.
func garble(reply []byte) []byte {
	out := append([]byte(nil), reply[:len(reply)/2]...)
	return append(out, "\x07\xff}{garbage"...)
}

// waitCtx sleeps d unless ctx ends first.
func waitCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// appendJSON writes v as JSON without reflection: replies are built for
// thousands of miners a second, and encoding/json's reflection was most
// of the simulator's cost. Maps are written with sorted keys, as LuxOS
// does. Supported: nil, bool, int, int64, uint64, float64, string,
// []any, map[string]any.
func appendJSON(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...)
	case bool:
		return strconv.AppendBool(b, x)
	case int:
		return strconv.AppendInt(b, int64(x), 10)
	case int64:
		return strconv.AppendInt(b, x, 10)
	case uint64:
		return strconv.AppendUint(b, x, 10)
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return append(b, "null"...)
		}
		return strconv.AppendFloat(b, x, 'f', -1, 64)
	case string:
		return appendString(b, x)
	case []any:
		b = append(b, '[')
		for i, it := range x {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSON(b, it)
		}
		return append(b, ']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendJSON(b, x[k])
		}
		return append(b, '}')
	}
	return append(b, fmt.Sprintf("%q", fmt.Sprint(v))...)
}

// appendString writes s as a JSON string.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c < 0x20:
			b = append(b, fmt.Sprintf("\\u%04x", c)...)
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
