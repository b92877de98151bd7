package opcua

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/agent/point"
	"github.com/siteagent/siteagent/drivers/opcua/uacert"
	opcuasim "github.com/siteagent/siteagent/sim/opcua"
)

func TestReadsAndSubscribesByNodeAndPath(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	soc := r.srv.MustAdd("Battery/SoC", 80.0)
	power := r.srv.MustAdd("Chillers/Chiller1/PowerW", float32(250000))
	gen := r.srv.MustAdd("Generator/Available", true)
	count := r.srv.MustAdd("Counters/Starts", uint16(7))
	scaled := PointConfig{Name: "chiller1_kw", Path: power.Path(), Scale: f64(0.001)}
	_, store := r.run(r.source(
		pt("soc_pct", soc.NodeID().String()),
		scaled,
		PointConfig{Name: "gen_ok", Path: "Generator/Available"}, // a name without an index matches any namespace
		pt("starts", count.NodeID().String()),
	))
	waitFor(t, "first values", func() bool {
		return isGood(store, "bms.soc_pct", 80)() && isGood(store, "bms.chiller1_kw", 250)() &&
			isGood(store, "bms.gen_ok", 1)() && isGood(store, "bms.starts", 7)()
	})

	at := time.Now().Add(-300 * time.Millisecond).Truncate(time.Millisecond)
	if err := soc.SetAt(79.5, ua.StatusOK, at); err != nil {
		t.Fatal(err)
	}
	gen.Set(false)
	waitFor(t, "changes delivered by the subscription", func() bool {
		return isGood(store, "bms.soc_pct", 79.5)() && isGood(store, "bms.gen_ok", 0)()
	})
	p := get(t, store, "bms.soc_pct")
	if p.Source != at.UnixNano() {
		t.Errorf("the point's source time is %v, want the server's source timestamp %v", time.Unix(0, p.Source), at)
	}
	if p.Recv < p.Source {
		t.Errorf("received %v before its source time %v", p.Recv, p.Source)
	}
}

func TestEverySecurityPolicyAndMode(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	v := r.srv.MustAdd("Battery/SoC", 55.0)
	for _, e := range opcuasim.AllEndpoints() {
		mode := ModeName(e.Mode)
		t.Run(e.Policy+"/"+mode, func(t *testing.T) {
			cfg := r.source(pt("soc", v.NodeID().String()))
			cfg.SecurityPolicy, cfg.SecurityMode = e.Policy, mode
			if Insecure(e.Policy) {
				cfg.AllowInsecure = true
			}
			if e.Policy == "None" {
				cfg.CertificateFile, cfg.PrivateKeyFile, cfg.ServerFingerprint = "", "", ""
			}
			s, store := r.run(cfg)
			waitFor(t, "a value over "+e.Policy+"/"+mode, isGood(store, "bms.soc", 55))
			if !s.Stats().Connected {
				t.Error("stats do not say connected")
			}
			if Insecure(e.Policy) && !r.log.has("WARN", "allow_insecure", "source=bms") {
				t.Errorf("no warning about %s at start", e.Policy)
			}
		})
	}
}

func TestInsecurePoliciesRefusedUnlessAllowed(t *testing.T) {
	for _, pol := range []string{"None", "Basic128Rsa15", "Basic256"} {
		cfg := SourceConfig{Name: "bms", Endpoint: "opc.tcp://127.0.0.1:4840", SecurityPolicy: pol,
			CertificateFile: "c.pem", PrivateKeyFile: "k.pem", ServerFingerprint: strings.Repeat("AB", 32)}
		_, err := NewSource(cfg, point.NewStore(), nil)
		if err == nil || !strings.Contains(err.Error(), "security_policy") || !strings.Contains(err.Error(), "allow_insecure") {
			t.Errorf("%s without allow_insecure: %v", pol, err)
		}
		cfg.AllowInsecure = true
		if _, err := NewSource(cfg, point.NewStore(), nil); err != nil {
			t.Errorf("%s with allow_insecure: %v", pol, err)
		}
	}
}

