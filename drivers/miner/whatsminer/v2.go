package whatsminer

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/whatsminer/wmcrypto"
)

// btminer's API v2 result codes (WhatsminerAPI V2.0.x, "Message Code").
const (
	v2InvalidCommand = 14
	v2InvalidJSON    = 23 // also what a command encrypted with the wrong key decrypts to
	v2Denied         = 45
	v2TokenError     = 135
	v2TokenOverMax   = 136
	v2Base64Error    = 137
)

// v2Session is a token: the AES key and the sign that go in each command.
type v2Session struct {
	aesKey []byte
	sign   string
	at     time.Time
}

// v2Exchange sends one request on its own connection and reads the reply
// until btminer closes the connection.
func (d *Driver) v2Exchange(ctx context.Context, addr string, req []byte) ([]byte, error) {
	c, err := d.o.Dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, dialErr(addr, err)
	}
	defer c.Close()
	defer watch(ctx, c)()
	c.SetDeadline(d.deadline(ctx))
	if _, err := c.Write(req); err != nil {
		return nil, unreachable("send", err)
	}
	b, err := io.ReadAll(io.LimitReader(c, maxReply+1))
	if err != nil {
		return nil, unreachable("reading reply", err)
	}
	if len(b) == 0 {
		return nil, unreachable("reading reply", io.ErrUnexpectedEOF)
	}
	if len(b) > maxReply {
		return nil, garbled("reply", fmt.Errorf("exceeds %d bytes", maxReply))
	}
	return b, nil
}

func (d *Driver) v2Read(ctx context.Context, addr, cmd string) ([]byte, error) {
	req, _ := json.Marshal(map[string]string{"cmd": cmd})
	b, err := d.v2Exchange(ctx, addr, req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	return b, nil
}

// v2Token returns the host's token, logging in when there is none, it is
// older than TokenTTL, or force is set. fresh reports a new login.
func (d *Driver) v2Token(ctx context.Context, hs *hostState, addr string, force bool) (s *v2Session, fresh bool, err error) {
	hs.mu.Lock()
	s = hs.sess
	hs.mu.Unlock()
	if !force && s != nil && d.o.Now().Sub(s.at) < d.o.TokenTTL {
		return s, false, nil
	}
	b, err := d.v2Read(ctx, addr, "get_token")
	if err != nil {
		return nil, false, err
	}
	tok, err := parseV2Token(b)
	if err != nil {
		return nil, false, err
	}
	hs.mu.Lock()
	key := hs.keyHash
	if hs.keySalt != tok.Salt {
		key = ""
	}
	hs.mu.Unlock()
	if key == "" {
		// The salt is that of the miner's stored password hash, so the key
		// (one MD5-crypt, ~0.2 ms) is computed once per miner.
		key = wmcrypto.V2Key(d.o.Password, tok.Salt)
	}
	s = &v2Session{aesKey: wmcrypto.V2AESKey(key), sign: wmcrypto.V2Sign(key, tok.Time, tok.NewSalt), at: d.o.Now()}
	hs.mu.Lock()
	hs.sess, hs.keySalt, hs.keyHash = s, tok.Salt, key
	hs.mu.Unlock()
	return s, true, nil
}

// v2Command sends a privileged command. A token refused while cached is
// replaced once (it expired, or btminer restarted and forgot it); refused
// when fresh, it means the password is wrong.
func (d *Driver) v2Command(ctx context.Context, hs *hostState, addr, cmd string, params map[string]string) error {
	if d.o.Password == "" {
		return fmt.Errorf("%w: no admin password configured", ErrAuth)
	}
	force := false
	for {
		s, fresh, err := d.v2Token(ctx, hs, addr, force)
		if err != nil {
			return err
		}
		plain := map[string]string{"cmd": cmd, "token": s.sign}
		for k, v := range params {
			plain[k] = v
		}
		pb, _ := json.Marshal(plain)
		enc, err := wmcrypto.EncryptECB(s.aesKey, pb)
		if err != nil {
			return err
		}
		req, _ := json.Marshal(map[string]any{"enc": 1, "data": enc})
		b, err := d.v2Exchange(ctx, addr, req)
		if err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		r, err := parseV2Command(b, func(s64 string) ([]byte, error) { return wmcrypto.DecryptECB(s.aesKey, s64) })
		if err != nil {
			return garbled(cmd, err)
		}
		if r.OK {
			return nil
		}
		switch r.Code {
		case v2TokenError, v2InvalidJSON, v2Base64Error:
			if !fresh {
				force = true
				continue
			}
			return fmt.Errorf("%w: %s refused with a fresh token (code %d: %s): check the admin password",
				ErrAuth, cmd, r.Code, msgText(r.Msg))
		case v2Denied:
			return fmt.Errorf("%w: %s: permission denied (code 45): enable the API's write access in WhatsMinerTool",
				ErrAuth, cmd)
		case v2TokenOverMax:
			return refused("%s: token over max times (code 136): the miner has given this address its 32 tokens; they expire after 30 min", cmd)
		default:
			return refused("%s: code %d: %s", cmd, r.Code, msgText(r.Msg))
		}
	}
}

func (d *Driver) v2Poll(ctx context.Context, addr string) (miner.Telemetry, error) {
	b, err := d.v2Read(ctx, addr, "summary")
	if err != nil {
		return miner.Telemetry{}, err
	}
	s, err := parseV2Summary(b)
	if err != nil {
		return miner.Telemetry{}, err
	}
	b, err = d.v2Read(ctx, addr, "status")
	if err != nil {
		return miner.Telemetry{}, err
	}
	off, err := parseV2Status(b)
	if err != nil {
		return miner.Telemetry{}, err
	}
	t := miner.Telemetry{
		At:           d.o.Now(),
		HashrateTHs:  s.HashTHs,
		PowerW:       s.PowerW,
		PowerKnown:   s.HasPower,
		MaxTempC:     s.MaxTempC,
		PowerTargetW: s.PowerLimitW,
	}
	if off {
		t.Sleeping = true
	} else {
		t.Mining = s.HashTHs > 0
	}
	return t, nil
}
