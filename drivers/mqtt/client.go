// Package mqtt is the agent's link to the site's MQTT broker: one broker
// connection, fed through a bounded store-and-forward queue (see Queue) so
// that publishing never blocks the control loop and nothing is lost while
// the broker is away.
//
// Connections. The client keeps one paho connection at a time and makes a
// new one when it is lost (backing off from 0.5 s to 5 s). paho's own
// auto-reconnect is off on purpose: with it, paho reports QoS 0 publishes
// made while reconnecting as done without sending them, and its resend of
// stored QoS 1 messages races with new publishes on the fresh connection.
// Without it, every unfinished publish fails when its connection dies, and
// the message is still in our queue to be sent again.
//
// Sessions. A session begins on each new connection (and, for a gated
// client such as a Sparkplug edge node waiting for its primary host, when
// the gate opens): the queue turns everything waiting into history, the
// session's births are published (the retained status for JSON; NBIRTH
// and DBIRTHs for Sparkplug), then queued messages flow: live ones first,
// historical ones after them at no more than replay_rate per second, marked
// historical (a JSON flag, Sparkplug's is_historical) and never retained.
//
// Delivery. Publish appends a message to the queue and returns at once.
// One sender goroutine takes batches from the queue, hands them to paho,
// and removes them from the queue only once the broker has them: a QoS 1
// or 2 message when it is acknowledged; QoS 0 messages when an
// acknowledgement that the broker sends after reading them arrives (a
// later QoS 1 message in the batch, or an UNSUBSCRIBE of a topic nobody
// uses, whose UNSUBACK follows everything written before it on the
// connection). So the queue delivers at least once, QoS 0 included: after
// a connection dies, what was unconfirmed is sent again, and a subscriber
// may see it twice.
//
// Status (JSON). The status topic is retained. The Last Will is a retained
// {"state":"offline","site":...,"ts":...,"reason":"connection lost"}; its
// ts is when the connection carrying it was opened (the will is fixed at
// connect time), not when the connection died. On every connection the last
// status given to SetStatus (or a plain online status) is published before
// any queued message, so a broker restart or a fired will never leaves a
// live site shown as offline.
package mqtt

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
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
	// Expires, when set, is when the message stops being worth sending
	// (a lease, a grant): one still queued then is discarded unsent and
	// counted as expired, never replayed late.
	Expires time.Time
}

// Stats are the client's counters since New.
type Stats struct {
	Queued     int    // waiting in the queue (including those being sent)
	Sent       uint64 // confirmed by the broker
	Dropped    uint64 // refused by Publish (stopped, invalid, unwritable) or dropped from a full queue, oldest first
	Connected  bool
	Reconnects uint64 // connections after the first

	Enqueued   uint64    // accepted by Publish
	History    int       // of Queued, those that waited for this session (sent marked historical)
	Replayed   uint64    // of Sent, those sent marked historical
	QueueBytes int64     // size of what is queued
	OnDisk     bool      // the queue is on disk (survives a restart)
	Recovered  uint64    // messages found on disk at start
	Oldest     time.Time // when the oldest queued message was queued; zero when none
	Session    bool      // a session is established: births sent, data flowing
	Expired    uint64    // discarded unsent because their Expires had passed
}

// Session lets a payload format own the parts of a connection that belong
// to it: the Last Will, the births that open a session, and the last touch
// on each message (Sparkplug's seq numbers and is_historical flags). The
// sender goroutine calls Births and Prepare, one at a time, in send order.
type Session interface {
	// Will is registered with the next connection attempt.
	Will() Message
	// Farewell is published before a deliberate disconnect.
	Farewell() Message
	// Births are published, in order, each time a session begins.
	Births(now time.Time) []Message
	// Prepare finishes m just before it is sent; historical: it waited
	// for this session.
	Prepare(m Message, historical bool) Message
}

// A Session that also has a Connected() method is told when a connection
// carrying its latest Will is established.

// Option configures a client beyond its Config.
type Option func(*Client)

// WithQueueDir keeps the queue on disk in dir (one directory per client),
// so that what is queued survives an agent restart. Without it the queue
// lives in memory.
func WithQueueDir(dir string) Option { return func(c *Client) { c.queueDir = dir } }