func TestPinnedCertificateMismatchIsRefused(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	v := r.srv.MustAdd("Battery/SoC", 55.0)
	other, _, err := uacert.Generate(uacert.Options{ApplicationURI: "urn:someone:else"})
	if err != nil {
		t.Fatal(err)
	}
	otherFile := r.dir + "/other.der"
	writeFile(t, otherFile, other)

	byFP := r.source(pt("soc", v.NodeID().String()))
	byFP.ServerFingerprint = uacert.Fingerprint(other)
	byFile := r.source(pt("soc", v.NodeID().String()))
	byFile.Name, byFile.ServerFingerprint, byFile.ServerCertificateFile = "bms2", "", otherFile
	right := r.source(pt("soc", v.NodeID().String()))
	right.Name, right.ServerFingerprint = "bms3", ""
	right.ServerCertificateFile = r.dir + "/server.der"
	writeFile(t, right.ServerCertificateFile, r.srv.Certificate())

	sFP, storeFP := r.run(byFP)
	sFile, storeFile := r.run(byFile)
	_, storeRight := r.run(right)
	waitFor(t, "the correctly pinned source reads", isGood(storeRight, "bms3.soc", 55))
	for _, c := range []struct {
		s     *Source
		store *point.Store
		name  string
	}{{sFP, storeFP, "bms"}, {sFile, storeFile, "bms2"}} {
		<-c.s.Ready()
		waitFor(t, c.name+" refused", func() bool { return strings.Contains(c.s.Stats().LastError, ErrCertificateMismatch.Error()) })
		if p := get(t, c.store, c.name+".soc"); p.Quality != point.Bad {
			t.Errorf("%s: point is %v though the server was refused", c.name, p.Quality)
		}
		if c.s.Stats().Sessions != 0 {
			t.Errorf("%s: a session was opened with a server whose certificate does not match", c.name)
		}
		if !r.log.has("source="+c.name, "does not match the pinned one", uacert.Fingerprint(r.srv.Certificate())) {
			t.Errorf("%s: no log naming the source and the server's actual fingerprint:\n%s", c.name, r.log)
		}
	}
}

func TestReconnectsAfterServerRestart(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	v := r.srv.MustAdd("Battery/SoC", 60.0)
	s, store := r.run(r.source(pt("soc", v.NodeID().String())))
	waitFor(t, "first value", isGood(store, "bms.soc", 60))
	r.restart(func() {
		waitFor(t, "points bad while the server is down", isBad(store, "bms.soc", point.CommError))
	})
	v2 := r.srv.MustAdd("Battery/SoC", 61.0)
	waitFor(t, "value after the restart", isGood(store, "bms.soc", 61))
	v2.Set(62.0)
	waitFor(t, "the new subscription delivers", isGood(store, "bms.soc", 62))
	if st := s.Stats(); st.Sessions < 2 {
		t.Errorf("sessions %d, want a second one after the restart", st.Sessions)
	}
}

