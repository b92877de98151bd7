package safety

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siteagent/siteagent/agent/config"
)

func policy() *CommandPolicy {
	return NewCommandPolicy(CommandsConfig{MinTargetKW: f(4000), MaxDuration: 2 * time.Hour}, 20000)
}

func cmd(typ string, edit func(*Command)) *Command {
	c := &Command{ID: "c-1", Type: typ, From: "ops", Issued: now.Add(-time.Second)}
	if edit != nil {
		edit(c)
	}
	return c
}

func TestParseCommandIsStrict(t *testing.T) {
	good := `{"id":"c-1","type":"curtail","from":"ops-1","issued":"2026-11-22T12:00:00Z","target_kw":12000,"duration":"30m","reason":"ERCOT EEA1"}`
	c, err := ParseCommand([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "c-1" || *c.TargetKW != 12000 || time.Duration(c.Duration) != 30*time.Minute || c.Reason != "ERCOT EEA1" || !c.Issued.Equal(now) {
		t.Fatalf("parsed %+v", c)
	}
	for in, want := range map[string]string{
		`{"id":"c-1","type":"curtail","target":5}`:       `unknown field "target"`,
		`{"id":"c-1","type":"curtail","duration":1800}`:  "string with a unit",
		`{"id":"c-1","type":"curtail","target_kw":"5"}`:  "cannot unmarshal string",
		`{"id":"c-1"} {"id":"c-2"}`:                      "more than one",
		`{"id":"c-1"} x`:                                 "schema",
		`[1,2]`:                                          "cannot unmarshal array",
		`{"id":"c-1","issued":"yesterday"}`:              "cannot parse",
		`{"id":"` + strings.Repeat("x", 9000) + `"}`:     "too large",
		`{"id":"c-1","type":"mode","hold_restores":"1"}`: "cannot unmarshal string",
	} {
		if _, err := ParseCommand([]byte(in)); err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "schema: ") {
			t.Errorf("%.60s: %v, want a schema error containing %q", in, err, want)
		}
	}
}

func TestCheckCommand(t *testing.T) {
	p := policy()
	start := now.Add(10 * time.Minute)
	for _, tc := range []struct {
		name string
		c    *Command
		want string // "" = accepted
	}{
		{"target", cmd(CommandCurtail, func(c *Command) { c.TargetKW, c.Duration = f(12000), Duration(time.Hour) }), ""},
		{"target at the deepest cut", cmd(CommandCurtail, func(c *Command) { c.TargetKW, c.Duration = f(4000), Duration(time.Hour) }), ""},
		{"reduction later", cmd(CommandCurtail, func(c *Command) { c.ReductionKW, c.Duration, c.Start = f(3000), Duration(time.Hour), &start }), ""},
		{"above the import limit", cmd(CommandCurtail, func(c *Command) { c.TargetKW, c.Duration = f(20001), Duration(time.Hour) }), "bounds: target 20001 kW is above the site's import limit"},
		{"deeper than allowed", cmd(CommandCurtail, func(c *Command) { c.TargetKW, c.Duration = f(3999), Duration(time.Hour) }), "bounds: target 3999 kW is below min_target_kw 4000"},
		{"negative target", cmd(CommandCurtail, func(c *Command) { c.TargetKW, c.Duration = f(-5), Duration(time.Hour) }), "bounds"},
		{"reduction too deep", cmd(CommandCurtail, func(c *Command) { c.ReductionKW, c.Duration = f(16001), Duration(time.Hour) }), "more than max_reduction_kw 16000"},
		{"negative reduction", cmd(CommandCurtail, func(c *Command) { c.ReductionKW, c.Duration = f(-100), Duration(time.Hour) }), "can never raise load"},
		{"both", cmd(CommandCurtail, func(c *Command) { c.TargetKW, c.ReductionKW, c.Duration = f(9000), f(100), Duration(time.Hour) }), "exactly one"},
		{"neither", cmd(CommandCurtail, func(c *Command) { c.Duration = Duration(time.Hour) }), "exactly one"},
		{"no duration", cmd(CommandCurtail, func(c *Command) { c.TargetKW = f(9000) }), "positive duration"},
		{"too long", cmd(CommandCurtail, func(c *Command) { c.TargetKW, c.Duration = f(9000), Duration(3*time.Hour) }), "longer than max_duration 2h0m0s"},
		{"too far ahead", cmd(CommandCurtail, func(c *Command) {
			s := now.Add(25 * time.Hour)
			c.TargetKW, c.Duration, c.Start = f(9000), Duration(time.Hour), &s
		}), "max_lead"},
		{"already over", cmd(CommandCurtail, func(c *Command) {
			s := now.Add(-2 * time.Hour)
			c.TargetKW, c.Duration, c.Start = f(9000), Duration(time.Hour), &s
		}), "already be over"},
		{"expired", cmd(CommandCurtail, func(c *Command) {
			e := now.Add(-time.Millisecond)
			c.TargetKW, c.Duration, c.Expires = f(9000), Duration(time.Hour), &e
		}), "expired at"},
		{"stale", cmd(CommandCurtail, func(c *Command) {
			c.TargetKW, c.Duration, c.Issued = f(9000), Duration(time.Hour), now.Add(-2*time.Minute)
		}), "more than max_age"},
		{"from the future", cmd(CommandCurtail, func(c *Command) {
			c.TargetKW, c.Duration, c.Issued = f(9000), Duration(time.Hour), now.Add(time.Minute)
		}), "in the future"},
		{"no issued", cmd(CommandCurtail, func(c *Command) { c.TargetKW, c.Duration, c.Issued = f(9000), Duration(time.Hour), time.Time{} }), "issued"},
		{"no id", cmd(CommandCurtail, func(c *Command) { c.ID = "" }), "id must be"},
		{"control characters", cmd(CommandCancel, func(c *Command) { c.Cancels, c.From = "c-0", "ops\n" }), "printable"},
		{"cancel", cmd(CommandCancel, func(c *Command) { c.Cancels = "c-0" }), ""},
		{"cancel without id", cmd(CommandCancel, nil), "only cancels"},
		{"cancel with target", cmd(CommandCancel, func(c *Command) { c.Cancels, c.TargetKW = "c-0", f(1) }), "only cancels"},
		{"hold", cmd(CommandMode, func(c *Command) { c.HoldRestores, c.Duration = ptrTo(true), Duration(30*time.Minute) }), ""},
		{"release", cmd(CommandMode, func(c *Command) { c.HoldRestores = ptrTo(false) }), ""},
		{"hold too long", cmd(CommandMode, func(c *Command) { c.HoldRestores, c.Duration = ptrTo(true), Duration(2*time.Hour) }), "longer than max_hold 1h0m0s"},
		{"mode without request", cmd(CommandMode, nil), "hold_restores"},
		{"unknown type", cmd("reboot", nil), `type "reboot" is not a command`},
	} {
		v := p.Check(tc.c, now)
		if tc.want == "" {
			if !v.Accepted() {
				t.Errorf("%s: %+v, want accepted", tc.name, v)
			}
			continue
		}
		if v.Result != ResultRejected || !strings.Contains(v.Reason, tc.want) {
			t.Errorf("%s: %+v, want rejected for %q", tc.name, v, tc.want)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

func TestCommandsNeedTLS(t *testing.T) {
	p := policy()
	if v, ok := p.CheckChannel(Channel{Broker: "tcp://h:1883"}); ok || !strings.Contains(v.Reason, "no TLS") {
		t.Fatalf("plain connection: %+v %v", v, ok)
	}
	if _, ok := p.CheckChannel(Channel{Broker: "ssl://h:8883", TLS: true}); !ok {
		t.Fatal("TLS connection refused")
	}
	lab := NewCommandPolicy(CommandsConfig{MinTargetKW: f(0), AllowWithoutTLS: true}, 100)
	if _, ok := lab.CheckChannel(Channel{Broker: "tcp://h:1883"}); !ok {
		t.Fatal("allow_without_tls ignored")
	}
}

func TestReductionTarget(t *testing.T) {
	p := policy()
	for _, tc := range []struct {
		red, imp float64
		ok       bool
		want     float64
	}{
		{3000, 15000, true, 12000},
		{3000, 25000, true, 17000}, // above the limit: from the limit
		{3000, 15000, false, 17000},
		{14000, 15000, true, 4000}, // never below the deepest cut
	} {
		if got := p.ReductionTarget(tc.red, tc.imp, tc.ok); got != tc.want {
			t.Errorf("%+v: %g", tc, got)
		}
	}
}

func TestLedger(t *testing.T) {
	l := NewLedger(time.Hour)
	acc := Decision{Result: ResultAccepted}
	if _, ok := l.Claim("a", now, acc); !ok {
		t.Fatal("first claim refused")
	}
	e, ok := l.Claim("a", now.Add(time.Minute), Decision{Result: ResultRejected})
	if ok || e.Result != ResultAccepted || !e.At.Equal(now) {
		t.Fatalf("second claim: %+v %v", e, ok)
	}
	if _, ok := l.Claim("a", now.Add(2*time.Hour), acc); !ok {
		t.Fatal("id not forgotten after the window")
	}
	l2 := NewLedger(time.Hour)
	l2.Restore([]AuditRecord{
		{TS: now.Add(-30 * time.Minute), Event: "command", ID: "x", Result: ResultRejected, Reason: "bounds"},
		{TS: now.Add(-2 * time.Hour), Event: "command", ID: "old", Result: ResultAccepted},
		{TS: now, Event: "began", ID: "y"},
	}, now)
	if e, ok := l2.Seen("x", now); !ok || e.Reason != "bounds" {
		t.Fatalf("restored x: %+v %v", e, ok)
	}
	if _, ok := l2.Seen("old", now); ok {
		t.Fatal("restored an id older than the window")
	}
	if _, ok := l2.Seen("y", now); ok {
		t.Fatal("a lifecycle record claimed an id")
	}
}

func TestAuditLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "commands.jsonl")
	l, err := OpenAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	ch := &Channel{Format: "json", Broker: "ssl://h:8883", TLS: true, Topic: "siteagent/s/cmd", Username: "s"}
	recs := []AuditRecord{
		{TS: now, Event: "command", ID: "c-1", Type: "curtail", From: "ops", Via: ch, Result: ResultAccepted, Request: []byte(`{"id":"c-1"}`), Effect: "import target 9000 kW"},
		{TS: now.Add(time.Second), Event: "command", ID: "c-1", Type: "curtail", From: "ops", Via: ch, Result: ResultDuplicate, Reason: "already accepted"},
	}
	for _, r := range recs {
		if err := l.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	if err := l.Write(recs[0]); err == nil {
		t.Fatal("write after close")
	}
	// A crash mid-line leaves a torn record: skipped, counted.
	fh, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	fh.WriteString(`{"ts":"2026-11-22T12:00:02Z","event":"comm`)
	fh.Close()
	got, bad, err := ReadAudit(path)
	if err != nil || bad != 1 || len(got) != 2 {
		t.Fatalf("read %d records, %d bad, %v", len(got), bad, err)
	}
	if g := got[0]; g.ID != "c-1" || g.Via.Username != "s" || !g.Via.TLS || string(g.Request) != `{"id":"c-1"}` || !g.TS.Equal(now) || g.Result != ResultAccepted {
		t.Fatalf("record %+v", g)
	}
	if l2, err := OpenAuditLog(path); err != nil {
		t.Fatal(err)
	} else {
		l2.Write(recs[1])
		l2.Close()
	}
	if got, _, _ := ReadAudit(path); len(got) != 3 {
		t.Fatalf("appending after reopen: %d records", len(got))
	}
}

func TestCommandsConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg       CommandsConfig
		key, want string
	}{
		{CommandsConfig{MinTargetKW: f(4000)}, "", ""},
		{CommandsConfig{MinTargetKW: f(25000)}, "commands.min_target_kw", "0..20000"},
		{CommandsConfig{MinTargetKW: f(-1)}, "commands.min_target_kw", "0..20000"},
		{CommandsConfig{MinTargetKW: f(1), MaxReductionKW: f(0)}, "commands.max_reduction_kw", "(0, 20000]"},
		{CommandsConfig{MinTargetKW: f(1), MaxHold: -time.Second}, "commands.max_hold", "negative"},
		{CommandsConfig{MinTargetKW: f(1), IDWindow: time.Second, MaxAge: time.Minute}, "commands.id_window", "applied twice"},
		{CommandsConfig{MinTargetKW: f(1), AuditLog: "audit.jsonl"}, "commands.audit_log", "absolute"},
	} {
		p := config.NewProblems("site.toml", nil)
		tc.cfg.Validate(p, "commands", 20000)
		list := p.List()
		if tc.want == "" {
			if len(list) != 0 {
				t.Errorf("%+v: %v", tc.cfg, list)
			}
			continue
		}
		if len(list) != 1 || list[0].Key != tc.key || !strings.Contains(list[0].Msg, tc.want) {
			t.Errorf("%+v: %v, want %s: %q", tc.cfg, list, tc.key, tc.want)
		}
	}
	d := CommandsConfig{MinTargetKW: f(4000)}.WithDefaults(20000)
	if *d.MaxReductionKW != 16000 || d.MaxAge != time.Minute || d.MaxHold != time.Hour || d.IDWindow != 168*time.Hour {
		t.Fatalf("defaults %+v", d)
	}
}
