package miners

import (
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

func TestVnishWire(t *testing.T) {
	f, err := StartVnish(VnishConfig{Miners: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	base := "http://" + f.Addrs()[0] + "/api/v1/"
	post := func(path, body, tok string) (int, string) {
		req, _ := http.NewRequest("POST", base+path, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if code, body := post("unlock", `{"pw":"nope"}`, ""); code != 403 || !strings.Contains(body, "err") {
		t.Fatalf("wrong password: %d %s", code, body)
	}
	if code, _ := post("mining/stop", "", ""); code != 401 {
		t.Fatalf("stop without a token: %d", code)
	}
	code, body := post("unlock", `{"pw":"admin"}`, "")
	tok := regexp.MustCompile(`"token":"([0-9a-f]{32})"`).FindStringSubmatch(body)
	if code != 200 || tok == nil {
		t.Fatalf("unlock: %d %s", code, body)
	}
	if code, body := post("mining/stop", "", tok[1]); code != 200 || body != "" {
		t.Fatalf("stop: %d %q", code, body)
	}
	if code, body := post("mining/pause", "", tok[1]); code != 500 || !strings.Contains(body, "failed-to-activate-pause-mode") {
		t.Fatalf("pause when stopped: %d %s", code, body)
	}
	if s := f.State(0); s.LastCommand != "stop" || s.Mode == Mining {
		t.Fatalf("after stop: %+v", s)
	}
}