func TestFrozenSubscriptionGoesStaleThenIsRecreated(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	v := r.srv.MustAdd("Battery/SoC", 50.0)
	const staleAfter = 500 * time.Millisecond
	cfg := r.source(PointConfig{Name: "soc", Node: v.NodeID().String(), Meta: point.Meta{StaleAfter: staleAfter}})
	// Check quiet items only well after they went stale, so that the
	// test sees the stale phase before the driver repairs it.
	cfg.VerifyAfter = 3 * time.Second
	s, store := r.run(cfg)
	waitFor(t, "first value", isGood(store, "bms.soc", 50))

	// The device keeps changing the value; the subscription says nothing.
	r.srv.FreezeSubscriptions(true)
	frozenAt := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		x := 50.0
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				x -= 0.1
				v.Set(x)
			}
		}
	}()
	var staleSeen time.Duration
	waitFor(t, "the silent point judged stale", func() bool {
		p := get(t, store, "bms.soc")
		if p.Quality == point.Good && p.Age(time.Now()) > staleAfter {
			staleSeen = time.Since(frozenAt)
			return true
		}
		return false
	})
	if p := get(t, store, "bms.soc"); p.Value != 50 {
		t.Errorf("the point changed to %g while the subscription was frozen", p.Value)
	}
	t.Logf("stale %s after the freeze (stale_after %s)", staleSeen.Round(time.Millisecond), staleAfter)
	waitFor(t, "the driver notices and recreates the subscription", func() bool { return s.Stats().Resubscribes > 0 })
	waitFor(t, "the point fresh again", func() bool {
		p := get(t, store, "bms.soc")
		return p.Quality == point.Good && p.Value < 50 && p.Age(time.Now()) < staleAfter
	})
	if st := s.Stats(); st.MissedUpdates == 0 {
		t.Errorf("no missed update counted: %+v", st)
	}
	if !r.log.has("WARN", "connected but silent", "source=bms") {
		t.Errorf("no warning about the silent subscription:\n%s", r.log)
	}
}

func TestBadInputSpoilsOnlyItsPoint(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	good := r.srv.MustAdd("Battery/SoC", 70.0)
	text := r.srv.MustAdd("Battery/Model", "LFP-2000")
	broken := r.srv.MustAdd("Battery/TempC", 31.0)
	array := r.srv.MustAdd("Battery/Cells", []float64{3.3, 3.31})
	_, store := r.run(r.source(
		pt("soc", good.NodeID().String()),
		pt("missing", "ns=1;s=Battery.NoSuchThing"),
		PointConfig{Name: "lost", Path: "1:Battery/1:Nope"},
		pt("model", text.NodeID().String()),
		pt("temp", broken.NodeID().String()),
		pt("cells", array.NodeID().String()),
		pt("nsu", "nsu=urn:not:there;s=X"),
	))
	waitFor(t, "the good point", isGood(store, "bms.soc", 70))
	broken.SetStatus(ua.StatusBadSensorFailure)
	waitFor(t, "each bad point bad for its own reason", func() bool {
		return isBad(store, "bms.missing", point.DeviceError)() && isBad(store, "bms.lost", point.DeviceError)() &&
			isBad(store, "bms.model", point.DecodeError)() && isBad(store, "bms.temp", point.DeviceError)() &&
			isBad(store, "bms.cells", point.DecodeError)() && isBad(store, "bms.nsu", point.DeviceError)()
	})
	good.Set(69.0)
	waitFor(t, "the good point keeps flowing", isGood(store, "bms.soc", 69))
	for _, want := range [][]string{
		{"point=bms.missing", "BadNodeIDUnknown"},
		{"point=bms.lost", "no 1:Nope under 1:Battery"},
		{"point=bms.model", "String, not a number"},
		{"point=bms.temp", "BadSensorFailure"},
		{"point=bms.cells", "an array of Double"},
		{"point=bms.nsu", "no namespace"},
	} {
		if !r.log.has(append(want, "source=bms")...) {
			t.Errorf("no log line with %q:\n%s", want, r.log)
		}
	}
	broken.Set(30.5)
	waitFor(t, "a point whose status is good again recovers", isGood(store, "bms.temp", 30.5))
}

