package mqtttest

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// Relay forwards TCP from its own loopback port to a broker. Cut closes
// every relayed connection abruptly and stops listening: the broker
// becomes unreachable through the relay and sees the sockets die without
// an MQTT DISCONNECT (so wills fire). Mend listens again on the same port.
type Relay struct {
	t      testing.TB
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

// NewRelay relays to brokerURL (scheme://host:port), cut at the end of the test.
func NewRelay(t testing.TB, brokerURL string) *Relay {
	t.Helper()
	i := strings.Index(brokerURL, "://")
	r := &Relay{t: t, target: brokerURL[i+3:]}
	r.listen("127.0.0.1:0")
	t.Cleanup(r.Cut)
	return r
}

// URL is the relay's address with the scheme of the broker's (tcp://).
func (r *Relay) URL() string { return "tcp://" + r.addr }

// Addr is the relay's host:port.
func (r *Relay) Addr() string { return r.addr }

func (r *Relay) listen(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		r.t.Fatal(err)
	}
	r.mu.Lock()
	r.ln, r.addr = ln, ln.Addr().String()
	r.mu.Unlock()
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", r.target)
			if err != nil {
				in.Close()
				continue
			}
			r.mu.Lock()
			if r.ln != ln { // cut while this one was being set up
				r.mu.Unlock()
				in.Close()
				out.Close()
				return
			}
			r.conns = append(r.conns, in, out)
			r.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
}

// Cut drops every relayed connection and stops listening.
func (r *Relay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}

// Mend listens again on the same port.
func (r *Relay) Mend() { r.listen(r.addr) }
