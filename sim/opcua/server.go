// Package opcua is a simulated OPC UA server on loopback for the demo, the
// tests and the benchmarks: the BMS of the simulated site (chillers' power,
// the battery's state of charge and available discharge power, generator
// availability), and any other address space a test needs.
//
// The OPC UA services are the gopcua library's server (package
// github.com/gopcua/opcua/server). Its v0.8.0 release cannot open a secure
// channel: a server channel starts in security mode None and so never
// decrypts the client's OpenSecureChannel request (upstream issue #815,
// fixed after v0.8.0). Clients therefore talk to a front (front.go) that
// terminates the secure channel with the library's own uasc code, checks
// the client's session signature and user identity, and relays every
// request to the library's server on a private loopback port.
package opcua

import (
	"context"
	"crypto/rsa"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/drivers/opcua/uacert"
)

// MaxNodesPerRead is what the library's server advertises in its
// ServerCapabilities; the front refuses longer reads with
// BadTooManyOperations, as a strict server would.
const MaxNodesPerRead = 32

// NamespaceURI is the namespace of every simulated variable (index 1).
const NamespaceURI = "urn:siteagent:sim"

// Endpoint is one security configuration the server offers.
type Endpoint struct {
	// Policy is the short name: None, Basic128Rsa15, Basic256,
	// Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss.
	Policy string
	Mode   ua.MessageSecurityMode
}

// AllEndpoints are every policy the library supports, in both modes, and
// None.
func AllEndpoints() []Endpoint {
	out := []Endpoint{{"None", ua.MessageSecurityModeNone}}
	for _, p := range []string{"Basic128Rsa15", "Basic256", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"} {
		out = append(out, Endpoint{p, ua.MessageSecurityModeSign}, Endpoint{p, ua.MessageSecurityModeSignAndEncrypt})
	}
	return out
}

// Config sets up a server.
type Config struct {
	// Addr to listen on; "127.0.0.1:0" picks a free port.
	Addr string
	// ApplicationURI of the server; "urn:siteagent:sim:server" unless set.
	ApplicationURI string
	// Certificate (DER) and Key of the server; a fresh self-signed pair
	// unless set.
	Certificate []byte
	Key         *rsa.PrivateKey
	// Endpoints offered; AllEndpoints unless set.
	Endpoints []Endpoint
	// NoAnonymous refuses sessions without a user.
	NoAnonymous bool
	// Users that may log in with a password.
	Users map[string]string
	// UserCertificates (DER) that may log in with a certificate.
	UserCertificates [][]byte
	// RefuseFilters answers a monitored item asking for a data change
	// filter with BadMonitoredItemFilterUnsupported, as servers without
	// deadband support do.
	RefuseFilters bool
	// MaxMonitoredItems, when set, refuses monitored items beyond this
	// many with BadTooManyMonitoredItems.
	MaxMonitoredItems int
	// Log receives the server's own messages; discarded unless set.
	Log *slog.Logger
}

// Server is a running simulated server. Its variables live in namespace 1
// and are reached from the Objects folder.
type Server struct {
	cfg   Config
	log   *slog.Logger
	lib   *server.Server
	ns    *server.NodeNameSpace
	front *front

	mu        sync.Mutex
	monitored int // items created, for MaxMonitoredItems
	folders   map[string]*server.Node
	vars      map[string]*Variable
	frozen    bool
	closed    bool
}

