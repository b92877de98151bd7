package opcua

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	gopcua "github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/drivers/opcua/uacert"
)

// This file serves the technician tools (`siteagent opcua browse`): the
// same connection code as the agent's, and a walk of the address space.

// EndpointInfo is one security configuration a server offers.
type EndpointInfo struct {
	Policy        string // short name, e.g. "Basic256Sha256"
	Mode          string // "None", "Sign", "SignAndEncrypt"
	SecurityLevel uint8
	Logins        string // "anonymous, username/password"
	Certificate   []byte // the server's certificate (DER)
}

// Endpoints asks a server what it offers, over the unsecured discovery
// channel every OPC UA server keeps for this.
func Endpoints(ctx context.Context, endpoint string, timeout time.Duration) ([]EndpointInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	eps, err := gopcua.GetEndpoints(ctx, endpoint, gopcua.DialTimeout(timeout), gopcua.RequestTimeout(timeout))
	if err != nil {
		return nil, err
	}
	out := make([]EndpointInfo, len(eps))
	for i, e := range eps {
		out[i] = EndpointInfo{Policy: PolicyName(e.SecurityPolicyURI), Mode: ModeName(e.SecurityMode), SecurityLevel: e.SecurityLevel, Logins: tokenNames(e), Certificate: e.ServerCertificate}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].SecurityLevel > out[j].SecurityLevel })
	return out, nil
}

// OpenOptions adapt Open to a person at a terminal.
type OpenOptions struct {
	// TrustServer accepts the server's certificate when cfg pins none:
	// a technician discovering a server, who is shown its fingerprint.
	TrustServer bool
	// EphemeralCertificate makes a throwaway agent certificate when cfg
	// names none (servers that check client certificates refuse it).
	EphemeralCertificate bool
}

// Session is an open session for the tools.
type Session struct {
	c   *gopcua.Client
	cfg SourceConfig
	ep  *ua.EndpointDescription
}

// Open connects with cfg's endpoint, security and login; its points are
// ignored. The SHA-1 policies and None need cfg.AllowInsecure, as in the
// site file.
func Open(ctx context.Context, cfg SourceConfig, o OpenOptions) (*Session, error) {
	d := cfg.WithDefaults()
	if _, ok := PolicyURI(d.SecurityPolicy); !ok {
		return nil, fmt.Errorf("security policy %q is unknown; use %s", d.SecurityPolicy, policyList)
	}
	if _, ok := ParseMode(d.SecurityMode); !ok {
		return nil, fmt.Errorf("security mode %q is unknown; use SignAndEncrypt, Sign or None", d.SecurityMode)
	}
	if Insecure(d.SecurityPolicy) && !d.AllowInsecure {
		return nil, fmt.Errorf("security policy %s does not protect the connection; allow it explicitly if this server offers nothing better", d.SecurityPolicy)
	}
	cr, err := loadCreds(&d)
	if err != nil {
		return nil, err
	}
	if cr.cert == nil && d.SecurityPolicy != "None" && o.EphemeralCertificate {
		der, key, err := uacert.Generate(uacert.Options{ApplicationURI: "urn:siteagent:tool"})
		if err != nil {
			return nil, err
		}
		cr.cert, cr.key = der, key
	}
	trust := o.TrustServer && cr.pinDER == nil && cr.pinFP == nil
	c, ep, err := dial(ctx, &d, cr, dialOptions{trustAny: trust, requestTimeout: d.Timeout, sessionTimeout: time.Minute})
	if err != nil {
		return nil, err
	}
	return &Session{c: c, cfg: d, ep: ep}, nil
}

// Close ends the session.
func (s *Session) Close() { closeQuietly(s.c) }

// ServerCertificate is the certificate of the endpoint in use (DER).
func (s *Session) ServerCertificate() []byte { return s.ep.ServerCertificate }

// Login says how the session logged in.
func (s *Session) Login() string { return tokenName(tokenType(&s.cfg)) }

// Node is one node found by Browse.
type Node struct {
	Path     string // browse path from the start, "1:Battery/1:SoC"
	ID       string // node id, "ns=1;s=Battery.SoC"
	Class    string // "Object", "Variable", ...
	DataType string // variables only: "Double", "Boolean", ...
	Value    string // variables only: the value now
	Status   string // variables only: the value's status
	Numeric  bool   // the value can be a point
}

