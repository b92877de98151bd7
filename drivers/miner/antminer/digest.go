package antminer

import (
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// HTTP digest authentication (RFC 7616 with MD5, as lighttpd on Bitmain's
// control boards asks for it: realm "antMiner Configuration", qop "auth").
// net/http has no client for it, and the scheme is small.

// challenge is a parsed WWW-Authenticate: Digest header.
type challenge struct {
	realm, nonce, opaque, qop, algorithm string
	stale                                bool
}

// parseChallenge reads `Digest realm="…", nonce="…", qop="auth", …`.
func parseChallenge(h string) (challenge, error) {
	h = strings.TrimSpace(h)
	if len(h) < 7 || !strings.EqualFold(h[:7], "digest ") {
		return challenge{}, fmt.Errorf("not a digest challenge: %.60q", h)
	}
	params, err := authParams(h[7:])
	if err != nil {
		return challenge{}, err
	}
	c := challenge{realm: params["realm"], nonce: params["nonce"], opaque: params["opaque"],
		algorithm: params["algorithm"], stale: strings.EqualFold(params["stale"], "true")}
	if c.nonce == "" {
		return challenge{}, errors.New("digest challenge has no nonce")
	}
	if c.algorithm != "" && !strings.EqualFold(c.algorithm, "MD5") {
		return challenge{}, fmt.Errorf("digest algorithm %q is not supported (only MD5)", c.algorithm)
	}
	if q := params["qop"]; q != "" {
		for _, o := range strings.Split(q, ",") {
			if strings.TrimSpace(o) == "auth" {
				c.qop = "auth"
			}
		}
		if c.qop == "" {
			return challenge{}, fmt.Errorf("digest qop %q offers no \"auth\"", q)
		}
	}
	return c, nil
}

// authParams splits `k="v", k2=v2` honouring quotes and backslash escapes.
func authParams(s string) (map[string]string, error) {
	out := map[string]string{}
	for {
		s = strings.TrimLeft(s, " \t,")
		if s == "" {
			return out, nil
		}
		eq := strings.IndexByte(s, '=')
		if eq <= 0 {
			return nil, fmt.Errorf("malformed digest parameter near %.30q", s)
		}
		key := strings.ToLower(strings.TrimSpace(s[:eq]))
		s = strings.TrimLeft(s[eq+1:], " \t")
		var val string
		if strings.HasPrefix(s, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated quote in digest parameter %q", key)
			}
			val, s = b.String(), s[i+1:]
		} else {
			end := strings.IndexAny(s, ", \t")
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
		}
		out[key] = val
	}
}

func md5hex(s string) string {
	h := md5.Sum([]byte(s))
	return hex.EncodeToString(h[:])
}

// authorization is the Authorization header answering c for one request.
func (c challenge) authorization(user, password, method, uri string, nc uint32) string {
	ha1 := md5hex(user + ":" + c.realm + ":" + password)
	ha2 := md5hex(method + ":" + uri)
	var b strings.Builder
	fmt.Fprintf(&b, `Digest username="%s", realm="%s", nonce="%s", uri="%s", algorithm=MD5`,
		quote(user), quote(c.realm), quote(c.nonce), quote(uri))
	if c.qop == "auth" {
		var cn [8]byte
		rand.Read(cn[:])
		cnonce := hex.EncodeToString(cn[:])
		ncs := fmt.Sprintf("%08x", nc)
		resp := md5hex(ha1 + ":" + c.nonce + ":" + ncs + ":" + cnonce + ":auth:" + ha2)
		fmt.Fprintf(&b, `, response="%s", qop=auth, nc=%s, cnonce="%s"`, resp, ncs, cnonce)
	} else {
		fmt.Fprintf(&b, `, response="%s"`, md5hex(ha1+":"+c.nonce+":"+ha2))
	}
	if c.opaque != "" {
		fmt.Fprintf(&b, `, opaque="%s"`, quote(c.opaque))
	}
	return b.String()
}

func quote(s string) string { return strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) }
