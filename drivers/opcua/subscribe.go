package opcua

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/agent/point"
)

// errNoSubscriptions: the server will not make a subscription at all.
var errNoSubscriptions = errors.New("the server refuses subscriptions")

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// subscribe creates the subscription and a monitored item for every
// resolved point. Points the server will not monitor are polled.
func (ss *session) subscribe(ctx context.Context) error {
	cfg := ss.cfg
	rctx, cancel := ss.request(ctx)
	var res *ua.CreateSubscriptionResponse
	err := ss.c.Send(rctx, &ua.CreateSubscriptionRequest{
		RequestedPublishingInterval: ms(cfg.PublishingInterval),
		// The server drops a subscription nobody asks for after
		// lifetime publishing intervals: three keep-alive periods.
		RequestedLifetimeCount:     3 * (cfg.KeepAliveCount + 1),
		RequestedMaxKeepAliveCount: cfg.KeepAliveCount,
		PublishingEnabled:          true,
	}, func(r ua.Response) error {
		var ok bool
		if res, ok = r.(*ua.CreateSubscriptionResponse); !ok {
			return fmt.Errorf("the server answered a subscription request with %T", r)
		}
		return nil
	})
	cancel()
	if err != nil {
		switch {
		case errors.Is(err, ua.StatusBadServiceUnsupported), errors.Is(err, ua.StatusBadTooManySubscriptions), errors.Is(err, ua.StatusBadNotSupported):
			return fmt.Errorf("%w: %v", errNoSubscriptions, err)
		}
		return fmt.Errorf("creating the subscription: %w", err)
	}
	ss.subID.Store(res.SubscriptionID)
	if got := time.Duration(res.RevisedPublishingInterval * float64(time.Millisecond)); got > 2*cfg.PublishingInterval {
		ss.s.log.Info("opcua server publishes slower than asked", "asked", cfg.PublishingInterval, "revised", got)
	}
	return ss.monitor(ctx, res.SubscriptionID, ss.resolved())
}

// monitor creates the monitored items of items in subscription sub.
func (ss *session) monitor(ctx context.Context, sub uint32, items []*item) error {
	retry := items
	for pass := 0; pass < 2 && len(retry) > 0; pass++ {
		withFilter := pass == 0
		todo := retry
		retry = nil
		for len(todo) > 0 {
			n := min(len(todo), ss.maxItems)
			chunk := todo[:n]
			todo = todo[n:]
			reqs := make([]*ua.MonitoredItemCreateRequest, n)
			for i, it := range chunk {
				reqs[i] = ss.itemRequest(it, withFilter)
			}
			rctx, cancel := ss.request(ctx)
			var res *ua.CreateMonitoredItemsResponse
			err := ss.c.Send(rctx, &ua.CreateMonitoredItemsRequest{
				SubscriptionID:     sub,
				TimestampsToReturn: ua.TimestampsToReturnBoth,
				ItemsToCreate:      reqs,
			}, func(r ua.Response) error {
				var ok bool
				if res, ok = r.(*ua.CreateMonitoredItemsResponse); !ok {
					return fmt.Errorf("the server answered a monitored item request with %T", r)
				}
				return nil
			})
			cancel()
			if errors.Is(err, ua.StatusBadTooManyOperations) && ss.maxItems > 1 {
				ss.maxItems = max(1, ss.maxItems/2)
				todo = append(chunk, todo...)
				continue
			}
			if err != nil {
				return fmt.Errorf("creating %d monitored items: %w", n, err)
			}
			if len(res.Results) != n {
				return fmt.Errorf("creating %d monitored items: the server answered %d", n, len(res.Results))
			}
			retry = append(retry, ss.monitored(chunk, res.Results, withFilter)...)
		}
	}
	return nil
}

// itemRequest asks for one point's value, sampled at the source's
// interval. Without a deadband the trigger includes the source timestamp,
// so a device that stamps every sample keeps its points' age honest.
func (ss *session) itemRequest(it *item, withFilter bool) *ua.MonitoredItemCreateRequest {
	var filter *ua.ExtensionObject
	if withFilter {
		f := &ua.DataChangeFilter{Trigger: ua.DataChangeTriggerStatusValueTimestamp}
		if db := *it.cfg.Deadband; db > 0 {
			f = &ua.DataChangeFilter{Trigger: ua.DataChangeTriggerStatusValue, DeadbandType: uint32(ua.DeadbandTypeAbsolute), DeadbandValue: db}
		}
		filter = ua.NewExtensionObject(f)
	}
	return &ua.MonitoredItemCreateRequest{
		ItemToMonitor:  &ua.ReadValueID{NodeID: it.node, AttributeID: ua.AttributeIDValue, DataEncoding: &ua.QualifiedName{}},
		MonitoringMode: ua.MonitoringModeReporting,
		RequestedParameters: &ua.MonitoringParameters{
			ClientHandle:     uint32(it.idx + 1),
			SamplingInterval: ms(ss.cfg.SamplingInterval),
			Filter:           filter,
			QueueSize:        ss.cfg.QueueSize,
			DiscardOldest:    true,
		},
	}
}

