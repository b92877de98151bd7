package opcua

import (
	"bytes"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"errors"

	"github.com/gopcua/opcua/ua"
	"github.com/gopcua/opcua/uapolicy"
)

// checkUser decides whether the identity in an ActivateSession request
// may log in: the library's server accepts anyone, the simulated BMS does
// not.
func (s *Server) checkUser(r *ua.ActivateSessionRequest, nonce []byte) error {
	var tok any
	if r.UserIdentityToken != nil {
		tok = r.UserIdentityToken.Value
	}
	switch t := tok.(type) {
	case nil, *ua.AnonymousIdentityToken:
		if s.cfg.NoAnonymous {
			return ua.StatusBadIdentityTokenRejected
		}
		return nil
	case *ua.UserNameIdentityToken:
		want, ok := s.cfg.Users[t.UserName]
		if !ok {
			return ua.StatusBadUserAccessDenied
		}
		pw, err := s.password(t, nonce)
		if err != nil {
			s.log.Debug("sim opcua: cannot read a user password", "user", t.UserName, "err", err)
			return ua.StatusBadIdentityTokenInvalid
		}
		if subtle.ConstantTimeCompare(pw, []byte(want)) != 1 {
			return ua.StatusBadUserAccessDenied
		}
		return nil
	case *ua.X509IdentityToken:
		known := false
		for _, c := range s.cfg.UserCertificates {
			if bytes.Equal(c, t.CertificateData) {
				known = true
			}
		}
		if !known {
			return ua.StatusBadIdentityTokenRejected
		}
		cert, err := x509.ParseCertificate(t.CertificateData)
		if err != nil {
			return ua.StatusBadIdentityTokenInvalid
		}
		pub, ok := cert.PublicKey.(*rsa.PublicKey)
		if !ok || r.UserTokenSignature == nil {
			return ua.StatusBadIdentityTokenInvalid
		}
		alg, err := uapolicy.Asymmetric(s.tokenPolicy(t.PolicyID), nil, pub)
		if err != nil {
			return ua.StatusBadIdentityTokenInvalid
		}
		// The user proves it holds the key: it signs the server's
		// certificate and nonce with it.
		signed := append(append([]byte{}, s.cfg.Certificate...), nonce...)
		if err := alg.VerifySignature(signed, r.UserTokenSignature.Signature); err != nil {
			return ua.StatusBadUserSignatureInvalid
		}
		return nil
	}
	return ua.StatusBadIdentityTokenInvalid
}

// password decrypts a user's password: the client encrypts
// length (4 bytes, little-endian) | password | server nonce with the
// server's key, under the security policy of the user token policy.
func (s *Server) password(t *ua.UserNameIdentityToken, nonce []byte) ([]byte, error) {
	policy := s.tokenPolicy(t.PolicyID)
	if policy == ua.SecurityPolicyURINone {
		return t.Password, nil
	}
	alg, err := uapolicy.Asymmetric(policy, s.cfg.Key, &s.cfg.Key.PublicKey)
	if err != nil {
		return nil, err
	}
	plain, err := alg.Decrypt(t.Password)
	if err != nil {
		return nil, err
	}
	if len(plain) < 4 {
		return nil, errors.New("short secret")
	}
	n := int(binary.LittleEndian.Uint32(plain))
	if n < len(nonce) || 4+n > len(plain) || !bytes.Equal(plain[4+n-len(nonce):4+n], nonce) {
		return nil, errors.New("the secret does not end with this session's nonce")
	}
	return plain[4 : 4+n-len(nonce)], nil
}

// tokenPolicy is the security policy of the user token policy with id.
func (s *Server) tokenPolicy(id string) string {
	for _, e := range s.front.endpoints() {
		for _, t := range e.UserIdentityTokens {
			if t.PolicyID == id && t.SecurityPolicyURI != "" {
				return t.SecurityPolicyURI
			}
		}
	}
	return ua.SecurityPolicyURINone
}
