package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/siteagent/siteagent/drivers/opcua"
	"github.com/siteagent/siteagent/drivers/opcua/uacert"
)

const opcuaUsage = `usage:
  siteagent opcua browse ENDPOINT [NODE] [flags]
      list the server's endpoints and certificate, then walk its address
      space from NODE (the Objects folder unless given): node ids, browse
      paths, data types and values, to write [[opcua.points]] from
  siteagent opcua gen-cert --cert FILE --key FILE [--uri URI] [--host H]...
      make the agent's self-signed OPC UA application certificate
`

func cmdOPCUA(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, opcuaUsage)
		return 2
	}
	switch args[0] {
	case "browse":
		return cmdOPCUABrowse(args[1:], stdout, stderr)
	case "gen-cert":
		return cmdOPCUAGenCert(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, opcuaUsage)
		return 0
	}
	fmt.Fprintf(stderr, "siteagent opcua: unknown command %q\n\n%s", args[0], opcuaUsage)
	return 2
}

// parseInterleaved parses flags that may come before, between or after
// the positional arguments, which the flag package alone does not allow.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func cmdOPCUABrowse(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("opcua browse", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := opcua.SourceConfig{Name: "browse"}
	fs.StringVar(&cfg.SecurityPolicy, "policy", opcua.DefaultSecurityPolicy, "security policy: Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss (None, Basic128Rsa15, Basic256 with --allow-insecure)")
	fs.StringVar(&cfg.SecurityMode, "mode", "", "security mode: SignAndEncrypt (default) or Sign")
	fs.BoolVar(&cfg.AllowInsecure, "allow-insecure", false, "permit policy None and the SHA-1 policies")
	fs.StringVar(&cfg.CertificateFile, "cert", "", "the agent's certificate (PEM or DER); a throwaway one when empty")
	fs.StringVar(&cfg.PrivateKeyFile, "key", "", "the key of --cert")
	fs.StringVar(&cfg.ServerFingerprint, "pin", "", "the server's SHA-256 fingerprint; refuse any other certificate")
	fs.StringVar(&cfg.ServerCertificateFile, "server-cert", "", "the server's certificate file; refuse any other")
	fs.StringVar(&cfg.Username, "user", "", "log in as this user")
	fs.StringVar(&cfg.PasswordFile, "password-file", "", "the user's password file")
	fs.StringVar(&cfg.UserCertificateFile, "user-cert", "", "log in with this user certificate")
	fs.StringVar(&cfg.UserPrivateKeyFile, "user-key", "", "the key of --user-cert")
	depth := fs.Int("depth", 4, "levels to walk below NODE")
	timeout := fs.Duration("timeout", 5*time.Second, "per request")
	toml := fs.Bool("toml", false, "print [[opcua.points]] tables for the numeric variables instead of a listing")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return 2
	}
	if len(pos) < 1 || len(pos) > 2 {
		fmt.Fprint(stderr, "usage: siteagent opcua browse ENDPOINT [NODE] [flags]\n")
		return 2
	}
	cfg.Endpoint, cfg.Timeout = pos[0], *timeout
	root := ""
	if len(pos) == 2 {
		root = pos[1]
	}
	if cfg.SecurityPolicy == "None" && cfg.SecurityMode == "" {
		cfg.SecurityMode = "None"
	}
	ctx, cancel := signalContext()
	defer cancel()

	eps, err := opcua.Endpoints(ctx, cfg.Endpoint, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "siteagent: %s: %v\n", cfg.Endpoint, err)
		return 1
	}
	out := stdout
	if *toml {
		out = stderr // the tables go to stdout alone, ready to paste
	}
	fmt.Fprintf(out, "server %s\n", cfg.Endpoint)
	var fp string
	var offers []string
	for _, e := range eps {
		offers = append(offers, e.Policy+"/"+e.Mode)
		if fp == "" && len(e.Certificate) > 0 {
			fp = uacert.Fingerprint(e.Certificate)
		}
	}
	fmt.Fprintf(out, "  endpoints   %s\n", strings.Join(offers, ", "))
	if fp != "" {
		fmt.Fprintf(out, "  certificate SHA-256 %s\n  pin it in the site file: server_fingerprint = %q\n", fp, fp)
	}
	s, err := opcua.Open(ctx, cfg, opcua.OpenOptions{TrustServer: true, EphemeralCertificate: true})
	if err != nil {
		fmt.Fprintf(stderr, "siteagent: %v\n", err)
		if cfg.CertificateFile == "" {
			fmt.Fprintln(stderr, "  (a throwaway certificate was used: make one with `siteagent opcua gen-cert`, have the server trust it, and pass --cert/--key)")
		}
		return 1
	}
	defer s.Close()
	d := cfg.WithDefaults()
	fmt.Fprintf(out, "  connected   %s/%s, %s\n\n", d.SecurityPolicy, d.SecurityMode, s.Login())

	if *toml {
		return browseTOML(ctx, s, root, *depth, stdout, stderr)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tNODE\tCLASS\tTYPE\tVALUE")
	err = s.Browse(ctx, root, *depth, func(n opcua.Node) error {
		val := n.Value
		if n.Status != "" && n.Status != "Good" {
			val += " (" + n.Status + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Path, n.ID, n.Class, n.DataType, val)
		return nil
	})
	tw.Flush()
	if err != nil {
		fmt.Fprintf(stderr, "siteagent: browsing: %v\n", err)
		return 1
	}
	return 0
}

