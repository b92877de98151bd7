package opcua

import (
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"strings"
	"time"

	gopcua "github.com/gopcua/opcua"
	"github.com/gopcua/opcua/ua"

	"github.com/siteagent/siteagent/drivers/opcua/uacert"
)

// ErrCertificateMismatch is returned (wrapped) when the server presents a
// certificate other than the pinned one.
var ErrCertificateMismatch = errors.New("the server's certificate does not match the pinned one")

// creds are what a connection needs from files. They are read at every
// connection attempt, so renewed files are picked up without a restart.
type creds struct {
	cert     []byte // DER
	key      *rsa.PrivateKey
	pinDER   []byte
	pinFP    *[32]byte
	password string
	userCert []byte
	userKey  *rsa.PrivateKey
}

// loadCreds reads the files cfg (with defaults) names.
func loadCreds(cfg *SourceConfig) (*creds, error) {
	cr := &creds{}
	if cfg.CertificateFile != "" {
		der, key, err := uacert.ReadPair(credentialPath(cfg.CertificateFile), credentialPath(cfg.PrivateKeyFile))
		if err != nil {
			return nil, fmt.Errorf("the agent's certificate: %w", err)
		}
		cr.cert, cr.key = der, key
	}
	if cfg.ServerCertificateFile != "" {
		der, _, err := uacert.ReadCertificate(credentialPath(cfg.ServerCertificateFile))
		if err != nil {
			return nil, fmt.Errorf("the pinned server certificate: %w", err)
		}
		cr.pinDER = der
	}
	if cfg.ServerFingerprint != "" {
		fp, err := uacert.ParseFingerprint(cfg.ServerFingerprint)
		if err != nil {
			return nil, fmt.Errorf("server_fingerprint: %w", err)
		}
		cr.pinFP = &fp
	}
	if cfg.PasswordFile != "" {
		pw, err := readPassword(cfg.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("user %s: %w", cfg.Username, err)
		}
		cr.password = pw
	}
	if cfg.UserCertificateFile != "" {
		der, key, err := uacert.ReadPair(credentialPath(cfg.UserCertificateFile), credentialPath(cfg.UserPrivateKeyFile))
		if err != nil {
			return nil, fmt.Errorf("the user certificate: %w", err)
		}
		cr.userCert, cr.userKey = der, key
	}
	return cr, nil
}

// tokenType is the kind of login cfg asks for.
func tokenType(cfg *SourceConfig) ua.UserTokenType {
	switch {
	case cfg.Username != "":
		return ua.UserTokenTypeUserName
	case cfg.UserCertificateFile != "":
		return ua.UserTokenTypeCertificate
	}
	return ua.UserTokenTypeAnonymous
}

// pinned checks a server certificate against the pin; with no pin (policy
// None, or a tool told to trust any server) anything passes.
func (cr *creds) pinned(der []byte) error {
	switch {
	case cr.pinDER != nil && !bytes.Equal(cr.pinDER, der):
		return fmt.Errorf("%w: the server presents SHA-256 %s, server_certificate_file holds %s; if the server's certificate was renewed on purpose, replace the file",
			ErrCertificateMismatch, fingerprintOrNone(der), uacert.Fingerprint(cr.pinDER))
	case cr.pinFP != nil && !uacert.MatchesFingerprint(der, *cr.pinFP):
		return fmt.Errorf("%w: the server presents SHA-256 %s, server_fingerprint pins another; if the server's certificate was renewed on purpose, update server_fingerprint",
			ErrCertificateMismatch, fingerprintOrNone(der))
	}
	return nil
}

func fingerprintOrNone(der []byte) string {
	if len(der) == 0 {
		return "(no certificate)"
	}
	return uacert.Fingerprint(der)
}

// dialOptions tune dial for tools.
type dialOptions struct {
	// trustAny skips the pin check (the browse tool, which prints the
	// fingerprint so that a technician can pin it).
	trustAny bool
	// requestTimeout for every request on the session (publishes wait
	// longer than other requests, which get their own deadline).
	requestTimeout time.Duration
	sessionTimeout time.Duration
}