// WithSession hands the connection's lifecycle to s (Sparkplug). Without
// it the client runs the JSON status described in the package comment.
func WithSession(s Session) Option { return func(c *Client) { c.sess = s } }

// WithGate makes every session wait for SetGate(true) (Sparkplug's primary
// host); the gate closes again on each new connection.
func WithGate() Option { return func(c *Client) { c.gated = true } }

// WithDirect sends the messages on the topics for which match is true
// around the store-and-forward queue: held in memory (at most directMax,
// the oldest dropped), sent as soon as a connection is up, ahead of the
// queue and whether or not a session has begun (a Sparkplug gate does not
// hold them), never replayed as history. For time-bound control traffic
// (GPU grants with their leases) that must neither wait behind a backlog
// nor arrive late.
func WithDirect(match func(topic string) bool) Option {
	return func(c *Client) { c.directTopic = match }
}

// directMax bounds the direct lane.
const directMax = 1024

// WithHistoricalFlag adds "historical":true to the JSON object payloads
// sent from the backlog, on the topics for which match is true (all when
// match is nil).
func WithHistoricalFlag(match func(topic string) bool) Option {
	return func(c *Client) {
		c.flagJSON = true
		c.flagTopic = match
	}
}

const (
	statusQoS        = 1
	connectTimeout   = 5 * time.Second
	writeTimeout     = 5 * time.Second
	ackTimeout       = 30 * time.Second       // a broker that neither acknowledges nor drops us is treated as gone
	retryMin         = 500 * time.Millisecond // pause after a failed connect, doubling...
	retryMax         = 5 * time.Second        // ...up to this
	publishRetry     = 200 * time.Millisecond // pause after a failed publish on a live connection
	stopGrace        = time.Second            // Stop's time to flush the queue, and to send the offline status
	subscribeTimeout = 10 * time.Second
	batchMessages    = 256     // most messages handed to paho before waiting for the broker
	batchBytes       = 1 << 20 // ...or about this many bytes
)

// Client owns the broker connection of one site.
type Client struct {
	cfg         Config
	site        string
	topics      Topics
	log         *slog.Logger
	password    string
	tls         *tls.Config
	queueDir    string
	sess        Session
	gated       bool
	flagJSON    bool
	flagTopic   func(string) bool
	directTopic func(string) bool
	q           *Queue
	barrier     string // topic unsubscribed from to confirm QoS 0 messages

	mu        sync.Mutex
	started   bool
	stopped   bool
	conn      paho.Client   // the open connection; nil while there is none
	connLost  chan struct{} // closed when conn is lost
	connID    uint64        // counts connections; names the current one
	gateOpen  bool
	session   uint64 // the connection whose session is established; 0: none
	rebirth   bool   // a new session was asked for on the same connection
	status    []byte // last SetStatus payload; nil: a plain online status
	statusGen uint64 // bumped by SetStatus
	// The status is (re)sent while its generation differs from the last
	// one confirmed in this session.
	sentGen uint64
	subs    map[string]subscription
	direct  []directMsg // the direct lane (WithDirect)
	directN uint64      // numbers direct messages

	wake    chan struct{} // queue, status or gate has work (capacity 1)
	up      chan struct{} // a connection opened (capacity 1)
	kick    chan struct{} // drop the connection (farewell first) and make a new one (capacity 1)
	drain   chan struct{} // closed by Stop: flush the queue, then exit
	halt    chan struct{} // closed by Stop after the grace period: exit now
	sendEnd chan struct{} // closed when the sender exits
	connEnd chan struct{} // closed when the connection manager exits

	stopOnce sync.Once
	refused  atomic.Uint64 // Publish refusals (invalid, stopped, unwritable)
	dSent    atomic.Uint64 // direct messages confirmed
	dDropped atomic.Uint64 // direct messages pushed out or left at Stop
	dExpired atomic.Uint64 // direct messages past their Expires, not sent
	lost     atomic.Uint64 // left in a memory queue at Stop
	errLog   atomic.Int64  // unix ns of the last queue error logged
}

