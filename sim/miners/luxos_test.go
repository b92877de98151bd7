package miners

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

type luxClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *luxClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *luxClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// raw sends one request the way the API wants it and returns the reply
// bytes up to the connection's close.
func luxRaw(t *testing.T, addr, req string) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decode checks the framing (one JSON document, one NUL, then the close)
// and decodes strictly.
func luxDecode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	if len(b) == 0 || b[len(b)-1] != 0 || bytes.Count(b, []byte{0}) != 1 {
		t.Fatalf("reply is not one document ending in one NUL: %q", b)
	}
	var v map[string]any
	if err := json.Unmarshal(b[:len(b)-1], &v); err != nil {
		t.Fatalf("not JSON: %v: %q", err, b)
	}
	return v
}

func luxStatus(t *testing.T, v map[string]any) (string, float64) {
	t.Helper()
	st, ok := v["STATUS"].([]any)
	if !ok || len(st) != 1 {
		t.Fatalf("no STATUS section: %v", v)
	}
	e := st[0].(map[string]any)
	for _, k := range []string{"STATUS", "When", "Code", "Msg", "Description"} {
		if _, ok := e[k]; !ok {
			t.Fatalf("STATUS lacks %s: %v", k, e)
		}
	}
	return e["STATUS"].(string), e["Code"].(float64)
}

func TestLuxOSProtocol(t *testing.T) {
	clk := &luxClock{t: time.Unix(1_700_000_000, 0)}
	f, err := StartLuxOS(LuxOSConfig{Miners: 2, Base: netip.MustParseAddr("127.13.0.1"), Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := f.Addrs()[0]
	if f.Addrs()[1] != "127.13.0.2:"+luxItoa(f.Port()) {
		t.Fatalf("addresses %v", f.Addrs())
	}

	v := luxDecode(t, luxRaw(t, a, `{"command":"logon"}`))
	if s, code := luxStatus(t, v); s != "S" || code != 316 {
		t.Fatalf("logon: %v", v)
	}
	id := v["SESSION"].([]any)[0].(map[string]any)["SessionID"].(string)
	if len(id) != 8 {
		t.Fatalf("session id %q", id)
	}
	// One session at a time.
	if s, _ := luxStatus(t, luxDecode(t, luxRaw(t, a, `{"command":"logon"}`))); s != "E" {
		t.Fatal("a second logon succeeded while the first session lives")
	}
	v = luxDecode(t, luxRaw(t, a, `{"command":"session"}`))
	if got := v["SESSION"].([]any)[0].(map[string]any)["SessionID"]; got != id {
		t.Fatalf("session reports %v, want %s", got, id)
	}
	// curtail needs the session.
	if s, _ := luxStatus(t, luxDecode(t, luxRaw(t, a, `{"command":"curtail","parameter":"wrong123,sleep"}`))); s != "E" {
		t.Fatal("curtail with a wrong session succeeded")
	}
	v = luxDecode(t, luxRaw(t, a, `{"command":"curtail","parameter":"`+id+`,sleep"}`))
	if s, code := luxStatus(t, v); s != "S" || code != 335 || v["CURTAIL"].([]any)[0].(map[string]any)["Action"] != "sleep mode" {
		t.Fatalf("curtail: %v", v)
	}
	// Sleep takes seconds: full power at first, then the fall, then 15 W.
	if st := f.State(0); st.Mode != Stopping || st.PowerW != 3250 {
		t.Fatalf("just after: %+v", st)
	}
	clk.add(3500 * time.Millisecond)
	if st := f.State(0); st.PowerW >= 3250 || st.PowerW <= 15 {
		t.Fatalf("falling: %+v", st)
	}
	clk.add(5 * time.Second)
	if st := f.State(0); st.Mode != Sleeping || st.PowerW != 15 || st.HashrateTHs != 0 {
		t.Fatalf("asleep: %+v", st)
	}
	// The session expires a minute after its last use.
	clk.add(61 * time.Second)
	if s, _ := luxStatus(t, luxDecode(t, luxRaw(t, a, `{"command":"curtail","parameter":"`+id+`,wakeup"}`))); s != "E" {
		t.Fatal("an expired session was accepted")
	}
	if s, _ := luxStatus(t, luxDecode(t, luxRaw(t, a, `{"command":"logon"}`))); s != "S" {
		t.Fatal("logon after expiry refused")
	}
	// The multi-command reply nests each command's reply.
	v = luxDecode(t, luxRaw(t, a, `{"command":"summary+power+config"}`))
	for _, part := range []string{"summary", "power", "config"} {
		p, ok := v[part].([]any)
		if !ok || len(p) != 1 {
			t.Fatalf("multi-command reply lacks %s: %v", part, v)
		}
		luxStatus(t, p[0].(map[string]any))
	}
	cfg := v["config"].([]any)[0].(map[string]any)["CONFIG"].([]any)[0].(map[string]any)
	if cfg["CurtailMode"] != "Sleep" {
		t.Fatalf("config %v", cfg)
	}
	// Privileged commands cannot be joined.
	if s, _ := luxStatus(t, luxDecode(t, luxRaw(t, a, `{"command":"summary+logon"}`))); s != "E" {
		t.Fatal("logon accepted inside a multi-command request")
	}
}

func TestLuxOSFaultsOnTheWire(t *testing.T) {
	f, err := StartLuxOS(LuxOSConfig{Miners: 3, Base: netip.MustParseAddr("127.13.1.1")})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.SetFault(0, FaultGarbled)
	f.SetFault(1, FaultDropping)
	f.SetFault(2, FaultRefusing)
	if b := luxRaw(t, f.Addrs()[0], `{"command":"summary"}`); json.Valid(bytes.TrimRight(b, "\x00")) {
		t.Fatalf("garbled reply is valid JSON: %q", b)
	}
	if b := luxRaw(t, f.Addrs()[1], `{"command":"summary"}`); len(b) != 0 {
		t.Fatalf("dropping miner answered %q", b)
	}
	c, err := net.Dial("tcp", f.Addrs()[2])
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte(`{"command":"summary"}`))
		if _, err := io.ReadAll(c); err == nil {
			t.Fatal("refusing miner did not reset the connection")
		}
		c.Close()
	}
}

func luxItoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
