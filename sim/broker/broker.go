// Package broker runs an embedded MQTT broker (mochi-mqtt) on loopback for
// the demo and for tests: anonymous, no persistence, one TCP listener.
package broker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Broker is a running embedded broker.
type Broker struct {
	srv *mochi.Server
	tcp *listeners.TCP
}

// Start listens on addr ("127.0.0.1:0" picks a free port) and serves MQTT
// 3.1.1 and 5 to any client, without authentication.
func Start(addr string) (*Broker, error) {
	// mochi logs every connection at info; only its warnings are worth
	// seeing, less the one it gives for every client that hangs up.
	log := slog.New(hideHangups{slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})})
	srv := mochi.New(&mochi.Options{Logger: log})
	if err := srv.AddHook(new(openDoor), nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	tcp := listeners.NewTCP(listeners.Config{ID: "tcp", Address: addr})
	if err := srv.AddListener(tcp); err != nil {
		return nil, fmt.Errorf("broker: listen on %s: %w", addr, err)
	}
	if err := srv.Serve(); err != nil {
		_ = srv.Close()
		return nil, fmt.Errorf("broker: %w", err)
	}
	return &Broker{srv: srv, tcp: tcp}, nil
}

// Addr is the host:port actually bound.
func (b *Broker) Addr() string { return b.tcp.Address() }

// URL is the address as a broker URL for the mqtt driver: tcp://host:port.
func (b *Broker) URL() string { return "tcp://" + b.Addr() }

// closeTimeout bounds Close: mochi v2.7.9's Close can deadlock while a
// client is mid-disconnect, and a test or demo must never hang on it.
const closeTimeout = 5 * time.Second

// Close disconnects every client and stops listening. If mochi does not
// finish within closeTimeout, the listener is closed anyway (the port is
// free again) and an error says so.
func (b *Broker) Close() error {
	done := make(chan error, 1)
	go func() { done <- b.srv.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(closeTimeout):
		b.tcp.Close(func(string) {})
		return errors.New("broker: close timed out; the listener was closed, some client goroutines may linger")
	}
}

// openDoor lets every client connect and use every topic. (mochi's own
// allow-all hook lives in a package that pulls in a YAML library the module
// does not otherwise need.)
type openDoor struct{ mochi.HookBase }

func (*openDoor) ID() string { return "open-door" }

func (*openDoor) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (*openDoor) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (*openDoor) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// hideHangups drops the records mochi writes when a client's connection
// ends (io.EOF, or a socket closed under it): normal life, not a warning.
type hideHangups struct{ slog.Handler }

func (h hideHangups) Handle(ctx context.Context, r slog.Record) error {
	hangup := false
	r.Attrs(func(a slog.Attr) bool {
		if err, ok := a.Value.Any().(error); ok && (errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)) {
			hangup = true
		}
		return !hangup
	})
	if hangup {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h hideHangups) WithAttrs(as []slog.Attr) slog.Handler {
	return hideHangups{h.Handler.WithAttrs(as)}
}

func (h hideHangups) WithGroup(name string) slog.Handler {
	return hideHangups{h.Handler.WithGroup(name)}
}
