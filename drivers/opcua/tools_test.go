package opcua

import (
	"context"
	"strings"
	"testing"

	"github.com/siteagent/siteagent/drivers/opcua/uacert"
	opcuasim "github.com/siteagent/siteagent/sim/opcua"
)

func TestEndpointsAndBrowse(t *testing.T) {
	r := newRig(t, opcuasim.Config{})
	r.srv.MustAdd("Battery/SoC", 42.5)
	r.srv.MustAdd("Battery/Model", "LFP")
	r.srv.MustAdd("Generator/Available", true)
	ctx := context.Background()

	eps, err := Endpoints(ctx, r.srv.URL(), DefaultTimeout)
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != len(opcuasim.AllEndpoints()) || eps[0].Policy == "None" {
		t.Errorf("endpoints %+v: want every one, most secure first", eps)
	}
	if fp := uacert.Fingerprint(eps[0].Certificate); fp != uacert.Fingerprint(r.srv.Certificate()) {
		t.Errorf("endpoint certificate %s is not the server's", fp)
	}

	// A technician with no certificate yet and no pin: a throwaway
	// certificate, and the server's is shown rather than checked.
	s, err := Open(ctx, SourceConfig{Name: "tool", Endpoint: r.srv.URL()}, OpenOptions{TrustServer: true, EphemeralCertificate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := map[string]Node{}
	err = s.Browse(ctx, "", 3, func(n Node) error {
		got[n.Path] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	soc := got["1:Battery/1:SoC"]
	if soc.ID != "ns=1;s=Battery.SoC" || soc.Class != "Variable" || soc.DataType != "Double" || soc.Value != "42.5" || !soc.Numeric {
		t.Errorf("SoC listed as %+v", soc)
	}
	if m := got["1:Battery/1:Model"]; m.DataType != "String" || m.Numeric {
		t.Errorf("a string variable listed as %+v", m)
	}
	if b := got["1:Battery"]; b.Class != "Object" {
		t.Errorf("the Battery folder listed as %+v", b)
	}
	if _, ok := got["0:Server"]; !ok {
		t.Errorf("the Server object is missing from %v", keys(got))
	}

	// Starting below a node lists its children only.
	var under []string
	if err := s.Browse(ctx, "ns=1;s=Generator", 1, func(n Node) error { under = append(under, n.Path); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(under, ",") != "1:Available" {
		t.Errorf("under Generator: %v", under)
	}

	// A pin that does not match refuses, also for the tools.
	_, err = Open(ctx, SourceConfig{Name: "tool", Endpoint: r.srv.URL(), ServerFingerprint: strings.Repeat("00", 32)}, OpenOptions{TrustServer: true, EphemeralCertificate: true})
	if err == nil || !strings.Contains(err.Error(), ErrCertificateMismatch.Error()) {
		t.Errorf("mismatched pin: %v", err)
	}
}

func keys(m map[string]Node) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