// Browse walks the address space from root ("" for the Objects folder, or
// a node id) down to depth levels, calling fn for each node in order.
func (s *Session) Browse(ctx context.Context, root string, depth int, fn func(Node) error) error {
	start := ua.NewNumericNodeID(0, id.ObjectsFolder)
	if root != "" {
		ref, err := parseNode(root)
		if err != nil {
			return err
		}
		var ns []string
		if ref.uri != "" {
			if ns, err = s.c.NamespaceArray(ctx); err != nil {
				return err
			}
		}
		if start, err = ref.resolve(ns); err != nil {
			return err
		}
	}
	return s.walk(ctx, start, "", depth, fn)
}

func (s *Session) walk(ctx context.Context, n *ua.NodeID, prefix string, depth int, fn func(Node) error) error {
	if depth <= 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	kids, err := browseChildren(rctx, s.c, n)
	cancel()
	if err != nil {
		return err
	}
	nodes := make([]Node, len(kids))
	var vars []int
	for i, k := range kids {
		name := "?"
		if k.name != nil {
			name = fmt.Sprintf("%d:%s", k.name.NamespaceIndex, k.name.Name)
		}
		path := name
		if prefix != "" {
			path = prefix + "/" + name
		}
		nodes[i] = Node{Path: path, ID: k.id.String(), Class: strings.TrimPrefix(k.class.String(), "NodeClass")}
		if k.class == ua.NodeClassVariable {
			vars = append(vars, i)
		}
	}
	if err := s.describe(ctx, kids, nodes, vars); err != nil {
		return err
	}
	for i, k := range kids {
		if err := fn(nodes[i]); err != nil {
			return err
		}
		// Variables may hold properties (EngineeringUnits, EURange):
		// worth seeing when choosing a point's unit.
		if k.class == ua.NodeClassObject || k.class == ua.NodeClassVariable {
			if err := s.walk(ctx, k.id, nodes[i].Path, depth-1, fn); err != nil {
				return err
			}
		}
	}
	return nil
}

// describe reads the data type and value of the variables among nodes.
func (s *Session) describe(ctx context.Context, kids []child, nodes []Node, vars []int) error {
	const chunk = 16 // two attributes each: within any server's read limit
	for len(vars) > 0 {
		part := vars[:min(chunk, len(vars))]
		vars = vars[len(part):]
		var ids []*ua.ReadValueID
		for _, i := range part {
			ids = append(ids,
				&ua.ReadValueID{NodeID: kids[i].id, AttributeID: ua.AttributeIDDataType},
				&ua.ReadValueID{NodeID: kids[i].id, AttributeID: ua.AttributeIDValue})
		}
		rctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
		res, err := s.c.Read(rctx, &ua.ReadRequest{NodesToRead: ids, TimestampsToReturn: ua.TimestampsToReturnBoth})
		cancel()
		if err != nil {
			return err
		}
		if len(res.Results) != len(ids) {
			return errors.New("the server answered a read with the wrong number of values")
		}
		for j, i := range part {
			dt, val := res.Results[2*j], res.Results[2*j+1]
			if dt != nil && dt.Value != nil {
				switch nid := dt.Value.Value().(type) {
				case *ua.NodeID:
					nodes[i].DataType = dataTypeName(nid)
				case *ua.ExpandedNodeID: // what some servers send instead
					nodes[i].DataType = dataTypeName(nid.NodeID)
				}
			}
			if val == nil {
				continue
			}
			nodes[i].Status = statusName(val.Status)
			if val.Value != nil {
				nodes[i].Value = fmt.Sprint(val.Value.Value())
				_, why := number(val.Value)
				nodes[i].Numeric = why == ""
			}
		}
	}
	return nil
}

var dataTypes = map[uint32]string{
	id.Boolean: "Boolean", id.SByte: "SByte", id.Byte: "Byte", id.Int16: "Int16", id.UInt16: "UInt16",
	id.Int32: "Int32", id.UInt32: "UInt32", id.Int64: "Int64", id.UInt64: "UInt64", id.Float: "Float",
	id.Double: "Double", id.String: "String", id.DateTime: "DateTime", id.ByteString: "ByteString",
	id.LocalizedText: "LocalizedText", id.NodeID: "NodeId", id.StatusCode: "StatusCode", id.Number: "Number",
	id.BaseDataType: "BaseDataType", id.Enumeration: "Enumeration",
}

func dataTypeName(n *ua.NodeID) string {
	if n.Namespace() == 0 {
		if s, ok := dataTypes[n.IntID()]; ok {
			return s
		}
	}
	return n.String()
}