// monitored records the server's answer for each item and returns those
// to ask again without a filter.
func (ss *session) monitored(chunk []*item, results []*ua.MonitoredItemCreateResult, withFilter bool) (retry []*item) {
	s := ss.s
	now := time.Now().UnixNano()
	var bad []point.Update
	s.mu.Lock()
	for i, it := range chunk {
		code := ua.StatusBad
		if results[i] != nil {
			code = results[i].StatusCode
		}
		switch {
		case severity(code) != sevBad:
			it.monitored, it.polled = true, false
		case withFilter && filterRefused(code):
			retry = append(retry, it)
		case nodeRefused(code):
			it.monitored, it.polled = false, false
			s.problem(it, "the server will not monitor it: "+statusName(code))
			bad = append(bad, point.Update{ID: it.id, Point: point.Point{Quality: point.Bad, Reason: point.DeviceError, Source: now, Recv: now}})
		default:
			// The server monitors no more items (or not this one for a
			// reason of its own): read it instead.
			it.monitored, it.polled = false, true
			s.log.Info("opcua point polled: the server will not monitor it", "point", it.name, "status", statusName(code), "poll_period", ss.cfg.PollPeriod)
		}
	}
	s.mu.Unlock()
	if len(bad) > 0 {
		s.store.Write(bad)
	}
	return retry
}

func filterRefused(c ua.StatusCode) bool {
	switch c {
	case ua.StatusBadMonitoredItemFilterUnsupported, ua.StatusBadMonitoredItemFilterInvalid, ua.StatusBadFilterNotAllowed, ua.StatusBadDeadbandFilterInvalid:
		return true
	}
	return false
}

// nodeRefused: codes that say the point itself is wrong, so polling it
// would fail too.
func nodeRefused(c ua.StatusCode) bool {
	switch c {
	case ua.StatusBadNodeIDUnknown, ua.StatusBadNodeIDInvalid, ua.StatusBadAttributeIDInvalid,
		ua.StatusBadNotReadable, ua.StatusBadUserAccessDenied, ua.StatusBadIndexRangeInvalid,
		ua.StatusBadDataEncodingInvalid, ua.StatusBadDataEncodingUnsupported:
		return true
	}
	return false
}