func TestUncertainAndAcceptedStatus(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	v := r.srv.MustAdd("Gen/AvailableKW", 6000.0)
	plain := r.source(pt("gen_kw", v.NodeID().String()))
	accepting := r.source(pt("gen_kw", v.NodeID().String()))
	accepting.Name, accepting.AcceptStatus = "bms2", []string{"UncertainLastUsableValue"}
	_, s1 := r.run(plain)
	_, s2 := r.run(accepting)
	waitFor(t, "good values", func() bool { return isGood(s1, "bms.gen_kw", 6000)() && isGood(s2, "bms2.gen_kw", 6000)() })
	v.SetAt(5900.0, ua.StatusUncertainLastUsableValue, time.Now())
	waitFor(t, "uncertain unless accepted", func() bool {
		p1, p2 := get(t, s1, "bms.gen_kw"), get(t, s2, "bms2.gen_kw")
		return p1.Quality == point.Uncertain && p1.Reason == point.SourceFlagged && p1.Value == 5900 &&
			p2.Quality == point.Good && p2.Value == 5900
	})
	v.SetAt(5800.0, ua.StatusUncertainSensorNotAccurate, time.Now())
	waitFor(t, "another uncertain code is not accepted", func() bool { return get(t, s2, "bms2.gen_kw").Quality == point.Uncertain })
}

func TestTriggerPointWakesTheStore(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	v := r.srv.MustAdd("Battery/DischargeKW", 4000.0)
	below := 1000.0
	_, store := r.run(r.source(PointConfig{Name: "discharge_kw", Node: v.NodeID().String(), Meta: point.Meta{TriggerBelow: &below}}))
	waitFor(t, "first value", isGood(store, "bms.discharge_kw", 4000))
	// Drain wakes from the first write.
	select {
	case <-store.Wake():
	default:
	}
	v.Set(900.0)
	select {
	case <-store.Wake():
	case <-time.After(20 * time.Second):
		t.Fatal("no wake when the value fell below its trigger")
	}
	if p := get(t, store, "bms.discharge_kw"); p.Value != 900 {
		t.Errorf("woken with %g in the store", p.Value)
	}
}

func TestPollModeReadsInChunks(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	var pts []PointConfig
	var vars []*opcuasim.Variable
	for i := range opcuasim.MaxNodesPerRead + 9 {
		v := r.srv.MustAdd(fmt.Sprintf("Racks/R%02d/PowerKW", i), float64(i))
		vars = append(vars, v)
		pts = append(pts, pt(fmt.Sprintf("rack%02d_kw", i), v.NodeID().String()))
	}
	cfg := r.source(pts...)
	cfg.Mode, cfg.PollPeriod = ModePoll, 100*time.Millisecond
	s, store := r.run(cfg)
	waitFor(t, "every point read", func() bool {
		for i := range vars {
			if !isGood(store, fmt.Sprintf("bms.rack%02d_kw", i), float64(i))() {
				return false
			}
		}
		return true
	})
	vars[len(vars)-1].Set(1000.0)
	waitFor(t, "the last point polled again", isGood(store, fmt.Sprintf("bms.rack%02d_kw", len(vars)-1), 1000))
	if st := s.Stats(); st.Mode != ModePoll || st.Notifications != 0 {
		t.Errorf("stats %+v, want polling only", st)
	}
}

func TestServerClockAheadIsAgedFromReceipt(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	v := r.srv.MustAdd("Battery/SoC", 40.0)
	_, store := r.run(r.source(pt("soc", v.NodeID().String())))
	waitFor(t, "first value", isGood(store, "bms.soc", 40))
	v.SetAt(41.0, ua.StatusOK, time.Now().Add(time.Hour))
	waitFor(t, "value from the future", isGood(store, "bms.soc", 41))
	if p := get(t, store, "bms.soc"); p.Source > p.Recv {
		t.Errorf("source time %v after receipt %v: a future stamp would never go stale", time.Unix(0, p.Source), time.Unix(0, p.Recv))
	}
	waitFor(t, "a warning about the clock", func() bool { return r.log.has("WARN", "clock runs ahead") })
}