type directMsg struct {
	Message
	n uint64
}

type subscription struct {
	qos     byte
	handler func(topic string, payload []byte)
}

// New builds a client for site siteID; it does not connect (see Start). The
// password, certificates and the queue directory are read here.
func New(cfg Config, siteID string, log *slog.Logger, opts ...Option) (*Client, error) {
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
		kick:    make(chan struct{}, 1),
		drain:   make(chan struct{}),
		halt:    make(chan struct{}),
		sendEnd: make(chan struct{}),
		connEnd: make(chan struct{}),
	}
	for _, o := range opts {
		o(c)
	}
	c.barrier = c.topics.Topic("barrier")
	if cfg.PasswordFile != "" {
		pw, err := readPassword(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt: password_file: %w", err)
		}
		c.password = pw
	}
	if cfg.UsesTLS() {
		t, err := tlsConfig(&cfg)
		if err != nil {
			return nil, fmt.Errorf("mqtt: %w", err)
		}
		c.tls = t
	}
	q, err := OpenQueue(c.queueDir, cfg.QueueSize, int64(cfg.QueueMB)<<20, c.log)
	if err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	c.q = q
	return c, nil
}

// Topics returns the site's topic names.
func (c *Client) Topics() Topics { return c.topics }

// Config returns the connection's configuration, defaults applied.
func (c *Client) Config() Config { return c.cfg }

// Identity is who the broker knows this client as: the user name, else
// the common name of the client certificate (Mosquitto's
// use_identity_as_username), else "".
func (c *Client) Identity() string {
	if c.cfg.Username != "" {
		return c.cfg.Username
	}
	if c.tls != nil && len(c.tls.Certificates) > 0 {
		if leaf := c.tls.Certificates[0].Leaf; leaf != nil {
			return leaf.Subject.CommonName
		}
		if len(c.tls.Certificates[0].Certificate) > 0 {
			if cert, err := x509.ParseCertificate(c.tls.Certificates[0].Certificate[0]); err == nil {
				return cert.Subject.CommonName
			}
		}
	}
	return ""
}

// Secure reports whether the connection is made over TLS (with the
// broker's certificate verified: there is no other way).
func (c *Client) Secure() bool { return c.tls != nil }

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
// queue, publishes the offline status (Sparkplug: the NDEATH) and
// disconnects. What is still queued stays on disk for the next start; a
// memory queue loses it, counted as dropped. Safe to call twice.
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
				m := c.farewell("stopped")
				t := pc.Publish(m.Topic, m.QoS, m.Retain, m.Payload)
				if !t.WaitTimeout(stopGrace) || t.Error() != nil {
					c.log.Warn("mqtt offline status not confirmed", "err", t.Error())
				}
				pc.Disconnect(250)
			}
		}
		c.mu.Lock()
		c.conn = nil
		c.dDropped.Add(uint64(len(c.direct)))
		c.direct = nil
		c.mu.Unlock()
		st := c.q.Stats()
		if err := c.q.Close(); err != nil {
			c.log.Error("mqtt queue not saved cleanly", "err", err)
		}
		if st.Waiting > 0 {
			if st.OnDisk {
				c.log.Info("mqtt stopped with messages queued on disk; they are sent after the next start", "queued", st.Waiting)
			} else {
				c.lost.Add(st.Waiting)
				c.log.Warn("mqtt stopped with messages unsent", "dropped", st.Waiting)
			}
		}
	})
}

// Publish queues m and returns at once: false (and a counted drop) when the
// client is stopped, m is invalid, or the queue cannot store it. A full
// queue makes room by dropping its oldest message (counted).
func (c *Client) Publish(m Message) bool {
	if err := checkTopic(m.Topic); err != nil || m.QoS > 2 {
		c.refused.Add(1)
		c.log.Error("mqtt publish refused", "topic", m.Topic, "qos", m.QoS)
		return false
	}
	c.mu.Lock()
	stopped := c.stopped
	c.mu.Unlock()
	if stopped {
		c.refused.Add(1)
		return false
	}
	if c.directTopic != nil && c.directTopic(m.Topic) {
		c.mu.Lock()
		if len(c.direct) >= directMax {
			c.direct = c.direct[1:]
			c.dDropped.Add(1)
		}
		c.directN++
		c.direct = append(c.direct, directMsg{m, c.directN})
		c.mu.Unlock()
		poke(c.wake)
		return true
	}
	if _, err := c.q.Push(m, time.Now()); err != nil {
		c.refused.Add(1)
		// One line a minute: a full disk must not flood the journal.
		if now := time.Now().UnixNano(); now-c.errLog.Load() > int64(time.Minute) {
			c.errLog.Store(now)
			c.log.Error("mqtt message not queued", "topic", m.Topic, "err", err)
		}
		return false
	}
	poke(c.wake)
	return true
}

