package opcua

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/gopcua/opcua/ua"
	"github.com/gopcua/opcua/uacp"
	"github.com/gopcua/opcua/uasc"
)

type uascChannel = uasc.SecureChannel

// The library's client cuts encrypted requests into chunks of up to
// 65536 bytes against an advertised 65535, and the library's server
// sends every response whole, so both connections of the front take
// larger messages than the library's defaults.
var (
	frontACK = &uacp.Acknowledge{ReceiveBufSize: 1 << 17, SendBufSize: 0xFFFF, MaxChunkCount: 512, MaxMessageSize: 4 << 20}
	innerACK = &uacp.Acknowledge{ReceiveBufSize: 1 << 18, SendBufSize: 0xF000, MaxChunkCount: 512, MaxMessageSize: 4 << 20}
)

// front accepts clients, terminates their secure channel and relays
// their requests to the library's server; see the package comment.
type front struct {
	ln    net.Listener
	url   string // what clients dial
	inner string // the library server's private endpoint
	s     *Server

	mu     sync.Mutex
	conns  map[*frontConn]bool
	closed bool
}

func newFront(ln net.Listener, url, inner string, s *Server) *front {
	return &front{ln: ln, url: url, inner: inner, s: s, conns: map[*frontConn]bool{}}
}

func (f *front) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		fc := &frontConn{f: f, client: c.(*net.TCPConn)}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			c.Close()
			return
		}
		f.conns[fc] = true
		f.mu.Unlock()
		go func() {
			err := fc.run()
			if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				f.s.log.Debug("sim opcua: connection ended", "err", err)
			}
			fc.close()
			f.mu.Lock()
			delete(f.conns, fc)
			f.mu.Unlock()
		}()
	}
}

func (f *front) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

func (f *front) close() {
	f.mu.Lock()
	f.closed = true
	conns := make([]*frontConn, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	f.ln.Close()
	for _, c := range conns {
		c.close()
	}
}

// frontConn is one client. Its bytes are copied through a loopback socket
// pair so that the OpenSecureChannel request's security policy (in the
// clear header) is known before the library's server channel is made: the
// channel must start in a mode other than None to decrypt that request.
type frontConn struct {
	f      *front
	client *net.TCPConn
	near   *net.TCPConn // our end of the pair: what we copy client bytes into
	far    *net.TCPConn // the uacp end the secure channel reads
	sc     *uasc.SecureChannel
	inner  *uasc.SecureChannel
	innerC *uacp.Conn
	cancel context.CancelFunc

	mu       sync.Mutex
	sessions map[string]*frontSession // by authentication token
	once     sync.Once
}

type frontSession struct {
	clientCert  []byte
	serverNonce []byte
	activated   bool
}

func (c *frontConn) close() {
	c.once.Do(func() {
		if c.cancel != nil {
			c.cancel()
		}
		c.client.Close()
		if c.near != nil {
			c.near.Close()
		}
		if c.far != nil {
			c.far.Close()
		}
		if c.inner != nil {
			c.inner.Close()
		}
		if c.innerC != nil {
			c.innerC.Close()
		}
	})
}

func (c *frontConn) run() error {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	defer cancel()
	near, far, err := socketPair()
	if err != nil {
		return err
	}
	c.near, c.far = near, far
	// The pair's far end speaks UACP to the channel we make below.
	conn, err := uacp.NewConn(far, frontACK)
	if err != nil {
		return err
	}
	policy := make(chan string, 1)
	go c.pumpIn(policy)
	go func() {
		_, _ = io.Copy(c.client, near)
		c.close()
	}()
	if err := serverHandshake(conn); err != nil {
		return err
	}
	var uri string
	select {
	case uri = <-policy:
	case <-time.After(30 * time.Second):
		return errors.New("no OpenSecureChannel request within 30s")
	case <-ctx.Done():
		return ctx.Err()
	}
	cfg := &uasc.Config{
		SecurityPolicyURI: uri,
		SecurityMode:      ua.MessageSecurityModeNone,
		Certificate:       c.f.s.cfg.Certificate,
		LocalKey:          c.f.s.cfg.Key,
		Lifetime:          uint32(time.Hour / time.Millisecond),
		RequestTimeout:    10 * time.Second,
	}
	if uri != ua.SecurityPolicyURINone {
		// Any mode but None makes the channel decrypt the request; the
		// channel then takes the mode the client asks for.
		cfg.SecurityMode = ua.MessageSecurityModeSign
	}
	errs := make(chan error, 8)
	sc, err := uasc.NewServerSecureChannel(c.f.url, conn, cfg, errs, nextChannelID(), 1, nextChannelID())
	if err != nil {
		return err
	}
	c.sc = sc
	if err := c.dialInner(ctx); err != nil {
		return err
	}
	for {
		msg := sc.Receive(ctx)
		if msg.Err != nil {
			return msg.Err
		}
		req := msg.Request()
		if req == nil {
			continue // the channel handled an OpenSecureChannel itself
		}
		if _, ok := req.(*ua.CloseSecureChannelRequest); ok {
			return io.EOF
		}
		if _, ok := req.(*ua.PublishRequest); ok {
			// A publish is answered only when there is news: it must
			// not hold up the requests behind it.
			go c.handle(ctx, msg.RequestID, req)
			continue
		}
		// Everything else in the order it came, as the library's server
		// itself would take it.
		c.handle(ctx, msg.RequestID, req)
	}
}

var (
	chanMu sync.Mutex
	chanID = uint32(time.Now().UnixNano() & 0x0fffffff)
)

func nextChannelID() uint32 {
	chanMu.Lock()
	defer chanMu.Unlock()
	chanID++
	return chanID
}

// pumpIn copies the client's bytes to the channel, reporting the security
// policy of the first OpenSecureChannel request on the way.
func (c *frontConn) pumpIn(policy chan<- string) {
	defer c.close()
	reported := false
	hdr := make([]byte, 8)
	for {
		if _, err := io.ReadFull(c.client, hdr); err != nil {
			return
		}
		size := binary.LittleEndian.Uint32(hdr[4:])
		if size < 8 || size > 1<<24 {
			return
		}
		body := make([]byte, size-8)
		if _, err := io.ReadFull(c.client, body); err != nil {
			return
		}
		if !reported && string(hdr[:3]) == "OPN" {
			uri, ok := opnPolicy(body)
			if !ok {
				return
			}
			policy <- uri
			reported = true
		}
		if _, err := c.near.Write(append(hdr, body...)); err != nil {
			return
		}
	}
}

// opnPolicy reads the security policy URI from an OPN message body: the
// secure channel id (4 bytes), then the URI as a length-prefixed string.
func opnPolicy(b []byte) (string, bool) {
	if len(b) < 8 {
		return "", false
	}
	n := int32(binary.LittleEndian.Uint32(b[4:]))
	if n < 0 || int(n) > len(b)-8 {
		return "", false
	}
	return string(b[8 : 8+n]), true
}

// serverHandshake answers the client's HEL with our ACK, as the library's
// listener does for its own connections.
func serverHandshake(conn *uacp.Conn) error {
	b, err := conn.Receive()
	if err != nil {
		return err
	}
	if len(b) < 4 || string(b[:4]) != "HELF" {
		conn.SendError(ua.StatusBadTCPMessageTypeInvalid)
		return fmt.Errorf("expected HEL, got %q", b[:min(4, len(b))])
	}
	return conn.Send("ACKF", frontACK)
}

// socketPair connects two loopback TCP sockets.
func socketPair() (*net.TCPConn, *net.TCPConn, error) {
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, nil, err
	}
	defer l.Close()
	type res struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.AcceptTCP()
		ch <- res{c, err}
	}()
	near, err := net.DialTCP("tcp", nil, l.Addr().(*net.TCPAddr))
	if err != nil {
		return nil, nil, err
	}
	r := <-ch
	if r.err != nil {
		near.Close()
		return nil, nil, r.err
	}
	return near, r.c, nil
}