func TestLogins(t *testing.T) {
	udir := t.TempDir()
	der, key, err := uacert.Generate(uacert.Options{ApplicationURI: "urn:siteagent:user"})
	if err != nil {
		t.Fatal(err)
	}
	userCert, userKey := udir+"/user.der", udir+"/user.key"
	writeFile(t, userCert, der)
	writeFile(t, userKey, uacert.KeyPEM(key))
	r := newRig(t, opcuasim.Config{NoAnonymous: true, Users: map[string]string{"ops": "s3cret"}, UserCertificates: [][]byte{der}})
	v := r.srv.MustAdd("Battery/SoC", 33.0)

	creds := t.TempDir()
	writeFile(t, creds+"/bms-password", []byte("s3cret\n"))
	writeFile(t, r.dir+"/wrong", []byte("nope\n"))
	t.Setenv("CREDENTIALS_DIRECTORY", creds)

	user := r.source(pt("soc", v.NodeID().String()))
	user.Username, user.PasswordFile = "ops", "bms-password" // a systemd credential
	wrong := r.source(pt("soc", v.NodeID().String()))
	wrong.Name, wrong.Username, wrong.PasswordFile = "wrong", "ops", r.dir+"/wrong"
	anon := r.source(pt("soc", v.NodeID().String()))
	anon.Name = "anon"
	byCert := r.source(pt("soc", v.NodeID().String()))
	byCert.Name, byCert.SecurityPolicy, byCert.UserCertificateFile, byCert.UserPrivateKeyFile = "cert", "Aes256_Sha256_RsaPss", userCert, userKey

	_, s1 := r.run(user)
	sWrong, _ := r.run(wrong)
	sAnon, _ := r.run(anon)
	_, s4 := r.run(byCert)
	waitFor(t, "password login", isGood(s1, "bms.soc", 33))
	waitFor(t, "certificate login", isGood(s4, "cert.soc", 33))
	waitFor(t, "wrong password refused", func() bool { return strings.Contains(sWrong.Stats().LastError, "refuses this login") })
	waitFor(t, "anonymous refused", func() bool { return sAnon.Stats().Errors > 0 && sAnon.Stats().Sessions == 0 })
}

func TestMissingFilesAreReportedAndRetried(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	v := r.srv.MustAdd("Battery/SoC", 12.0)
	cfg := r.source(pt("soc", v.NodeID().String()))
	cert, key := cfg.CertificateFile, cfg.PrivateKeyFile
	cfg.CertificateFile, cfg.PrivateKeyFile = r.dir+"/later.pem", r.dir+"/later.key"
	s, store := r.run(cfg)
	waitFor(t, "the missing file reported", func() bool {
		return strings.Contains(s.Stats().LastError, "later.pem") && r.log.has("source=bms", "later.pem")
	})
	// The technician installs the files: the next attempt uses them.
	copyFile(t, cert, cfg.CertificateFile)
	copyFile(t, key, cfg.PrivateKeyFile)
	waitFor(t, "connected once the files exist", isGood(store, "bms.soc", 12))
}

