// Package mqtt is the agent's link to the site's MQTT broker: one broker
// connection per site, fed through a bounded in-memory queue so that
// publishing never blocks the control loop.
//
// Connections. The client keeps one paho connection at a time and makes a
// new one when it is lost (backing off from 0.5 s to 5 s). paho's own
// auto-reconnect is off on purpose: with it, paho reports QoS 0 publishes
// made while reconnecting as done without sending them, and its resend of
// stored QoS 1 messages races with new publishes on the fresh connection.
// Without it, every unfinished publish fails when its connection dies, and
// the message is still in our queue to be sent again.
//
// Delivery. Publish puts a message on the queue and returns at once. One
// sender goroutine hands messages to paho, one at a time and only on an
// open connection, and removes a message from the queue only when paho
// reports it done (QoS 0: written to the socket; QoS 1/2: acknowledged by
// the broker). So the queue is at-least-once; what can still be lost:
//   - QoS 0 messages written to the socket just before the connection dies
//     (TCP accepted them, the broker never read them);
//   - whatever is still queued when Stop's grace period ends, or when the
//     process dies: the queue lives in memory. Stop counts it as dropped.
//
// A QoS 1 message whose acknowledgement was lost with the connection is
// sent again on the next one: subscribers may see it twice.
//
// Status. The status topic is retained. The Last Will is a retained
// {"state":"offline","site":...,"ts":...,"reason":"connection lost"}; its
// ts is when the connection carrying it was opened (the will is fixed at
// connect time), not when the connection died. On every connection the last
// status given to SetStatus (or a plain online status) is published before
// any queued message, so a broker restart or a fired will never leaves a
// live site shown as offline.
package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/siteagent/siteagent/agent/config"
)

// Message is one publish. Payload is not copied: do not change it after
// handing it to Publish.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// Stats are the client's counters since New.
type Stats struct {
	Queued     int    // waiting in the queue (including the one being sent)
	Sent       uint64 // completed by paho
	Dropped    uint64 // refused by Publish (full, stopped, invalid) or discarded at Stop
	Connected  bool
	Reconnects uint64 // connections after the first
}

const (
	statusQoS        = 1
	connectTimeout   = 5 * time.Second
	writeTimeout     = 5 * time.Second
	retryMin         = 500 * time.Millisecond // pause after a failed connect, doubling...
	retryMax         = 5 * time.Second        // ...up to this
	publishRetry     = 200 * time.Millisecond // pause after a failed publish on a live connection
	stopGrace        = time.Second            // Stop's time to flush the queue, and to send the offline status
	subscribeTimeout = 10 * time.Second
)

// Client owns the broker connection of one site.
type Client struct {
	cfg      Config
	site     string
	topics   Topics
	log      *slog.Logger
	password string

	mu        sync.Mutex
	q         ring
	started   bool
	stopped   bool
	conn      paho.Client // the open connection; nil while there is none
	connID    uint64      // counts connections; names the current one
	status    []byte      // last SetStatus payload; nil: a plain online status
	statusGen uint64      // bumped by SetStatus
	// The status is (re)sent while its generation or the connection differs
	// from the last one confirmed.
	sentGen, sentConn uint64
	subs              map[string]subscription

	wake    chan struct{} // queue or status has work (capacity 1)
	up      chan struct{} // a connection opened (capacity 1)
	drain   chan struct{} // closed by Stop: flush the queue, then exit
	halt    chan struct{} // closed by Stop after the grace period: exit now
	sendEnd chan struct{} // closed when the sender exits
	connEnd chan struct{} // closed when the connection manager exits

	stopOnce sync.Once
	sent     atomic.Uint64
	dropped  atomic.Uint64
}

type subscription struct {
	qos     byte
	handler func(topic string, payload []byte)
}

// New builds a client for site siteID; it does not connect (see Start). The
// password, if any, is read here.
func New(cfg Config, siteID string, log *slog.Logger) (*Client, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := checkSiteID(siteID); err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	p := config.NewProblems("[mqtt]", nil)
	cfg.Validate(p, "mqtt")
	if err := p.Err(); err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	if cfg.Broker == "" {
		return nil, errors.New("mqtt: no broker; set broker = \"tcp://host:1883\" in [mqtt]")
	}
	cfg = cfg.WithDefaults(siteID)
	c := &Client{
		cfg:     cfg,
		site:    siteID,
		topics:  Topics{Root: cfg.TopicRoot, Site: siteID},
		log:     log.With("broker", cfg.Broker),
		subs:    map[string]subscription{},
		wake:    make(chan struct{}, 1),
		up:      make(chan struct{}, 1),
		drain:   make(chan struct{}),
		halt:    make(chan struct{}),
		sendEnd: make(chan struct{}),
		connEnd: make(chan struct{}),
	}
	c.q.limit = cfg.QueueSize
	if cfg.PasswordFile != "" {
		pw, err := readPassword(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt: password_file: %w", err)
		}
		c.password = pw
	}
	return c, nil
}