// dialInner opens this client's own channel to the library's server.
// The handshake is ours rather than uacp.Dial's, which would shrink the
// connection's receive buffer to what the server announces.
func (c *frontConn) dialInner(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	tc, err := d.DialContext(dctx, "tcp", strings.TrimPrefix(c.f.inner, "opc.tcp://"))
	if err != nil {
		return err
	}
	conn, err := uacp.NewConn(tc.(*net.TCPConn), innerACK)
	if err != nil {
		tc.Close()
		return err
	}
	c.innerC = conn
	if err := conn.Send("HELF", &uacp.Hello{ReceiveBufSize: innerACK.ReceiveBufSize, SendBufSize: innerACK.SendBufSize,
		MaxMessageSize: innerACK.MaxMessageSize, MaxChunkCount: innerACK.MaxChunkCount, EndpointURL: c.f.inner}); err != nil {
		return err
	}
	b, err := conn.Receive()
	if err != nil {
		return err
	}
	if len(b) < 4 || string(b[:4]) != "ACKF" {
		return fmt.Errorf("the library's server answered the handshake with %q", b[:min(4, len(b))])
	}
	errs := make(chan error, 8)
	sc, err := uasc.NewSecureChannel(c.f.inner, conn, &uasc.Config{
		SecurityPolicyURI: ua.SecurityPolicyURINone,
		SecurityMode:      ua.MessageSecurityModeNone,
		Lifetime:          uint32(time.Hour / time.Millisecond),
		RequestTimeout:    10 * time.Second,
	}, errs)
	if err != nil {
		return err
	}
	if err := sc.Open(dctx); err != nil {
		return err
	}
	c.inner = sc
	return nil
}

// handle answers one request, mostly by relaying it.
func (c *frontConn) handle(ctx context.Context, reqID uint32, req ua.Request) {
	handle := req.Header().RequestHandle
	resp, err := c.answer(ctx, req)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		code, ok := err.(ua.StatusCode)
		if !ok {
			code = ua.StatusBadInternalError
		}
		resp = &ua.ServiceFault{ResponseHeader: responseHeader(handle, code)}
	}
	if h := resp.Header(); h != nil {
		h.RequestHandle = handle
	}
	if err := c.sc.SendResponseWithContext(ctx, reqID, resp); err != nil {
		c.f.s.log.Debug("sim opcua: sending a response", "err", err)
	}
}