// SetStatus sets the retained online status, published now (or as soon as
// connected) and again on every new connection. It does not block. (JSON
// clients only: a Session publishes its own births.)
func (c *Client) SetStatus(payload []byte) {
	c.mu.Lock()
	c.status = append([]byte(nil), payload...)
	c.statusGen++
	c.mu.Unlock()
	poke(c.wake)
}

// Rebirth begins a new session on the current connection: the births are
// published again before any further message (Sparkplug's Rebirth).
func (c *Client) Rebirth() {
	c.mu.Lock()
	c.rebirth = true
	c.mu.Unlock()
	poke(c.wake)
}

// SetGate opens or closes the gate of a client made WithGate. Opening it
// lets the session begin; closing it ends a running session as Sparkplug
// asks when the primary host goes offline: the farewell is published, the
// connection dropped and a new one made, whose session waits for the gate.
func (c *Client) SetGate(open bool) {
	c.mu.Lock()
	was := c.gateOpen
	c.gateOpen = open
	inSession := c.session != 0
	c.mu.Unlock()
	if open && !was {
		poke(c.wake)
	}
	if !open && inSession {
		poke(c.kick)
	}
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
	q := c.q.Stats()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{
		Queued: int(q.Waiting) + len(c.direct), Sent: q.Confirmed + c.dSent.Load(), Dropped: q.Dropped + c.refused.Load() + c.lost.Load() + c.dDropped.Load(),
		Enqueued: q.Enqueued, History: int(q.History), Replayed: q.Replayed, QueueBytes: q.Bytes,
		OnDisk: q.OnDisk, Recovered: q.Recovered, Oldest: q.Oldest, Expired: q.Expired + c.dExpired.Load(),
		Session: c.session != 0 && c.session == c.connID && c.conn != nil,
	}
	if c.stopped {
		s.Queued, s.History, s.QueueBytes = 0, 0, 0
	}
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
		if cn, ok := c.sess.(interface{ Connected() }); ok {
			cn.Connected()
		}
		// Subscribe before anything is published: a Sparkplug edge node
		// must listen to its commands before its births. The gate closes
		// first: the primary host's retained STATE arrives with the
		// subscription and opens it again.
		c.mu.Lock()
		c.gateOpen = !c.gated
		subs := make(map[string]subscription, len(c.subs))
		for f, s := range c.subs {
			subs[f] = s
		}
		c.mu.Unlock()
		for f, s := range subs {
			c.subscribe(pc, f, s)
		}
		select {
		case <-c.kick: // meant for an earlier connection
		default:
		}
		c.mu.Lock()
		c.conn, c.connLost = pc, lost
		c.connID++
		id := c.connID
		for f, s := range c.subs {
			if _, done := subs[f]; !done {
				go c.subscribe(pc, f, s)
			}
		}
		c.mu.Unlock()
		c.log.Info("mqtt connected", "connection", id)
		poke(c.up)
		select {
		case <-lost:
			c.dropConn(pc)
		case <-c.kick:
			c.dropConn(pc)
			m := c.farewell("session ended")
			if t := pc.Publish(m.Topic, m.QoS, m.Retain, m.Payload); !t.WaitTimeout(stopGrace) || t.Error() != nil {
				c.log.Warn("mqtt farewell not confirmed", "err", t.Error())
			}
			pc.Disconnect(100)
			c.log.Info("mqtt session ended; reconnecting", "connection", id)
		case <-c.drain: // Stop sends the farewell on this connection
			return
		}
	}
}

