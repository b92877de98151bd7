package miners

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

func amTestMD5(s string) string {
	h := md5.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}

// amDigestDo sends a request answering the server's digest challenge,
// computed here by hand from RFC 7616.
func amDigestDo(t *testing.T, method, url, body, user, pass string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("unauthenticated %s %s: HTTP %d", method, url, resp.StatusCode)
	}
	ch := resp.Header.Get("WWW-Authenticate")
	m := regexp.MustCompile(`^Digest realm="antMiner Configuration", nonce="([0-9a-f]+)", qop="auth"$`).FindStringSubmatch(ch)
	if m == nil {
		t.Fatalf("challenge %q", ch)
	}
	uri := req.URL.RequestURI()
	ha1 := amTestMD5(user + ":antMiner Configuration:" + pass)
	ha2 := amTestMD5(method + ":" + uri)
	resp2 := amTestMD5(ha1 + ":" + m[1] + ":00000001:abcdef:auth:" + ha2)
	req, _ = http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "text/plain;charset=UTF-8")
	req.Header.Set("Authorization", fmt.Sprintf(`Digest username="%s", realm="antMiner Configuration", nonce="%s", uri="%s", response="%s", qop=auth, nc=00000001, cnonce="abcdef"`,
		user, m[1], uri, resp2))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestAntminerWire(t *testing.T) {
	f, err := StartAntminer(AntminerConfig{Miners: 1, WriteDelay: 20 * time.Millisecond,
		Physics: Physics{RatedW: 3250, SleepW: 15, SleepFall: 10 * time.Millisecond, HashrateTHs: 104}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	base := "http://" + f.Addrs()[0] + "/cgi-bin/"

	resp, body := amDigestDo(t, "GET", base+"get_miner_conf.cgi", "", "root", "root")
	if resp.StatusCode != 200 || !strings.Contains(body, `"bitmain-work-mode":"0"`) {
		t.Fatalf("get_miner_conf: %d %s", resp.StatusCode, body)
	}
	if resp, _ := amDigestDo(t, "GET", base+"stats.cgi", "", "root", "wrong"); resp.StatusCode != 401 {
		t.Fatalf("wrong password: HTTP %d", resp.StatusCode)
	}
	// The mode as a string, or under its read name: M000, and ignored.
	for _, b := range []string{`{"miner-mode":"1"}`, `{"bitmain-work-mode":1}`} {
		_, out := amDigestDo(t, "POST", base+"set_miner_conf.cgi", b, "root", "root")
		if out != `{"code":"M000","msg":"OK!","stats":"success"}` {
			t.Fatalf("set %s: %s", b, out)
		}
	}
	if s := f.State(0); s.WorkMode != 0 || s.Ignored != 2 {
		t.Fatalf("ignored writes: %+v", s)
	}
	_, out := amDigestDo(t, "POST", base+"set_miner_conf.cgi", `{"miner-mode":1}`, "root", "root")
	if !strings.Contains(out, "M000") {
		t.Fatal(out)
	}
	if s := f.State(0); s.WorkMode != 1 || s.Pools != 3 {
		t.Fatalf("integer miner-mode: %+v", s)
	}
	_, out = amDigestDo(t, "GET", base+"stats.cgi", "", "root", "root")
	if !strings.Contains(out, `"miner-mode":1`) || !strings.Contains(out, `"rate_unit":"GH/s"`) {
		t.Fatalf("stats: %s", out)
	}
}