func (c *frontConn) answer(ctx context.Context, req ua.Request) (ua.Response, error) {
	switch r := req.(type) {
	case *ua.ReadRequest:
		if len(r.NodesToRead) > MaxNodesPerRead {
			return nil, ua.StatusBadTooManyOperations
		}
	case *ua.GetEndpointsRequest:
		resp, err := c.relay(ctx, req)
		if res, ok := resp.(*ua.GetEndpointsResponse); ok && err == nil {
			res.Endpoints = c.f.public(res.Endpoints)
		}
		return resp, err
	case *ua.CreateSessionRequest:
		return c.createSession(ctx, r)
	case *ua.ActivateSessionRequest:
		return c.activateSession(ctx, r)
	default:
		if !c.activated(req.Header().AuthenticationToken) {
			if _, ok := req.(*ua.FindServersRequest); !ok {
				return nil, ua.StatusBadSessionNotActivated
			}
		}
	}
	return c.relay(ctx, req)
}

// relay sends req to the library's server and returns its answer.
func (c *frontConn) relay(ctx context.Context, req ua.Request) (ua.Response, error) {
	timeout := 10 * time.Second
	if _, ok := req.(*ua.PublishRequest); ok {
		// The library answers a publish only when there is something to
		// publish or a keep-alive is due.
		timeout = time.Hour
	}
	var resp ua.Response
	err := c.inner.SendRequestWithTimeout(ctx, req, req.Header().AuthenticationToken, timeout, func(r ua.Response) error {
		resp = r
		return nil
	})
	if resp != nil {
		// A ServiceFault comes back as an error and a response: pass the
		// response on as it is.
		return resp, nil
	}
	return nil, err
}

func (c *frontConn) activated(tok *ua.NodeID) bool {
	if tok == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sessions[tok.String()]
	return s != nil && s.activated
}

func (c *frontConn) createSession(ctx context.Context, r *ua.CreateSessionRequest) (ua.Response, error) {
	resp, err := c.relay(ctx, r)
	if err != nil {
		return nil, err
	}
	res, ok := resp.(*ua.CreateSessionResponse)
	if !ok {
		return resp, nil
	}
	// The library signed on its unsecured inner channel: sign on ours.
	sig, alg, err := c.sc.NewSessionSignature(r.ClientCertificate, r.ClientNonce)
	if err != nil {
		return nil, ua.StatusBadCertificateInvalid
	}
	res.ServerSignature = &ua.SignatureData{Algorithm: alg, Signature: sig}
	res.ServerEndpoints = c.f.public(res.ServerEndpoints)
	c.mu.Lock()
	if c.sessions == nil {
		c.sessions = map[string]*frontSession{}
	}
	c.sessions[res.AuthenticationToken.String()] = &frontSession{clientCert: r.ClientCertificate, serverNonce: res.ServerNonce}
	c.mu.Unlock()
	return res, nil
}

func (c *frontConn) activateSession(ctx context.Context, r *ua.ActivateSessionRequest) (ua.Response, error) {
	tok := r.Header().AuthenticationToken
	c.mu.Lock()
	s := c.sessions[tok.String()]
	c.mu.Unlock()
	if s == nil {
		return nil, ua.StatusBadSessionIDInvalid
	}
	var sig []byte
	if r.ClientSignature != nil {
		sig = r.ClientSignature.Signature
	}
	// On a channel without security this checks nothing, as the spec says.
	if err := c.sc.VerifySessionSignature(s.clientCert, s.serverNonce, sig); err != nil {
		return nil, ua.StatusBadApplicationSignatureInvalid
	}
	if err := c.f.s.checkUser(r, s.serverNonce); err != nil {
		return nil, err
	}
	resp, err := c.relay(ctx, r)
	if err != nil {
		return nil, err
	}
	if res, ok := resp.(*ua.ActivateSessionResponse); ok && res.ResponseHeader.ServiceResult == ua.StatusOK {
		c.mu.Lock()
		s.serverNonce = res.ServerNonce
		s.activated = true
		c.mu.Unlock()
	}
	return resp, nil
}

// public keeps the endpoints clients can reach (the library also lists
// its private one).
func (f *front) public(eps []*ua.EndpointDescription) []*ua.EndpointDescription {
	var out []*ua.EndpointDescription
	for _, e := range eps {
		if strings.TrimSuffix(e.EndpointURL, "/") == f.url {
			out = append(out, e)
		}
	}
	return out
}

// endpoints returns what the server offers, as GetEndpoints would.
func (f *front) endpoints() []*ua.EndpointDescription {
	return f.public(f.s.lib.Endpoints())
}

func responseHeader(handle uint32, code ua.StatusCode) *ua.ResponseHeader {
	return &ua.ResponseHeader{
		Timestamp:          time.Now(),
		RequestHandle:      handle,
		ServiceResult:      code,
		ServiceDiagnostics: &ua.DiagnosticInfo{},
		StringTable:        []string{},
		AdditionalHeader:   ua.NewExtensionObject(nil),
	}
}