func (c *Client) dropConn(pc paho.Client) {
	c.mu.Lock()
	if c.conn == pc {
		c.conn, c.session = nil, 0
	}
	c.mu.Unlock()
	poke(c.wake)
}

func (c *Client) options(lost chan struct{}) *paho.ClientOptions {
	var once sync.Once
	will := c.will()
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
		SetBinaryWill(will.Topic, will.Payload, will.QoS, will.Retain).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			c.log.Warn("mqtt connection lost; reconnecting", "err", err)
			once.Do(func() { close(lost) })
		})
	if c.tls != nil {
		o.SetTLSConfig(c.tls)
	}
	if c.cfg.Username != "" {
		o.SetUsername(c.cfg.Username)
	}
	if c.password != "" {
		o.SetPassword(c.password)
	}
	return o
}

func (c *Client) will() Message {
	if c.sess != nil {
		return c.sess.Will()
	}
	return Message{Topic: c.topics.Status(), Payload: c.statusJSON("offline", "connection lost"), QoS: statusQoS, Retain: true}
}

func (c *Client) farewell(reason string) Message {
	if c.sess != nil {
		return c.sess.Farewell()
	}
	return Message{Topic: c.topics.Status(), Payload: c.statusJSON("offline", reason), QoS: statusQoS, Retain: true}
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

// link is the connection the sender works on.
type link struct {
	pc   paho.Client
	lost chan struct{}
	id   uint64
}

// send is the only goroutine that hands messages to paho.
func (c *Client) send() {
	defer close(c.sendEnd)
	var (
		b       batch
		tokens  []paho.Token
		probe   poisonProbe
		budget  = replayBudget{rate: float64(c.cfg.ReplayRate), last: time.Now()}
		waitFor = func(extra <-chan time.Time) bool { // false: stop now
			select {
			case <-c.wake:
			case <-c.up:
			case <-extra:
			case <-c.drain:
				return false
			}
			return true
		}
	)
	budget.tokens = budget.burst()
	for {
		l, gateOpen, needSession, status := c.sendState()
		draining := isClosed(c.drain)
		if l.pc != nil {
			if direct := c.takeDirect(); len(direct) > 0 {
				if c.transmitDirect(l, direct, &tokens) {
					c.doneDirect(direct[len(direct)-1].n, len(direct))
				} else if c.pauseOrHalt() {
					return
				}
				continue
			}
		}
		if l.pc == nil || !gateOpen {
			if draining || !waitFor(nil) {
				return // stopping while down: nothing can be flushed
			}
			continue
		}
		if needSession {
			if !c.beginSession(l) {
				if c.pauseOrHalt() {
					return
				}
			}
			continue
		}
		if status != nil {
			if c.transmitOne(l, status.Message) {
				c.mu.Lock()
				c.sentGen = status.gen
				c.mu.Unlock()
			} else if c.pauseOrHalt() {
				return
			}
			continue
		}
		quota := budget.take(time.Now())
		var live, hist int
		if probe.on() {
			// One message at a time, to find one the broker refuses.
			if live, _ = c.q.Take(&b, 1, 0, batchBytes); live == 0 && quota > 0 {
				_, hist = c.q.Take(&b, 0, 1, batchBytes)
			}
		} else {
			live, hist = c.q.Take(&b, batchMessages, quota, batchBytes)
		}
		if live+hist == 0 {
			if draining {
				return
			}
			var timer <-chan time.Time
			if c.q.historyWaiting() {
				timer = time.After(budget.untilNext())
			}
			if !waitFor(timer) {
				return
			}
			continue
		}
		budget.spend(hist)
		if c.transmit(l, &b, &tokens) {
			c.q.Confirm(&b)
			probe.success()
			continue
		}
		if probe.failure(&b) {
			r := b.recs[0]
			c.log.Error("the broker closes the connection every time this message is sent (an ACL that denies its topic?); it is dropped",
				"topic", r.msg.Topic, "attempts", poisonAttempts)
			c.q.Discard(&b)
			continue
		}
		c.q.Rewind()
		if c.pauseOrHalt() {
			return
		}
	}
}

// Poison messages. Mosquitto 2 closes the connection of a client that
// publishes to a topic its ACL denies, so one such message at the head of
// the queue would make the client reconnect forever and block everything
// behind it. After a few failed batches in a row the sender goes one
// message at a time; a message that fails alone poisonAttempts times in a
// row is dropped (counted, logged with its topic).
const (
	probeAfter     = 3  // failed batches in a row before probing
	poisonAttempts = 3  // failures of the same lone message before it is dropped
	probeSuccesses = 20 // messages through one at a time before batches resume
)

type poisonProbe struct {
	failed int    // failed batches in a row
	ok     int    // messages through while probing
	seq    uint64 // the lone message that failed last
	tries  int
}

func (p *poisonProbe) on() bool { return p.failed >= probeAfter }

func (p *poisonProbe) success() {
	if !p.on() {
		p.failed = 0
		return
	}
	if p.ok++; p.ok >= probeSuccesses {
		*p = poisonProbe{}
	}
}

// failure records a failed batch; true when its lone message is poison.
func (p *poisonProbe) failure(b *batch) bool {
	p.failed++
	if !p.on() || len(b.recs) != 1 {
		return false
	}
	if b.recs[0].seq == p.seq {
		p.tries++
	} else {
		p.seq, p.tries = b.recs[0].seq, 1
	}
	if p.tries >= poisonAttempts {
		p.seq, p.tries = 0, 0
		return true
	}
	return false
}

// takeDirect copies the head of the direct lane.
func (c *Client) takeDirect() []directMsg {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	k := 0
	for _, m := range c.direct {
		if !m.Expires.IsZero() && !now.Before(m.Expires) {
			c.dExpired.Add(1)
			continue
		}
		c.direct[k] = m
		k++
	}
	clear(c.direct[k:])
	c.direct = c.direct[:k]
	if len(c.direct) == 0 {
		return nil
	}
	return append([]directMsg(nil), c.direct[:min(len(c.direct), batchMessages)]...)
}

// doneDirect removes the direct messages up to number last.
func (c *Client) doneDirect(last uint64, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := 0
	for k < len(c.direct) && c.direct[k].n <= last {
		k++
	}
	c.direct = c.direct[k:]
	c.dSent.Add(uint64(n))
}

func (c *Client) transmitDirect(l link, msgs []directMsg, tokens *[]paho.Token) bool {
	*tokens = (*tokens)[:0]
	for _, m := range msgs {
		*tokens = append(*tokens, l.pc.Publish(m.Topic, m.QoS, m.Retain, m.Payload))
	}
	for _, t := range *tokens {
		if !c.await(l, t) {
			return false
		}
	}
	if msgs[len(msgs)-1].QoS == 0 {
		return c.await(l, l.pc.Unsubscribe(c.barrier))
	}
	return true
}

type pendingStatus struct {
	Message
	gen uint64
}

// sendState reads what the sender needs under the lock.
func (c *Client) sendState() (l link, gateOpen, needSession bool, status *pendingStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return link{}, false, false, nil
	}
	l = link{pc: c.conn, lost: c.connLost, id: c.connID}
	gateOpen = c.gateOpen
	needSession = c.session != c.connID || c.rebirth
	if c.sess == nil && c.statusGen != c.sentGen && !needSession {
		p := c.status
		if p == nil {
			p = c.statusJSON("online", "")
		}
		status = &pendingStatus{Message{Topic: c.topics.Status(), Payload: p, QoS: statusQoS, Retain: true}, c.statusGen}
	}
	return
}