func TestConfigProblems(t *testing.T) {
	good := func() SourceConfig {
		return SourceConfig{Name: "bms", Endpoint: "opc.tcp://10.0.0.7:4840", CertificateFile: "c", PrivateKeyFile: "k",
			ServerFingerprint: strings.Repeat("0a", 32), Points: []PointConfig{{Name: "soc", Node: "ns=2;s=SoC"}}}
	}
	cases := []struct {
		name string
		edit func(c *SourceConfig)
		key  string
		msg  string
	}{
		{"http endpoint", func(c *SourceConfig) { c.Endpoint = "http://x:1" }, "endpoint", "scheme"},
		{"no pin", func(c *SourceConfig) { c.ServerFingerprint = "" }, "server_fingerprint", "pin the server"},
		{"bad fingerprint", func(c *SourceConfig) { c.ServerFingerprint = "abc" }, "server_fingerprint", "64 hex digits"},
		{"no certificate", func(c *SourceConfig) { c.CertificateFile = "" }, "certificate_file", "gen-cert"},
		{"unknown policy", func(c *SourceConfig) { c.SecurityPolicy = "Basic512" }, "security_policy", "unknown"},
		{"mode none with a policy", func(c *SourceConfig) { c.SecurityMode = "None" }, "security_mode", "leaves"},
		{"login over None", func(c *SourceConfig) {
			c.SecurityPolicy, c.AllowInsecure, c.Username, c.PasswordFile = "None", true, "u", "p"
		}, "security_policy", "unprotected"},
		{"two logins", func(c *SourceConfig) {
			c.Username, c.PasswordFile, c.UserCertificateFile, c.UserPrivateKeyFile = "u", "p", "c", "k"
		}, "username", "not both"},
		{"user without password", func(c *SourceConfig) { c.Username = "u" }, "username", "password_file"},
		{"bad accepted status", func(c *SourceConfig) { c.AcceptStatus = []string{"BadTimeout"} }, "accept_status[0]", "cannot be accepted"},
		{"unknown status", func(c *SourceConfig) { c.AcceptStatus = []string{"GoodEnough"} }, "accept_status[0]", "not an OPC UA status code"},
		{"no node", func(c *SourceConfig) { c.Points[0].Node = "" }, "points[0]", "say where the value is"},
		{"node and path", func(c *SourceConfig) { c.Points[0].Path = "2:SoC" }, "points[0].path", "not both"},
		{"bare node", func(c *SourceConfig) { c.Points[0].Node = "SoC" }, "points[0].node", "identifier type"},
		{"bad path", func(c *SourceConfig) { c.Points[0].Node, c.Points[0].Path = "", "2:BMS//2:SoC" }, "points[0].path", "empty step"},
		{"bad mode", func(c *SourceConfig) { c.Mode = "push" }, "mode", "subscribe"},
		{"zero scale", func(c *SourceConfig) { c.Points[0].Scale = f64(0) }, "points[0].scale", "non-zero"},
		{"negative deadband", func(c *SourceConfig) { c.Points[0].Deadband = f64(-1) }, "points[0].deadband", "positive"},
		{"dotted name", func(c *SourceConfig) { c.Points[0].Name = "a.b" }, "points[0].name", "dots"},
	}
	c := good()
	if _, err := NewSource(c, point.NewStore(), nil); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.edit(&c)
			_, err := NewSource(c, point.NewStore(), nil)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.key+": ") || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %v\nwant key %q and %q", err, tc.key, tc.msg)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	for _, s := range []string{"UncertainLastUsableValue", "StatusUncertainLastUsableValue", "0x40900000"} {
		if c, err := ParseStatus(s); err != nil || c != ua.StatusUncertainLastUsableValue {
			t.Errorf("ParseStatus(%q) = %v, %v", s, c, err)
		}
	}
	if c, err := ParseStatus("GoodLocalOverride"); err != nil || c != ua.StatusGoodLocalOverride {
		t.Errorf("a Good sub-code: %v, %v", c, err)
	}
	for _, s := range []string{"BadTimeout", "0x80000000", "Sort of good"} {
		if _, err := ParseStatus(s); err == nil {
			t.Errorf("ParseStatus(%q) accepted", s)
		}
	}
}

func writeFile(t *testing.T, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, b)
}

func TestDescribe(t *testing.T) {
	c := SourceConfig{Name: "bms", Endpoint: "opc.tcp://10.0.0.7:4840", PublishingInterval: 100 * time.Millisecond, Username: "ops",
		ServerFingerprint: "x", Points: []PointConfig{{Name: "a"}, {Name: "b"}}}
	want := "opc.tcp://10.0.0.7:4840 Basic256Sha256/SignAndEncrypt, user ops, server pinned by fingerprint, subscribe every 100ms (keep-alive 1s): 2 points"
	if got := c.Describe(); got != want {
		t.Errorf("Describe() = %q\nwant          %q", got, want)
	}
}