// dial discovers the server's endpoints, picks the one cfg asks for,
// checks the server's certificate against the pin and opens a session.
func dial(ctx context.Context, cfg *SourceConfig, cr *creds, o dialOptions) (*gopcua.Client, *ua.EndpointDescription, error) {
	policyURI, _ := PolicyURI(cfg.SecurityPolicy)
	mode, _ := ParseMode(cfg.SecurityMode)
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	eps, err := gopcua.GetEndpoints(dctx, cfg.Endpoint, gopcua.DialTimeout(cfg.Timeout), gopcua.RequestTimeout(cfg.Timeout))
	if err != nil {
		return nil, nil, fmt.Errorf("asking %s for its endpoints: %w", cfg.Endpoint, err)
	}
	var ep *ua.EndpointDescription
	var offers []string
	for _, e := range eps {
		offers = append(offers, PolicyName(e.SecurityPolicyURI)+"/"+ModeName(e.SecurityMode))
		if e.SecurityPolicyURI == policyURI && e.SecurityMode == mode && ep == nil {
			ep = e
		}
	}
	if ep == nil {
		return nil, nil, fmt.Errorf("the server offers no %s/%s endpoint; it offers %s: set security_policy and security_mode to one of these", cfg.SecurityPolicy, cfg.SecurityMode, strings.Join(offers, ", "))
	}
	serverCert := ep.ServerCertificate
	if !o.trustAny {
		if err := cr.pinned(serverCert); err != nil {
			return nil, ep, err
		}
	}
	tt := tokenType(cfg)
	if !offersToken(ep, tt) {
		return nil, ep, fmt.Errorf("the server's %s/%s endpoint offers no %s login; it offers %s", cfg.SecurityPolicy, cfg.SecurityMode, tokenName(tt), tokenNames(ep))
	}
	opts := []gopcua.Option{
		gopcua.AutoReconnect(false), // reconnects are ours: see Source.Run
		gopcua.DialTimeout(cfg.Timeout),
		gopcua.RequestTimeout(o.requestTimeout),
		gopcua.SessionTimeout(o.sessionTimeout),
		gopcua.ApplicationName("siteagent"),
		gopcua.ProductURI("urn:siteagent"),
		gopcua.SessionName("siteagent " + cfg.Name),
	}
	switch tt {
	case ua.UserTokenTypeUserName:
		opts = append(opts, gopcua.AuthUsername(cfg.Username, cr.password))
	case ua.UserTokenTypeCertificate:
		opts = append(opts, gopcua.AuthCertificate(cr.userCert), gopcua.AuthPrivateKey(cr.userKey))
	}
	opts = append(opts, gopcua.SecurityFromEndpoint(ep, tt))
	if mode != ua.MessageSecurityModeNone {
		if cr.cert == nil {
			return nil, ep, errors.New("the agent's certificate is needed for a secure channel: set certificate_file and private_key_file")
		}
		opts = append(opts, gopcua.Certificate(cr.cert), gopcua.PrivateKey(cr.key))
		if cr.pinDER != nil {
			// The OpenSecureChannel request is encrypted to the pinned
			// key: only the holder of that key can open the channel.
			opts = append(opts, gopcua.RemoteCertificate(cr.pinDER))
		}
	}
	c, err := gopcua.NewClient(cfg.Endpoint, opts...)
	if err != nil {
		return nil, ep, err
	}
	cctx, cancel2 := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel2()
	if err := connect(cctx, c); err != nil {
		return nil, ep, fmt.Errorf("opening a %s/%s session: %w", cfg.SecurityPolicy, cfg.SecurityMode, explain(err))
	}
	return c, ep, nil
}

// connect opens the session. The library panics when a server's session
// signature does not verify, and can return without a session when it
// cannot sign: both become errors here.
func connect(ctx context.Context, c *gopcua.Client) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the server's session signature does not verify with its certificate (%v)", r)
			closeQuietly(c)
		}
	}()
	if err := c.Connect(ctx); err != nil {
		return err
	}
	if c.Session() == nil {
		closeQuietly(c)
		return errors.New("no session was activated (the session signature could not be made with the agent's key)")
	}
	return nil
}

func closeQuietly(c *gopcua.Client) {
	defer func() { _ = recover() }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// explain adds what to do to the status codes a site is most likely to
// meet while connecting.
func explain(err error) error {
	var code ua.StatusCode
	if !errors.As(err, &code) {
		return err
	}
	switch code {
	case ua.StatusBadUserAccessDenied, ua.StatusBadIdentityTokenRejected, ua.StatusBadIdentityTokenInvalid, ua.StatusBadUserSignatureInvalid:
		return fmt.Errorf("%w: the server refuses this login; check username and password_file (or the user certificate)", err)
	case ua.StatusBadCertificateUntrusted, ua.StatusBadSecurityChecksFailed, ua.StatusBadCertificateInvalid, ua.StatusBadApplicationSignatureInvalid:
		return fmt.Errorf("%w: the server does not accept the agent's certificate; add it to the server's trusted certificates", err)
	case ua.StatusBadTimeout:
		return fmt.Errorf("%w: no answer in time (a server that does not trust the agent's certificate often just drops the channel)", err)
	}
	return err
}

func offersToken(ep *ua.EndpointDescription, t ua.UserTokenType) bool {
	for _, u := range ep.UserIdentityTokens {
		if u.TokenType == t {
			return true
		}
	}
	// A server that lists no token policies accepts anonymous sessions.
	return len(ep.UserIdentityTokens) == 0 && t == ua.UserTokenTypeAnonymous
}

func tokenName(t ua.UserTokenType) string {
	switch t {
	case ua.UserTokenTypeAnonymous:
		return "anonymous"
	case ua.UserTokenTypeUserName:
		return "username/password"
	case ua.UserTokenTypeCertificate:
		return "user certificate"
	case ua.UserTokenTypeIssuedToken:
		return "issued token"
	}
	return t.String()
}

func tokenNames(ep *ua.EndpointDescription) string {
	seen := map[ua.UserTokenType]bool{}
	var out []string
	for _, u := range ep.UserIdentityTokens {
		if !seen[u.TokenType] {
			seen[u.TokenType] = true
			out = append(out, tokenName(u.TokenType))
		}
	}
	if len(out) == 0 {
		return "none"
	}
	return strings.Join(out, ", ")
}