// publisher keeps one publish request in flight until the session ends.
func (ss *session) publisher(ctx context.Context) {
	var batch []point.Update
	for ctx.Err() == nil {
		var res *ua.PublishResponse
		err := ss.c.Send(ctx, &ua.PublishRequest{SubscriptionAcknowledgements: ss.takeAcks()}, func(r ua.Response) error {
			var ok bool
			if res, ok = r.(*ua.PublishResponse); !ok {
				return fmt.Errorf("the server answered a publish request with %T", r)
			}
			return nil
		})
		recv := time.Now()
		if ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, ua.StatusBadNoSubscription):
			// Between deleting a silent subscription and making its
			// replacement there is none: wait for it.
			sleep(ctx, ss.cfg.PublishingInterval)
			continue
		case errors.Is(err, ua.StatusBadTooManyPublishRequests):
			return // the server wants fewer in flight: one less
		case errors.Is(err, ua.StatusBadTimeout):
			ss.fail(fmt.Errorf("no publish answer (not even a keep-alive) within %s: the subscription or the connection is dead", ss.s.keepAlivePeriod()+ss.cfg.Timeout))
			return
		case err != nil:
			ss.fail(fmt.Errorf("publish: %w", err))
			return
		}
		batch, err = ss.onPublish(res, recv, batch[:0])
		if err != nil {
			ss.fail(err)
			return
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// onPublish applies one publish answer: data changes are written, keep-
// alives only counted.
func (ss *session) onPublish(res *ua.PublishResponse, recv time.Time, batch []point.Update) ([]point.Update, error) {
	msg := res.NotificationMessage
	if msg == nil {
		return batch, nil
	}
	if len(msg.NotificationData) == 0 {
		ss.s.count(func(st *Stats) { st.KeepAlives++ })
		return batch, nil
	}
	sub := res.SubscriptionID
	ss.addAck(sub, msg.SequenceNumber)
	if sub != ss.subID.Load() {
		return batch, nil // a replaced subscription's last words
	}
	s := ss.s
	n := 0
	s.mu.Lock()
	for _, eo := range msg.NotificationData {
		if eo == nil {
			continue
		}
		switch v := eo.Value.(type) {
		case *ua.DataChangeNotification:
			for _, mi := range v.MonitoredItems {
				if mi == nil || mi.ClientHandle == 0 || int(mi.ClientHandle) > len(s.items) {
					continue
				}
				it := s.items[mi.ClientHandle-1]
				if u, ok := ss.apply(it, mi.Value, recv, msg.SequenceNumber, sub); ok {
					batch = append(batch, u)
					n++
				}
			}
		case *ua.StatusChangeNotification:
			if severity(v.Status) == sevBad {
				s.mu.Unlock()
				return batch, fmt.Errorf("the server ended the subscription: %s", statusName(v.Status))
			}
		}
	}
	s.stats.Notifications += uint64(n)
	s.mu.Unlock()
	if len(batch) > 0 {
		s.store.Write(batch)
	}
	return batch, nil
}

func (ss *session) addAck(sub, seq uint32) {
	ss.ackMu.Lock()
	ss.acks = append(ss.acks, &ua.SubscriptionAcknowledgement{SubscriptionID: sub, SequenceNumber: seq})
	ss.ackMu.Unlock()
}

func (ss *session) takeAcks() []*ua.SubscriptionAcknowledgement {
	ss.ackMu.Lock()
	defer ss.ackMu.Unlock()
	a := ss.acks
	ss.acks = nil
	if a == nil {
		a = []*ua.SubscriptionAcknowledgement{}
	}
	return a
}

// check reads the monitored points the subscription has not reported for
// their verify_after, and writes what it reads when it is news. A change
// the subscription then still does not deliver within a few publishing
// intervals means the subscription is connected but silent: it is
// recreated. A value that has not changed stays as old as its timestamp
// says (unless timestamps = "server": the server's answer confirms it).
func (ss *session) check(ctx context.Context) error {
	s := ss.s
	now := time.Now()
	// How long a change may take to be sampled, published and received.
	window := 2*ss.cfg.PublishingInterval + ss.cfg.SamplingInterval + 500*time.Millisecond
	var due []*item
	missed := 0
	s.mu.Lock()
	for _, it := range s.items {
		if !it.monitored || it.node == nil {
			continue
		}
		if !it.suspectAt.IsZero() && now.Sub(it.suspectAt) >= window {
			// Still nothing delivered since the change was seen.
			missed++
			it.suspectAt = time.Time{}
		}
		if now.Sub(it.lastRecv) >= it.verifyAfter && now.Sub(it.lastCheck) >= it.verifyAfter {
			it.lastCheck = now
			due = append(due, it)
		}
	}
	s.stats.MissedUpdates += uint64(missed)
	s.mu.Unlock()
	if missed > 0 {
		s.log.Warn("opcua subscription is connected but silent: the server changed values it did not deliver; recreating it", "missed", missed)
		return ss.resubscribe(ctx)
	}
	for len(due) > 0 {
		n := min(len(due), ss.maxRead)
		chunk := due[:n]
		due = due[n:]
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
			due = append(chunk, due...)
			continue
		}
		if err != nil {
			return fmt.Errorf("checking %d quiet values: %w", n, err)
		}
		if len(res.Results) != n {
			return fmt.Errorf("checking %d quiet values: the server answered %d", n, len(res.Results))
		}
		var batch []point.Update
		s.mu.Lock()
		for i, it := range chunk {
			smp := s.convert(it, res.Results[i], recv)
			if it.suspectAt.IsZero() && (!it.hasNotif || ss.reportable(it, it.notif, smp)) {
				it.suspectAt = recv
			}
			news := !it.has || smp.devTs > it.last.devTs || smp.status != it.last.status || smp.p.Value != it.last.p.Value
			if !news && s.cfg.Timestamps != TimestampsServer {
				continue
			}
			if u, ok := ss.apply(it, res.Results[i], recv, 0, 0); ok {
				batch = append(batch, u)
			}
		}
		s.stats.Reads += uint64(n)
		s.mu.Unlock()
		if len(batch) > 0 {
			s.store.Write(batch)
		}
	}
	return nil
}

// reportable reports whether the change from what the subscription last
// delivered (was) to what a read found (now) is one the server should
// have reported, given the item's trigger and deadband.
func (ss *session) reportable(it *item, was, now sample) bool {
	if now.status != was.status {
		return true
	}
	if db := *it.cfg.Deadband; db > 0 {
		return math.Abs(now.p.Value-was.p.Value) > db*math.Abs(*it.cfg.Scale)
	}
	return now.p.Value != was.p.Value || now.devTs > was.devTs
}

// resubscribe replaces the subscription with a new one.
func (ss *session) resubscribe(ctx context.Context) error {
	old := ss.subID.Swap(0)
	if old != 0 {
		rctx, cancel := ss.request(ctx)
		_ = ss.c.Send(rctx, &ua.DeleteSubscriptionsRequest{SubscriptionIDs: []uint32{old}}, func(ua.Response) error { return nil })
		cancel()
	}
	ss.s.count(func(st *Stats) { st.Resubscribes++ })
	return ss.subscribe(ctx)
}
