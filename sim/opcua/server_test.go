package opcua

import (
	"context"
	"crypto/rsa"
	"strings"
	"testing"
	"time"

	gopcua "github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/drivers/opcua/uacert"
)

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func clientCert(t *testing.T) ([]byte, *rsa.PrivateKey) {
	t.Helper()
	der, key, err := uacert.Generate(uacert.Options{ApplicationURI: "urn:siteagent:test"})
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// connect opens a session on the endpoint with policy and mode, as the
// given user, using the library's client directly.
func connect(t *testing.T, s *Server, policy string, mode ua.MessageSecurityMode, auth ua.UserTokenType, opts ...gopcua.Option) (*gopcua.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	eps, err := gopcua.GetEndpoints(ctx, s.URL())
	if err != nil {
		t.Fatalf("GetEndpoints: %v", err)
	}
	ep, err := gopcua.SelectEndpoint(eps, policy, mode)
	if err != nil {
		t.Fatalf("no endpoint %s/%s: %v", policy, mode, err)
	}
	der, key := clientCert(t)
	o := append([]gopcua.Option{gopcua.AutoReconnect(false), gopcua.RequestTimeout(5 * time.Second)}, opts...)
	o = append(o, gopcua.SecurityFromEndpoint(ep, auth), gopcua.Certificate(der), gopcua.PrivateKey(key))
	c, err := gopcua.NewClient(s.URL(), o...)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c, nil
}

func readOne(t *testing.T, c *gopcua.Client, id *ua.NodeID) *ua.DataValue {
	t.Helper()
	res, err := c.Read(context.Background(), &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{NodeID: id}}, TimestampsToReturn: ua.TimestampsToReturnBoth})
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return res.Results[0]
}

func TestEveryEndpointConnectsAndReads(t *testing.T) {
	s := start(t, Config{})
	v := s.MustAdd("Battery/SoC", 42.5)
	for _, e := range AllEndpoints() {
		t.Run(e.Policy+"_"+strings.TrimPrefix(e.Mode.String(), "MessageSecurityMode"), func(t *testing.T) {
			c, err := connect(t, s, e.Policy, e.Mode, ua.UserTokenTypeAnonymous)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			dv := readOne(t, c, v.NodeID())
			if dv.Status != ua.StatusOK || dv.Value.Value() != 42.5 || dv.SourceTimestamp.IsZero() {
				t.Fatalf("read %v %v at %v", dv.Value.Value(), dv.Status, dv.SourceTimestamp)
			}
		})
	}
}

func TestUsersArePasswordChecked(t *testing.T) {
	s := start(t, Config{NoAnonymous: true, Users: map[string]string{"ops": "s3cret"}})
	v := s.MustAdd("Gen/Available", true)
	if _, err := connect(t, s, "Basic256Sha256", ua.MessageSecurityModeSignAndEncrypt, ua.UserTokenTypeAnonymous); err == nil {
		t.Error("anonymous session accepted by a server that refuses it")
	}
	if _, err := connect(t, s, "Basic256Sha256", ua.MessageSecurityModeSignAndEncrypt, ua.UserTokenTypeUserName, gopcua.AuthUsername("ops", "wrong")); err == nil {
		t.Error("wrong password accepted")
	}
	c, err := connect(t, s, "Aes256_Sha256_RsaPss", ua.MessageSecurityModeSign, ua.UserTokenTypeUserName, gopcua.AuthUsername("ops", "s3cret"))
	if err != nil {
		t.Fatalf("right password refused: %v", err)
	}
	if dv := readOne(t, c, v.NodeID()); dv.Value.Value() != true {
		t.Errorf("read %v", dv.Value.Value())
	}
}

func TestUserCertificatesAreChecked(t *testing.T) {
	known, key := clientCert(t)
	stranger, skey := clientCert(t)
	s := start(t, Config{NoAnonymous: true, UserCertificates: [][]byte{known}})
	if _, err := connect(t, s, "Basic256Sha256", ua.MessageSecurityModeSignAndEncrypt, ua.UserTokenTypeCertificate,
		gopcua.AuthCertificate(stranger), gopcua.AuthPrivateKey(skey)); err == nil {
		t.Error("unknown user certificate accepted")
	}
	// The right certificate with someone else's key cannot sign for it.
	if _, err := connect(t, s, "Basic256Sha256", ua.MessageSecurityModeSignAndEncrypt, ua.UserTokenTypeCertificate,
		gopcua.AuthCertificate(known), gopcua.AuthPrivateKey(skey)); err == nil {
		t.Error("user certificate accepted with a key that is not its own")
	}
	if _, err := connect(t, s, "Aes128_Sha256_RsaOaep", ua.MessageSecurityModeSignAndEncrypt, ua.UserTokenTypeCertificate,
		gopcua.AuthCertificate(known), gopcua.AuthPrivateKey(key)); err != nil {
		t.Errorf("known user certificate refused: %v", err)
	}
}

func TestLongReadsAreRefused(t *testing.T) {
	s := start(t, Config{})
	v := s.MustAdd("X", int32(1))
	c, err := connect(t, s, "None", ua.MessageSecurityModeNone, ua.UserTokenTypeAnonymous)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]*ua.ReadValueID, MaxNodesPerRead+1)
	for i := range ids {
		ids[i] = &ua.ReadValueID{NodeID: v.NodeID()}
	}
	_, err = c.Read(context.Background(), &ua.ReadRequest{NodesToRead: ids})
	if err != ua.StatusBadTooManyOperations {
		t.Errorf("read of %d nodes: %v, want BadTooManyOperations", len(ids), err)
	}
	res, err := c.Read(context.Background(), &ua.ReadRequest{NodesToRead: ids[:MaxNodesPerRead]})
	if err != nil || len(res.Results) != MaxNodesPerRead {
		t.Errorf("read of %d nodes: %v", MaxNodesPerRead, err)
	}
}