// Topics returns the site's topic names.
func (c *Client) Topics() Topics { return c.topics }

// Start connects in the background and starts the sender; a broker that is
// down is retried until Stop. When ctx ends the client stops as by Stop.
func (c *Client) Start(ctx context.Context) error {
	c.mu.Lock()
	if c.started || c.stopped {
		c.mu.Unlock()
		return errors.New("mqtt: Start called twice or after Stop")
	}
	c.started = true
	c.mu.Unlock()
	go c.connect()
	go c.send()
	go func() {
		select {
		case <-ctx.Done():
			c.Stop()
		case <-c.drain:
		}
	}()
	return nil
}

// Stop stops taking messages, gives the sender a short grace to flush the
// queue, publishes the retained offline status and disconnects. What is
// still queued is discarded and counted as dropped. Safe to call twice.
func (c *Client) Stop() {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		c.stopped = true
		started := c.started
		c.mu.Unlock()
		close(c.drain)
		if started {
			grace := time.NewTimer(stopGrace)
			select {
			case <-c.sendEnd:
			case <-grace.C:
			}
			grace.Stop()
			close(c.halt)
			<-c.sendEnd
			<-c.connEnd
			if pc := c.current(); pc != nil {
				t := pc.Publish(c.topics.Status(), statusQoS, true, c.statusJSON("offline", "stopped"))
				if !t.WaitTimeout(stopGrace) || t.Error() != nil {
					c.log.Warn("mqtt offline status not confirmed", "err", t.Error())
				}
				pc.Disconnect(250)
			}
		}
		c.mu.Lock()
		left := c.q.n
		c.q.clear()
		c.conn = nil
		c.mu.Unlock()
		c.dropped.Add(uint64(left))
		if left > 0 {
			c.log.Warn("mqtt stopped with messages unsent", "dropped", left)
		}
	})
}

// Publish queues m and returns at once: false (and a counted drop) when the
// queue is full, the client is stopped, or m is invalid.
func (c *Client) Publish(m Message) bool {
	if err := checkTopic(m.Topic); err != nil || m.QoS > 2 {
		c.dropped.Add(1)
		c.log.Error("mqtt publish refused", "topic", m.Topic, "qos", m.QoS)
		return false
	}
	c.mu.Lock()
	ok := !c.stopped && c.q.push(m)
	c.mu.Unlock()
	if !ok {
		c.dropped.Add(1)
		return false
	}
	poke(c.wake)
	return true
}

// SetStatus sets the retained online status, published now (or as soon as
// connected) and again on every new connection. It does not block.
func (c *Client) SetStatus(payload []byte) {
	c.mu.Lock()
	c.status = append([]byte(nil), payload...)
	c.statusGen++
	c.mu.Unlock()
	poke(c.wake)
}

// Subscribe registers handler for a topic filter, now if connected and again
// on every new connection (sessions are clean: the broker forgets them).
// Handlers run in arrival order on paho's receive goroutine, so commands
// never overtake each other; they must return quickly.
func (c *Client) Subscribe(filter string, qos byte, handler func(topic string, payload []byte)) error {
	if filter == "" || qos > 2 || handler == nil || strings.ContainsRune(filter, 0) {
		return fmt.Errorf("mqtt: subscribe %q: needs a topic filter, qos 0..2 and a handler", filter)
	}
	s := subscription{qos: qos, handler: handler}
	c.mu.Lock()
	c.subs[filter] = s
	pc := c.conn
	c.mu.Unlock()
	if pc != nil {
		go c.subscribe(pc, filter, s)
	}
	return nil
}

// Stats returns the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{Queued: c.q.n, Sent: c.sent.Load(), Dropped: c.dropped.Load()}
	s.Connected = c.conn != nil && c.conn.IsConnectionOpen()
	if c.connID > 0 {
		s.Reconnects = c.connID - 1
	}
	return s
}

func (c *Client) current() paho.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