func TestFallsBackWhereTheServerWillNotMonitor(t *testing.T) {
	r := newRig(t, opcuasim.Config{RefuseFilters: true, MaxMonitoredItems: 2})
	var vars []*opcuasim.Variable
	var pts []PointConfig
	for i := range 4 {
		v := r.srv.MustAdd(fmt.Sprintf("Chillers/Chiller%d/PowerKW", i+1), float64(100*i))
		vars = append(vars, v)
		pts = append(pts, pt(fmt.Sprintf("chiller%d_kw", i+1), v.NodeID().String()))
	}
	cfg := r.source(pts...)
	cfg.Deadband, cfg.PollPeriod = 0.5, 100*time.Millisecond
	s, store := r.run(cfg)
	var monitored, polled int
	count := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		monitored, polled = 0, 0
		for _, it := range s.items {
			if it.monitored {
				monitored++
			}
			if it.polled {
				polled++
			}
		}
		return monitored+polled == len(vars)
	}
	waitFor(t, "every point monitored or polled", count)
	for i, v := range vars {
		v.Set(float64(1000 + i))
	}
	waitFor(t, "every point, monitored or polled, follows its server value", func() bool {
		for i := range vars {
			if !isGood(store, fmt.Sprintf("bms.chiller%d_kw", i+1), float64(1000+i))() {
				return false
			}
		}
		return true
	})
	if monitored != 2 || polled != 2 {
		t.Errorf("%d monitored and %d polled, want 2 and 2 (filters refused, then two items too many)", monitored, polled)
	}
	if !r.log.has("opcua point polled", "BadTooManyMonitoredItems", "source=bms") {
		t.Errorf("no log of the polled points:\n%s", r.log)
	}
}

func TestAServerOfferingOnlyNoneIsRefused(t *testing.T) {
	r := newRig(t, opcuasim.Config{Endpoints: []opcuasim.Endpoint{{Policy: "None", Mode: ua.MessageSecurityModeNone}}})
	v := r.srv.MustAdd("Battery/SoC", 20.0)
	s, store := r.run(r.source(pt("soc", v.NodeID().String())))
	waitFor(t, "refused", func() bool {
		return strings.Contains(s.Stats().LastError, "offers no Basic256Sha256/SignAndEncrypt endpoint; it offers None/None")
	})
	if get(t, store, "bms.soc").Good() || s.Stats().Sessions != 0 {
		t.Error("fell back to an unprotected session")
	}
}

// A value that does not change is reported once: with source timestamps
// it keeps its old time (so it will go stale) even though the checks read
// it; with server timestamps every check confirms it at the server's time.
func TestConstantValueAgesUnlessTheServerConfirmsIt(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	v := r.srv.MustAdd("Generator/AvailableKW", 6000.0)
	p := PointConfig{Name: "gen_kw", Node: v.NodeID().String(), Meta: point.Meta{StaleAfter: 600 * time.Millisecond}}
	bySource := r.source(p)
	byServer := r.source(p)
	byServer.Name, byServer.Timestamps = "bms2", TimestampsServer
	s1, store1 := r.run(bySource)
	s2, store2 := r.run(byServer)
	waitFor(t, "first values", func() bool { return isGood(store1, "bms.gen_kw", 6000)() && isGood(store2, "bms2.gen_kw", 6000)() })
	first1, first2 := get(t, store1, "bms.gen_kw").Source, get(t, store2, "bms2.gen_kw").Source
	waitFor(t, "a few checks of the quiet value", func() bool { return s1.Stats().Reads >= 4 && s2.Stats().Reads >= 4 })
	if got := get(t, store1, "bms.gen_kw").Source; got != first1 {
		t.Errorf("with source timestamps a read of an unchanged value moved its time from %v to %v", time.Unix(0, first1), time.Unix(0, got))
	}
	waitFor(t, "the server's confirmation moves the time on", func() bool { return get(t, store2, "bms2.gen_kw").Source > first2 })
	if st := s1.Stats(); st.Resubscribes != 0 || st.MissedUpdates != 0 {
		t.Errorf("an unchanged value was taken for a silent subscription: %+v", st)
	}
}
