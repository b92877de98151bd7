package opcua

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	gopcua "github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/agent/point"
)

// Reads and monitored-item creations are cut into requests of at most
// this many nodes when the server states no limit of its own.
const defaultChunk = 1000

// session is one connection's worth of state: Source.session makes one,
// runs it until it fails, and drops it.
type session struct {
	s        *Source
	cfg      *SourceConfig
	c        *gopcua.Client
	maxRead  int
	maxItems int
	subID    atomic.Uint32
	failed   chan error

	ackMu sync.Mutex
	acks  []*ua.SubscriptionAcknowledgement
}

// session connects, reads every point once, then (unless once) keeps the
// values flowing until the session breaks or ctx ends.
func (s *Source) session(ctx context.Context, once bool) error {
	cr, err := loadCreds(&s.cfg)
	if err != nil {
		return err
	}
	// A publish is answered when there is news or a keep-alive is due,
	// so it may take a keep-alive period; other requests get their own
	// deadline of cfg.Timeout.
	keep := s.keepAlivePeriod()
	reqTimeout := s.cfg.Timeout
	if !once && s.cfg.Mode == ModeSubscribe {
		reqTimeout = keep + s.cfg.Timeout
	}
	c, _, err := dial(ctx, &s.cfg, cr, dialOptions{requestTimeout: reqTimeout, sessionTimeout: max(30*time.Second, 4*keep)})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	ss := &session{s: s, cfg: &s.cfg, c: c, failed: make(chan error, 4)}
	defer func() {
		cancel()
		ss.close()
	}()
	if !once {
		s.linkUp(s.cfg.Mode)
	}
	if err := ss.limits(ctx); err != nil {
		return err
	}
	if err := ss.resolve(ctx); err != nil {
		return err
	}
	if err := ss.read(ctx, ss.resolved()); err != nil {
		return err
	}
	s.readyOnce.Do(func() { close(s.ready) })
	if once {
		return nil
	}
	mode := s.cfg.Mode
	if mode == ModeSubscribe {
		switch err := ss.subscribe(ctx); {
		case errors.Is(err, errNoSubscriptions):
			s.log.Warn("opcua server offers no subscriptions; polling instead", "err", err, "poll_period", s.cfg.PollPeriod)
			mode = ModePoll
			s.count(func(st *Stats) { st.Mode = ModePoll })
		case err != nil:
			return err
		}
	}
	if mode == ModePoll {
		s.mu.Lock()
		for _, it := range s.items {
			it.polled = it.node != nil
		}
		s.mu.Unlock()
	}
	s.flowing(mode)
	if mode == ModeSubscribe {
		// Two publish requests in flight: the server always holds one
		// while the answer to the other is on its way.
		for range 2 {
			go ss.publisher(ctx)
		}
	}
	return ss.loop(ctx, mode)
}

func (s *Source) keepAlivePeriod() time.Duration {
	return s.cfg.PublishingInterval * time.Duration(s.cfg.KeepAliveCount+1)
}

// close deletes the subscription (politely, briefly) and the session.
func (ss *session) close() {
	if id := ss.subID.Load(); id != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_ = ss.c.Send(ctx, &ua.DeleteSubscriptionsRequest{SubscriptionIDs: []uint32{id}}, func(ua.Response) error { return nil })
		cancel()
	}
	closeQuietly(ss.c)
}

func (ss *session) fail(err error) {
	select {
	case ss.failed <- err:
	default:
	}
}

func (ss *session) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, ss.cfg.Timeout)
}

// limits reads the server's operation limits, so that no request is
// longer than the server accepts.
func (ss *session) limits(ctx context.Context) error {
	ss.maxRead, ss.maxItems = defaultChunk, defaultChunk
	rctx, cancel := ss.request(ctx)
	defer cancel()
	res, err := ss.c.Read(rctx, &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{
		{NodeID: ua.NewNumericNodeID(0, id.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead), AttributeID: ua.AttributeIDValue},
		{NodeID: ua.NewNumericNodeID(0, id.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall), AttributeID: ua.AttributeIDValue},
	}})
	if err != nil {
		return fmt.Errorf("reading the server's operation limits: %w", err)
	}
	for i, dv := range res.Results {
		if dv == nil || severity(dv.Status) == sevBad || dv.Value == nil {
			continue
		}
		if n, ok := dv.Value.Value().(uint32); ok && n > 0 {
			if i == 0 {
				ss.maxRead = min(int(n), defaultChunk)
			} else {
				ss.maxItems = min(int(n), defaultChunk)
			}
		}
	}
	return nil
}

// errNotFound marks a node id or path that the server does not have: a
// problem of one point, not of the session.
type errNotFound struct{ msg string }

func (e errNotFound) Error() string { return e.msg }