// connect keeps one connection open until Stop, opening a new paho client
// each time (so that each carries a fresh will).
func (c *Client) connect() {
	defer close(c.connEnd)
	pause := retryMin
	warned := false
	for {
		lost := make(chan struct{})
		pc := paho.NewClient(c.options(lost))
		t := pc.Connect()
		select {
		case <-t.Done():
		case <-c.drain:
			pc.Disconnect(0)
			return
		}
		if err := t.Error(); err != nil {
			if !warned {
				c.log.Warn("mqtt broker unreachable; retrying", "err", err)
				warned = true
			} else {
				c.log.Debug("mqtt broker unreachable", "err", err)
			}
			select {
			case <-time.After(pause):
			case <-c.drain:
				return
			}
			pause = min(2*pause, retryMax)
			continue
		}
		pause, warned = retryMin, false
		c.mu.Lock()
		c.conn = pc
		c.connID++
		id := c.connID
		subs := make(map[string]subscription, len(c.subs))
		for f, s := range c.subs {
			subs[f] = s
		}
		c.mu.Unlock()
		c.log.Info("mqtt connected", "connection", id)
		poke(c.up)
		for f, s := range subs {
			c.subscribe(pc, f, s)
		}
		select {
		case <-lost:
			c.mu.Lock()
			c.conn = nil
			c.mu.Unlock()
		case <-c.drain: // Stop sends the offline status on this connection
			return
		}
	}
}

func (c *Client) options(lost chan struct{}) *paho.ClientOptions {
	var once sync.Once
	o := paho.NewClientOptions().
		AddBroker(c.cfg.Broker).
		SetClientID(c.cfg.ClientID).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetOrderMatters(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(connectTimeout).
		SetWriteTimeout(writeTimeout).
		SetBinaryWill(c.topics.Status(), c.statusJSON("offline", "connection lost"), statusQoS, true).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			c.log.Warn("mqtt connection lost; reconnecting", "err", err)
			once.Do(func() { close(lost) })
		})
	if c.cfg.Username != "" {
		o.SetUsername(c.cfg.Username)
	}
	if c.password != "" {
		o.SetPassword(c.password)
	}
	return o
}

func (c *Client) subscribe(pc paho.Client, filter string, s subscription) {
	h := func(_ paho.Client, m paho.Message) {
		defer func() {
			if r := recover(); r != nil {
				c.log.Error("mqtt message handler panicked", "topic", m.Topic(), "panic", r)
			}
		}()
		s.handler(m.Topic(), m.Payload())
	}
	t := pc.Subscribe(filter, s.qos, h)
	if !t.WaitTimeout(subscribeTimeout) {
		c.log.Warn("mqtt subscribe not confirmed", "filter", filter)
	} else if err := t.Error(); err != nil {
		c.log.Warn("mqtt subscribe failed; retried on the next connection", "filter", filter, "err", err)
	}
}

// send is the only goroutine that hands messages to paho.
func (c *Client) send() {
	defer close(c.sendEnd)
	for {
		pc, m, mark, ok := c.next()
		if pc == nil {
			select {
			case <-c.up:
			case <-c.drain: // stopping while down: nothing can be flushed
				return
			}
			continue
		}
		if !ok {
			select {
			case <-c.wake:
			case <-c.up:
			case <-c.drain:
				return
			}
			continue
		}
		t := pc.Publish(m.Topic, m.QoS, m.Retain, m.Payload)
		select {
		case <-t.Done():
		case <-c.halt:
			return
		}
		if err := t.Error(); err != nil {
			// The connection is dying (its loss fails every unfinished
			// publish): wait for the manager to notice, then retry.
			c.log.Debug("mqtt publish failed; will retry", "topic", m.Topic, "err", err)
			select {
			case <-time.After(publishRetry):
			case <-c.halt:
				return
			}
			continue
		}
		c.complete(mark)
	}
}

// next returns the open connection (nil if none) and what to send on it:
// the status first when it changed or was not yet sent on this connection,
// then the queue's head.
func (c *Client) next() (paho.Client, Message, statusMark, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil, Message{}, statusMark{}, false
	}
	if c.statusGen != c.sentGen || c.connID != c.sentConn {
		p := c.status
		if p == nil {
			p = c.statusJSON("online", "")
		}
		m := Message{Topic: c.topics.Status(), Payload: p, QoS: statusQoS, Retain: true}
		return c.conn, m, statusMark{true, c.statusGen, c.connID}, true
	}
	if c.q.n == 0 {
		return c.conn, Message{}, statusMark{}, false
	}
	return c.conn, c.q.head(), statusMark{}, true
}

// statusMark tells the status (which generation, on which connection) from
// a queued message.
type statusMark struct {
	status    bool
	gen, conn uint64
}

// complete removes what was just sent.
func (c *Client) complete(s statusMark) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.status {
		c.sentGen, c.sentConn = s.gen, s.conn
		return
	}
	c.q.pop()
	c.sent.Add(1)
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (c *Client) statusJSON(state, reason string) []byte {
	b, _ := json.Marshal(struct {
		State  string `json:"state"`
		Site   string `json:"site"`
		TS     string `json:"ts"`
		Reason string `json:"reason,omitempty"`
	}{state, c.site, time.Now().UTC().Format(time.RFC3339), reason})
	return b
}
