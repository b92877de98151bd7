package whatsminer

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/siteagent/siteagent/drivers/miner"
	"github.com/siteagent/siteagent/drivers/miner/whatsminer/wmcrypto"
)

// v3Conn is one API v3 connection; btminer keeps it open between requests,
// so a poll's two reads and a write's salt fetch share it.
type v3Conn struct {
	c    net.Conn
	stop func() bool
}

func (d *Driver) dialV3(ctx context.Context, addr string) (*v3Conn, error) {
	c, err := d.o.Dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, dialErr(addr, err)
	}
	c.SetDeadline(d.deadline(ctx))
	return &v3Conn{c: c, stop: watch(ctx, c)}, nil
}

func (c *v3Conn) close() {
	c.stop()
	c.c.Close()
}

// v3Request is a read (cmd, param) or a write (all fields).
type v3Request struct {
	Cmd     string `json:"cmd"`
	Param   any    `json:"param,omitempty"`
	TS      int64  `json:"ts,omitempty"`
	Account string `json:"account,omitempty"`
	Token   string `json:"token,omitempty"`
}

// maxHeartbeats bounds the empty frames skipped while waiting for a reply.
const maxHeartbeats = 16

// call sends one framed request and reads its framed reply.
func (c *v3Conn) call(req v3Request) (v3Reply, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return v3Reply{}, err
	}
	frame := make([]byte, 4+len(b))
	binary.LittleEndian.PutUint32(frame, uint32(len(b)))
	copy(frame[4:], b)
	if _, err := c.c.Write(frame); err != nil {
		return v3Reply{}, unreachable("send "+req.Cmd, err)
	}
	body, err := readV3Frame(c.c)
	if err != nil {
		return v3Reply{}, fmt.Errorf("%s: %w", req.Cmd, err)
	}
	r, err := parseV3Reply(body)
	if err != nil {
		return v3Reply{}, garbled(req.Cmd, err)
	}
	return r, nil
}

// readV3Frame reads one length-prefixed message, skipping the zero-length
// heartbeats btminer may send on an open connection.
func readV3Frame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	for i := 0; ; i++ {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, unreachable("reading reply length", err)
		}
		n := binary.LittleEndian.Uint32(hdr[:])
		if n == 0 {
			if i >= maxHeartbeats {
				return nil, garbled("reply", errors.New("only heartbeats"))
			}
			continue
		}
		if n > maxReply {
			return nil, garbled("reply", fmt.Errorf("length %d exceeds %d bytes: not an API v3 frame", n, maxReply))
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return nil, unreachable(fmt.Sprintf("reading %d-byte reply", n), err)
		}
		return body, nil
	}
}

func (d *Driver) v3Salt(c *v3Conn) (string, error) {
	r, err := c.call(v3Request{Cmd: "get.device.info", Param: "salt"})
	if err != nil {
		return "", err
	}
	if r.Code != 0 {
		return "", refused("get.device.info salt: code %d: %s", r.Code, msgText(r.Msg))
	}
	s, err := parseV3Salt(r.Msg)
	if err != nil {
		return "", garbled("get.device.info", err)
	}
	return s, nil
}

// v3Set sends a write with a fresh timestamp and token. A token refused with
// a cached salt is retried once with a new salt: the miner changes its salt
// when btminer restarts, which is how a v3 token "expires".
func (d *Driver) v3Set(c *v3Conn, hs *hostState, cmd string, param any) error {
	if d.o.Password == "" {
		return fmt.Errorf("%w: no password configured for account %q", ErrAuth, d.o.Account)
	}
	hs.mu.Lock()
	salt := hs.salt
	hs.mu.Unlock()
	cached := salt != ""
	for {
		if salt == "" {
			var err error
			if salt, err = d.v3Salt(c); err != nil {
				return err
			}
			hs.mu.Lock()
			hs.salt = salt
			hs.mu.Unlock()
		}
		ts := d.o.Now().Unix()
		r, err := c.call(v3Request{Cmd: cmd, Param: param, TS: ts, Account: d.o.Account,
			Token: wmcrypto.V3Token(cmd, d.o.Password, salt, ts)})
		if err != nil {
			return err
		}
		switch {
		case r.Code == 0:
			return nil
		case r.Code == -4:
			return fmt.Errorf("%w: %s: no permission (code -4: %s): enable API write access in WhatsMinerTool and check that account %q may write",
				ErrAuth, cmd, msgText(r.Msg), d.o.Account)
		case r.Code == -1 && cached:
			// Perhaps a stale salt: fetch it again, once.
			cached, salt = false, ""
			hs.mu.Lock()
			hs.salt = ""
			hs.mu.Unlock()
		case r.Code == -1:
			return fmt.Errorf("%w: %s: token refused with a fresh salt (code -1: %s): check the password of account %q",
				ErrAuth, cmd, msgText(r.Msg), d.o.Account)
		default:
			return refused("%s: code %d: %s", cmd, r.Code, msgText(r.Msg))
		}
	}
}

func (d *Driver) v3Poll(c *v3Conn) (miner.Telemetry, error) {
	r, err := c.call(v3Request{Cmd: "get.device.info", Param: "miner"})
	if err != nil {
		return miner.Telemetry{}, err
	}
	if r.Code != 0 {
		return miner.Telemetry{}, refused("get.device.info: code %d: %s", r.Code, msgText(r.Msg))
	}
	working, err := parseV3Working(r.Msg)
	if err != nil {
		return miner.Telemetry{}, garbled("get.device.info", err)
	}
	r, err = c.call(v3Request{Cmd: "get.miner.status", Param: "summary"})
	if err != nil {
		return miner.Telemetry{}, err
	}
	if r.Code != 0 {
		return miner.Telemetry{}, refused("get.miner.status: code %d: %s", r.Code, msgText(r.Msg))
	}
	s, err := parseV3Summary(r.Msg)
	if err != nil {
		return miner.Telemetry{}, garbled("get.miner.status", err)
	}
	t := miner.Telemetry{
		At:           d.o.Now(),
		HashrateTHs:  s.HashTHs,
		PowerW:       s.PowerW,
		PowerKnown:   s.HasPower,
		MaxTempC:     s.MaxTempC,
		PowerTargetW: s.PowerLimitW,
	}
	if working {
		t.Mining = s.HashTHs > 0 // working but no hashrate yet: starting up
	} else {
		t.Sleeping = true
	}
	return t, nil
}