// beginSession turns the queue into history and publishes the births.
func (c *Client) beginSession(l link) bool {
	if err := c.q.Rotate(); err != nil {
		c.log.Error("mqtt queue cannot start a new spool; messages stay where they are", "err", err)
	}
	c.mu.Lock()
	c.rebirth = false
	gen := c.statusGen
	c.mu.Unlock()
	var births []Message
	if c.sess != nil {
		births = c.sess.Births(time.Now())
	} else {
		c.mu.Lock()
		p := c.status
		c.mu.Unlock()
		if p == nil {
			p = c.statusJSON("online", "")
		}
		births = []Message{{Topic: c.topics.Status(), Payload: p, QoS: statusQoS, Retain: true}}
	}
	for _, m := range births {
		if !c.transmitOne(l, m) {
			return false
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.connID != l.id || c.conn == nil {
		return false
	}
	c.session, c.sentGen = l.id, gen
	return true
}

// pauseOrHalt waits a little after a failure; true when stopping.
func (c *Client) pauseOrHalt() bool {
	select {
	case <-time.After(publishRetry):
		return false
	case <-c.halt:
		return true
	}
}

// transmitOne publishes a message that is not in the queue and waits until
// the broker has it.
func (c *Client) transmitOne(l link, m Message) bool {
	if c.sess != nil {
		m = c.sess.Prepare(m, false)
	}
	t := l.pc.Publish(m.Topic, m.QoS, m.Retain, m.Payload)
	ok := c.await(l, t)
	if ok && m.QoS == 0 {
		ok = c.await(l, l.pc.Unsubscribe(c.barrier))
	}
	return ok
}

// transmit publishes a batch and waits until the broker has all of it.
func (c *Client) transmit(l link, b *batch, tokens *[]paho.Token) bool {
	*tokens = (*tokens)[:0]
	lastQoS := byte(1)
	for i, r := range b.recs {
		if b.skip[i] {
			continue
		}
		m := r.msg
		if b.hist[i] {
			m.Retain = false // a replayed message must not replace the current retained one
			if c.flagJSON && (c.flagTopic == nil || c.flagTopic(m.Topic)) {
				m.Payload = markHistorical(m.Payload)
			}
		}
		if c.sess != nil {
			m = c.sess.Prepare(m, b.hist[i])
		}
		*tokens = append(*tokens, l.pc.Publish(m.Topic, m.QoS, m.Retain, m.Payload))
		lastQoS = m.QoS
	}
	for _, t := range *tokens {
		if !c.await(l, t) {
			return false
		}
	}
	if lastQoS == 0 {
		// Nothing acknowledges the QoS 0 tail of the batch: ask the
		// broker for an acknowledgement that comes after it.
		return c.await(l, l.pc.Unsubscribe(c.barrier))
	}
	return true
}

// await waits for a paho token; false when it failed, the connection was
// lost, the broker stayed silent for ackTimeout, or Stop's grace ended.
func (c *Client) await(l link, t paho.Token) bool {
	timer := time.NewTimer(ackTimeout)
	defer timer.Stop()
	select {
	case <-t.Done():
		if err := t.Error(); err != nil {
			c.log.Debug("mqtt publish failed; will retry", "err", err)
			return false
		}
		return true
	case <-l.lost:
		return false
	case <-c.halt:
		return false
	case <-timer.C:
		c.log.Warn("mqtt broker did not acknowledge in time; reconnecting", "after", ackTimeout)
		poke(c.kick)
		return false
	}
}

// replayBudget paces historical messages: rate per second, in bursts of at
// most a tenth of a second's worth.
type replayBudget struct {
	rate   float64
	tokens float64
	last   time.Time
}

func (r *replayBudget) burst() float64 { return max(r.rate/10, 1) }

func (r *replayBudget) take(now time.Time) int {
	r.tokens = min(r.tokens+r.rate*now.Sub(r.last).Seconds(), r.burst())
	r.last = now
	return int(r.tokens)
}

func (r *replayBudget) spend(n int) { r.tokens -= float64(n) }

func (r *replayBudget) untilNext() time.Duration {
	need := 1 - r.tokens
	if need <= 0 {
		return time.Millisecond
	}
	return time.Duration(need / r.rate * float64(time.Second))
}

// markHistorical inserts "historical":true at the start of a JSON object.
func markHistorical(p []byte) []byte {
	t := bytes.TrimLeft(p, " \t\r\n")
	if len(t) < 2 || t[0] != '{' {
		return p
	}
	rest := bytes.TrimLeft(t[1:], " \t\r\n")
	out := make([]byte, 0, len(p)+20)
	out = append(out, `{"historical":true`...)
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}

func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
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