// Start builds the server and listens. Close stops it.
func Start(cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.ApplicationURI == "" {
		cfg.ApplicationURI = "urn:siteagent:sim:server"
	}
	if cfg.Endpoints == nil {
		cfg.Endpoints = AllEndpoints()
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Certificate == nil || cfg.Key == nil {
		der, key, err := uacert.Generate(uacert.Options{ApplicationURI: cfg.ApplicationURI, Hosts: []string{"127.0.0.1", "localhost"}})
		if err != nil {
			return nil, err
		}
		cfg.Certificate, cfg.Key = der, key
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, err
	}
	fhost, fport, _ := net.SplitHostPort(ln.Addr().String())
	innerPort, err := freePort()
	if err != nil {
		ln.Close()
		return nil, err
	}
	fp, _ := strconv.Atoi(fport)
	opts := []server.Option{
		// The first endpoint is where the library listens: private. The
		// second is what clients see: the front's address.
		server.EndPoint("127.0.0.1", innerPort),
		server.EndPoint(fhost, fp),
		server.Certificate(cfg.Certificate),
		server.PrivateKey(cfg.Key),
		server.ServerName("siteagent simulated BMS"),
		server.SetLogger(libLogger{log}),
		server.EnableAuthMode(ua.UserTokenTypeAnonymous),
		server.EnableAuthMode(ua.UserTokenTypeUserName),
		server.EnableAuthMode(ua.UserTokenTypeCertificate),
	}
	for _, e := range cfg.Endpoints {
		opts = append(opts, server.EnableSecurity(e.Policy, e.Mode))
	}
	lib := server.New(opts...)
	s := &Server{cfg: cfg, log: log, lib: lib, folders: map[string]*server.Node{}, vars: map[string]*Variable{}}
	s.ns = server.NewNodeNameSpace(lib, NamespaceURI)
	fixSubscriptionIDs(lib)
	s.limitMonitoredItems()
	if err := lib.Start(context.Background()); err != nil {
		ln.Close()
		return nil, err
	}
	frontURL := fmt.Sprintf("opc.tcp://%s:%d", fhost, fp)
	s.front = newFront(ln, frontURL, fmt.Sprintf("opc.tcp://127.0.0.1:%d", innerPort), s)
	go s.front.serve()
	return s, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// URL is the endpoint clients dial: opc.tcp://host:port.
func (s *Server) URL() string { return s.front.url }

// Addr is the host:port clients dial.
func (s *Server) Addr() string { return strings.TrimPrefix(s.front.url, "opc.tcp://") }

// Certificate is the server's certificate (DER).
func (s *Server) Certificate() []byte { return s.cfg.Certificate }

// Close stops listening, drops every connection and stops the library's
// server. It is safe to call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.front.close()
	if err := s.lib.Close(); err != nil {
		s.log.Debug("closing the library server", "err", err)
	}
}

// Sessions counts the secure channels open now (for tests of reconnects).
func (s *Server) Sessions() int { return s.front.count() }

// FreezeSubscriptions stops (true) or resumes (false) every data change
// notification: the subscriptions stay alive and keep sending keep-alives,
// values keep changing and a Read sees them, but nothing is delivered.
// This is the "subscription connected but silent" failure.
func (s *Server) FreezeSubscriptions(frozen bool) {
	s.mu.Lock()
	s.frozen = frozen
	s.mu.Unlock()
}

// Variable is one simulated variable.
type Variable struct {
	s    *Server
	id   *ua.NodeID
	path string
	mu   sync.Mutex
	dv   ua.DataValue
}

// NodeID is the variable's node id ("ns=1;s=Battery.SoC").
func (v *Variable) NodeID() *ua.NodeID { return v.id }

// Path is its browse path from the Objects folder ("1:Battery/1:SoC").
func (v *Variable) Path() string { return v.path }

// Add creates a variable at path ("Battery/SoC": folders separated by '/',
// the last part is the variable's name) holding value. Its node id is
// ns=1;s=<path with '/' replaced by '.'>.
func (s *Server) Add(path string, value any) (*Variable, error) {
	parts := strings.Split(path, "/")
	for _, p := range parts {
		if p == "" {
			return nil, fmt.Errorf("sim opcua: path %q has an empty part", path)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.vars[path]; dup {
		return nil, fmt.Errorf("sim opcua: %s already exists", path)
	}
	parent := s.objects()
	for i := range parts[:len(parts)-1] {
		parent = s.folder(parent, strings.Join(parts[:i+1], "/"), parts[i])
	}
	v := &Variable{s: s, id: ua.NewStringNodeID(s.ns.ID(), strings.Join(parts, "."))}
	var bp []string
	for _, p := range parts {
		bp = append(bp, fmt.Sprintf("%d:%s", s.ns.ID(), p))
	}
	v.path = strings.Join(bp, "/")
	variant, err := ua.NewVariant(value)
	if err != nil {
		return nil, fmt.Errorf("sim opcua: %s: %w", path, err)
	}
	v.dv = stamped(variant, ua.StatusOK, time.Now())
	name := parts[len(parts)-1]
	n := server.NewNode(v.id, server.Attributes{
		ua.AttributeIDNodeClass:   server.DataValueFromValue(uint32(ua.NodeClassVariable)),
		ua.AttributeIDBrowseName:  server.DataValueFromValue(&ua.QualifiedName{NamespaceIndex: s.ns.ID(), Name: name}),
		ua.AttributeIDDisplayName: server.DataValueFromValue(&ua.LocalizedText{EncodingMask: ua.LocalizedTextText, Text: name}),
		ua.AttributeIDDataType:    server.DataValueFromValue(ua.NewNumericExpandedNodeID(0, dataTypeOf(variant))),
		ua.AttributeIDAccessLevel: server.DataValueFromValue(byte(ua.AccessLevelTypeCurrentRead)),
	}, nil, v.read)
	s.ns.AddNode(n)
	parent.AddRef(n, id.HasComponent, true)
	s.vars[path] = v
	return v, nil
}

// MustAdd is Add for fixed test and simulator layouts; it panics on a
// mistake in the layout.
func (s *Server) MustAdd(path string, value any) *Variable {
	v, err := s.Add(path, value)
	if err != nil {
		panic(err)
	}
	return v
}

func (s *Server) objects() *server.Node {
	ns0, _ := s.lib.Namespace(0)
	return ns0.Objects()
}

// folder returns the object node at key, creating it under parent.
func (s *Server) folder(parent *server.Node, key, name string) *server.Node {
	if f, ok := s.folders[key]; ok {
		return f
	}
	f := server.NewNode(ua.NewStringNodeID(s.ns.ID(), strings.ReplaceAll(key, "/", ".")), server.Attributes{
		ua.AttributeIDNodeClass:   server.DataValueFromValue(uint32(ua.NodeClassObject)),
		ua.AttributeIDBrowseName:  server.DataValueFromValue(&ua.QualifiedName{NamespaceIndex: s.ns.ID(), Name: name}),
		ua.AttributeIDDisplayName: server.DataValueFromValue(&ua.LocalizedText{EncodingMask: ua.LocalizedTextText, Text: name}),
	}, nil, nil)
	s.ns.AddNode(f)
	parent.AddRef(f, id.Organizes, true)
	s.folders[key] = f
	return f
}

// read serves the variable to the library: a copy, stamped with the
// server's time of the answer as a real server does.
func (v *Variable) read() *ua.DataValue {
	v.mu.Lock()
	dv := v.dv
	v.mu.Unlock()
	dv.ServerTimestamp = time.Now()
	return &dv
}

// Set gives the variable a new Good value stamped now.
func (v *Variable) Set(value any) error {
	return v.SetAt(value, ua.StatusOK, time.Now())
}

// SetStatus keeps the value but changes its status code (a Bad code
// says the value must not be used).
func (v *Variable) SetStatus(code ua.StatusCode) {
	v.mu.Lock()
	v.dv.Status = code
	v.dv.SourceTimestamp = time.Now()
	v.mu.Unlock()
	v.s.notify(v.id)
}

// SetAt sets value, status and source time.
func (v *Variable) SetAt(value any, code ua.StatusCode, source time.Time) error {
	variant, err := ua.NewVariant(value)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.dv = stamped(variant, code, source)
	v.mu.Unlock()
	v.s.notify(v.id)
	return nil
}

// Value returns the variable's value as last set.
func (v *Variable) Value() any {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.dv.Value.Value()
}

func (s *Server) notify(n *ua.NodeID) {
	s.mu.Lock()
	quiet := s.frozen || s.closed
	s.mu.Unlock()
	if !quiet {
		s.lib.ChangeNotification(n)
	}
}

func stamped(v *ua.Variant, code ua.StatusCode, source time.Time) ua.DataValue {
	return ua.DataValue{
		EncodingMask:    ua.DataValueValue | ua.DataValueStatusCode | ua.DataValueSourceTimestamp | ua.DataValueServerTimestamp,
		Value:           v,
		Status:          code,
		SourceTimestamp: source,
		ServerTimestamp: time.Now(),
	}
}

// dataTypeOf maps a variant's type to its DataType node (namespace 0).
func dataTypeOf(v *ua.Variant) uint32 {
	switch v.Type() {
	case ua.TypeIDBoolean:
		return id.Boolean
	case ua.TypeIDSByte:
		return id.SByte
	case ua.TypeIDByte:
		return id.Byte
	case ua.TypeIDInt16:
		return id.Int16
	case ua.TypeIDUint16:
		return id.UInt16
	case ua.TypeIDInt32:
		return id.Int32
	case ua.TypeIDUint32:
		return id.UInt32
	case ua.TypeIDInt64:
		return id.Int64
	case ua.TypeIDUint64:
		return id.UInt64
	case ua.TypeIDFloat:
		return id.Float
	case ua.TypeIDDouble:
		return id.Double
	case ua.TypeIDString:
		return id.String
	case ua.TypeIDDateTime:
		return id.DateTime
	}
	return id.BaseDataType
}

// fixSubscriptionIDs works around the library server numbering a new
// subscription len(subscriptions)+1, which reuses the id of a live
// subscription once an older one is gone (every reconnect or recreate
// does that). A clash is moved to a free id before the client learns it,
// so two clients never share one subscription. It also refuses a
// subscription for a session that no longer exists.
func fixSubscriptionIDs(lib *server.Server) {
	var mu sync.Mutex // creations one at a time, so the snapshot below holds
	lib.RegisterHandler(id.CreateSubscriptionRequest_Encoding_DefaultBinary, func(sc *uascChannel, r ua.Request, reqID uint32) (ua.Response, error) {
		mu.Lock()
		defer mu.Unlock()
		// The library makes a subscription without a session when the
		// session is gone, and that subscription's goroutine then
		// crashes the process at its first keep-alive.
		if hdr := r.Header(); hdr == nil || lib.Session(hdr) == nil {
			return nil, ua.StatusBadSessionIDInvalid
		}
		ss := lib.SubscriptionService
		ss.Mu.Lock()
		before := make(map[uint32]*server.Subscription, len(ss.Subs))
		for k, v := range ss.Subs {
			before[k] = v
		}
		ss.Mu.Unlock()
		resp, err := ss.CreateSubscription(sc, r, reqID)
		if err != nil {
			return resp, err
		}
		res, ok := resp.(*ua.CreateSubscriptionResponse)
		if !ok {
			return resp, nil
		}
		old, clash := before[res.SubscriptionID]
		if !clash {
			return resp, nil
		}
		ss.Mu.Lock()
		sub := ss.Subs[res.SubscriptionID]
		fresh := uint32(1)
		for k := range ss.Subs {
			fresh = max(fresh, k+1)
		}
		for k := range before {
			fresh = max(fresh, k+1)
		}
		// No publish request can reach the new subscription before this
		// response does, so changing its id here is safe.
		sub.ID = fresh
		ss.Subs[fresh] = sub
		ss.Subs[res.SubscriptionID] = old
		ss.Mu.Unlock()
		res.SubscriptionID = fresh
		return res, nil
	})
}

// limitMonitoredItems puts RefuseFilters and MaxMonitoredItems in front
// of the library's CreateMonitoredItems, which accepts anything.
func (s *Server) limitMonitoredItems() {
	s.lib.RegisterHandler(id.CreateMonitoredItemsRequest_Encoding_DefaultBinary, func(sc *uascChannel, r ua.Request, reqID uint32) (ua.Response, error) {
		req, ok := r.(*ua.CreateMonitoredItemsRequest)
		if !ok {
			return nil, ua.StatusBadRequestTypeInvalid
		}
		results := make([]*ua.MonitoredItemCreateResult, len(req.ItemsToCreate))
		var pass []*ua.MonitoredItemCreateRequest
		var at []int
		s.mu.Lock()
		for i, it := range req.ItemsToCreate {
			p := it.RequestedParameters
			switch {
			case s.cfg.RefuseFilters && p != nil && p.Filter != nil && p.Filter.Value != nil:
				results[i] = &ua.MonitoredItemCreateResult{StatusCode: ua.StatusBadMonitoredItemFilterUnsupported, FilterResult: ua.NewExtensionObject(nil)}
			case s.cfg.MaxMonitoredItems > 0 && s.monitored >= s.cfg.MaxMonitoredItems:
				results[i] = &ua.MonitoredItemCreateResult{StatusCode: ua.StatusBadTooManyMonitoredItems, FilterResult: ua.NewExtensionObject(nil)}
			default:
				s.monitored++
				pass = append(pass, it)
				at = append(at, i)
			}
		}
		s.mu.Unlock()
		if len(pass) > 0 {
			part := *req
			part.ItemsToCreate = pass
			resp, err := s.lib.MonitoredItemService.CreateMonitoredItems(sc, &part, reqID)
			if err != nil {
				return resp, err
			}
			res, ok := resp.(*ua.CreateMonitoredItemsResponse)
			if !ok || len(res.Results) != len(pass) {
				return resp, nil
			}
			for j, r := range res.Results {
				results[at[j]] = r
			}
		}
		return &ua.CreateMonitoredItemsResponse{
			ResponseHeader:  responseHeader(req.RequestHeader.RequestHandle, ua.StatusOK),
			Results:         results,
			DiagnosticInfos: []*ua.DiagnosticInfo{},
		}, nil
	})
}

// libLogger adapts slog to the library's printf-style logger, at debug
// level: the library is chatty about routine events.
type libLogger struct{ l *slog.Logger }

func (l libLogger) Debug(msg string, args ...any) {}
func (l libLogger) Info(msg string, args ...any)  { l.l.Debug(fmt.Sprintf(msg, args...)) }
func (l libLogger) Warn(msg string, args ...any)  { l.l.Debug(fmt.Sprintf(msg, args...)) }
func (l libLogger) Error(msg string, args ...any) { l.l.Debug(fmt.Sprintf(msg, args...)) }
