package miners

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// amHTTP serves HTTP for a fleet of simulated miners whose control boards
// run a web server: stock Antminers and Vnish. One http.Server serves every
// miner's listener; the handler learns which miner from the local address.
// Faults apply per miner: FaultRefusing resets the connection at accept,
// FaultDropping closes it after reading the request, FaultSlow delays the
// answer, FaultGarbled cuts the body and appends junk.
type amHTTP struct {
	set       *loopbackSet
	srv       *http.Server
	ln        *amChanListener
	index     map[string]int // local "ip:port" → miner
	faults    []atomic.Uint32
	slowDelay atomic.Int64
	ctx       context.Context
	cancel    context.CancelFunc
	counters  Counters
}

func newAMHTTP(base netip.Addr, n, port int, handle func(i int, w http.ResponseWriter, r *http.Request)) (*amHTTP, error) {
	set, err := listenLoopback(base, n, port)
	if err != nil {
		return nil, err
	}
	s := &amHTTP{set: set, index: make(map[string]int, n), faults: make([]atomic.Uint32, n),
		ln: &amChanListener{conns: make(chan net.Conn), done: make(chan struct{}), addr: set.lns[0].Addr()}}
	s.slowDelay.Store(int64(3 * time.Second))
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for i, a := range set.addrs {
		s.index[a] = i
	}
	s.srv = &http.Server{
		Handler:     http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serveHTTP(handle, w, r) }),
		IdleTimeout: 60 * time.Second,
	}
	set.serve(func(i int, c net.Conn) {
		s.counters.Connections.Add(1)
		if s.fault(i) == FaultRefusing {
			reset(c)
			return
		}
		select {
		case s.ln.conns <- c:
		case <-s.ln.done:
			c.Close()
		}
	})
	go s.srv.Serve(s.ln)
	return s, nil
}

func (s *amHTTP) fault(i int) Fault { return Fault(s.faults[i].Load()) }

func (s *amHTTP) close() {
	s.cancel()
	s.set.close()
	s.ln.close()
	s.srv.Close()
	s.set.wg.Wait()
}

func (s *amHTTP) serveHTTP(handle func(int, http.ResponseWriter, *http.Request), w http.ResponseWriter, r *http.Request) {
	la, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if la == nil {
		http.Error(w, "no local address", http.StatusInternalServerError)
		return
	}
	i, ok := s.index[la.String()]
	if !ok {
		http.Error(w, "unknown miner", http.StatusNotFound)
		return
	}
	s.counters.Requests.Add(1)
	switch s.fault(i) {
	case FaultDropping:
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
			}
		}
		return
	case FaultSlow:
		if !waitCtx(r.Context(), time.Duration(s.slowDelay.Load())) {
			return
		}
	case FaultGarbled:
		rec := &amRecorder{header: http.Header{}, status: http.StatusOK}
		handle(i, rec, r)
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.status)
		w.Write(garble(rec.body.Bytes()))
		return
	}
	handle(i, w, r)
}

// amRecorder buffers a reply so that it can be garbled.
type amRecorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *amRecorder) Header() http.Header         { return r.header }
func (r *amRecorder) WriteHeader(code int)        { r.status = code }
func (r *amRecorder) Write(b []byte) (int, error) { return r.body.Write(b) }

// amChanListener hands the connections loopbackSet accepted to http.Server.
type amChanListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	addr  net.Addr
}

func (l *amChanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, errors.New("listener closed")
	}
}

func (l *amChanListener) close()         { l.once.Do(func() { close(l.done) }) }
func (l *amChanListener) Close() error   { l.close(); return nil }
func (l *amChanListener) Addr() net.Addr { return l.addr }