// resolve finds the node of every point. A point whose node cannot be
// found is written bad and left out; the others go on.
func (ss *session) resolve(ctx context.Context) error {
	s := ss.s
	var ns []string
	for _, it := range s.items {
		if it.ref.uri != "" {
			rctx, cancel := ss.request(ctx)
			var err error
			ns, err = ss.c.NamespaceArray(rctx)
			cancel()
			if err != nil {
				return fmt.Errorf("reading the server's namespaces: %w", err)
			}
			break
		}
	}
	w := &walker{c: ss.c, cache: map[string][]child{}}
	now := time.Now().UnixNano()
	var bad []point.Update
	for _, it := range s.items {
		var node *ua.NodeID
		var err error
		if it.path != nil {
			rctx, cancel := ss.request(ctx)
			node, err = w.resolve(rctx, it.path)
			cancel()
			var nf errNotFound
			if err != nil && !errors.As(err, &nf) && !isNodeStatus(err) {
				return fmt.Errorf("browsing for %s: %w", it.name, err)
			}
		} else {
			node, err = it.ref.resolve(ns)
		}
		s.mu.Lock()
		it.node, it.monitored, it.polled = node, false, false
		if err != nil {
			it.node = nil
			s.problem(it, err.Error())
			bad = append(bad, point.Update{ID: it.id, Point: point.Point{Quality: point.Bad, Reason: point.DeviceError, Source: now, Recv: now}})
		}
		s.mu.Unlock()
	}
	if len(bad) > 0 {
		s.store.Write(bad)
	}
	return nil
}

func isNodeStatus(err error) bool {
	var code ua.StatusCode
	if !errors.As(err, &code) {
		return false
	}
	switch code {
	case ua.StatusBadNodeIDUnknown, ua.StatusBadNodeIDInvalid, ua.StatusBadNodeIDRejected:
		return true
	}
	return false
}

// resolved lists the points whose node is known.
func (ss *session) resolved() []*item {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	var out []*item
	for _, it := range ss.s.items {
		if it.node != nil {
			out = append(out, it)
		}
	}
	return out
}

// read reads items' values, in requests of at most the server's limit,
// and writes them. A refusal for length halves the requests and retries.
func (ss *session) read(ctx context.Context, items []*item) error {
	for len(items) > 0 {
		n := min(len(items), ss.maxRead)
		chunk := items[:n]
		ids := make([]*ua.ReadValueID, n)
		for i, it := range chunk {
			ids[i] = &ua.ReadValueID{NodeID: it.node, AttributeID: ua.AttributeIDValue}
		}
		rctx, cancel := ss.request(ctx)
		res, err := ss.c.Read(rctx, &ua.ReadRequest{NodesToRead: ids, TimestampsToReturn: ua.TimestampsToReturnBoth})
		cancel()
		recv := time.Now()
		if errors.Is(err, ua.StatusBadTooManyOperations) && ss.maxRead > 1 {
			ss.maxRead = max(1, ss.maxRead/2)
			ss.s.log.Info("opcua server refused a long read; reading fewer nodes at a time", "max_nodes_per_read", ss.maxRead)
			continue
		}
		if err != nil {
			return fmt.Errorf("reading %d values: %w", n, err)
		}
		if len(res.Results) != n {
			return fmt.Errorf("reading %d values: the server answered %d", n, len(res.Results))
		}
		batch := make([]point.Update, 0, n)
		ss.s.mu.Lock()
		for i, it := range chunk {
			if u, ok := ss.apply(it, res.Results[i], recv, 0, 0); ok {
				batch = append(batch, u)
			}
		}
		ss.s.mu.Unlock()
		ss.s.store.Write(batch)
		ss.s.count(func(st *Stats) { st.Reads += uint64(n) })
		items = items[n:]
	}
	return nil
}

// apply turns one value of it into a store update. seq and sub are the
// notification's sequence number and subscription (0 for reads): an
// answer overtaken by a later one of the same subscription is dropped.
// The caller holds s.mu.
func (ss *session) apply(it *item, dv *ua.DataValue, recv time.Time, seq, sub uint32) (point.Update, bool) {
	if seq != 0 {
		if it.subID == sub && int32(seq-it.lastSeq) < 0 {
			return point.Update{}, false
		}
		it.subID, it.lastSeq = sub, seq
	}
	smp := ss.s.convert(it, dv, recv)
	if seq != 0 {
		it.notif, it.hasNotif, it.notifAt = smp, true, recv
		it.suspectAt = time.Time{}
	}
	it.lastRecv = recv
	it.last, it.has = smp, true
	ss.s.problem(it, smp.why)
	return point.Update{ID: it.id, Point: smp.p}, true
}

// loop polls what is polled and checks what has been quiet, until the
// session fails or ctx ends.
func (ss *session) loop(ctx context.Context, mode string) error {
	var polled []*item
	quietest := time.Duration(0)
	ss.s.mu.Lock()
	for _, it := range ss.s.items {
		if it.polled {
			polled = append(polled, it)
		}
		if it.monitored && (quietest == 0 || it.verifyAfter < quietest) {
			quietest = it.verifyAfter
		}
	}
	ss.s.mu.Unlock()
	var pollC, checkC <-chan time.Time
	if len(polled) > 0 {
		t := time.NewTicker(ss.cfg.PollPeriod)
		defer t.Stop()
		pollC = t.C
	}
	if quietest > 0 {
		t := time.NewTicker(max(quietest/4, 50*time.Millisecond))
		defer t.Stop()
		checkC = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-ss.failed:
			return err
		case <-pollC:
			if err := ss.read(ctx, polled); err != nil {
				return err
			}
		case <-checkC:
			if err := ss.check(ctx); err != nil {
				return err
			}
		}
	}
}
