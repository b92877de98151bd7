// Package cgminer speaks the cgminer RPC API on TCP 4028, which nearly every
// ASIC firmware family keeps for telemetry (stock Antminer, Braiins OS,
// LuxOS, Whatsminer v2, Vnish): one JSON request per connection,
// {"command":"summary","parameter":"..."}, answered with one JSON document
// terminated by a NUL byte, after which the miner closes the connection.
//
// Real firmware bends JSON: trailing NULs, a missing comma between two
// objects, a trailing comma, bare nan, duplicate keys, raw newlines in
// messages. The parser repairs what is unambiguous and lists each repair in
// Reply.Repaired; what would need a guess (a truncated reply, garbage, two
// different values under one key) is an error.
//
// The Client is shared by the LuxOS, Braiins and Whatsminer v2 drivers.
// This package's own Driver is the telemetry-only family "cgminer": it
// polls summary, devs, stats and pools and cannot shed (plain cgminer has no
// sleep command; shed such miners with a feeder contactor).
package cgminer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/siteagent/siteagent/drivers/miner"
)

// DefaultPort is the cgminer API port.
const DefaultPort = "4028"

// Client sends cgminer-API requests. The zero value is usable; a Client is
// safe for concurrent use and keeps no connection open.
type Client struct {
	// Timeout bounds one exchange when ctx has no earlier deadline; 5 s
	// unless set.
	Timeout time.Duration
	// MaxReply bounds a reply's size; 1 MiB unless set. stats replies of
	// big machines run to tens of kilobytes.
	MaxReply int
	// Dialer, when set, opens connections (tests, source addresses).
	Dialer *net.Dialer
}

// Request is the JSON a client sends.
type Request struct {
	Command   string `json:"command"`
	Parameter string `json:"parameter,omitempty"`
}

// Call sends command with its parameters (joined by commas, as the API
// wants) to addr ("host" or "host:port"; 4028 when no port is given) and
// parses the reply. The reply's STATUS is not checked: use Reply.Check.
// Errors wrap miner.ErrUnreachable (no connection, timeout, connection
// closed without a reply) or miner.ErrGarbled (a reply that cannot be
// trusted).
func (c *Client) Call(ctx context.Context, addr, command string, params ...string) (*Reply, error) {
	raw, err := c.Exchange(ctx, addr, AppendRequest(nil, command, strings.Join(params, ",")))
	if err != nil {
		return nil, err
	}
	r, err := ParseReply(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", miner.ErrGarbled, command, err)
	}
	return r, nil
}

// CallOK is Call followed by Reply.Check: a reply whose STATUS is not a
// success is an error wrapping miner.ErrRefused.
func (c *Client) CallOK(ctx context.Context, addr, command string, params ...string) (*Reply, error) {
	r, err := c.Call(ctx, addr, command, params...)
	if err != nil {
		return nil, err
	}
	if _, err := r.Check(); err != nil {
		var se *StatusError
		if errors.As(err, &se) {
			return r, fmt.Errorf("%w: %s: %v", miner.ErrRefused, command, err)
		}
		return r, fmt.Errorf("%w: %s: %v", miner.ErrGarbled, command, err)
	}
	return r, nil
}

// AppendRequest appends the JSON request {"command":...,"parameter":...}
// (parameter left out when empty) to b.
func AppendRequest(b []byte, command, parameter string) []byte {
	b = append(b, `{"command":`...)
	b = appendJSONString(b, command)
	if parameter != "" {
		b = append(b, `,"parameter":`...)
		b = appendJSONString(b, parameter)
	}
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s) // escapes quotes, backslashes, control and HTML characters
	return append(b, q...)
}

// WithPort returns addr with port added when it has none.
func WithPort(addr, port string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return net.JoinHostPort(strings.Trim(addr, "[]"), port)
}

// Exchange sends one raw request and returns the raw reply up to its
// terminating NUL (or the connection's end): the framing alone, for
// families that wrap their requests (Whatsminer v2's encrypted commands).
func (c *Client) Exchange(ctx context.Context, addr string, request []byte) ([]byte, error) {
	addr = WithPort(addr, DefaultPort)
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > timeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	d := c.Dialer
	if d == nil {
		d = &defaultDialer
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", miner.ErrUnreachable, netReason(err))
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// Close the connection when ctx is cancelled before its deadline.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(request); err != nil {
		return nil, fmt.Errorf("%w: sending the request: %v", miner.ErrUnreachable, netReason(err))
	}
	max := c.MaxReply
	if max <= 0 {
		max = 1 << 20
	}
	buf := make([]byte, 0, 1024)
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= max {
				return nil, fmt.Errorf("%w: reply longer than %d bytes", miner.ErrGarbled, max)
			}
			nb := make([]byte, len(buf), min(2*cap(buf), max))
			copy(nb, buf)
			buf = nb
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		chunk := buf[len(buf) : len(buf)+n]
		buf = buf[:len(buf)+n]
		if i := bytes.IndexByte(chunk, 0); i >= 0 {
			// The NUL ends the reply; anything after it is left unread.
			// The exchange is complete, so the close may reset the
			// connection: no TIME_WAIT socket is left behind, which at
			// thousands of miners polled every few seconds would pile up
			// to tens of thousands of them.
			abortOnClose(conn)
			return buf[:len(buf)-n+i], nil
		}
		if errors.Is(err, io.EOF) {
			if len(buf) == 0 {
				return nil, fmt.Errorf("%w: connection closed without a reply", miner.ErrUnreachable)
			}
			return buf, nil
		}
		if err != nil {
			if len(buf) > 0 {
				return nil, fmt.Errorf("%w: reply cut off after %d bytes: %v", miner.ErrUnreachable, len(buf), netReason(err))
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w: no reply: %v", miner.ErrUnreachable, ctx.Err())
			}
			return nil, fmt.Errorf("%w: %v", miner.ErrUnreachable, netReason(err))
		}
	}
}

func abortOnClose(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
}

// defaultDialer turns TCP keep-alive off: a connection carries one
// request, and at thousands of connections a second the keep-alive
// socket options are a measurable share of the cost.
var defaultDialer = net.Dialer{KeepAlive: -1}

// netReason shortens a net error to what a technician needs.
func netReason(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused (API disabled, wrong port or miner booting)"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by the miner"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to the miner"
	}
	return err.Error()
}