var notName = regexp.MustCompile(`[^a-z0-9_]+`)

// browseTOML prints a point table for every numeric variable: a start
// for the site file, to rename and give units.
func browseTOML(ctx context.Context, s *opcua.Session, root string, depth int, stdout, stderr io.Writer) int {
	n := 0
	err := s.Browse(ctx, root, depth, func(node opcua.Node) error {
		if node.Class != "Variable" || !node.Numeric || strings.HasPrefix(node.ID, "i=") {
			return nil // namespace 0 is the server's own bookkeeping
		}
		var parts []string
		for _, p := range strings.Split(node.Path, "/") {
			if _, name, ok := strings.Cut(p, ":"); ok {
				p = name
			}
			parts = append(parts, p)
		}
		name := strings.Trim(notName.ReplaceAllString(strings.ToLower(strings.Join(parts, "_")), "_"), "_")
		fmt.Fprintf(stdout, "[[opcua.points]]\nname = %q\nnode = %q # path = %q; %s, now %s\nunit = \"\" # kW, %%, bool, ...\n\n", name, node.ID, node.Path, node.DataType, node.Value)
		n++
		return nil
	})
	if err != nil {
		fmt.Fprintf(stderr, "siteagent: browsing: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "%d numeric variable(s)\n", n)
	return 0
}

func cmdOPCUAGenCert(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("opcua gen-cert", flag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	certFile := fs.String("cert", "", "write the certificate here (PEM; .der writes DER)")
	keyFile := fs.String("key", "", "write the private key here (PEM, mode 0600)")
	uri := fs.String("uri", "urn:siteagent:"+host, "application URI (the certificate's URI SAN; servers compare it with the session's)")
	days := fs.Int("days", 3650, "validity in days")
	bits := fs.Int("bits", 2048, "RSA key size: 2048..4096")
	force := fs.Bool("force", false, "overwrite existing files")
	var hosts multiFlag
	fs.Var(&hosts, "host", "DNS name or IP address of the agent's host (repeatable); the host name unless given")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *certFile == "" || *keyFile == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: siteagent opcua gen-cert --cert FILE --key FILE [--uri URI] [--host H]... [--days N]")
		return 2
	}
	if len(hosts) == 0 && host != "" {
		hosts = append(hosts, host)
	}
	if *days < 1 {
		fmt.Fprintln(stderr, "siteagent: --days must be at least 1")
		return 2
	}
	der, key, err := uacert.Generate(uacert.Options{ApplicationURI: *uri, Hosts: hosts, Bits: *bits, Valid: time.Duration(*days) * 24 * time.Hour})
	if err != nil {
		fmt.Fprintln(stderr, "siteagent:", err)
		return 2
	}
	certOut := uacert.CertificatePEM(der)
	if strings.HasSuffix(*certFile, ".der") {
		certOut = der
	}
	if err := writeNew(*keyFile, uacert.KeyPEM(key), 0o600, *force); err != nil {
		fmt.Fprintln(stderr, "siteagent:", err)
		return 1
	}
	if err := writeNew(*certFile, certOut, 0o644, *force); err != nil {
		fmt.Fprintln(stderr, "siteagent:", err)
		return 1
	}
	fmt.Fprintf(stdout, "wrote %s and %s\n  application URI %s\n  SHA-256 %s\nHave the OPC UA server trust this certificate, then set certificate_file and private_key_file in the [[opcua]] table.\n",
		*certFile, *keyFile, *uri, uacert.Fingerprint(der))
	return 0
}

// writeNew writes a file, refusing to replace one unless force.
func writeNew(name string, b []byte, mode os.FileMode, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if !force {
		flags |= os.O_EXCL
	}
	f, err := os.OpenFile(name, flags, mode)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists; pass --force to replace it", name)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// signalContext ends on Ctrl-C, so a slow server can be given up on.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
